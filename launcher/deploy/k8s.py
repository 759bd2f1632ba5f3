"""Kubernetes manifests for a job: a KubeRay ``RayJob`` (one run, then the cluster goes),
a ``RayCluster`` to ``lrjob submit`` to, or a Kubeflow ``MPIJob`` (horovodrun over SSH).
Every field carries a comment, like the KubeRay samples; the output is deterministic.

    lrjob k8s jobs/mnist_softmax.yaml --image registry.example.com/lrjob:0.1.0 > mnist.yaml
    lrjob k8s jobs/mnist_softmax.yaml --kind mpijob --workers 4
    lrjob k8s jobs/mnist_softmax.yaml --gpus-per-worker 1      # the -gpu image, nvidia.com/gpu
    python -m launcher.deploy.k8s --write k8s/                         # rewrite the manifests in k8s/

The job spec travels in a ConfigMap (mounted at /etc/lrjob/job.yaml); the run directory
goes to a PersistentVolumeClaim mounted at /runs, as /runs/<name>.

Hardening (docs/design.md "Cluster security"): every Ray cluster uses Ray token authentication
with the token from a Kubernetes Secret (KubeRay's ``authOptions``); every pod runs as the
image's non-root user with no privilege escalation, no capabilities and the runtime's default
seccomp profile; a NetworkPolicy admits only the job's own pods and named clients.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lr_core.errors import SpecError, counted

from .. import __version__

__all__ = ["render", "Deploy", "add_parser", "cmd_k8s", "gpu_image", "shipped_manifests", "write_manifests", "main",
           "secret_command", "KINDS", "RAY_VERSION", "KUBERAY_VERSION", "DEFAULT_IMAGE", "SPEC_DIR", "SPEC_PATH",
           "RUNS_DIR", "CUDA_STUB_DIR", "auth_secret_name", "AUTH_SECRET_KEY", "RUN_AS", "SSH_PORT", "CLIENT_LABEL",
           "RESTARTS", "OPERATOR_NAMESPACE"]

KINDS = ("rayjob", "raycluster", "mpijob")
RAY_VERSION = "2.60.0"  # the cluster's Ray; requirements.txt pins the same, so the image matches
REPO_ROOT = Path(__file__).resolve().parents[2]


# The CPU image (Dockerfile); GPU manifests use the same tag plus "-gpu" (Dockerfile.gpu).
DEFAULT_IMAGE = f"lrjob:{__version__}"
SPEC_DIR = "/etc/lrjob"
SPEC_PATH = f"{SPEC_DIR}/job.yaml"
RUNS_DIR = "/runs"
# In the GPU image: a directory holding only the CUDA driver stub (libcuda.so.1), for pods
# without a GPU that still import mxnet-cu112 (Dockerfile.gpu explains).
CUDA_STUB_DIR = "/opt/lrjob-cuda-stub"
# Pod sizes lrjob's spec does not carry. The head runs the driver, which loads the whole
# dataset once and ray.put()s it (MNIST: ~220 MB as float32), plus the GCS and dashboard.
HEAD_CPU, HEAD_MEMORY = "1", "4Gi"
WORKER_MEMORY = "2Gi"  # one Horovod worker: MXNet, its object-store copy of the data, its shard
LAUNCHER_CPU, LAUNCHER_MEMORY = "1", "1Gi"  # MPIJob launcher: only horovodrun and its SSH sessions
RUNS_STORAGE = "1Gi"  # run directories are small: params, a few checkpoints, plots
TTL_SECONDS = 600  # keep the finished cluster 10 minutes (time to `kubectl cp` from the head)
DEADLINE_SECONDS = 7200  # image pulls, cluster start and training together
# KubeRay's limit (a RayJob's RayCluster gets a 6-character suffix, then the 53-character cap).
_MAX_NAME = 47
_WIDTH = 100  # comment lines wrap here
# The oldest KubeRay whose RayCluster and RayJob CRDs were checked for spec.authOptions
# (mode, secretName): ray-operator/config/crd/bases/ray.io_rayclusters.yaml and ray.io_rayjobs.yaml
# at v1.7.0; KubeRay refuses token mode below Ray 2.52.
KUBERAY_VERSION = "1.7.0"
# The key KubeRay reads in the token Secret (KubeRay's RAY_AUTH_TOKEN_SECRET_KEY). The Secret is
# the job's own by default (auth_secret_name): a token shared by every job of the namespace would
# give any job's code the key to all the others. `--auth-secret` names another.
AUTH_SECRET_KEY = "auth_token"
# The namespace of the KubeRay operator, the only one whose operator pod may reach the job API.
# KubeRay's Helm chart installs into the release's namespace (`helm install -n NS`); the KubeRay
# v1.7 installation guide uses ray-system. `--operator-namespace` names another.
OPERATOR_NAMESPACE = "ray-system"
RUN_AS = 1000  # uid and gid of the images' `lrjob` user (Dockerfile, Dockerfile.gpu)
SSH_PORT = 2222  # the MPIJob workers' sshd, run by that user: a port above 1023 needs no capability
# A pod in the job's namespace with this label, its value the job's base name, may reach the Ray
# head's dashboard and client ports (the NetworkPolicy's "named clients").
CLIENT_LABEL = "lrjob-ray-client"
# RayJob backoffLimit and MPIJob runPolicy.backoffLimit: a new attempt runs the same command on the
# same run directory, and `--output DIR` holding a run of the same job continues it (_RETRY_NOTE).
RESTARTS = 2
_RETRY_NOTE = ("`--output` on a run directory of the same job continues it from its newest good checkpoint "
               "(or starts it over in place when it has none), so a retry resumes; bad input fails every "
               "attempt the same way (k8s/README.md).")
_SSH_HOME = "/home/lrjob/.ssh"  # the images' user's ~/.ssh, where the mpi-operator mounts the job's keys
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


# --------------------------------------------------------------------------- YAML with comments
@dataclass(frozen=True)
class _C:
    """A value with the comment printed above its key (or above its list item)."""

    comment: str
    value: Any


def _unwrap(node):
    return node.value if isinstance(node, _C) else node


_PLAIN = re.compile(r"[A-Za-z/_.~$][A-Za-z0-9_./:=+@~$-]*( [A-Za-z0-9_./:=+@~$-]+)*")


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        # Plain only when it reads back as the same string; else JSON, which is valid YAML.
        if _PLAIN.fullmatch(v) and not v.endswith(":") and yaml.safe_load(v) == v:
            return v
        return json.dumps(v)
    raise TypeError(f"no YAML form for {type(v).__name__} {v!r}")


def _comment(text: str, indent: int) -> list[str]:
    pad, out = " " * indent, []
    for para in text.split("\n"):
        if not para:
            out.append(pad + "#")
            continue
        if para.startswith("  "):  # a command line: kept as written
            out.append(f"{pad}# {para}")
            continue
        out += [f"{pad}# {line}" for line in textwrap.wrap(para, width=max(40, _WIDTH - indent - 2),
                                                             break_long_words=False, break_on_hyphens=False)]
    return out


def _literal(text: str) -> str | None:
    """The ``|`` block indicator for ``text``, or None when a literal block cannot hold it."""
    if "\t" in text or text.startswith((" ", "\n")) or any(line != line.rstrip() for line in text.split("\n")):
        return None
    if text.endswith("\n\n"):
        return None
    return "|" if text.endswith("\n") else "|-"


def _entry(key: str, node: Any, indent: int) -> list[str]:
    """``key: value`` with its comment above."""
    lines = _comment(node.comment, indent) if isinstance(node, _C) else []
    value = _unwrap(node)
    head = " " * indent + f"{_scalar(key)}:"
    if isinstance(value, dict) and value:
        return lines + [head] + _mapping(value, indent + 2)
    if isinstance(value, list) and value:
        return lines + [head] + _sequence(value, indent)
    if isinstance(value, (dict, list)):
        return lines + [f"{head} {'{}' if isinstance(value, dict) else '[]'}"]
    if isinstance(value, str) and "\n" in value and _literal(value):
        body = [(" " * (indent + 2) + line) if line else "" for line in value.rstrip("\n").split("\n")]
        return lines + [f"{head} {_literal(value)}"] + body
    return lines + [f"{head} {_scalar(value)}"]


def _mapping(d: dict, indent: int) -> list[str]:
    out = []
    for key, node in d.items():
        out += _entry(str(key), node, indent)
    return out


def _sequence(items: list, indent: int) -> list[str]:
    """Items at the parent key's indentation (the KubeRay samples' style)."""
    out = []
    for item in items:
        lines = _comment(item.comment, indent) if isinstance(item, _C) else []
        value = _unwrap(item)
        if isinstance(value, dict) and value:
            body = _mapping(value, indent + 2)
            # Comments of the first key go above the "- " line, at the list's indentation.
            while body[0].lstrip().startswith("#"):
                lines.append(body.pop(0)[2:])
            body[0] = " " * indent + "- " + body[0][indent + 2:]
            out += lines + body
        elif isinstance(value, (dict, list)) and not value:
            out += lines + [" " * indent + ("- {}" if isinstance(value, dict) else "- []")]
        elif isinstance(value, (dict, list)):
            raise TypeError("nested lists are not used in these manifests")
        else:
            out += lines + [" " * indent + "- " + _scalar(value)]
    return out


def _dump(header: str, docs: list[tuple[str, dict]]) -> str:
    out = _comment(header, 0)
    for comment, doc in docs:
        out += ["---"] + _comment(comment, 0) + _mapping(doc, 0)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _Plan:
    spec: Any  # launcher.spec.JobSpec with --workers / --gpus-per-worker applied
    kind: str
    image: str
    workers: int
    cpu: str  # Kubernetes quantity of resources.cpus_per_worker
    gpus: int
    base: str  # name of the main object; the others add -job, -runs, -dashboard, -ingress
    auth_secret: str = ""  # the Secret holding the Ray token (Ray kinds only)
    operator_namespace: str = OPERATOR_NAMESPACE  # where the KubeRay operator runs (Ray kinds only)

    @property
    def run_dir(self) -> str:
        """The run directory in the pods: ``/runs/<name>`` on the PersistentVolumeClaim."""
        return f"{RUNS_DIR}/{self.spec.name}"

    @property
    def labels(self) -> dict:
        """The labels every object of the plan carries: part-of lrjob, instance ``base``."""
        # Not app.kubernetes.io/name: KubeRay's Services select Ray pods by it.
        return {"app.kubernetes.io/part-of": "lrjob", "app.kubernetes.io/instance": self.base}

    @property
    def gpu_note(self) -> str:
        """The GPU part of a worker's description: ", N GPU each" or ", no GPU"."""
        return f", {self.gpus} GPU each" if self.gpus else ", no GPU"


