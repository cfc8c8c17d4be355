"""copl_ray.env: what every Ray worker process of a job sets up."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys
from copl_ray.env import _unraisable_unless_exit
sys.unraisablehook = _unraisable_unless_exit

class Exits:
    def __del__(self):
        raise SystemExit(1)  # what Ray's SIGTERM handler raises inside a finaliser

class Breaks:
    def __del__(self):
        raise ValueError("a real bug in a finaliser")

Exits(); Breaks()
"""


def test_worker_finaliser_exit_is_silent_but_real_errors_print():
    """A SIGTERM that lands in a finaliser prints nothing; any other unraisable error
    still prints its traceback (the hook only knows SystemExit)."""
    gc.collect()
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SystemExit" not in r.stderr
    assert "ValueError: a real bug in a finaliser" in r.stderr and "Traceback" in r.stderr


def test_ray_data_signaler_interrupt_is_dropped_other_thread_errors_print(capfd):
    """Ray Data's "completion-signaler" thread ending in its queue's InterruptedError at
    pool shutdown prints nothing; the same error in another thread, or another error in
    that thread, still prints its traceback. The threads are started by Ray's own pool
    (its thread names, its interruptible queue)."""
    import threading

    from ray.data._internal.dynamic_work_queue import _WorkerPool

    from copl_ray.env import RAY_DATA_SIGNALER_THREAD, _thread_error_unless_ray_data_shutdown

    def put_after_shutdown(pool: _WorkerPool) -> None:
        pool.work_queue.put(object())  # what the signaler does after the pool shut down

    def value_error(pool: _WorkerPool) -> None:
        raise ValueError("a real bug")

    def run(name: str, target) -> str:
        pool = _WorkerPool()
        pool.interrupted.set()
        saved = threading.excepthook
        threading.excepthook = _thread_error_unless_ray_data_shutdown
        try:
            thread = pool.start_thread(target=target, args=(pool,), name=name)
            thread.join()
        finally:
            threading.excepthook = saved
        assert thread.name.endswith("/" + name)  # Ray prefixes its pool's name
        return capfd.readouterr().err

    assert run(RAY_DATA_SIGNALER_THREAD, put_after_shutdown) == ""
    assert "InterruptedError" in run("worker", put_after_shutdown)
    assert "ValueError: a real bug" in run(RAY_DATA_SIGNALER_THREAD, value_error)


def test_stale_build_lock_is_removed_unless_a_build_runs_in_its_folder(tmp_path):
    """A lock left by a killed JIT build is removed once old; a lock whose build is still
    running (a process working in the extension's folder) is kept whatever its age."""
    from copl_ray.env import clear_stale_build_locks

    def lock(name: str, age_s: float) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        path = folder / "lock"
        path.touch()
        then = time.time() - age_s
        os.utime(path, (then, then))
        return path

    killed, young, running = lock("killed", 900), lock("young", 10), lock("running", 900)
    build = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], cwd=running.parent
    )
    try:
        time.sleep(0.5)
        clear_stale_build_locks(tmp_path, max_age_s=300)
    finally:
        build.kill()
    assert not killed.exists() and young.exists() and running.exists()
    build.wait()
    clear_stale_build_locks(tmp_path, max_age_s=300)
    assert not running.exists()
