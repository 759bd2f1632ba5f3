"""Kubernetes manifests (launcher/deploy/k8s.py and the files in k8s/): the core objects validate
against the Kubernetes schema, the RayJob / RayCluster / MPIJob objects agree with their job
spec, and k8s/ equals what render() prints today. Fast: no Ray, no training.

    .venv/bin/python -m pytest -q tests/test_k8s.py
"""
import argparse
import json
import difflib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import kubernetes_validate  # a dev pin (requirements-dev.txt): missing means run .ci/install

from launcher.deploy import k8s  # noqa: E402
from launcher.cli import build_parser  # noqa: E402
from launcher.spec import load_spec, spec_from_dict  # noqa: E402
from lr_core.errors import SpecError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
REFRESH = "python -m launcher.deploy.k8s --write k8s/"
# The newest Kubernetes schema the installed kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()
FILES = sorted(p.name for p in K8S.glob("*.yaml"))
CUSTOM = {"ray.io/v1": ("RayJob", "RayCluster"), "kubeflow.org/v2beta1": ("MPIJob",)}


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _job_of(name: str) -> tuple[Path, int | None]:
    """The job spec file a manifest was rendered from, and its --gpus-per-worker (None: the spec's)."""
    if name == "raycluster.yaml":
        return ROOT / "jobs" / "mnist_softmax.yaml", None
    return ROOT / "jobs" / f"{name.split('.')[0]}.yaml", 1 if ".gpu." in name else None


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    if doc["kind"] == "RayJob":
        return [("submitter", doc["spec"]["submitterPodTemplate"])] + _pod_templates(
            {"kind": "RayCluster", "spec": doc["spec"]["rayClusterSpec"]})
    if doc["kind"] == "RayCluster":
        s = doc["spec"]
        return [("head", s["headGroupSpec"]["template"])] + [
            (g["groupName"], g["template"]) for g in s["workerGroupSpecs"]]
    return [(role, r["template"]) for role, r in doc["spec"]["mpiReplicaSpecs"].items()]


def _k8s_parser() -> argparse.ArgumentParser:
    """Test-only: `lrjob k8s` as launcher.cli will wire it (build_parser + k8s.add_parser)."""
    p = argparse.ArgumentParser(prog="lrjob")
    k8s.add_parser(p.add_subparsers(dest="command"))
    return p


# --------------------------------------------------------------------------- the folder
def test_k8s_folder_holds_exactly_the_shipped_manifests():
    expected = set(k8s.shipped_manifests())
    assert set(FILES) == expected, (f"k8s/ has {sorted(set(FILES) - expected)} extra and misses "
                                    f"{sorted(expected - set(FILES))}; refresh with: {REFRESH}")
    assert {"mnist_softmax.rayjob.yaml", "mnist_softmax.gpu.rayjob.yaml", "mnist_softmax.mpijob.yaml",
            "raycluster.yaml"} <= expected
    assert {f"{p.stem}.rayjob.yaml" for p in (ROOT / "jobs").glob("*.yaml")} <= expected
    assert (K8S / "README.md").is_file()


def test_committed_manifests_equal_render():
    stale = []
    for name, text in k8s.shipped_manifests().items():
        path = K8S / name
        if not path.is_file() or path.read_text() != text:
            stale.append(name)
    if stale:
        first = stale[0]
        old = (K8S / first).read_text().splitlines() if (K8S / first).is_file() else []
        diff = "\n".join(list(difflib.unified_diff(old, k8s.shipped_manifests()[first].splitlines(),
                                                   f"k8s/{first}", "render()", lineterm=""))[:40])
        pytest.fail(f"k8s/ is out of date ({', '.join(stale)}); refresh with: {REFRESH}\n{diff}")


# --------------------------------------------------------------------------- schema
@pytest.mark.parametrize("name", FILES)
def test_core_objects_validate_against_the_kubernetes_schema(name):
    docs = _docs(name)
    core = [d for d in docs if d["apiVersion"] not in CUSTOM]
    assert {"ConfigMap", "PersistentVolumeClaim"} <= {d["kind"] for d in core}
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The pod templates inside the custom resources are core objects too.
    for doc in docs:
        if doc["apiVersion"] in CUSTOM:
            assert doc["kind"] in CUSTOM[doc["apiVersion"]]
            for role, template in _pod_templates(doc):
                kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                              "metadata": {"name": f"{doc['metadata']['name']}-{role}".lower()},
                                              "template": template}, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", FILES)
