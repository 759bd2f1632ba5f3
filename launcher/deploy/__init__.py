"""Running lrjob elsewhere: Kubernetes manifests (``k8s.py``, ``lrjob k8s``) and Ray Jobs
submission to a running cluster (``submit.py``: submit, status, logs, stop, list)."""
