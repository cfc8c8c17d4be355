"""The run directory: where every stage writes its artifact and the next one reads it.

The layout of ``run_dir`` (a local path; :mod:`copl_ray.fsutil` mirrors it to a URI) is
written once, in docs/operations.md "The run directory"; :class:`RunDir` names its folders.
Each stage's own files are documented by the module that writes them (e.g.
:mod:`copl_ray.graph.users` for ``gnn/user_embeddings``).

A stage is *done* when its ``_SUCCESS`` marker exists and its hash matches the
hash of the config sections it depends on (``STAGE_SECTIONS``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from copl_ray.config import Config
from copl_ray.variants import COPL

# Config sections each stage's output depends on (the stage reruns if any changed).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "gnn": ("data", "gnn", "adapt"),
    "reward": ("data", "gnn", "reward", "train"),
    "eval": ("data", "gnn", "adapt", "reward", "train", "eval", "onboarding"),
}
# The stages that write an artifact, in run order (the report is written from them).
STAGES: tuple[str, ...] = tuple(STAGE_SECTIONS)


class RunDir:
    """Typed paths into one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # stage folders
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def gnn(self) -> Path:
        return self.root / "gnn"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def reward(self, model_name: str = COPL) -> Path:
        return self.root / "reward" / model_name

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    # stage completion markers
    def _marker(self, stage: str) -> Path:
        return self.root / stage / "_SUCCESS"

    def is_done(self, stage: str, cfg: Config) -> bool:
        m = self._marker(stage)
        if not m.exists():
            return False
        try:
            info = json.loads(m.read_text())
        except json.JSONDecodeError:
            return False
        return info.get("config_hash") == cfg.section_hash(*STAGE_SECTIONS.get(stage, ()))

    def mark_done(self, stage: str, cfg: Config, seconds: float) -> None:
        m = self._marker(stage)
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_text(
            json.dumps(
                {
                    "config_hash": cfg.section_hash(*STAGE_SECTIONS.get(stage, ())),
                    "seconds": round(seconds, 3),
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            )
        )

    def stage_seconds(self, stage: str) -> float | None:
        """The marker's wall time; None when not done or the marker is damaged (as is_done)."""
        m = self._marker(stage)
        if not m.exists():
            return None
        try:
            return json.loads(m.read_text()).get("seconds")
        except json.JSONDecodeError:
            return None
