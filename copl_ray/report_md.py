"""Markdown and figures of the run report (the data comes from ``copl_ray.report.collect``).

Tables follow the paper: Table 1 (models × seen/unseen), Table 2 (common vs
controversial pairs), Table 4 (adaptation variants), Table 5 (GNN accuracy), Fig. 2
(unseen accuracy vs number of labels), Fig. 1/4 (t-SNE), Fig. 3 (expert allocation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from copl_ray.artifacts import STAGES
from copl_ray.config import COPL_SELECTOR
from copl_ray.paper import PAPER_BASELINES, model_label
from copl_ray.variants import COPL, REPORT_ORDER, UNIFORM


def is_stat(v: Any) -> bool:
    """True for an aggregated cell ``{"mean", "sd", "n", "values"}`` (copl_ray/report_seeds.py)."""
    return isinstance(v, dict) and set(v) == {"mean", "sd", "n", "values"}


def _num(v: Any, spec: str) -> str:
    """``v`` formatted with ``spec``; a seeds-report stat as ``mean ± sd`` (both in ``spec``)."""
    if v is None:
        return "—"
    if is_stat(v):
        sd = "—" if v["sd"] is None else format(v["sd"], spec)
        return f"{format(v['mean'], spec)} ± {sd}"
    return format(v, spec)


def _scaled(v: Any, k: float) -> Any:
    """``k * v`` for a number or a stat (mean and sd scale alike)."""
    if is_stat(v):
        return {**v, "mean": k * v["mean"], "sd": None if v["sd"] is None else k * v["sd"]}
    return None if v is None else k * v


def _mean(v: Any) -> float | None:
    """The plotted value: the number, or a stat's mean."""
    return v["mean"] if is_stat(v) else v


def _pct(v: float | dict | None) -> str:
    return _num(_scaled(v, 100), ".2f")


def _n(v: Any) -> str:
    if is_stat(v):
        return _num(v, ".4g")
    return "—" if v is None else str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _ordered(names) -> list[str]:
    names = list(names)
    return [m for m in REPORT_ORDER if m in names] + [m for m in names if m not in REPORT_ORDER]


def _name(m: str) -> str:
    return model_label(m)


# ----------------------------------------------------------------------- sections
def _table1(rep: dict) -> list[str]:
    paper = rep.get("paper")
    header = [
        "Model",
        "Seen acc. %",
        "seen users / test labels",
        "Unseen acc. %",
        "unseen users / test labels",
        "train s",
    ]
    if paper:
        header += [f"paper seen % ({paper['column']})", "paper unseen %"]
    rows = []
    names = _ordered(rep["models"])
    if paper:  # the paper's other baselines, for reference
        names += [m for m in PAPER_BASELINES if m in paper["seen"]]
    for m in names:
        r = rep["models"].get(m)
        seen, unseen = (r["seen"], r["unseen"]) if r else ({}, {})
        row = [
            _name(m),
            _pct(seen.get("overall")),
            f"{_n(seen.get('n_users'))} / {_n(seen.get('n_pairs'))}",
            _pct(unseen.get("overall")),
            f"{_n(unseen.get('n_users'))} / {_n(unseen.get('n_pairs'))}",
            _num((r or {}).get("training", {}).get("seconds"), ".0f"),
        ]
        if paper:
            row += [_pct(paper["seen"].get(m)), _pct(paper["unseen"].get(m))]
        rows.append(row)
    gnn = rep.get("gnn_scorer")
    if gnn:
        seen, unseen = gnn["seen"], gnn["unseen"]
        rows.append(
            [
                "GNN only (in-graph pairs)",
                _pct(seen["overall"]),
                f"{_n(seen['n_users'])} / {_n(seen['n_pairs'])}",
                _pct(unseen["overall"]),
                f"{_n(unseen['n_users'])} / {_n(unseen['n_pairs'])}",
                "—",
            ]
            + (["—", "—"] if paper else [])
        )
    return [
        "## Reward-model accuracy (Table 1 / Table 3)",
        "",
        "Per-user pairwise accuracy on held-out test pairs: *seen* users trained on; *unseen*",
        "users taken on from their few survey labels (CoPL without any gradient step; the",
        "baselines as each method does: a row fitted or the labels encoded). Each figure",
        "is pooled over the labelled test pairs of the users named beside it; the labels they",
        "were trained on / adapted from are counted in the Data section.",
        "",
        *_table(header, rows),
        *(
            [
                "GNN only: the graph's own score <e_u, e_x> with no text, on the test pairs "
                "whose two responses are graph nodes (a response nobody labelled in a survey "
                f"has none: {_n(gnn['seen']['n_skipped'])} seen / "
                f"{_n(gnn['unseen']['n_skipped'])} unseen pairs skipped).",
                "",
            ]
            if gnn
            else []
        ),
    ]