def gpu_image(image: str) -> str:
    """The GPU build (Dockerfile.gpu) of ``image``: its tag plus ``-gpu``; digests stay as given."""
    if "@" in image:
        return image
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:  # no tag (a ":" in "host:port/name" is not one)
        return f"{image}:latest-gpu"
    return image if tag.endswith("-gpu") else f"{repo}:{tag}-gpu"


def _cpu_quantity(cpus: float) -> str:
    milli = round(cpus * 1000)
    if milli < 1:
        raise SpecError(f"resources.cpus_per_worker must be at least 0.001 on Kubernetes (CPU is counted in "
                        f"millicores), got {cpus:g}")
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _k8s_name(spec_name: str, suffix: str) -> str:
    """``lrjob-<name><suffix>`` as a Kubernetes (DNS-1123) name: lower-case ASCII letters,
    digits and '-'. Accents are dropped (é -> e) and other characters become '-'. A name
    the sanitising changed (``My_Job``, ``my.job``, ``café``) gets 8 hex digits of its
    hash; so does a name kept as it is that ends like one (``cafe-850f7dc4``): a hashed
    name never equals a kept one, and two names share objects only if their hashes do."""
    import hashlib
    import unicodedata

    ascii_name = unicodedata.normalize("NFKD", spec_name).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    if stem != spec_name or re.search(r"-[0-9a-f]{8}$", stem):
        digest = hashlib.sha256(spec_name.encode()).hexdigest()[:8]
        stem = f"{stem}-{digest}" if stem else digest
    name = "lrjob-" + stem + suffix
    if len(name) > _MAX_NAME:
        raise SpecError(f"name: {spec_name!r} gives the Kubernetes name {name!r} ({len(name)} characters), "
                        f"KubeRay allows {_MAX_NAME}; shorten it, e.g. --set name={spec_name[:20]}")
    return name


@dataclass(frozen=True)
class Deploy:
    """What to render for a job: the ``kind`` (rayjob, raycluster, mpijob), the CPU ``image``
    (GPU pods use ``gpu_image(image)``), ``workers`` / ``gpus_per_worker`` overriding the spec
    (None: the spec's), the Secret the Ray pods read their token from (None: the job's own,
    ``auth_secret_name(base)``) and the KubeRay operator's namespace (None: ``OPERATOR_NAMESPACE``);
    the last two are for the Ray kinds only."""

    image: str = DEFAULT_IMAGE
    workers: int | None = None
    gpus_per_worker: float | None = None
    kind: str = "rayjob"
    auth_secret: str | None = None
    operator_namespace: str | None = None


def auth_secret_name(base: str) -> str:
    """The job's own token Secret: ``<base>-ray-token``, ``base`` the name of the job's main object."""
    return f"{base}-ray-token"


