"""Worker-failure recovery shared by the Ray Train loops (GNN and reward models).

A Ray Train worker that dies mid-stage (OOM kill, preempted node, a crash) is restarted by
Ray Train up to ``max_failures`` times with ``ray.train.get_checkpoint()`` = the latest
*registered* checkpoint. Two things made that recovery restart from step 0 and print a
wall of tracebacks:

* ``ray.train.report(checkpoint=...)`` uploads the checkpoint and queues it; the controller
  registers it at its next poll of the workers (every 2 s). A worker killed in between
  (measured: 0.3 s after a checkpoint) restarted from the previous one, or from nothing.
  :func:`commit_checkpoint` waits (Ray's own ``get_all_reported_checkpoints`` in
  ``COMMITTED`` mode, at most one poll) so that once training continues past a
  checkpoint, that checkpoint is the restart point.
* When one worker of a group dies, the others fail in their next collective (gloo:
  "Connection reset by peer") and each printed a ~40-line traceback for the same event.
  :func:`await_restart_if_peer_lost` makes such a survivor wait to be stopped by Ray
  Train, which tears the group down on the dead worker and restarts it.
* Nothing said that a restart happened: :func:`start_attempt` counts the worker-group
  starts of one ``fit()`` (a per-fit file the driver creates, appended by rank 0) and
  :func:`restart_line` is the one line a restarted worker prints.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def commit_checkpoint() -> None:
    """Block until Ray Train has registered the checkpoint this worker just reported."""
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
    )


def new_attempts_file(storage: Path) -> Path:
    """Driver side: an empty per-``fit()`` file in the run's Ray storage folder (local,
    like the storage itself); remove it after the fit."""
    storage.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=".attempts-", dir=storage)
    os.close(fd)
    return Path(path)


def start_attempt(attempts_file: str | None, rank: int) -> int:
    """Worker side, at start: this worker group's attempt number within the fit (1 = first).

    Rank 0 appends one line per start; other ranks (and runs without a file) read only.
    """
    if not attempts_file:
        return 1
    path = Path(attempts_file)
    if rank == 0:
        with path.open("a") as f:
            f.write(f"{os.getpid()}\n")
    try:
        return max(1, len(path.read_text().splitlines()))
    except OSError:
        return 1


def restart_line(where: str, attempt: int, max_failures: int, resumed: str | None) -> str:
    """``worker failure in reward/copl: restarted from the step 40 checkpoint (attempt 2/3)``."""
    start = f"the {resumed} checkpoint" if resumed else "the start (no checkpoint yet)"
    return (
        f"worker failure in {where}: restarted from {start} (attempt {attempt}/{max_failures + 1})"
    )


# A collective failed because the peer process is gone (gloo's TCP pair; NCCL's "remote
# process exited"); a timeout (a hung peer) is not among them: that error is raised.
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "remote process exited")


def await_restart_if_peer_lost(exc: BaseException, wait_s: float = 120.0) -> None:
    """In a Train worker whose collective failed because a peer died: wait to be stopped.

    Ray Train's controller notices the dead worker at its next poll (2 s), shuts the whole
    group down and restarts it from the last checkpoint; raising here instead only adds a
    second traceback for the same failure. Returns at once for any other error, and
    after ``wait_s`` if nothing stopped this worker (then the caller raises).
    """
    if not any(marker in str(exc) for marker in PEER_LOST):
        return
    time.sleep(wait_s)  # silently: the restarted worker prints the one recovery line