def _table2(rep: dict) -> list[str]:
    paper = rep.get("paper") or {}
    header = ["Model", "users", "common %", "controversial %"]
    if paper.get("common"):
        header += ["paper common %", "paper controversial %"]
    rows = []
    for m in _ordered(rep["models"]):
        for split in ("seen", "unseen"):
            s = rep["models"][m][split]
            if s["common"] is None and s["controversial"] is None:
                continue
            row = [_name(m), split, _pct(s["common"]), _pct(s["controversial"])]
            if paper.get("common"):
                ok = split == "seen"
                row += [
                    _pct(paper["common"].get(m) if ok else None),
                    _pct(paper["controversial"].get(m) if ok else None),
                ]
            rows.append(row)
    groups = sorted({g for r in rep["models"].values() for g in r["seen"]["by_group"]})
    out = ["## Common vs controversial pairs (Table 2)", ""]
    out += _table(header, rows) if rows else ["No common/controversial split in this data.", ""]
    if groups:
        rows = [
            [_name(m), split, *(_pct(rep["models"][m][split]["by_group"].get(g)) for g in groups)]
            for m in _ordered(rep["models"])
            for split in ("seen", "unseen")
            if rep["models"][m][split]["by_group"]
        ]
        out += ["Accuracy by preference group (%):", ""]
        out += _table(["Model", "users", *groups], rows)
    return out


def _gnn(rep: dict) -> list[str]:
    g = rep["gnn"]
    rows = [
        ["held-out (seen users' val pair)", _pct(g["heldout_accuracy"])],
        ["validation", _pct(g["val_accuracy"])],
        ["test pairs scored in-graph", _pct(g["test_accuracy_in_graph"])],
        ["vs true group labels (synthetic)", _pct(g.get("truth_accuracy"))],
        ["best epoch / epochs", f"{_n(g['best_epoch'])} / {_n(g['epochs'])}"],
    ]
    if g.get("ari") is not None:
        rows.append(["ARI of user clusters vs true groups", _num(g["ari"], ".3f")])
    out = ["## GNN (Table 5)", "", *_table(["metric", "value"], rows)]
    if rep["adaptation"]:
        rows = [
            [
                v,
                _pct(a["unseen"]["overall"]),
                _pct(a["unseen"]["common"]),
                _pct(a["unseen"]["controversial"]),
                _pct(a["gnn_accuracy"]),
                _pct(a.get("gnn_truth_accuracy")),
                _n(a["unseen"]["n_users"]),
            ]
            for v, a in rep["adaptation"].items()
        ]
        out += ["### Adaptation of unseen users (Table 4)", ""]
        out += _table(
            [
                "variant",
                "reward acc. %",
                "common %",
                "controversial %",
                "GNN acc. %",
                "GNN vs truth %",
                "users",
            ],
            rows,
        )
        out += [
            "GNN acc.: the adapted embedding scores the user's test pairs inside the graph; "
            "vs truth: against the user's true group labels (synthetic data only).",
            "",
        ]
    return out