def secret_command(secret: str) -> str:
    """The command that creates the token Secret ``secret``: the token goes through a pipe, never
    into a file or onto a command line (where /proc/PID/cmdline would show it to the node's users)."""
    return (f"openssl rand -hex 32 | tr -d '\\n' | kubectl create secret generic {secret} "
            f"--from-file={AUTH_SECRET_KEY}=/dev/stdin")


def _plan(spec, d: Deploy) -> _Plan:
    image, workers, gpus_per_worker, kind, auth_secret = d.image, d.workers, d.gpus_per_worker, d.kind, d.auth_secret
    operator_namespace = d.operator_namespace
    if kind not in KINDS:
        near = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SpecError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}{hint}")
    if not isinstance(image, str) or not image.strip() or any(ch.isspace() for ch in image):
        raise SpecError(f"--image must be an image reference such as registry.example.com/lrjob:0.1.0, "
                        f"got {image!r}")
    if kind == "mpijob":
        for flag, value in (("--auth-secret", auth_secret), ("--operator-namespace", operator_namespace)):
            if value is not None:
                raise SpecError(f"{flag} is for the Ray kinds (rayjob, raycluster): an MPIJob runs no Ray cluster; "
                                f"drop {flag}, got {value!r}")
    if auth_secret is not None and (not isinstance(auth_secret, str) or len(auth_secret) > 253
                                    or not _DNS_SUBDOMAIN.fullmatch(auth_secret)):
        raise SpecError(f"--auth-secret must be a Kubernetes Secret name (lower-case letters, digits, '-' and "
                        f"'.'), got {auth_secret!r}; e.g. --auth-secret team-a-ray-token")
    if operator_namespace is not None and (not isinstance(operator_namespace, str) or len(operator_namespace) > 63
                                           or not _DNS_LABEL.fullmatch(operator_namespace)):
        raise SpecError(f"--operator-namespace must be a Kubernetes namespace name (lower-case letters, digits "
                        f"and '-'), got {operator_namespace!r}; e.g. --operator-namespace {OPERATOR_NAMESPACE}")
    overrides = []
    if workers is not None:
        overrides.append(f"resources.workers={workers}")
    if gpus_per_worker is not None:
        overrides.append(f"resources.gpus_per_worker={gpus_per_worker}")
    if spec.data.cache is None:
        # Prepared data on the run volume every pod mounts: prepared once, mapped by every worker.
        overrides.append(f"data.cache={RUNS_DIR}/prepared")
    if overrides:  # the same checks as the spec file, and the ConfigMap then holds the effective spec
        spec = spec.with_overrides(overrides)
    n, gpus = spec.workers, spec.resources.gpus_per_worker
    if n < 1:
        raise SpecError(f"resources.workers must be >= 1 on Kubernetes (each worker is a pod), got {n}; "
                        f"pass --workers N (--workers 0 is the local in-process run)")
    if not float(gpus).is_integer():
        raise SpecError(f"resources.gpus_per_worker must be a whole number on Kubernetes (nvidia.com/gpu "
                        f"counts whole devices), got {gpus:g}; use --gpus-per-worker 1")
    gpus = int(gpus)
    if kind == "mpijob" and spec.failure.max_failures:
        raise SpecError(f"failure.max_failures: an MPIJob's workers cannot restart inside the job (the "
                        f"operator's backoffLimit does); set it to 0, got {spec.failure.max_failures}")
    suffix = {"rayjob": "", "raycluster": "-cluster", "mpijob": "-mpi"}[kind] + ("-gpu" if gpus else "")
    base = _k8s_name(spec.name, suffix)
    return _Plan(spec=spec, kind=kind, image=gpu_image(image) if gpus else image, workers=n,
                 cpu=_cpu_quantity(spec.resources.cpus_per_worker), gpus=gpus, base=base,
                 auth_secret="" if kind == "mpijob" else auth_secret or auth_secret_name(base),
                 operator_namespace=operator_namespace or OPERATOR_NAMESPACE)


# --------------------------------------------------------------------------- shared pieces
def _metadata(p: _Plan, name: str, what: str) -> _C:
    return _C(f"Name and labels of {what}. Labels tie everything of this job together:\n"
              f"kubectl get all,cm,pvc -l app.kubernetes.io/instance={p.base}",
              {"name": name, "labels": dict(p.labels)})


def _configmap(p: _Plan, pods: str) -> tuple[str, dict]:
    note = ""
    if p.spec.data.path or p.spec.data.val_path:
        note = ("\ndata.path / data.val_path name files on the machine that rendered this: they must exist "
                "at the same path inside the containers (bake them into the image or mount a volume).")
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(p, f"{p.base}-job", "the job spec ConfigMap"),
        "data": _C("One key, one file: mounted as a directory at " + SPEC_DIR + ", this is " + SPEC_PATH + ".",
                   {"job.yaml": _C("The resolved job spec (`lrjob validate` prints the same): every default "
                                   "filled in, --workers / --gpus-per-worker applied. The run directory's "
                                   "job.yaml will be this file." + note, p.spec.to_yaml())}),
    }
    return (f"The job spec, read by `lrjob` in the {pods} from {SPEC_PATH}.", doc)


def _pvc(p: _Plan, shared: bool) -> tuple[str, dict]:
    if shared:
        mode = _C("ReadWriteMany: every worker pod mounts it (rank 0 writes the run directory, and which pod "
                  "holds rank 0 is up to horovodrun); needs a storage class that offers it (NFS, CephFS, "
                  "EFS, Filestore...). On a single node ReadWriteOnce also works.", ["ReadWriteMany"])
        who = "the MPIJob's worker pods"
    else:
        mode = _C("ReadWriteOnce: only the Ray head mounts it (the driver is the only writer).",
                  ["ReadWriteOnce"])
        who = "the Ray head, where the driver runs"
    doc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(p, f"{p.base}-runs", "the run-directory volume"),
        "spec": _C("What the volume must offer.", {
            "accessModes": mode,
            "resources": _C(f"Run directories are small (parameters, the newest checkpoints, plots); "
                            f"{RUNS_STORAGE} holds many runs.", {"requests": {"storage": RUNS_STORAGE}}),
        }),
    }
    return (f"The volume mounted at {RUNS_DIR} in {who}. It outlives the job; k8s/README.md shows how to "
            f"copy a run directory out of it. No storageClassName: the cluster's default StorageClass "
            f"provisions it. The pods write as uid/gid {RUN_AS} (not root): the volume must honour fsGroup "
            f"(many NFS and EFS provisioners do not) or be writable by gid {RUN_AS} (k8s/README.md, "
            f"\"Storage\").", doc)


