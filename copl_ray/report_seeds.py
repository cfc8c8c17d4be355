"""The seeds report: one run per seed, every report cell as mean ± sample sd.

``python jobs/full.py --seeds 0,1,2`` runs a complete pipeline per seed into
``RUN/seed-<s>/`` (:func:`copl_ray.pipeline.run_seeds`), then :func:`build_seeds_report`
writes ``RUN/report.json`` and ``RUN/report.md`` from the per-seed report.json files.

The aggregate report.json has the per-seed schema (``copl_ray.report``) with every
numeric leaf that varies or is a fraction replaced by a *stat*
``{"mean", "sd", "n", "values"}`` (``sd``: sample standard deviation, n - 1; ``values``:
per seed, in seed order, null where a seed has none); integers equal in every seed
(counts, settings) stay plain; booleans are true when true in any seed; ``config``,
``versions``, ``paper`` come from the first seed. It adds ``seeds``:
{``seeds``: [int], ``n``, ``run_dirs``: {seed: dir}, ``copl_oracle_gap``:
{split: {``per_seed``: {seed: points}, ``mean``, ``sd``, ``worst``}} (Oracle − CoPL
per-user accuracy in points: > 0 = CoPL below Oracle; absent without both models)}.
The markdown is :func:`copl_ray.report_md.render_markdown` of that dict.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from copl_ray.report_md import render_markdown, write_figures
from copl_ray.variants import COPL, ORACLE

# Copied from the first seed: not measurements (or constants such as the paper's figures).
_COPIED = ("schema_version", "name", "created", "config", "versions", "paper")
# Identities, not quantities: averaging an expert index means nothing, so keep the values.
_LISTED = ("top_expert",)
# Settings echoed into a report section (the same in every seed): shown once, not as a stat.
_SETTINGS = ("collapse_share",)


def stat(values: list[float | None]) -> dict[str, Any] | None:
    """Mean and sample sd (n - 1) of the non-null values; None when every value is null."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(xs), "values": list(values)}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def merge(values: list[Any], key: str = "") -> Any:
    """One cell of the aggregate from the same cell of every seed's report (see module doc).

    Dicts merge key by key (a key missing in a seed counts as null there), equal-length
    lists element by element, numbers become a :func:`stat` (equal integers stay plain).
    """
    present = [v for v in values if v is not None]
    if not present:
        return None
    if key in _LISTED:
        return list(values)
    if key in _SETTINGS:
        return present[0]
    if all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: merge([(v or {}).get(k) for v in values], k) for k in keys}
    if all(_is_num(v) for v in present):
        if all(isinstance(v, int) for v in present) and len(set(values)) == 1:
            return present[0]
        return stat(values)
    if all(isinstance(v, bool) for v in present):
        return any(present)
    if all(isinstance(v, list) for v in present):
        if len({len(v) for v in present}) == 1:
            return [merge([v[i] if v else None for v in values]) for i in range(len(present[0]))]
        return list(values)  # different lengths: nothing to pair up, keep each seed's
    distinct = list(dict.fromkeys(str(v) for v in present))
    return present[0] if len(distinct) == 1 else " | ".join(distinct)


def _sorted_shares(rep: dict) -> dict:
    """gate_health shares busiest expert first: expert indices differ between seeds."""
    health = rep.get("gate_health") or {}
    fixed = {
        m: {**h, "share": sorted(h.get("share") or [], reverse=True)} for m, h in health.items()
    }
    return {**rep, "gate_health": fixed}


def copl_oracle_gap(reports: dict[int, dict]) -> dict[str, Any]:
    """Oracle − CoPL overall accuracy in points, per seed, with mean, sd and the worst."""
    out: dict[str, Any] = {}
    for split in ("seen", "unseen"):
        per_seed = {}
        for seed, rep in reports.items():
            models = rep.get("models") or {}
            o = ((models.get(ORACLE) or {}).get(split) or {}).get("overall")
            c = ((models.get(COPL) or {}).get(split) or {}).get("overall")
            if o is not None and c is not None:
                per_seed[str(seed)] = round(100 * (o - c), 4)
        if per_seed:
            s = stat(list(per_seed.values()))
            out[split] = {
                "per_seed": per_seed,
                "mean": s["mean"],
                "sd": s["sd"],
                "worst": max(per_seed.values()),
            }
    return out


def aggregate_reports(reports: dict[int, dict], run_dirs: dict[int, str], root: str) -> dict:
    """The aggregate report dict of per-seed report dicts (``{seed: report}``, seed order)."""
    seeds = list(reports)
    first = reports[seeds[0]]
    fixed = [_sorted_shares(reports[s]) for s in seeds]
    keys = [k for k in dict.fromkeys(k for r in fixed for k in r) if k not in _COPIED]
    agg: dict[str, Any] = {k: first.get(k) for k in _COPIED}
    agg["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    agg.update({k: merge([r.get(k) for r in fixed], k) for k in keys})
    agg["run_dir"] = root
    agg["executed"] = sorted({st for r in fixed for st in r.get("executed") or []})
    agg["figures"] = {k: None for k in first.get("figures") or {}}  # per-seed images only
    agg["seeds"] = {
        "seeds": seeds,
        "n": len(seeds),
        "run_dirs": {str(s): run_dirs[s] for s in seeds},
        "copl_oracle_gap": copl_oracle_gap(reports),
    }
    return agg


def build_seeds_report(
    local_root: Path, root: str, run_dirs: dict[int, str], report_paths: dict[int, Path]
) -> Path:
    """Write ``report.json`` / ``report.md`` / figures of the seeds in ``local_root``."""
    reports = {s: json.loads(Path(p).read_text()) for s, p in report_paths.items()}
    agg = aggregate_reports(reports, run_dirs, root)
    agg["figures"].update(write_figures(agg, local_root))
    (local_root / "report.json").write_text(json.dumps(agg, indent=2, default=str))
    (local_root / "report.md").write_text(render_markdown(agg))
    return local_root / "report.json"


def gap_lines(agg: dict) -> list[str]:
    """The CoPL − Oracle gap per seed, mean and worst, one line per split (console)."""
    lines = []
    for split, g in (agg.get("seeds") or {}).get("copl_oracle_gap", {}).items():
        per = ", ".join(f"seed {s} {v:.2f}" for s, v in g["per_seed"].items())
        sd = "—" if g["sd"] is None else f"{g['sd']:.2f}"
        lines.append(
            f"Oracle − CoPL ({split} users, points): {per}; mean {g['mean']:.2f} ± {sd}, "
            f"worst {g['worst']:.2f}"
        )
    return lines
