# syntax=docker/dockerfile:1
# lrjob, CPU image: Python 3.11, the pinned stack (numpy 1.23.5, mxnet 1.9.1, ray[default,tune] 2.60.0),
# Horovod 0.28.1 compiled against MXNet with Gloo, lrjob itself and the offline MNIST cache.
# Everything is installed by .ci/install, the same script `make install` and CI run.
#
#   docker build --build-arg PYTHON_DIGEST=sha256:... -t lrjob:0.1.0 .
#   docker build --build-arg ALLOW_UNPINNED=1 -t lrjob:0.1.0 .    # the base image by tag only
#   docker run --rm lrjob:0.1.0 lrjob run jobs/digits_softmax.yaml --workers 0
#   lrjob k8s jobs/mnist_softmax.yaml --image REGISTRY/lrjob:0.1.0    # Kubernetes: k8s/README.md
#
# The GPU image is Dockerfile.gpu. Both images serve as Ray head and worker pods (KubeRay) and as
# MPIJob launcher and worker pods (Kubeflow mpi-operator), and both run as the non-root user
# `lrjob` (uid/gid 1000), the user the manifests' securityContext names.
#
# The base image by digest: PYTHON_DIGEST is meant to hold the sha256 digest PYTHON_IMAGE's tag
# points to. It is empty in the repository (nothing is pinned yet), and an empty digest fails the
# build (below) unless ALLOW_UNPINNED=1 is passed. k8s/README.md ("Base images") says how to look
# the digest up and set it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG PYTHON_DIGEST=
FROM ${PYTHON_IMAGE}${PYTHON_DIGEST:+@${PYTHON_DIGEST}}

# No unpinned base image by accident: an empty PYTHON_DIGEST fails the build, unless the build is
# told so with --build-arg ALLOW_UNPINNED=1 (k8s/README.md, "Base images", says how to get the
# digest: docker buildx imagetools inspect IMAGE:TAG).
ARG PYTHON_IMAGE
ARG PYTHON_DIGEST
ARG ALLOW_UNPINNED=
RUN if [ -z "${PYTHON_DIGEST}" ] && [ "${ALLOW_UNPINNED}" != 1 ]; then \
      echo "error: PYTHON_DIGEST is empty, so ${PYTHON_IMAGE} would be used unpinned: set PYTHON_DIGEST to its sha256 digest (docker buildx imagetools inspect ${PYTHON_IMAGE}) or pass --build-arg ALLOW_UNPINNED=1" >&2; \
      exit 1; \
    fi

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

# The user every container runs as (never root): uid/gid 1000, the manifests' runAsUser.
RUN groupadd --gid 1000 lrjob \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash lrjob

# sshd for the MPIJob workers, run by `lrjob` on port 2222 (docker/lrjob-sshd, the way the
# mpi-operator's own non-root images do it). The image holds no SSH host key: lrjob-sshd makes
# one per container at start, so no key is shared by every container of the image. Debian's
# package made host keys at install: they go. Nobody checks the workers' host keys: horovodrun
# passes StrictHostKeyChecking=no and docker/ssh_config keeps no known_hosts (/dev/null).
COPY docker/lrjob_sshd_config /etc/ssh/lrjob_sshd_config
COPY docker/ssh_config /etc/ssh/ssh_config.d/lrjob.conf
COPY docker/lrjob-sshd /usr/local/bin/lrjob-sshd
RUN rm -f /etc/ssh/ssh_host_* \
 && chmod 0644 /etc/ssh/lrjob_sshd_config /etc/ssh/ssh_config.d/lrjob.conf \
 && chmod 0755 /usr/local/bin/lrjob-sshd

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
# KubeRay's rayVersion), Horovod's MXNet binding, and the MNIST cache readable offline; and no
# SSH host key anywhere in it.
RUN python -c "import ray, horovod.mxnet; assert ray.__version__ == '2.60.0', ray.__version__" \
 && lrjob validate jobs/mnist_softmax.yaml --data > /dev/null \
 && { ! ls /etc/ssh/ssh_host_* 2>/dev/null || { echo "an SSH host key is baked into the image" >&2; exit 1; }; }

# What the user writes to: the data cache (prepared folders next to MNIST) and runs/ of the
# source tree (`lrjob run jobs/...` without --output). The code and the venv stay root's.
RUN mkdir -p /opt/lrjob-src/runs \
 && chown -R 1000:1000 /opt/lrjob-data /opt/lrjob-src/runs

# Documentation only: Ray GCS, dashboard / job API, Ray client; SSH for the MPIJob workers.
EXPOSE 6379 8265 10001 2222

# Not root: numeric, so that Kubernetes' runAsNonRoot can check it. The manifests set fsGroup
# 1000, which makes the run-directory volume writable for this user; the mpi-operator mounts the
# job's SSH keys at /home/lrjob/.ssh (sshAuthMountPath).
# Kubernetes always sets the command (KubeRay: `ray start`; MPIJob: horovodrun or lrjob-sshd).
USER 1000:1000
CMD ["lrjob", "--help"]