def test_names_labels_and_references_hang_together(name):
    docs = _docs(name)
    main = next(d for d in docs if d["apiVersion"] in CUSTOM)
    base = main["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", base) and len(base) <= 47
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == base
        assert doc["metadata"]["name"].startswith(base)
    cm, pvc = _one(docs, "ConfigMap")["metadata"]["name"], _one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    for role, template in _pod_templates(main):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        if "job-spec" in volumes:
            assert volumes["job-spec"]["configMap"]["name"] == cm, role
        if "runs" in volumes:
            assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == pvc, role
        for c in template["spec"]["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= set(volumes), role


def test_custom_resources_are_commented_like_the_kuberay_samples():
    """A comment above every field of spec and above every field of every container."""
    for name in FILES:
        lines = (K8S / name).read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("apiVersion: ") and
                     line.split(": ")[1] in CUSTOM)
        body = lines[start:]
        body = body[:next((i for i, line in enumerate(body) if line == "---"), len(body))]
        stack, bare = [], []  # stack: (indent, key) of the enclosing keys
        for prev, line in zip([""] + body, body):
            m = re.fullmatch(r"( *)(- )?([\w./-]+):( .*)?", line)
            if not m:
                continue
            indent = len(m.group(1)) + (2 if m.group(2) else 0)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            parent = stack[-1][1] if stack else None
            if (parent == "spec" and len(stack) == 1 or parent == "containers") and \
                    not prev.lstrip().startswith("#"):
                bare.append(line.strip())
            stack.append((indent, m.group(3)))
        assert not bare, f"{name}: fields without a comment: {bare}"