def _warnings(rep: dict) -> list[str]:
    """Visible warnings at the top of the report (a collapsed gate)."""
    return [
        f"> **Warning: the {_name(m)} gate collapsed** — expert {h['top_expert']} takes "
        f"{_pct(h['top_share'])} % of {h['n_users']} seen users (routing entropy "
        f"{_num(h['entropy'], '.2f')}): the model is one shared adapter, not personalised.\n"
        for m, h in (rep.get("gate_health") or {}).items()
        if h.get("collapsed")
    ]


def _latent_units(rep: dict) -> list[str]:
    """A line per model with a variational user latent (VPL): how much of it is used."""
    return [
        f"{_name(m)} latent: {au['active']} of {au['units']} units active "
        f"({_pct(au['share'])} %: posterior-mean variance over {au['n_users']} seen users "
        "> 0.01); 0 % is a collapsed latent, the reward then ignores who the user is.\n"
        for m, r in rep["models"].items()
        if (au := r.get("active_units"))
    ]


def _gate_and_signal(rep: dict) -> list[str]:
    health, flip = rep.get("gate_health") or {}, rep.get("flip_test")
    latent = _latent_units(rep)
    if not health and flip is None and not latent:
        return []
    out = ["## Gate health and user signal", "", *latent]
    if health:
        rows = [
            [
                _name(m),
                " / ".join(_pct(x) for x in h["share"]),
                _num(h["entropy"], ".3f"),
                "**yes**" if h["collapsed"] else "no",
                _n(h.get("n_users")),
            ]
            for m, h in ((m, health[m]) for m in _ordered(health))
        ]
        out += _table(
            ["Model", "users per expert % (top-1)", "routing entropy", "collapsed", "seen users"],
            rows,
        )
        out += [
            "Routing entropy: entropy of the users-per-expert share over log(number of "
            "experts); 0 = every user on one expert, 1 = all experts equally used, "
            "log k / log M for an even split over k of M experts. Collapsed: one expert "
            f"takes ≥ {_pct(next(iter(health.values()))['collapse_share'])} % of the users.",
            "",
        ]
    if flip is not None:
        out += [
            f"Flip test (is the user signal used?): re-adapting each unseen user from their "
            f"labels flipped (chosen ↔ rejected) flips CoPL's predicted preference on "
            f"**{_pct(flip['rate'])} %** of their test pairs ({_n(flip['n_pairs'])} pairs, "
            f"{_n(flip['n_users'])} users; common pairs {_pct(flip.get('common'))} %, "
            f"controversial {_pct(flip.get('controversial'))} %). For context: a model that "
            "ignores the user flips 0 %; in-context learning has been measured to flip 14 %, "
            "a test-time-training method 78 %.",
            "",
        ]
    return out


def _onboarding(rep: dict) -> list[str]:
    """Active onboarding: accuracy after n answers to each selector's questions."""
    o = rep.get("onboarding")
    if not o or not o.get("selectors"):
        return []
    curves = o["selectors"]
    answers = next(iter(curves.values()))["answers"]
    truth = {"group": "as their group prefers (known truth)", "own": "with their own labels"}
    out = [
        "## Active onboarding",
        "",
        f"Unseen-user accuracy of CoPL after n answers to the questions each selector chose, "
        f"one at a time ({_n(o['n_users'])} unseen users answering "
        f"{truth.get(o['truth'], o['truth'])}, {_n(o['n_pairs'])} test pairs; "
        f"{_n(o['candidates_per_user'])} candidate pairs per user).",
        "",
    ]
    rows = [
        [name, *(_pct(a) for a in c["accuracy"]), _n(o["answers_to_match_random16"].get(name))]
        for name, c in curves.items()
    ]
    ref = o["reference_answers"]
    out += _table(["selector", *(str(n) for n in answers), f"answers to match random@{ref}"], rows)
    if COPL_SELECTOR in curves and o.get("random_reference_accuracy") is not None:
        n = o["answers_to_match_random16"].get(COPL_SELECTOR)
        target = _pct(o["random_reference_accuracy"])
        if n is not None:
            out += [
                f"CoPL's selector reaches random's {ref}-answer accuracy ({target} %) "
                f"after {_n(n)} answer{'' if n == 1 else 's'}.",
                "",
            ]
        else:
            best = curves[COPL_SELECTOR]["accuracy"][-1]
            out += [
                f"CoPL's selector falls short of random's {ref}-answer accuracy "
                f"({target} %): {_pct(best)} % after {answers[-1]} answers.",
                "",
            ]
    return out


