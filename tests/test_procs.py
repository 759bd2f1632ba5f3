"""tests/procs.py's own helpers: a `ray start --head` that Ray refuses because one of its own
components took a port given to it is started again with new ports; any other failure is
returned at once (the fixture reports it)."""
import sys

from procs import free_ports, start_ray_head


def _command(tmp_path, outputs):
    """A stand-in for `ray start`: its n-th run prints outputs[n][0] and exits with outputs[n][1];
    every run records the ports it was given."""
    script = tmp_path / "start.py"
    script.write_text(
        "import json, sys, pathlib\n"
        f"log = pathlib.Path({str(tmp_path / 'runs.jsonl')!r})\n"
        "n = len(log.read_text().splitlines()) if log.exists() else 0\n"
        "log.open('a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"out, code = {outputs!r}[n]\n"
        "print(out); sys.exit(code)\n")
    return lambda port, dash, agent: [sys.executable, str(script), str(port), str(dash), str(agent)]


def test_a_port_taken_by_rays_own_component_is_tried_again_with_new_ports(tmp_path):
    taken = "ValueError: Ray component dashboard_agent_http is trying to use a port number 46011 that is used by other components."
    proc, out, ports = start_ray_head(_command(tmp_path, [(taken, 1), ("started", 0)]), env=None)
    assert (proc.returncode, out.strip()) == (0, "started")
    runs = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(runs) == 2 and runs[1] == '["%d", "%d", "%d"]' % ports
    assert len(set(ports)) == 3


def test_any_other_failure_is_returned_at_once(tmp_path):
    proc, out, _ = start_ray_head(_command(tmp_path, [("some other error", 1), ("started", 0)]), env=None)
    assert (proc.returncode, out.strip()) == (1, "some other error")
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 1


def test_free_ports_are_distinct():
    assert all(len(set(free_ports(5))) == 5 for _ in range(20))