# --------------------------------------------------------------------------- agreement with the spec
def _mounts(docs) -> list[dict]:
    """Every volumeMount of every container in the rendered documents."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            found.extend(node.get("volumeMounts") or [])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(docs)
    return found


def _check_spec_configmap(docs, name):
    text = _one(docs, "ConfigMap")["data"]["job.yaml"]
    spec = spec_from_dict(yaml.safe_load(text))
    job, gpus = _job_of(name)
    # The rendered spec keeps prepared data on the run volume every pod mounts.
    sets = ["data.cache=/runs/prepared"] + ([f"resources.gpus_per_worker={gpus}"] if gpus is not None else [])
    expected = load_spec(job, sets)
    assert spec.raw == expected.raw, spec.diff(expected)
    assert any(m["mountPath"] == "/runs" for m in _mounts(docs)), "the prepared-data volume is not mounted"
    return spec


def _check_worker_pods(template, replicas, spec, image):
    want_gpus = spec.resources.workers * spec.resources.gpus_per_worker
    (c,) = template["spec"]["containers"]
    r = c["resources"]
    assert r["requests"] == r["limits"]
    assert _cpus(r["limits"]["cpu"]) == spec.resources.cpus_per_worker
    assert r["limits"]["memory"]
    assert replicas == spec.resources.workers
    assert replicas * int(r["limits"].get("nvidia.com/gpu", "0")) == want_gpus
    tolerations = template["spec"].get("tolerations", [])
    assert bool(want_gpus) == any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in tolerations)
    assert c["image"] == image
    return c


def _image_for(spec) -> str:
    return k8s.gpu_image(k8s.DEFAULT_IMAGE) if spec.resources.gpus_per_worker else k8s.DEFAULT_IMAGE


def _check_ray_cluster(cluster, spec, interactive):
    assert cluster["rayVersion"] == k8s.RAY_VERSION == "2.60.0"
    pins = (ROOT / "requirements.txt").read_text()
    pinned = re.findall(r"^ray\[[a-z,]+\]==(\S+)$", pins, re.M)
    assert pinned == [cluster["rayVersion"]], "rayVersion must match the ray pin"
    assert cluster["enableInTreeAutoscaling"] is False
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0", "num-gpus": "0"}  # the workers go to worker pods
    (hc,) = head["template"]["spec"]["containers"]
    assert hc["image"] == _image_for(spec) and "nvidia.com/gpu" not in hc["resources"]["limits"]
    # A GPU image's head (no GPU) imports mxnet-cu112 with the CUDA stub in place of the driver.
    env = {e["name"]: e["value"] for e in hc.get("env", [])}
    stub = {"LD_LIBRARY_PATH": k8s.CUDA_STUB_DIR} if spec.resources.gpus_per_worker else {}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "void", **stub}
    assert {p["containerPort"] for p in hc["ports"]} >= {6379, 8265, 10001}
    assert {(m["mountPath"], m.get("readOnly", False)) for m in hc["volumeMounts"]} == \
        {(k8s.SPEC_DIR, True), (k8s.RUNS_DIR, False)}
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
    wc = _check_worker_pods(group["template"], group["replicas"], spec, _image_for(spec))
    assert "LD_LIBRARY_PATH" not in {e["name"] for e in wc.get("env", [])}  # never the stub on a GPU pod


RAYJOBS = [n for n in FILES if n.endswith(".rayjob.yaml")]


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_agrees_with_its_job_spec(name):
    docs = _docs(name)
    spec = _check_spec_configmap(docs, name)
    rj = _one(docs, "RayJob")
    assert rj["apiVersion"] == "ray.io/v1"
    s = rj["spec"]
    argv = shlex.split(s["entrypoint"])
    assert argv[:2] == ["lrjob", "run"]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.job == k8s.SPEC_PATH
    assert args.workers == spec.workers and args.output == f"{k8s.RUNS_DIR}/{spec.name}"
    assert not args.overrides and args.resume is None and args.address is None
    assert s["shutdownAfterJobFinishes"] is True
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        assert isinstance(s[key], int) and s[key] > 0, key
    assert s["backoffLimit"] >= 2 and s["submissionMode"] == "K8sJobMode"
    _check_ray_cluster(s["rayClusterSpec"], spec, interactive=False)
    pvc = _one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_gpu_rayjob_asks_for_whole_gpus_on_the_gpu_image():
    docs = _docs("mnist_softmax.gpu.rayjob.yaml")
    group = _one(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    (c,) = group["template"]["spec"]["containers"]
    assert c["image"].endswith("-gpu") and c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert group["replicas"] * 1 == load_spec(ROOT / "jobs/mnist_softmax.yaml").workers


def test_raycluster_agrees_with_mnist_softmax_and_exposes_the_dashboard():
    docs = _docs("raycluster.yaml")
    spec = _check_spec_configmap(docs, "raycluster.yaml")
    rc = _one(docs, "RayCluster")
    _check_ray_cluster(rc["spec"], spec, interactive=True)
    svc = _one(docs, "Service")
    assert svc["spec"]["selector"] == {"ray.io/cluster": rc["metadata"]["name"], "ray.io/node-type": "head"}
    (port,) = svc["spec"]["ports"]
    assert port["port"] == port["targetPort"] == 8265


def test_mpijob_runs_horovodrun_with_gloo_over_the_workers():
    from horovod.runner import launch  # built by .ci/install
    docs = _docs("mnist_softmax.mpijob.yaml")
    spec = _check_spec_configmap(docs, "mnist_softmax.mpijob.yaml")
    mj = _one(docs, "MPIJob")
    assert mj["apiVersion"] == "kubeflow.org/v2beta1"
    s = mj["spec"]
    assert s["slotsPerWorker"] == 1 and s["mpiImplementation"] == "OpenMPI"
    assert s["runPolicy"]["backoffLimit"] >= 2 and s["runPolicy"]["activeDeadlineSeconds"] > 0
    launcher, worker = s["mpiReplicaSpecs"]["Launcher"], s["mpiReplicaSpecs"]["Worker"]
    assert launcher["replicas"] == 1 and launcher["restartPolicy"] == "OnFailure"
    # non-root: the keys go to the image user's ~/.ssh, sshd listens above 1023
    assert s["sshAuthMountPath"] == "/home/lrjob/.ssh"
    (lc,) = launcher["template"]["spec"]["containers"]
    assert lc["command"] == ["horovodrun"]
    # horovodrun's own parser reads the arguments
    saved = sys.argv
    try:
        sys.argv = ["horovodrun", *lc["args"]]
        hargs = launch.parse_args()
    finally:
        sys.argv = saved
    assert hargs.use_gloo and hargs.hostfile == "/etc/mpi/hostfile" and hargs.ssh_port == k8s.SSH_PORT
    assert hargs.num_proc == worker["replicas"] == spec.workers
    assert hargs.command == ["lrjob", "worker", k8s.SPEC_PATH, "--output", f"{k8s.RUNS_DIR}/{spec.name}"]
    wargs = build_parser().parse_args(hargs.command[1:])  # `lrjob worker` as the workers run it
    assert wargs.command == "worker" and wargs.job == k8s.SPEC_PATH and wargs.output == f"{k8s.RUNS_DIR}/{spec.name}"
    wc = _check_worker_pods(worker["template"], worker["replicas"], spec, _image_for(spec))
    assert wc["command"] == ["lrjob-sshd"] and "args" not in wc
    assert wc["ports"] == [{"containerPort": k8s.SSH_PORT, "name": "ssh"}]
    assert wc["readinessProbe"]["tcpSocket"]["port"] == k8s.SSH_PORT
    assert {m["mountPath"] for m in wc["volumeMounts"]} == {k8s.SPEC_DIR, k8s.RUNS_DIR}
    assert _one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


# --------------------------------------------------------------------------- render() and the CLI
def test_render_is_deterministic_and_applies_workers_and_gpus():
    spec = load_spec(ROOT / "jobs/binary_synthetic.yaml")
    deploy = k8s.Deploy(image="r.example/lrjob:1", workers=3, gpus_per_worker=2, kind="rayjob")
    a = k8s.render(spec, deploy)
    assert a == k8s.render(spec, deploy)
    docs = [d for d in yaml.safe_load_all(a) if d]
    resolved = spec_from_dict(yaml.safe_load(_one(docs, "ConfigMap")["data"]["job.yaml"]))
    assert resolved.workers == 3 and resolved.resources.gpus_per_worker == 2
    group = _one(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 3
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert group["template"]["spec"]["containers"][0]["image"] == "r.example/lrjob:1-gpu"
    assert "--workers 3" in _one(docs, "RayJob")["spec"]["entrypoint"]


@pytest.mark.parametrize("image,gpu", [
    ("lrjob:0.1.0", "lrjob:0.1.0-gpu"),
    ("registry.example.com:5000/team/lrjob:2", "registry.example.com:5000/team/lrjob:2-gpu"),
    ("registry.example.com:5000/lrjob", "registry.example.com:5000/lrjob:latest-gpu"),
    ("lrjob:0.1.0-gpu", "lrjob:0.1.0-gpu"),
    ("lrjob@sha256:" + "0" * 64, "lrjob@sha256:" + "0" * 64),
])
def test_gpu_image_tag(image, gpu):
    assert k8s.gpu_image(image) == gpu


def test_cmd_k8s_prints_render_with_overrides(capsys):
    args = _k8s_parser().parse_args(["k8s", "jobs/digits_softmax.yaml", "--kind", "mpijob", "--workers", "3",
                                     "--set", "train.epochs=2", "--image", "r.example/lrjob:1"])
    assert k8s.cmd_k8s(args) == 0
    out = capsys.readouterr().out
    spec = load_spec(ROOT / "jobs/digits_softmax.yaml", ["train.epochs=2"])
    assert out == k8s.render(spec, k8s.Deploy(image="r.example/lrjob:1", workers=3, kind="mpijob"))
    assert "epochs: 2" in out


BAD = [
    (["--kind", "foo"], "--kind must be one of rayjob, raycluster, mpijob, got 'foo'"),
    (["--kind", "rayjobs"], "did you mean 'rayjob'?"),
    (["--workers", "0"], "resources.workers must be >= 1 on Kubernetes"),
    (["--workers", "-1"], "resources.workers must be >= 0"),
    (["--gpus-per-worker", "0.5"], "resources.gpus_per_worker must be a whole number"),
    (["--image", ""], "--image must be an image reference"),
    (["--image", "a b"], "--image must be an image reference"),
    (["--set", "name=" + "x" * 60], "KubeRay allows 47"),
    (["--set", "resources.cpus_per_worker=0.0001"], "resources.cpus_per_worker must be at least 0.001"),
    (["--set", "train.epoch=3"], "did you mean 'epochs'"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_arguments_are_one_line_spec_errors(extra, message):
    args = _k8s_parser().parse_args(["k8s", "jobs/mnist_softmax.yaml", *extra])
    with pytest.raises(SpecError) as info:
        k8s.cmd_k8s(args)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["rayjob", "raycluster", "mpijob"])
def test_non_ascii_job_names_render_valid_distinct_kubernetes_names(kind):
    dns1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
    names = ["日本語", "café", "cafe", "Ünïcode-job", "ß", "данные.v2"]
    seen = {}
    for spec_name in names:
        spec = load_spec(ROOT / "jobs/binary_2d.yaml", [f"name={spec_name}"])
        docs = list(yaml.safe_load_all(k8s.render(spec, k8s.Deploy(image="lrjob:1", workers=2, kind=kind))))
        rendered = [d["metadata"]["name"] for d in docs]
        for name in rendered:
            assert dns1123.fullmatch(name) and len(name) <= 63, (spec_name, name)
        seen[spec_name] = min(rendered, key=len)  # the main object; the others add -job, -runs, ...
    assert len(set(seen.values())) == len(names), seen
    assert seen["cafe"] == "lrjob-cafe" + {"rayjob": "", "raycluster": "-cluster", "mpijob": "-mpi"}[kind]
    assert seen["café"].startswith("lrjob-cafe-")


@pytest.mark.parametrize("kind", ["rayjob", "raycluster", "mpijob"])
def test_names_the_sanitising_changes_never_share_kubernetes_names(kind):
    # café's hashed stem is cafe-850f7dc4; My_Job, my-job and my.job all sanitise to my-job.
    names = ["café", "cafe-850f7dc4", "My_Job", "my-job", "my.job", "my_job", "MY-JOB"]
    seen = {}
    for spec_name in names:
        spec = load_spec(ROOT / "jobs/binary_2d.yaml", [f"name={spec_name}"])
        docs = list(yaml.safe_load_all(k8s.render(spec, k8s.Deploy(image="lrjob:1", workers=2, kind=kind))))
        seen[spec_name] = {d["metadata"]["name"] for d in docs if d}
    for a in names:
        for b in names:
            assert a == b or not seen[a] & seen[b], (a, b, seen[a] & seen[b])
    main = {"rayjob": "", "raycluster": "-cluster", "mpijob": "-mpi"}[kind]
    assert f"lrjob-my-job{main}" in seen["my-job"]  # a name that is already a DNS-1123 label is kept


def test_write_rewrites_the_folder_and_drops_stale_manifests(tmp_path):
    (tmp_path / "gone.rayjob.yaml").write_text("old")
    (tmp_path / "notes.yaml").write_text("mine")
    assert k8s.main(["--write", str(tmp_path)]) == 0
    for name, text in k8s.shipped_manifests().items():
        assert (tmp_path / name).read_text() == text
    assert not (tmp_path / "gone.rayjob.yaml").exists() and (tmp_path / "notes.yaml").read_text() == "mine"


def test_comments_and_quoting_round_trip():
    tricky = {"plain": "lrjob run /etc/lrjob/job.yaml --workers 2", "yes": "yes", "num": "1", "ver": "2.60.0",
              "colon": "a: b", "hash": "a #b", "dash": "-De", "empty": "", "space": " x ", "block": "a: 1\nb: [2]\n",
              "noeol": "a\nb", "tabs": "a\tb\n", "quote": "it's \"q\"", "null": None, "bool": False, "int": 7,
              "list": [k8s._C("item", {"k": k8s._C("first key", "v"), "n": 1}), "s"], "empty_map": {}}
    text = k8s._dump("header\n  a command line", [("doc", {"root": k8s._C("a comment", tricky)})])
    assert yaml.safe_load(text) == {"root": {**tricky, "list": [{"k": "v", "n": 1}, "s"]}}


# --------------------------------------------------------------------------- README and the lrjob CLI
def test_readme_reader_pod_validates():
    text = (K8S / "README.md").read_text()
    (block,) = re.findall(r"kubectl apply -f - <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    pod = yaml.safe_load(block)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
    assert claims == {_one(_docs("mnist_softmax.rayjob.yaml"), "PersistentVolumeClaim")["metadata"]["name"]}


def _check_digest_guard(stage: str, arg: str) -> None:
    """The stage declares ``arg`` and ALLOW_UNPINNED and runs, first of all, a guard that fails on an
    empty ``arg`` unless ALLOW_UNPINNED=1: the guard's shell command is run here as Docker would
    (each ARG an environment variable)."""
    first_run = re.search(r"^RUN (.*?[^\\])$", stage, re.M | re.S).group(1)
    assert "ALLOW_UNPINNED" in first_run and arg in first_run, first_run[:200]
    assert re.search(rf"^ARG {arg}$", stage, re.M) and re.search(r"^ARG ALLOW_UNPINNED=$", stage, re.M)
    command = first_run.replace("\\\n", "\n")

    def build(**env):
        return subprocess.run(["sh", "-c", command], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                              text=True, timeout=10)

    refused = build(**{arg: "", "ALLOW_UNPINNED": ""})
    assert refused.returncode != 0 and f"{arg} is empty" in refused.stderr and "ALLOW_UNPINNED=1" in refused.stderr
    assert "docker buildx imagetools inspect" in refused.stderr
    assert build(**{arg: "", "ALLOW_UNPINNED": "1"}).returncode == 0
    assert build(**{arg: "sha256:" + "0" * 64, "ALLOW_UNPINNED": ""}).returncode == 0


def test_dockerfiles_build_what_the_manifests_expect():
    cpu, gpu = (ROOT / "Dockerfile").read_text(), (ROOT / "Dockerfile.gpu").read_text()
    for text in (cpu, gpu):
        assert "VENV=/opt/lrjob" in text and "PATH=/opt/lrjob/bin:$PATH" in text
        assert "LRJOB_DATA_HOME=/opt/lrjob-data" in text and "bash .ci/install" in text
        assert f"ray.__version__ == '{k8s.RAY_VERSION}'" in text
        assert "openssh-server" in text and "sshd_config" in text  # the MPIJob workers run sshd
    assert cpu.startswith("# syntax=") and "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in cpu
    assert "MXNET_PACKAGE=mxnet-cu112==1.9.1" in gpu and "HOROVOD_GPU_OPERATIONS=NCCL" in gpu
    assert k8s.CUDA_STUB_DIR in gpu
    # hardened: every base image through its digest ARG (refused empty unless ALLOW_UNPINNED=1), a
    # non-root user, no SSH host key made at build time, no StrictHostKeyChecking setting of our own
    # (horovodrun passes StrictHostKeyChecking=no itself), the GPU image runs on a supported Debian
    for text in (cpu, gpu):
        froms = re.findall(r"^FROM (\S+)", text, re.M)
        assert froms and all(re.fullmatch(r"\$\{(\w+)_IMAGE\}\$\{(\w+)_DIGEST:\+@\$\{\2_DIGEST\}\}", f) for f in froms), froms
        for arg in re.findall(r"\$\{(\w+_DIGEST):", " ".join(froms)):
            assert re.search(rf"^ARG {arg}=(sha256:[0-9a-f]{{64}})?$", text, re.M), arg
        # an empty digest fails the build of every stage unless ALLOW_UNPINNED=1 is passed
        for stage in re.split(r"^FROM ", text, flags=re.M)[1:]:
            arg = re.match(r"\$\{\w+\}\$\{(\w+_DIGEST):", stage).group(1)
            _check_digest_guard(stage, arg)
        assert re.findall(r"^USER (.*)$", text, re.M)[-1] == f"{k8s.RUN_AS}:{k8s.RUN_AS}"
        assert "ssh-keygen" not in text and "StrictHostKeyChecking no" not in text
        assert "rm -f /etc/ssh/ssh_host_*" in text and "COPY docker/lrjob-sshd /usr/local/bin/lrjob-sshd" in text
    # the CUDA 11.2 Ubuntu 20.04 image only builds; the image that runs is the Debian 12 stage
    assert "ARG RUNTIME_IMAGE=debian:bookworm-slim" in gpu
    assert re.findall(r"^FROM (\S+)", gpu, re.M)[-1].startswith("${RUNTIME_IMAGE}")
    sshd = (ROOT / "docker" / "lrjob-sshd").read_text()
    assert "ssh-keygen" in sshd and sshd.rstrip().splitlines()[-1].startswith("exec /usr/sbin/sshd -D")
    config = (ROOT / "docker" / "lrjob_sshd_config").read_text()
    assert f"Port {k8s.SSH_PORT}\n" in config and "PasswordAuthentication no" in config
    assert "PermitRootLogin no" in config and "HostKey /home/lrjob/.sshd/" in config
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_lrjob_k8s_command():
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "k8s" in subs.choices
    from launcher import cli

    assert "k8s" in cli.COMMANDS
    args = build_parser().parse_args(["k8s", "jobs/mnist_softmax.yaml", "--gpus-per-worker", "1"])
    assert args.gpus_per_worker == 1 and args.kind == "rayjob" and args.image == k8s.DEFAULT_IMAGE
    exe = Path(sys.executable).parent / "lrjob"
    r = subprocess.run([str(exe), "k8s", "jobs/mnist_softmax.yaml", "--gpus-per-worker", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (K8S / "mnist_softmax.gpu.rayjob.yaml").read_text()
    r = subprocess.run([str(exe), "k8s", "jobs/mnist_softmax.yaml", "--kind", "foo"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "lrjob: error: --kind must be one of rayjob, raycluster, mpijob, got 'foo'"]


# --------------------------------------------------------------------------- hardening
# The custom resources against their real CRDs (tests/data/crd_schemas.json says where each comes
# from): an unknown or misspelt field (authOptions in a KubeRay too old for it, say) is refused
# here as `kubectl apply`'s strict field validation would refuse it.
CRDS = json.loads((ROOT / "tests" / "data" / "crd_schemas.json").read_text())


def _strict(schema):
    """``schema`` with unknown properties refused wherever the CRD lists the properties."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def _crd_errors(doc: dict) -> list[str]:
    schema = _strict(CRDS[f"{doc['apiVersion']}/{doc['kind']}"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


@pytest.mark.parametrize("name", FILES)
def test_custom_resources_validate_against_their_crds(name):
    main = next(d for d in _docs(name) if d["apiVersion"] in CUSTOM)
    assert _crd_errors(main) == []


def test_the_crd_check_refuses_unknown_fields():
    rc = _one(_docs("raycluster.yaml"), "RayCluster")
    rc["spec"]["authOptions"]["secretNmae"] = "x"
    rc["spec"]["authOptions"]["mode"] = "tokens"
    errors = _crd_errors(rc)
    assert len(errors) == 2 and any("secretNmae" in e for e in errors) and any("tokens" in e for e in errors)


def _rendered(kind: str, gpus=None, **kw) -> list[dict]:
    spec = load_spec(ROOT / "jobs/binary_synthetic.yaml")
    deploy = k8s.Deploy(image="r.example/lrjob:1", workers=3, gpus_per_worker=gpus, kind=kind, **kw)
    return [d for d in yaml.safe_load_all(k8s.render(spec, deploy)) if d]


# Every manifest in k8s/ and a few more renderings (GPU pods, another Secret).
HARDENED = [(n, None) for n in FILES] + [
    ("render:rayjob:gpu", ("rayjob", 1, {})),
    ("render:raycluster:secret", ("raycluster", None, {"auth_secret": "team-a.ray", "operator_namespace": "kuberay"})),
    ("render:mpijob:gpu", ("mpijob", 1, {}))]


def _hardened_docs(name, how):
    if how is None:
        return _docs(name)
    kind, gpus, kw = how
    return _rendered(kind, gpus, **kw)


@pytest.mark.parametrize("name,how", HARDENED, ids=[h[0] for h in HARDENED])
def test_every_pod_runs_hardened_and_every_ray_cluster_wants_its_token(name, how):
    docs = _hardened_docs(name, how)
    main = next(d for d in docs if d["apiVersion"] in CUSTOM)
    assert "Secret" not in {d["kind"] for d in docs}  # the token is never in a file
    if main["apiVersion"] == "ray.io/v1":
        cluster = main["spec"]["rayClusterSpec"] if main["kind"] == "RayJob" else main["spec"]
        # the job's own Secret unless one is named: no token shared by the namespace's jobs
        secret = (how[2].get("auth_secret") if how else None) or f"{main['metadata']['name']}-ray-token"
        assert cluster["authOptions"] == {"mode": "token", "secretName": secret}
    templates = _pod_templates(main)
    assert len(templates) >= 2
    for role, template in templates:
        # no Kubernetes API token in any pod: nothing in them calls the API
        assert template["spec"]["automountServiceAccountToken"] is False, role
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == k8s.RUN_AS != 0, role
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, role
        assert not template["spec"].get("hostNetwork") and not template["spec"].get("hostPID"), role
        for c in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], role
            assert not sc.get("privileged") and "add" not in sc["capabilities"], role
            assert sc.get("runAsUser", k8s.RUN_AS) != 0 and sc.get("runAsNonRoot", True) is True, role
            # the token comes from the Secret through KubeRay, never from the manifest, and
            # nothing turns the authentication off
            names = {e["name"] for e in c.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, role
            # a container without a GPU sees none, whatever the image sets (the GPU image: all)
            gpu = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            visible = [e.get("value") for e in c.get("env", []) if e["name"] == "NVIDIA_VISIBLE_DEVICES"]
            assert visible == ([] if gpu else ["void"]), (role, c["name"])


@pytest.mark.parametrize("name,how", HARDENED, ids=[h[0] for h in HARDENED])
def test_network_policy_admits_only_the_jobs_pods_and_named_clients(name, how):
    docs = _hardened_docs(name, how)
    main = next(d for d in docs if d["apiVersion"] in CUSTOM)
    base = main["metadata"]["name"]
    policy = _one(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    # it guards every pod of the job
    for role, template in _pod_templates(main):
        labels = template["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items(), role
    own = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": base}}}
    client = {"podSelector": {"matchLabels": {k8s.CLIENT_LABEL: base}}}
    operator_ns = (how[2].get("operator_namespace") if how else None) or k8s.OPERATOR_NAMESPACE
    # the operator's pod in the operator's namespace only: the label alone is anyone's to set
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_ns}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}}}
    rules = spec["ingress"]
    for rule in rules:  # no rule without a source: that would admit everyone
        assert rule.get("from"), rule
    open_ports = {(tuple(map(json.dumps, r["from"])), tuple(p["port"] for p in r.get("ports", [])))
                  for r in rules}
    expected = {((json.dumps(own),), ())}
    if main["apiVersion"] == "ray.io/v1":
        expected |= {((json.dumps(client),), (8265, 10001)), ((json.dumps(operator),), (8265,))}
    assert open_ports == expected