def _resources(p: _Plan, cpu: str, memory: str, gpus: int = 0) -> _C:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    if p.kind == "mpijob":
        text = "Requests equal limits: a Guaranteed pod, sized to one worker of the spec."
    else:
        text = ("Requests equal limits (KubeRay's advice: a Guaranteed pod). KubeRay turns the limits into "
                "`ray start --num-cpus/--num-gpus/--memory`.")
    if gpus:
        text += " nvidia.com/gpu needs the NVIDIA device plugin on the GPU nodes."
    return _C(text, {"requests": dict(amounts), "limits": dict(amounts)})


def _gpu_tolerations(p: _Plan) -> _C:
    return _C("GPU nodes are usually tainted nvidia.com/gpu:NoSchedule; tolerate the taint so the "
              "workers can land there.",
              [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])


def _image(p: _Plan) -> _C:
    if p.gpus:
        text = ("The GPU image (Dockerfile.gpu: mxnet-cu112, Horovod with NCCL), on every pod of the "
                "cluster: Ray needs one Python and Ray build throughout.")
    else:
        text = "The CPU image (Dockerfile): Ray " + RAY_VERSION + ", MXNet, Horovod (Gloo), lrjob, the MNIST cache."
    return _C(text, p.image)


def _spec_volume(p: _Plan) -> _C:
    return _C("The job spec: the ConfigMap above, one file (job.yaml).",
              {"name": "job-spec", "configMap": {"name": f"{p.base}-job"}})


def _runs_volume(p: _Plan) -> _C:
    return _C("The run directories: the PersistentVolumeClaim above.",
              {"name": "runs", "persistentVolumeClaim": {"claimName": f"{p.base}-runs"}})


def _pod_security(p: _Plan) -> _C:
    return _C(f"Every container of the pod runs as the image's user `lrjob` (uid/gid {RUN_AS}), never as "
              f"root; fsGroup makes the mounted volumes writable for that group; RuntimeDefault: the "
              f"container runtime's default seccomp profile filters system calls.", {
                  "runAsNonRoot": True,
                  "runAsUser": RUN_AS,
                  "runAsGroup": RUN_AS,
                  "fsGroup": RUN_AS,
                  "fsGroupChangePolicy": "OnRootMismatch",
                  "seccompProfile": {"type": "RuntimeDefault"},
              })


def _no_api_token() -> _C:
    return _C("No Kubernetes API token in the pod: nothing in it calls the API, and a token there would "
              "hand the job's code the rights of the namespace's service account.", False)


_NO_GPU = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}
_NO_GPU_TEXT = ("NVIDIA_VISIBLE_DEVICES=void: this pod asks for no GPU; the GPU image sets the variable to `all`, "
                "which on a node whose NVIDIA runtime reads it (the environment-variable device strategy) would "
                "show the pod every GPU of the node.")


def _no_gpu_env() -> _C:
    return _C(_NO_GPU_TEXT, [dict(_NO_GPU)])


def _container_security() -> _C:
    return _C("No setuid escalation, no Linux capabilities (nothing here binds a port below 1024 or "
              "changes users), not privileged.", {
                  "allowPrivilegeEscalation": False,
                  "privileged": False,
                  "capabilities": {"drop": ["ALL"]},
              })


