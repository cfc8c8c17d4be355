"""The CoPL paper's published accuracies (Tables 1-3), for the report's comparison columns.

Rows are keyed by the variant names of :mod:`copl_ray.variants`; the paper's Table 1
baselines (I2E, VPL, PAL: :data:`PAPER_BASELINES`) show as reference rows when a run does
not train them.
"""

from __future__ import annotations

from typing import Any

from copl_ray.config import Config
from copl_ray.variants import COPL, I2E, NO_GNN, NO_MOLE, ORACLE, PAL, REGISTRY, UNIFORM, VPL

# The paper's Table 1 baselines besides Uniform and Oracle.
PAPER_BASELINES = (I2E, VPL, PAL)

# The paper's results (docs/method.md §6): accuracy %, gemma-2b-it, mean of 3 seeds;
# columns UF-P-{2,4}-{ALL,AVG}.
_COLS = ("UF-P-2-ALL", "UF-P-2-AVG", "UF-P-4-ALL", "UF-P-4-AVG")
PAPER_SEEN = {
    ORACLE: (64.53, 64.53, 61.52, 61.52),
    UNIFORM: (61.82, 61.82, 56.15, 56.15),
    I2E: (61.48, 61.49, 57.21, 57.44),
    VPL: (61.11, 61.86, 56.04, 56.77),
    PAL: (59.95, 61.53, 56.95, 57.37),
    COPL: (63.81, 63.45, 62.57, 62.08),
    NO_GNN: (62.09, None, 56.75, None),  # Table 3 (ALL columns only)
    NO_MOLE: (62.69, None, 62.28, None),
}
PAPER_SEEN_7B = {COPL: (63.90, 63.48, 62.90, 61.93)}
PAPER_UNSEEN = {COPL: (63.92, 63.26, 61.62, 61.97), UNIFORM: (62.82, 62.82, 55.65, 55.65)}
PAPER_T2 = {  # UF-P-2-ALL only
    "controversial": {ORACLE: 57.68, UNIFORM: 49.86, COPL: 56.89},
    "common": {ORACLE: 71.86, UNIFORM: 74.52, COPL: 71.23},
}


def model_label(name: str) -> str:
    """A report row's label: the variant's, else the name."""
    return REGISTRY[name].label if name in REGISTRY else name


def paper_numbers(cfg: Config) -> dict[str, Any] | None:
    """The paper's figures for the UF-P variant this config builds (fractions), else None."""
    if cfg.data.source != "ufp" or cfg.data.n_groups not in (2, 4):
        return None
    column = f"UF-P-{cfg.data.n_groups}-{cfg.data.sampling.upper()}"
    j = _COLS.index(column)
    seven_b = "7b" in cfg.reward.backbone.lower()
    seen_table = PAPER_SEEN_7B if seven_b else PAPER_SEEN  # 7b: the paper has CoPL seen only

    def col(table: dict[str, tuple]) -> dict[str, float]:
        return {m: v[j] / 100 for m, v in table.items() if v[j] is not None}

    t2 = column == "UF-P-2-ALL" and not seven_b
    return {
        "column": column,
        "backbone": "gemma-7b-it" if seven_b else "gemma-2b-it",
        "seen": col(seen_table),
        "unseen": {} if seven_b else col(PAPER_UNSEEN),
        "common": {m: v / 100 for m, v in PAPER_T2["common"].items()} if t2 else {},
        "controversial": {m: v / 100 for m, v in PAPER_T2["controversial"].items()} if t2 else {},
    }
