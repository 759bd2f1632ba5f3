"""Whether a Ray head wants a token, asked of the head itself through its dashboard: the check
``lrjob submit`` runs before it sends anything (``launcher.deploy.submit``) and ``lrjob run
--address`` after it joined (``launcher.backends.cluster.warn_if_cluster_open``);
docs/design.md "Cluster security".

    check_auth("http://127.0.0.1:8265").mode      # token, disabled, open, missing, gated, ...
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AuthCheck", "check_auth"]


@dataclass(frozen=True)
class AuthCheck:
    """What a Ray head's dashboard says about authentication. ``mode``: ``token`` (it says token and
    refuses ``GET /api/jobs/`` without one), ``disabled``, ``open`` (it says token, yet answers that
    request), ``unreachable``, ``tls`` (the TLS handshake or certificate failed), ``missing`` (404: a
    Ray older than 2.52, which has no token authentication), ``gated`` (401, 403 or a redirect:
    something in front of the dashboard, such as an authenticating proxy) or ``unknown`` (any other
    answer). ``detail`` is the real error or answer, for the message."""

    mode: str
    detail: str = ""

    def describe(self) -> str:
        """The head's state as a phrase that follows "the Ray head"."""
        return {
            "disabled": "runs without authentication (authentication_mode: disabled)",
            "open": f"reports token authentication but serves its job API without a token ({self.detail})",
            "unreachable": f"could not be asked for its authentication mode ({self.detail})",
            "tls": f"could not be asked for its authentication mode: TLS error ({self.detail})",
            "missing": f"does not report an authentication mode ({self.detail}; Ray older than 2.52 has no "
                       f"token authentication)",
            "gated": f"sits behind something that wants other credentials ({self.detail}; an authenticating "
                     f"proxy?), so lrjob cannot tell whether Ray itself wants a token",
        }.get(self.mode, f"gave an unexpected answer about its authentication mode ({self.detail})")


def _first(e: BaseException, limit: int = 200) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {text[:limit]}"


def _http_settings(address: str) -> tuple[str, dict, dict | None, bool | str]:
    """Base URL, headers (with the token when this process has one), cookies and TLS ``verify``
    exactly as Ray's ``JobSubmissionClient`` builds them: its base class ``SubmissionClient``
    computes them without touching the network, so the check below goes through the same HTTP
    stack (requests) with the same settings as the submission that follows."""
    from ray.dashboard.modules.dashboard_sdk import SubmissionClient

    sc = SubmissionClient(address)
    return sc._address, dict(sc._headers or {}), sc._cookies, sc._verify


def check_auth(address: str, timeout: float = 5.0) -> AuthCheck:
    """Ask the Ray head at ``address`` (its dashboard) whether it wants a token:
    ``GET /api/authentication_mode`` (public in Ray 2.52 and later), and when that says ``token``,
    ``GET /api/jobs/`` without the token, which such a head must refuse (401/403). Redirects are
    not followed: a redirect means something else answers for the dashboard."""
    import requests

    base, headers, cookies, verify = _http_settings(address)

    def get(path: str, hdrs: dict):
        return requests.get(base + path, headers=hdrs, cookies=cookies, verify=verify, timeout=timeout,
                            allow_redirects=False)

    try:
        r = get("/api/authentication_mode", headers)
    except requests.exceptions.SSLError as e:
        return AuthCheck("tls", _first(e))
    except requests.exceptions.RequestException as e:
        return AuthCheck("unreachable", f"GET /api/authentication_mode: {_first(e)}")
    said = f"GET /api/authentication_mode: HTTP {r.status_code}"
    if r.status_code == 404:
        return AuthCheck("missing", said)
    if r.status_code in (401, 403) or r.is_redirect or 300 <= r.status_code < 400:
        where = r.headers.get("Location")
        return AuthCheck("gated", said + (f" to {where[:100]}" if where else ""))
    if r.status_code != 200:
        return AuthCheck("unknown", said)
    try:
        body = r.json()
    except ValueError:
        return AuthCheck("unknown", f"{said} with a body that is not JSON: {r.text[:60]!r}")
    mode = body.get("authentication_mode") if isinstance(body, dict) else None
    if mode == "disabled":
        return AuthCheck("disabled", "authentication_mode: disabled")
    if mode != "token":
        return AuthCheck("unknown", f"{said}, authentication_mode: {str(mode)[:40]!r}")
    # It says token: it must also refuse a request that carries none.
    bare = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    try:
        r = get("/api/jobs/", bare)
    except requests.exceptions.RequestException as e:
        return AuthCheck("unknown", f"GET /api/jobs/ without a token: {_first(e)}")
    if r.status_code in (401, 403):
        return AuthCheck("token", f"GET /api/jobs/ without a token: HTTP {r.status_code}")
    return AuthCheck("open", f"GET /api/jobs/ without a token: HTTP {r.status_code}")