def _tcp(*ports: int) -> list:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _network_policy(p: _Plan) -> tuple[str, dict]:
    own = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": p.base}}}
    if p.kind == "mpijob":
        rules = [_C("The job's own pods (launcher and workers), on every port (sshd, Horovod's Gloo "
                    "rendezvous and ring).", {"from": [own]})]
    else:
        rules = [
            _C("The job's own pods (head, workers" + (", submitter" if p.kind == "rayjob" else "") +
               "), on every port: Ray's nodes talk over many ports (GCS, raylets, object managers, "
               "workers).", {"from": [own]}),
            _C(f"Named clients: pods of this namespace labelled {CLIENT_LABEL}={p.base} may reach the "
               f"dashboard / job API (8265) and the Ray client port (10001); not the GCS (6379), which only "
               f"Ray nodes need. Anyone who may create pods here can set that label: the label is no "
               f"credential, the token is (SECURITY.md).",
               {"from": [{"podSelector": {"matchLabels": {CLIENT_LABEL: p.base}}}], "ports": _tcp(8265, 10001)}),
            _C(f"The KubeRay operator polls the job API: its pod (label app.kubernetes.io/component="
               f"kuberay-operator, set by its Helm chart and kustomize manifests) in its namespace "
               f"{p.operator_namespace} only (`lrjob k8s --operator-namespace`): a pod with that label "
               f"elsewhere is refused.",
               {"from": [{"namespaceSelector": {"matchLabels": {
                              "kubernetes.io/metadata.name": p.operator_namespace}},
                          "podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}}}],
                "ports": _tcp(8265)}),
        ]
    doc = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(p, f"{p.base}-ingress", "the NetworkPolicy"),
        "spec": _C("Which pods it guards and who may connect to them.", {
            "podSelector": _C("Every pod of this job (they all carry the instance label).",
                              {"matchLabels": {"app.kubernetes.io/instance": p.base}}),
            "policyTypes": _C("Ingress only: the pods may still pull data and reach DNS.", ["Ingress"]),
            "ingress": _C("Everything else is refused, metrics scraping included (Ray's metrics port "
                          "8080: a Prometheus needs a rule of its own). The kubelet's probes from the node are "
                          "always allowed; `kubectl port-forward` enters inside the pod, not through this policy.",
                          rules),
        }),
    }
    if p.kind == "mpijob":
        who = f"the workers' sshd ({SSH_PORT}) is reachable only from the job's own pods"
    else:
        who = (f"the Ray head's dashboard (8265) and client port (10001) are reachable only from the job's own "
               f"pods, pods labelled {CLIENT_LABEL}={p.base} and the KubeRay operator in {p.operator_namespace}; "
               f"the GCS and every other port only from the job's own pods")
    return (f"Network isolation: {who}. Takes effect where the cluster's network plugin enforces "
            f"NetworkPolicies (Calico, Cilium, ...).", doc)


# --------------------------------------------------------------------------- KubeRay
def _head_group(p: _Plan, interactive: bool) -> dict:
    container: dict[str, Any] = {}  # filled below, in the order the fields are printed
    ports = [
        _C("GCS: Ray workers join the cluster here.", {"containerPort": 6379, "name": "gcs-server"}),
        _C("Ray dashboard and job submission API (`ray job submit`, `lrjob submit`).",
           {"containerPort": 8265, "name": "dashboard"}),
        _C("Ray client (ray://).", {"containerPort": 10001, "name": "client"}),
    ]
    container.update({
        "name": _C("The Ray head container.", "ray-head"),
        "image": _image(p),
        "imagePullPolicy": _C("Pull only when the node lacks the image (a tag is assumed to be immutable; use "
                              "a new tag per build).", "IfNotPresent"),
    })
    if p.gpus:
        container["env"] = _C(
            _NO_GPU_TEXT + "\nLD_LIBRARY_PATH: the head has no GPU, yet its driver imports mxnet-cu112, which "
            "needs the CUDA driver library libcuda.so.1: this directory of the GPU image holds the CUDA stub in its "
            "place. Only for pods without a GPU (on the workers it would hide the real driver).",
            [dict(_NO_GPU), {"name": "LD_LIBRARY_PATH", "value": CUDA_STUB_DIR}])
    else:
        container["env"] = _no_gpu_env()
    container.update({
        "ports": _C("Ports of the head; KubeRay's head Service exposes them in the cluster.", ports),
        "resources": _resources(p, HEAD_CPU, HEAD_MEMORY),
        "volumeMounts": _C(
            "The job spec (read-only) and the run-directory volume" +
            (" (use `--output /runs/NAME` for runs that should outlive the cluster)."
             if interactive else f" (the driver writes {p.run_dir})."),
            [{"name": "job-spec", "mountPath": SPEC_DIR, "readOnly": True},
             {"name": "runs", "mountPath": RUNS_DIR}]),
        "securityContext": _container_security(),
    })
    return {
        "rayStartParams": _C(
            "Flags of `ray start --head`; KubeRay adds the defaults (dashboard-host 0.0.0.0, ...).\n"
            "num-cpus 0, num-gpus 0: no Horovod worker is scheduled on the head, so each of the "
            f"{p.workers} workers gets its own worker pod; the head keeps the driver, GCS and dashboard.",
            {"num-cpus": "0", "num-gpus": "0"}),
        "template": _C("Pod template of the head.", {
            "metadata": _C("Added to the pod's labels (KubeRay adds ray.io/cluster, ray.io/node-type, ...).",
                           {"labels": dict(p.labels)}),
            "spec": _C("The head pod: one container.", {
                "securityContext": _pod_security(p),
                "automountServiceAccountToken": _no_api_token(),
                "containers": _C("KubeRay runs `ray start --head` in the first container; KubeRay adds "
                                 f"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (from the Secret {p.auth_secret}) to "
                                 "its environment.", [container]),
                "volumes": _C("Pod-level volumes, mounted by the container above.",
                              [_spec_volume(p), _runs_volume(p)]),
            }),
        }),
    }


def _worker_group(p: _Plan) -> dict:
    spec: dict[str, Any] = {
        "securityContext": _pod_security(p),
        "automountServiceAccountToken": _no_api_token(),
        "containers": _C("KubeRay runs `ray start --address=<head>` in the first container, with the token "
                         "environment as on the head.", [{
                             "name": _C("The Ray worker container.", "ray-worker"),
                             "image": _image(p),
                             "imagePullPolicy": _C("Same image, same policy as the head.", "IfNotPresent"),
                             **({} if p.gpus else {"env": _no_gpu_env()}),
                             "resources": _resources(p, p.cpu, WORKER_MEMORY, p.gpus),
                             "securityContext": _container_security(),
                         }]),
    }
    if p.gpus:
        spec["tolerations"] = _gpu_tolerations(p)
    return {
        "groupName": _C("Logical name of this group of worker pods.", "workers"),
        "replicas": _C(f"One pod per Horovod worker: resources.workers = {p.workers}, each pod sized to one "
                       f"worker (resources.cpus_per_worker = {p.cpu} CPU, gpus_per_worker = {p.gpus} GPU).",
                       p.workers),
        "minReplicas": _C("No autoscaling: min = max = replicas (Horovod in static mode needs all workers "
                          "from the start).", p.workers),
        "maxReplicas": _C("See minReplicas.", p.workers),
        "rayStartParams": _C("Flags of `ray start` on the workers; the defaults do (resources come from the "
                             "container limits).", {}),
        "template": _C("Pod template of the workers.", {
            "metadata": _C("Added to the pods' labels.", {"labels": dict(p.labels)}),
            "spec": _C("A worker pod: one container" + (", allowed on GPU nodes." if p.gpus else "."), spec),
        }),
    }


def _cluster_spec(p: _Plan, interactive: bool) -> dict:
    return {
        "rayVersion": _C("Must match the Ray version in the image (requirements.txt pins ray[default,tune]=="
                         + RAY_VERSION + ").", RAY_VERSION),
        "enableInTreeAutoscaling": _C("The worker count is fixed: Horovod (static mode) cannot grow or shrink "
                                      "a running job.", False),
        "authOptions": _C(f"Ray token authentication (KubeRay v{KUBERAY_VERSION} or newer, Ray 2.52 or newer): "
                          f"every Ray pod gets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the key "
                          f"{AUTH_SECRET_KEY} of the Secret {p.auth_secret}, and the dashboard, job API, GCS and "
                          f"Ray client refuse callers without it. The Secret is this job's own (another job's "
                          f"code never holds this token); create it once, before applying this file:\n"
                          f"  {secret_command(p.auth_secret)}", {
                              "mode": "token",
                              "secretName": p.auth_secret,
                          }),
        "headGroupSpec": _C("The Ray head pod.", _head_group(p, interactive)),
        "workerGroupSpecs": _C("The Horovod worker pods: one group.", [_worker_group(p)]),
    }


def _entrypoint(p: _Plan) -> str:
    return f"lrjob run {SPEC_PATH} --workers {p.workers} --output {p.run_dir}"


def _submitter(p: _Plan) -> dict:
    amounts = {"cpu": "500m", "memory": "512Mi"}
    return {
        "metadata": _C("Added to the pod's labels.", {"labels": dict(p.labels)}),
        "spec": _C("The submitter pod: one container.", {
            "securityContext": _pod_security(p),
            "automountServiceAccountToken": _no_api_token(),
            "restartPolicy": _C("KubeRay's default; the submitting Job itself retries.", "Never"),
            "containers": _C("KubeRay sets the command of the first container.", [{
                "name": _C("KubeRay's name for the submitter container.", "ray-job-submitter"),
                "image": _C("The head's image: the same Ray CLI.", p.image),
                "imagePullPolicy": _C("Same policy as the Ray pods.", "IfNotPresent"),
                "env": _no_gpu_env(),
                "resources": _C("The Ray CLI only (KubeRay's default is 500m / 200Mi to 1 CPU / 1Gi); requests "
                                "equal limits.", {"requests": dict(amounts), "limits": dict(amounts)}),
                "securityContext": _container_security(),
            }]),
        }),
    }


def _rayjob(p: _Plan) -> list[tuple[str, dict]]:
    doc = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(p, p.base, "the RayJob"),
        "spec": _C("What to run, on which cluster, for how long.", {
            "entrypoint": _C(
                f"Runs in the Ray head (the driver): it joins the cluster through $RAY_ADDRESS, starts "
                f"{p.workers} Horovod workers and writes the run directory {p.run_dir} on the volume. "
                f"`--output` wants {p.run_dir} absent or empty: move an old one aside before applying "
                f"again.", _entrypoint(p)),
            "submissionMode": _C("K8sJobMode: KubeRay submits the entrypoint from a Kubernetes Job named like "
                                 "this RayJob, whose log follows the run (kubectl logs -f job/" + p.base + ").",
                                 "K8sJobMode"),
            "shutdownAfterJobFinishes": _C("Delete the RayCluster once the job has finished (succeeded or "
                                           "failed); the run directory stays on the volume.", True),
            "ttlSecondsAfterFinished": _C(f"...after {TTL_SECONDS} s, time to look at the head pod or copy "
                                          f"from it.", TTL_SECONDS),
            "activeDeadlineSeconds": _C(f"Give up after {DEADLINE_SECONDS} s in total (pulling images, "
                                        f"starting the cluster, training); KubeRay then stops the job.",
                                        DEADLINE_SECONDS),
            "backoffLimit": _C(f"Up to {RESTARTS} retries after a failed attempt (a lost head pod, a crashed "
                               f"driver): each retry starts a new cluster and runs the same entrypoint on "
                               f"{p.run_dir}. " + _RETRY_NOTE, RESTARTS),
            "submitterPodTemplate": _C(
                "The pod of the Kubernetes Job that submits the entrypoint (`ray job submit`, filled in by "
                "KubeRay, which also adds the token environment): hardened like the Ray pods, labelled so "
                "that the NetworkPolicy lets it reach the job API.", _submitter(p)),
            "rayClusterSpec": _C("The RayCluster created for this job (named after the RayJob plus a "
                                 "random suffix).", _cluster_spec(p, interactive=False)),
        }),
    }
    return [_configmap(p, "Ray head"), _pvc(p, shared=False),
            (f"The run: a Ray cluster with 1 head and {p.workers} worker pods ({p.cpu} CPU{p.gpu_note}), "
             f"`lrjob run` as its entrypoint, then shutdown.", doc), _network_policy(p)]


