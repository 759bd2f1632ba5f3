"""How much memory ``lr_core.prepared`` thinks this process may still fill (it decides
whether a prepared set is read ahead or mapped page by page): MemAvailable, or less under
a cgroup v1 or v2 memory limit. The /proc and /sys files are real files the test writes,
read through ``lr_core.prepared``'s own ``open`` pointed at them."""
import builtins

import pytest

from lr_core import prepared


@pytest.fixture
def files(tmp_path, monkeypatch):
    """``files({"/proc/meminfo": "...", ...})``: those paths read the given text; any other
    /proc or /sys path is missing."""
    def install(contents: dict[str, str]):
        real = {}
        for i, (path, text) in enumerate(contents.items()):
            real[path] = tmp_path / f"f{i}"
            real[path].write_text(text)

        def fake_open(path, *a, **kw):
            p = str(path)
            if p.startswith(("/proc/", "/sys/")):
                if p not in real:
                    raise FileNotFoundError(p)
                return builtins.open(real[p], *a, **kw)
            return builtins.open(path, *a, **kw)
        monkeypatch.setattr(prepared, "open", fake_open, raising=False)
    return install


MEMINFO = "MemTotal:       2000 kB\nMemFree:         100 kB\nMemAvailable:    500 kB\nBuffers: 7 kB\n"


def test_mem_available_in_bytes(files):
    files({"/proc/meminfo": MEMINFO})
    assert prepared._free_memory() == 500 * 1024


def test_nothing_known_is_unlimited(files):
    files({})
    assert prepared._cgroup_memory_files() == []
    assert prepared._free_memory() == 1 << 62


def test_a_meminfo_without_mem_available_leaves_the_cgroup_limit(files):
    files({"/proc/meminfo": "MemTotal: 2000 kB\n", "/proc/self/cgroup": "0::/job\n",
           "/sys/fs/cgroup/job/memory.max": "409600\n", "/sys/fs/cgroup/job/memory.current": "102400\n"})
    assert prepared._free_memory() == 409600 - 102400


def test_cgroup_v2_limit_minus_usage_when_smaller(files):
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": "0::/a/b\n",
           "/sys/fs/cgroup/a/b/memory.max": "300000 \n", "/sys/fs/cgroup/a/b/memory.current": "100000\n"})
    assert prepared._cgroup_memory_files() == [("/sys/fs/cgroup/a/b/memory.max", "/sys/fs/cgroup/a/b/memory.current")]
    assert prepared._free_memory() == 200000
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": "0::/a/b\n",
           "/sys/fs/cgroup/a/b/memory.max": "9000000\n", "/sys/fs/cgroup/a/b/memory.current": "100000\n"})
    assert prepared._free_memory() == 500 * 1024           # MemAvailable is the smaller


def test_cgroup_v1_memory_controller_among_others(files):
    cgroup = "12:cpu,cpuacct:/x\n4:blkio,memory:/grp:1\n3:net_cls:/y\n"   # a ':' inside the path
    base = "/sys/fs/cgroup/memory/grp:1"
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": cgroup,
           f"{base}/memory.limit_in_bytes": "250000\n", f"{base}/memory.usage_in_bytes": "50000\n"})
    assert prepared._cgroup_memory_files() == [(f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes")]
    assert prepared._free_memory() == 200000


def test_an_unlimited_or_unreadable_cgroup_is_skipped_and_the_next_one_read(files):
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": "0::/a\n5:memory:/b\n",
           "/sys/fs/cgroup/a/memory.max": "max\n", "/sys/fs/cgroup/a/memory.current": "100\n",
           "/sys/fs/cgroup/memory/b/memory.limit_in_bytes": "150000\n",
           "/sys/fs/cgroup/memory/b/memory.usage_in_bytes": "50000\n"})
    assert prepared._free_memory() == 100000
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": "0::/a\n"})         # no such files: skipped
    assert prepared._free_memory() == 500 * 1024


def test_the_smallest_of_several_limits(files):
    files({"/proc/self/cgroup": "0::/a\n5:memory:/b\n",
           "/sys/fs/cgroup/a/memory.max": "100000\n", "/sys/fs/cgroup/a/memory.current": "10000\n",
           "/sys/fs/cgroup/memory/b/memory.limit_in_bytes": "300000\n",
           "/sys/fs/cgroup/memory/b/memory.usage_in_bytes": "10000\n"})
    assert prepared._free_memory() == 90000
