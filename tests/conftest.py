"""Shared fixtures. One real local Ray per test session (with 2 logical GPUs declared,
so GPU scheduling can be tested without hardware); stopped at the end."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from launcher.cluster import ray_init_kwargs
    from launcher.quiet import silence_known_noise

    silence_known_noise()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, **ray_init_kwargs())
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def lrjob_bin():
    return str(Path(sys.executable).parent / "lrjob")
