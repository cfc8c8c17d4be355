"""copl_ray/console.py: the one progress-line format, ``[copl-ray HH:MM:SS] message``."""

from __future__ import annotations

import re
import sys
import time

import pytest

from copl_ray.console import log


def test_line_format_and_clock(capsys: pytest.CaptureFixture[str]) -> None:
    before = time.strftime("%H:%M:%S")
    log("gnn: epoch 3/10 loss 0.41")
    after = time.strftime("%H:%M:%S")
    out = capsys.readouterr().out
    m = re.fullmatch(r"\[copl-ray (\d\d:\d\d:\d\d)\] gnn: epoch 3/10 loss 0\.41\n", out)
    assert m is not None, out
    assert m.group(1) in {before, after}  # the wall clock of the call


class _Recorder:
    """A stdout that records what was written and when it was flushed."""

    def __init__(self) -> None:
        self.buffer, self.flushed = "", []

    def write(self, s: str) -> int:
        self.buffer += s
        return len(s)

    def flush(self) -> None:
        self.flushed.append(self.buffer)


def test_each_line_is_flushed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    log("one")
    log("two")
    # after each call, everything written so far has been flushed (a job log sees it live)
    assert len(rec.flushed) == 2
    assert rec.flushed[0].endswith("] one\n") and rec.flushed[1].endswith("] two\n")
    assert rec.flushed[1] == rec.buffer