def _figures(rep: dict) -> list[str]:
    f = rep["figures"]
    out = ["## Figures", ""]
    items = [
        ("labels_curve", "Fig. 2 — unseen-user accuracy vs number of labels"),
        ("tsne", "Fig. 1/4 — t-SNE of GNN user embeddings"),
        ("expert_allocation", "Fig. 3 — expert allocation by group"),
        ("onboarding", "Active onboarding — unseen accuracy vs answers, per selector"),
        ("accuracy", "Accuracy by model, seen vs unseen"),
    ]
    for key, title in items:
        out += [f"**{title}**", "", f"![{key}]({f[key]})" if f.get(key) else "(not produced)", ""]
    curve = rep.get("labels_curve")
    if curve:
        acc = (
            curve["accuracy"] if isinstance(curve["accuracy"], dict) else {COPL: curve["accuracy"]}
        )
        rows = [[_name(m), *(_pct(a) for a in series)] for m, series in acc.items()]
        out += _table(["labels →", *(str(c) for c in curve["counts"])], rows)
    return out


def _data(rep: dict) -> list[str]:
    d = rep["data"]
    if d is None:
        return ["## Data", "", "Data stage not run.", ""]
    rows = [
        ["source", d.get("source")],
        ["users seen / unseen", f"{_n(d.get('n_users_seen'))} / {_n(d.get('n_users_unseen'))}"],
        ["groups", ", ".join(d.get("groups") or []) or "unknown"],
        ["responses / pairs", f"{_n(d.get('n_responses'))} / {_n(d.get('n_pairs'))}"],
        [
            "annotations by split",
            ", ".join(f"{k} {_n(v)}" for k, v in (d.get("n_annotations") or {}).items()),
        ],
        [
            "labels per seen user",
            ", ".join(f"{k} {_num(v, 'g')}" for k, v in (d.get("labels_per_user") or {}).items()),
        ],
        ["controversial share", _pct(d.get("controversial_share")) + " %"],
        ["controversial =", d.get("controversial_definition") or "—"],
    ]
    out = ["## Data", "", *_table(["", ""], [[str(a), str(b)] for a, b in rows])]
    drops = d.get("drops") or {}
    out += [f"Dropped rows: {_n(d.get('n_dropped', 0))} in total.", ""]
    if drops:
        out += _table(["reason", "count"], [[k, _n(v)] for k, v in sorted(drops.items())])
    out += [f"- note: {n}" for n in d.get("notes") or []] + ([""] if d.get("notes") else [])
    return out


def _run_info(rep: dict) -> list[str]:
    t = rep["timings"]
    rows = [
        [
            s,
            _num(t.get(f"{s}_s"), ".1f"),
            "this run" if s in rep["executed"] else ("reused" if t.get(f"{s}_s") else "—"),
        ]
        for s in STAGES
    ]
    rows.append(["total", _num(t["total_s"], ".1f"), ""])
    out = ["## Wall time per stage (s)", "", *_table(["stage", "seconds", ""], rows)]
    out += ["## Package versions", ""]
    out += _table(["package", "version"], [[k, _n(v)] for k, v in rep["versions"].items()])
    if rep.get("expert_usage") is not None:
        out += [
            "## Expert usage (raw)",
            "",
            "```json",
            json.dumps(rep["expert_usage"])[:4000],
            "```",
            "",
        ]
    out += [
        "## Resolved config",
        "",
        "```yaml",
        yaml.safe_dump(rep["config"], sort_keys=False),
        "```",
        "",
    ]
    return out