def _raycluster(p: _Plan) -> list[tuple[str, dict]]:
    doc = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _metadata(p, p.base, "the RayCluster"),
        "spec": _C("A head and one worker group, sized like the job.", _cluster_spec(p, interactive=True)),
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(p, f"{p.base}-dashboard", "the dashboard Service"),
        "spec": _C("Which pod and port the Service name leads to.", {
            "type": _C("Inside the cluster only; from a laptop: kubectl port-forward svc/"
                       f"{p.base}-dashboard 8265:8265.", "ClusterIP"),
            "selector": _C("The head pod of this RayCluster (labels KubeRay sets on it).",
                           {"ray.io/cluster": p.base, "ray.io/node-type": "head"}),
            "ports": _C("The dashboard and job submission API.",
                        [{"name": "dashboard", "port": 8265, "targetPort": 8265, "protocol": "TCP"}]),
        }),
    }
    return [_configmap(p, "Ray head"), _pvc(p, shared=False),
            (f"A long-lived Ray cluster for `lrjob submit`: 1 head and {p.workers} worker pods "
             f"({p.cpu} CPU{p.gpu_note}); delete it when done (kubectl delete -f FILE).", doc),
            (f"The head's dashboard (8265), a stable name for `lrjob submit --address "
             f"http://{p.base}-dashboard:8265` from inside the cluster (a pod labelled {CLIENT_LABEL}={p.base}, "
             f"with the token; see the NetworkPolicy).", service), _network_policy(p)]