def test_auth_secret_must_be_a_secret_name():
    args = _k8s_parser().parse_args(["k8s", "jobs/mnist_softmax.yaml", "--auth-secret", "Bad_Name"])
    with pytest.raises(SpecError) as info:
        k8s.cmd_k8s(args)
    assert "--auth-secret must be a Kubernetes Secret name" in str(info.value) and "\n" not in str(info.value)


def test_lrjob_k8s_says_how_to_create_the_token_secret(capsys):
    args = _k8s_parser().parse_args(["k8s", "jobs/mnist_softmax.yaml", "--auth-secret", "team-a"])
    assert k8s.cmd_k8s(args) == 0
    out, err = capsys.readouterr()
    assert [d["kind"] for d in yaml.safe_load_all(out) if d][-1] == "NetworkPolicy"  # stdout: YAML only
    assert err.count("\n") == 1 and "secretName: team-a" in out
    # the token goes through a pipe: never on a command line (/proc/PID/cmdline) nor in a file
    command = ("openssl rand -hex 32 | tr -d '\\n' | kubectl create secret generic team-a "
               "--from-file=auth_token=/dev/stdin")
    assert command in err and command in out  # the file says it too
    assert "--from-literal" not in out + err


def test_each_job_reads_its_own_token_secret(capsys):
    args = _k8s_parser().parse_args(["k8s", "jobs/mnist_softmax.yaml", "--kind", "raycluster"])
    assert k8s.cmd_k8s(args) == 0
    out, err = capsys.readouterr()
    cluster = _one([d for d in yaml.safe_load_all(out) if d], "RayCluster")
    secret = cluster["spec"]["authOptions"]["secretName"]
    assert secret == "lrjob-mnist-softmax-bf9157ac-cluster-ray-token" and f"generic {secret} " in err
    names = {_one(_rendered(kind), "RayJob" if kind == "rayjob" else "RayCluster")["metadata"]["name"]
             for kind in ("rayjob", "raycluster")}
    secrets = set()
    for job in ("binary_synthetic", "digits_softmax"):
        docs = [d for d in yaml.safe_load_all(k8s.render(load_spec(ROOT / f"jobs/{job}.yaml"))) if d]
        secrets.add(_one(docs, "RayJob")["spec"]["rayClusterSpec"]["authOptions"]["secretName"])
    assert len(secrets) == 2 and len(names) == 2  # two jobs, two tokens


@pytest.mark.parametrize("flag,value", [("--auth-secret", "team-a"), ("--operator-namespace", "kuberay")])
def test_mpijob_refuses_the_ray_only_options(flag, value):
    args = _k8s_parser().parse_args(["k8s", "jobs/mnist_softmax.yaml", "--kind", "mpijob", flag, value])
    with pytest.raises(SpecError) as info:
        k8s.cmd_k8s(args)
    message = str(info.value)
    assert message.startswith(f"{flag} is for the Ray kinds") and "\n" not in message, message


def test_operator_namespace_must_be_a_namespace_name():
    args = _k8s_parser().parse_args(["k8s", "jobs/mnist_softmax.yaml", "--operator-namespace", "Ray_System"])
    with pytest.raises(SpecError) as info:
        k8s.cmd_k8s(args)
    assert "--operator-namespace must be a Kubernetes namespace name" in str(info.value)