def _seeds(rep: dict) -> list[str]:
    """The seeds report's header: what a ``mean ± sd`` cell is, and the gap to Oracle."""
    info = rep.get("seeds")
    if not info:
        return []
    seeds = ", ".join(str(s) for s in info["seeds"])
    out = [
        f"**Mean ± sample sd over {info['n']} seeds ({seeds})**: every cell is the mean ± the "
        "sample standard deviation (n − 1) of the same cell of the per-seed reports; a cell "
        "without ± is the same in every seed. Per-seed reports: "
        + ", ".join(f"[seed {s}]({d}/report.md)" for s, d in info["run_dirs"].items()),
        "",
    ]
    gap = info.get("copl_oracle_gap") or {}
    if gap:
        rows = [
            [
                split,
                *(_num(g["per_seed"].get(str(s)), ".2f") for s in info["seeds"]),
                _num(g["mean"], ".2f"),
                _num(g["sd"], ".2f"),
                _num(g["worst"], ".2f"),
            ]
            for split, g in gap.items()
        ]
        out += ["## Oracle − CoPL per-user accuracy (points; > 0 = CoPL below Oracle)", ""]
        out += _table(["users", *(f"seed {s}" for s in info["seeds"]), "mean", "sd", "worst"], rows)
    return out


def render_markdown(rep: dict) -> str:
    head = [
        f"# copl-ray run report — {rep['name']}",
        "",
        f"Run directory: `{rep['run_dir']}` · written {rep['created']} · "
        f"report.json schema v{rep['schema_version']}",
        "",
    ]
    if rep.get("paper"):
        p = rep["paper"]
        head += [f"Paper figures: CoPL paper, {p['column']}, {p['backbone']}, mean of 3 seeds.", ""]
    head += _seeds(rep) + _warnings(rep)
    body = _table1(rep) + _table2(rep) + _gate_and_signal(rep) + _onboarding(rep) + _gnn(rep)
    body += _figures(rep)
    body += _data(rep) + _run_info(rep)
    return "\n".join(head + body)


# ------------------------------------------------------------------------ figures
def write_figures(rep: dict, root: Path) -> dict[str, str | None]:
    """Fig. 2 (labels curve) and an accuracy bar chart; returns relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out: dict[str, str | None] = {"labels_curve": None, "accuracy": None}
    curve = rep.get("labels_curve")
    if curve and curve.get("counts"):
        acc = (
            curve["accuracy"] if isinstance(curve["accuracy"], dict) else {COPL: curve["accuracy"]}
        )
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m, series in acc.items():
            pts = [(c, _mean(a)) for c, a in zip(curve["counts"], series) if a is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=_name(m))
        uni = _mean((rep["models"].get(UNIFORM) or {}).get("unseen", {}).get("overall"))
        if uni is not None:
            ax.axhline(uni, ls="--", c="gray", label="Uniform (unseen)")
        ax.set(xlabel="labels per unseen user", ylabel="accuracy", xscale="log", title="Fig. 2")
        ax.set_xticks(curve["counts"], [str(c) for c in curve["counts"]])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(root / "report_labels_curve.png", dpi=120)
        plt.close(fig)
        out["labels_curve"] = "report_labels_curve.png"
    names = [
        m
        for m in _ordered(rep["models"])
        if rep["models"][m]["seen"]["overall"] is not None
        or rep["models"][m]["unseen"]["overall"] is not None
    ]
    if names:
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
        for k, split in enumerate(("seen", "unseen")):
            vals = [_mean(rep["models"][m][split]["overall"]) or 0.0 for m in names]
            ax.bar([i + (k - 0.5) * 0.38 for i in range(len(names))], vals, 0.38, label=split)
        ax.set_xticks(range(len(names)), names)
        ax.set(ylabel="pairwise accuracy", ylim=(0, 1), title="Accuracy by model")
        ax.axhline(0.5, ls=":", c="gray")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(root / "report_accuracy.png", dpi=120)
        plt.close(fig)
        out["accuracy"] = "report_accuracy.png"
    return out