# --------------------------------------------------------------------------- Kubeflow MPIJob
def _mpijob(p: _Plan) -> list[tuple[str, dict]]:
    args = ["--gloo", "-np", str(p.workers), "-hostfile", "/etc/mpi/hostfile", "-p", str(SSH_PORT),
            "lrjob", "worker", SPEC_PATH, "--output", p.run_dir]
    worker_spec: dict[str, Any] = {
        "securityContext": _pod_security(p),
        "automountServiceAccountToken": _no_api_token(),
        "containers": _C("One container: sshd, into which horovodrun starts the worker process.", [{
            "name": _C("The worker container.", "mpi-worker"),
            "image": _image(p),
            "imagePullPolicy": _C("Same image, same policy as the launcher.", "IfNotPresent"),
            **({} if p.gpus else {"env": _no_gpu_env()}),
            "command": _C(f"The workers only run sshd; horovodrun starts `lrjob worker` in them over SSH (keys: "
                          f"the Secret the operator mounts at {_SSH_HOME}). lrjob-sshd (in the image) makes this "
                          f"container's own host key, then runs sshd as the `lrjob` user on port {SSH_PORT}.",
                          ["lrjob-sshd"]),
            "ports": _C(f"SSH, for horovodrun (-p {SSH_PORT}).", [{"containerPort": SSH_PORT, "name": "ssh"}]),
            "readinessProbe": _C("Ready once sshd listens: the launcher waits for that "
                                 "(launcherCreationPolicy).",
                                 {"tcpSocket": {"port": SSH_PORT}, "periodSeconds": 2}),
            "resources": _resources(p, p.cpu, WORKER_MEMORY, p.gpus),
            "volumeMounts": _C("The job spec and the run-directory volume.",
                               [{"name": "job-spec", "mountPath": SPEC_DIR, "readOnly": True},
                                {"name": "runs", "mountPath": RUNS_DIR}]),
            "securityContext": _container_security(),
        }]),
        "volumes": _C("Pod-level volumes, mounted by the container above.", [_spec_volume(p), _runs_volume(p)]),
    }
    if p.gpus:
        worker_spec["tolerations"] = _gpu_tolerations(p)
    doc = {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": _metadata(p, p.base, "the MPIJob"),
        "spec": _C("Hosts, lifetime and the two pod templates.", {
            "slotsPerWorker": _C("One Horovod process per worker pod (the hostfile says slots=1).", 1),
            "launcherCreationPolicy": _C("Start the launcher only when every worker's sshd is ready.",
                                         "WaitForWorkersReady"),
            "sshAuthMountPath": _C("Where the operator mounts the job's SSH keys: the ~/.ssh of the image's "
                                   "non-root user `lrjob`.", _SSH_HOME),
            "mpiImplementation": _C("OpenMPI writes the hostfile as `host slots=1`, the format horovodrun "
                                    "reads (no MPI is used: Horovod runs on Gloo).", "OpenMPI"),
            "runPolicy": _C("Lifetime of the job and its pods.", {
                "cleanPodPolicy": _C("Delete the still-running worker pods when the launcher (a Kubernetes "
                                     "Job named " + p.base + "-launcher) finishes.",
                                     "Running"),
                "ttlSecondsAfterFinished": _C(f"Delete the MPIJob {TTL_SECONDS} s after it finished; the "
                                              f"run directory stays on the volume.", TTL_SECONDS),
                "activeDeadlineSeconds": _C(f"Give up after {DEADLINE_SECONDS} s.", DEADLINE_SECONDS),
                "backoffLimit": _C(f"Up to {RESTARTS} restarts of the launcher (see its restartPolicy): each runs "
                                   f"the same horovodrun on the same run directory. " + _RETRY_NOTE, RESTARTS),
            }),
            "mpiReplicaSpecs": _C("The launcher runs horovodrun; the workers run the training.", {
                "Launcher": _C("One pod that starts the processes and waits for them.", {
                    "replicas": _C("Always 1.", 1),
                    "restartPolicy": _C("A failed launcher (a lost worker fails horovodrun) is started again, up "
                                        "to runPolicy.backoffLimit times.", "OnFailure"),
                    "template": _C("Pod template of the launcher.", {
                        "metadata": _C("Added to the pod's labels.", {"labels": dict(p.labels)}),
                        "spec": _C("The launcher pod: one container.", {
                            "securityContext": _pod_security(p),
                            "automountServiceAccountToken": _no_api_token(),
                            "containers": _C("The operator adds the hostfile and SSH keys to the first "
                                             "container.", [{
                                "name": _C("The launcher container.", "mpi-launcher"),
                                "image": _image(p),
                                "imagePullPolicy": _C("Pull only when the node lacks the image.",
                                                      "IfNotPresent"),
                                "env": _no_gpu_env(),
                                "command": _C("horovodrun with Gloo: starts one `lrjob worker` per host of "
                                              "the hostfile the operator mounts at /etc/mpi/hostfile; each "
                                              "process calls hvd.init().", ["horovodrun"]),
                                "args": _C(f"-np = worker replicas ({p.workers}); -p: the workers' sshd port; "
                                           f"everything after that is the command run on every worker.", args),
                                "resources": _C("horovodrun and its SSH sessions only; no GPU.",
                                                {"requests": {"cpu": LAUNCHER_CPU, "memory": LAUNCHER_MEMORY},
                                                 "limits": {"cpu": LAUNCHER_CPU, "memory": LAUNCHER_MEMORY}}),
                                "volumeMounts": _C("The job spec (for reference; the workers read their own "
                                                   "copy).",
                                                   [{"name": "job-spec", "mountPath": SPEC_DIR, "readOnly": True}]),
                                "securityContext": _container_security(),
                            }]),
                            "volumes": _C("Pod-level volumes, mounted by the container above.",
                                          [_spec_volume(p)]),
                        }),
                    }),
                }),
                "Worker": _C("The pods that train, one Horovod rank each.", {
                    "replicas": _C(f"resources.workers = {p.workers}: one Horovod process per pod, "
                                   f"{p.cpu} CPU{p.gpu_note}.", p.workers),
                    "restartPolicy": _C("A worker pod whose sshd dies is restarted in place; the run it was part of "
                                        "fails (Horovod cannot replace a rank); see runPolicy.backoffLimit for what "
                                        "the launcher's restart does.",
                                        "OnFailure"),
                    "template": _C("Pod template of the workers.", {
                        "metadata": _C("Added to the pods' labels.", {"labels": dict(p.labels)}),
                        "spec": _C("A worker pod" + (", allowed on GPU nodes." if p.gpus else "."),
                                   worker_spec),
                    }),
                }),
            }),
        }),
    }
    return [_configmap(p, "worker pods"), _pvc(p, shared=True),
            (f"The run as a Kubeflow MPIJob (mpi-operator v0.5 or newer): {p.workers} worker pods "
             f"({p.cpu} CPU{p.gpu_note}) and a launcher running horovodrun over SSH.", doc), _network_policy(p)]


# --------------------------------------------------------------------------- public API
_TITLES = {"rayjob": "a KubeRay RayJob", "raycluster": "a KubeRay RayCluster", "mpijob": "a Kubeflow MPIJob"}


def _header(p: _Plan) -> str:
    what = (f"lrjob job {p.spec.name!r} as {_TITLES[p.kind]}: {counted(p.workers, 'worker')} x {p.cpu} CPU{p.gpu_note}; "
            f"image {p.image}.")
    if p.kind == "rayjob":
        steps = (f"Needs the KubeRay operator v{KUBERAY_VERSION} or newer (ray.io/v1 with authOptions) and the "
                 f"token Secret {p.auth_secret}, this job's own, created once before the first apply:\n"
                 f"  {secret_command(p.auth_secret)}\n"
                 f"  kubectl apply -f FILE                    # ConfigMap, PersistentVolumeClaim, RayJob, NetworkPolicy\n"
                 f"  kubectl get rayjob {p.base} -w\n"
                 f"  kubectl logs -f job/{p.base}\n"
                 f"The run directory lands in {p.run_dir} on the PersistentVolumeClaim {p.base}-runs "
                 f"(copying it out: k8s/README.md).")
    elif p.kind == "raycluster":
        steps = (f"Needs the KubeRay operator v{KUBERAY_VERSION} or newer (ray.io/v1 with authOptions) and the "
                 f"token Secret {p.auth_secret}, this job's own, created once before the first apply:\n"
                 f"  {secret_command(p.auth_secret)}\n"
                 f"  kubectl apply -f FILE\n"
                 f"  kubectl port-forward svc/{p.base}-dashboard 8265:8265\n"
                 f"  export RAY_AUTH_TOKEN=\"$(kubectl get secret {p.auth_secret} -o "
                 f"jsonpath='{{.data.{AUTH_SECRET_KEY}}}' | base64 -d)\"\n"
                 f"  lrjob submit JOB --address http://127.0.0.1:8265 --output {RUNS_DIR}/NAME --wait\n"
                 f"Runs given --output {RUNS_DIR}/NAME land on the PersistentVolumeClaim {p.base}-runs "
                 f"(without it, in ~/lrjob-runs of the head pod, gone with the pod).")
    else:
        steps = (f"Needs the Kubeflow mpi-operator v0.5 or newer (kubeflow.org/v2beta1).\n"
                 f"  kubectl apply -f FILE                    # ConfigMap, PersistentVolumeClaim, MPIJob, NetworkPolicy\n"
                 f"  kubectl get mpijob {p.base} -w\n"
                 f"  kubectl logs -f job/{p.base}-launcher\n"
                 f"The run directory lands in {p.run_dir} on the PersistentVolumeClaim {p.base}-runs.")
    return what + "\n" + steps + "\nRefresh the files in k8s/ with: python -m launcher.deploy.k8s --write k8s/"


