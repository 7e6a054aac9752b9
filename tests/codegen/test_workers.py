"""eetjit.codegen.workers without a GPU: how many processes, and the round trip to worker processes (each job's
module imported by path and its kernel's compile() called per signature; a job that cannot compile comes back
as failed, and nothing else breaks)."""
import pytest

from eetjit.codegen import workers


def test_worker_count(monkeypatch):
    monkeypatch.delenv(workers.WORKERS_ENV, raising=False)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert workers.worker_count(20) == workers.MAX_WORKERS and workers.worker_count(3) == 3
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert workers.worker_count(20) == 1
    monkeypatch.setenv(workers.WORKERS_ENV, "0")
    assert workers.worker_count(20) == 0
    monkeypatch.setenv(workers.WORKERS_ENV, "12")
    assert workers.worker_count(20) == 12 and workers.worker_count(5) == 5
    monkeypatch.setenv(workers.WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="EETJIT_COMPILE_WORKERS"):
        workers.worker_count(20)


def test_a_job_that_cannot_compile_comes_back_failed(tmp_path):
    bad = tmp_path / "not_a_kernel.py"
    bad.write_text("kernel = None\n")
    done = workers.compile_elsewhere([("eetjit_test_missing", str(tmp_path / "missing.py"), [()]),
                                      ("eetjit_test_not_a_kernel", str(bad), [()])], 2)
    assert done["workers"] == 2 and done["jobs"] == 2
    assert sorted(done["failed"]) == ["eetjit_test_missing", "eetjit_test_not_a_kernel"]


def test_workers_compile_each_signature(tmp_path):
    log = tmp_path / "compiled.txt"
    jobs = []
    for i in range(3):
        f = tmp_path / f"fake_{i}.py"
        f.write_text("class _Kernel:\n"
                     "    def compile(self, types):\n"
                     f"        open({str(log)!r}, 'a').write(repr(({i}, types)) + '\\n')\n"
                     "kernel = _Kernel()\n")
        jobs.append((f"eetjit_test_fake_{i}", str(f), [("a", i), ("b", i)]))
    done = workers.compile_elsewhere(jobs, 2)
    assert done["failed"] == [] and done["workers"] == 2
    assert sorted(log.read_text().split("\n")[:-1]) == sorted(
        repr((i, (t, i))) for i in range(3) for t in ("a", "b"))


def test_a_worker_past_the_time_limit_is_stopped(tmp_path):
    f = tmp_path / "slow.py"
    f.write_text("import time\nclass _Kernel:\n    def compile(self, types):\n        time.sleep(60)\nkernel = _Kernel()\n")
    done = workers.compile_elsewhere([("eetjit_test_slow", str(f), [()])], 1, timeout=2.0)
    assert done["failed"] == ["eetjit_test_slow"] and done["seconds"] < 30
