# syntax=docker/dockerfile:1
# lrjob, CPU image: Python 3.11, the pinned stack (numpy 1.23.5, mxnet 1.9.1, ray[default] 2.60.0),
# Horovod 0.28.1 compiled against MXNet with Gloo, lrjob itself and the offline MNIST cache.
# Everything is installed by .ci/install, the same script `make install` and CI run.
#
#   docker build -t lrjob:0.1.0 .
#   docker run --rm lrjob:0.1.0 lrjob run jobs/digits_softmax.yaml --workers 0
#   lrjob k8s jobs/mnist_softmax.yaml --image REGISTRY/lrjob:0.1.0    # Kubernetes: k8s/README.md
#
# The GPU image is Dockerfile.gpu. Both images serve as Ray head and worker pods (KubeRay) and as
# MPIJob launcher and worker pods (Kubeflow mpi-operator).
FROM python:3.11-slim-bookworm

# Fail a RUN on the first error, including inside pipes.
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

# System packages:
# - g++ and make compile Horovod's C++ extension (cmake comes from requirements-build.txt);
# - openssh-client/-server: the MPIJob variant, where horovodrun starts the workers over SSH;
# - wget: the exec health probes of KubeRay operators before v1.5 call it;
# - ca-certificates: pip and the MNIST download use HTTPS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make openssh-client openssh-server wget ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# sshd for the MPIJob workers (the mpi-operator's base image does the same): host keys, the
# privilege-separation directory, peers accepted without a prompt or a known_hosts file (the
# operator mounts ~/.ssh read-only from a Secret), and no file-mode checks on that Secret.
RUN ssh-keygen -A \
 && mkdir -p /run/sshd \
 && sed -i 's/[ #]\(.*StrictHostKeyChecking \).*/ \1no/g' /etc/ssh/ssh_config \
 && echo "    UserKnownHostsFile /dev/null" >> /etc/ssh/ssh_config \
 && sed -i 's/#\(StrictModes \).*/\1no/g' /etc/ssh/sshd_config

# Where .ci/install puts things: the virtualenv ($VENV, first on PATH, so `lrjob`, `ray`,
# `horovodrun` and `python` are the venv's) and the MNIST cache ($LRJOB_DATA_HOME), baked in so
# that jobs need no network. Unbuffered Python: logs reach `kubectl logs` as they are written.
ENV VENV=/opt/lrjob \
    LRJOB_DATA_HOME=/opt/lrjob-data \
    PATH=/opt/lrjob/bin:$PATH \
    PYTHONUNBUFFERED=1

# Login shells (bash -l) read /etc/profile, which resets PATH on Debian: put the venv back in
# front for them too (KubeRay's ENABLE_LOGIN_SHELL, `kubectl exec ... bash -l`).
RUN echo 'export PATH=/opt/lrjob/bin:$PATH' > /etc/profile.d/lrjob.sh

# The source tree (.dockerignore keeps .venv, .git and run directories out). lrjob is installed
# editable from here, so this is also the working directory.
WORKDIR /opt/lrjob-src
COPY . .

# The install: venv, pinned requirements (mxnet==1.9.1, the default MXNET_PACKAGE), Horovod built
# from source with MXNet + Gloo and checked, `pip install -e .`, the MNIST cache. The pip cache
# mount keeps the compiled Horovod wheel between builds, so a source change rebuilds in seconds.
RUN --mount=type=cache,id=lrjob-pip-cpu,target=/root/.cache/pip \
    bash .ci/install

# Fail the build unless the image is what the manifests expect: Ray 2.60.0 (the cluster's Ray,
# KubeRay's rayVersion), Horovod's MXNet binding, and the MNIST cache readable offline.
RUN python -c "import ray, horovod.mxnet; assert ray.__version__ == '2.60.0', ray.__version__" \
 && lrjob validate jobs/mnist_softmax.yaml --data > /dev/null

# Documentation only: Ray GCS, dashboard / job API, Ray client; SSH for the MPIJob workers.
EXPOSE 6379 8265 10001 22

# The image runs as root: the mpi-operator mounts the SSH keys at /root/.ssh by default, sshd
# needs root for port 22, and the run-directory volume is writable without an fsGroup.
# Kubernetes always sets the command (KubeRay: `ray start`; MPIJob: horovodrun or sshd).
CMD ["lrjob", "--help"]
