"""copl_ray/recovery.py without a cluster: the per-fit attempts file, the restart line and
the peer-lost rule (the parts that run in any process)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from copl_ray.recovery import (
    PEER_LOST,
    await_restart_if_peer_lost,
    new_attempts_file,
    restart_line,
    start_attempt,
)


def test_new_attempts_file_is_empty_and_unique(tmp_path: Path) -> None:
    storage = tmp_path / "ray_storage" / "reward"
    a, b = new_attempts_file(storage), new_attempts_file(storage)
    assert a.parent == storage and a.name.startswith(".attempts-")
    assert a != b and a.read_text() == "" and b.read_text() == ""


def test_rank0_counts_group_starts_other_ranks_read(tmp_path: Path) -> None:
    f = str(new_attempts_file(tmp_path))
    assert start_attempt(f, rank=0) == 1  # first worker-group start
    assert start_attempt(f, rank=1) == 1  # same group: reads, does not append
    assert start_attempt(f, rank=0) == 2  # the group restarted
    assert start_attempt(f, rank=3) == 2
    assert Path(f).read_text() == f"{os.getpid()}\n{os.getpid()}\n"


def test_no_file_or_unreadable_file_is_the_first_attempt(tmp_path: Path) -> None:
    assert start_attempt(None, rank=0) == 1
    assert start_attempt("", rank=0) == 1
    # rank 1 before rank 0 wrote (file empty) and a file that is gone: still attempt 1
    assert start_attempt(str(new_attempts_file(tmp_path)), rank=1) == 1
    assert start_attempt(str(tmp_path / "gone"), rank=2) == 1


def test_restart_line_text() -> None:
    assert (
        restart_line("reward/copl", 2, 2, "step 40")
        == "worker failure in reward/copl: restarted from the step 40 checkpoint (attempt 2/3)"
    )
    assert restart_line("gnn", 3, 5, None) == (
        "worker failure in gnn: restarted from the start (no checkpoint yet) (attempt 3/6)"
    )


def test_other_errors_return_at_once() -> None:
    t0 = time.monotonic()
    await_restart_if_peer_lost(RuntimeError("Gloo timeout after 1800 s"), wait_s=30.0)
    assert time.monotonic() - t0 < 1.0


def test_peer_lost_waits_to_be_stopped() -> None:
    for marker in PEER_LOST:
        t0 = time.monotonic()
        await_restart_if_peer_lost(RuntimeError(f"[gloo] read: {marker}"), wait_s=0.2)
        assert time.monotonic() - t0 >= 0.2, marker