def render(spec, deploy: Deploy = Deploy()) -> str:
    """Manifests for ``spec`` as one multi-document YAML string (deterministic).

    ``deploy.kind``: ``rayjob`` (ConfigMap, PersistentVolumeClaim, RayJob), ``raycluster`` (ConfigMap,
    PersistentVolumeClaim, RayCluster, dashboard Service) or ``mpijob`` (ConfigMap,
    PersistentVolumeClaim, MPIJob); each also gets a NetworkPolicy. ``workers`` / ``gpus_per_worker``
    override the spec (None: keep); with GPUs every pod uses ``gpu_image(image)``. The Ray kinds read
    their token from the Secret ``auth_secret``. Bad arguments raise ``SpecError``.
    """
    p = _plan(spec, deploy)
    docs = {"rayjob": _rayjob, "raycluster": _raycluster, "mpijob": _mpijob}[p.kind](p)
    return _dump(_header(p), docs)


def shipped_manifests(jobs_dir: str | Path | None = None, image: str = DEFAULT_IMAGE) -> dict[str, str]:
    """File name -> text of everything in k8s/: a RayJob per job in jobs/, and for mnist_softmax
    its GPU RayJob, its MPIJob and the interactive RayCluster."""
    from ..spec import load_spec

    jobs_dir = Path(jobs_dir) if jobs_dir else REPO_ROOT / "jobs"
    out = {}
    for path in sorted(jobs_dir.glob("*.yaml")):
        out[f"{path.stem}.rayjob.yaml"] = render(load_spec(path), Deploy(image=image, kind="rayjob"))
    main_job = load_spec(jobs_dir / "mnist_softmax.yaml")
    out["mnist_softmax.gpu.rayjob.yaml"] = render(main_job, Deploy(image=image, gpus_per_worker=1, kind="rayjob"))
    out["mnist_softmax.mpijob.yaml"] = render(main_job, Deploy(image=image, kind="mpijob"))
    out["raycluster.yaml"] = render(main_job, Deploy(image=image, kind="raycluster"))
    return dict(sorted(out.items()))


_OURS = ("*.rayjob.yaml", "*.mpijob.yaml", "raycluster.yaml")


def write_manifests(target: str | Path, jobs_dir: str | Path | None = None) -> list[Path]:
    """Rewrite ``shipped_manifests()`` into ``target``; remove manifests of jobs that are gone."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    files = shipped_manifests(jobs_dir)
    for pattern in _OURS:
        for stale in target.glob(pattern):
            if stale.name not in files:
                stale.unlink()
    written = []
    for name, text in files.items():
        path = target / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


# --------------------------------------------------------------------------- CLI
def add_parser(subparsers, make=None) -> argparse.ArgumentParser:
    """Add ``k8s`` to ``lrjob``'s subcommands (``build_parser``); returns the new parser.

    ``make(subparsers, name, help)``, when given, builds the subparser (cli's ``_sub``, with
    its ``EXAMPLES`` epilog); without it the parser carries its own examples.
    """
    help_ = "print Kubernetes manifests for a job (KubeRay RayJob or RayCluster, Kubeflow MPIJob)"
    if make is not None:
        p = make(subparsers, "k8s", help_)
    else:
        example = ("examples:\n"
                   "  lrjob k8s jobs/mnist_softmax.yaml --image registry.example.com/lrjob:0.1.0 > mnist.yaml\n"
                   "  lrjob k8s jobs/mnist_softmax.yaml --kind mpijob --workers 4\n"
                   "  lrjob k8s jobs/mnist_softmax.yaml --gpus-per-worker 1   # uses the IMAGE-gpu tag")
        p = subparsers.add_parser(
            "k8s", help=help_,
            description=("print Kubernetes manifests for a job: its spec as a ConfigMap, a PersistentVolumeClaim "
                         "for /runs, and a KubeRay RayJob (default), a RayCluster for `lrjob submit`, or a "
                         "Kubeflow MPIJob"),
            epilog=example, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", help="job spec YAML (e.g. jobs/mnist_softmax.yaml)")
    p.add_argument("--image", default=DEFAULT_IMAGE,
                   help=f"container image built from Dockerfile (default: {DEFAULT_IMAGE}); with GPUs its "
                        f"-gpu tag (Dockerfile.gpu)")
    p.add_argument("--workers", type=int, default=None, help="worker pods (default: from the spec)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="whole GPUs per worker pod (default: from the spec)")
    p.add_argument("--kind", default="rayjob", help=f"one of {', '.join(KINDS)} (default: rayjob)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--auth-secret", default=None, metavar="NAME",
                   help=f"the Secret (key {AUTH_SECRET_KEY}) the Ray pods read their token from (default: the "
                        f"job's own, <object name>{auth_secret_name('')}); not for --kind mpijob")
    p.add_argument("--operator-namespace", default=None, metavar="NS",
                   help=f"namespace of the KubeRay operator, the only one whose operator pod may reach the job "
                        f"API (default: {OPERATOR_NAMESPACE}); not for --kind mpijob")
    return p


def cmd_k8s(args) -> int:
    """``lrjob k8s``: print the manifests to stdout; for the Ray kinds, say on stderr how to create
    the token Secret they name."""
    from ..spec import load_spec

    spec = load_spec(args.job, list(args.overrides))
    deploy = Deploy(image=args.image, workers=args.workers, gpus_per_worker=args.gpus_per_worker, kind=args.kind,
                    auth_secret=getattr(args, "auth_secret", None),
                    operator_namespace=getattr(args, "operator_namespace", None))
    p = _plan(spec, deploy)
    sys.stdout.write(render(spec, deploy))
    sys.stdout.flush()
    if p.kind != "mpijob":  # stderr: stdout stays the manifests alone
        sys.stderr.write(f"lrjob: note: the Ray pods read their token from the Secret {p.auth_secret} (key "
                         f"{AUTH_SECRET_KEY}), this job's own; create it once before applying: "
                         f"{secret_command(p.auth_secret)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m launcher.deploy.k8s --write DIR``: rewrite the shipped manifests in DIR and
    print their paths; returns 0, or 2 on a bad job spec."""
    p = argparse.ArgumentParser(prog="python -m launcher.deploy.k8s", description="rewrite the manifests in k8s/")
    p.add_argument("--write", required=True, metavar="DIR", help="target folder, e.g. k8s/")
    p.add_argument("--jobs", default=None, metavar="DIR", help="job specs folder (default: the repo's jobs/)")
    args = p.parse_args(argv)
    try:
        for path in write_manifests(args.write, args.jobs):
            print(path)
    except SpecError as e:
        sys.stderr.write(f"lrjob: error: {e}\n")
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
