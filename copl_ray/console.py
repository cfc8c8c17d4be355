"""The run's progress line: ``[copl-ray HH:MM:SS] message``, flushed at once.

Every stage and the driver print through :func:`log`, so one format reaches the console
(and the job log under ``ray job submit``) whatever layer the line comes from.
"""

from __future__ import annotations

import time


def log(msg: str) -> None:
    print(f"[copl-ray {time.strftime('%H:%M:%S')}] {msg}", flush=True)
