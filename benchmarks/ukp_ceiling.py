"""How much per-user signal does UKPConvArg1 hold?  Pooled vs personal ceilings.

CoPL can only beat a pooled reward model (Uniform) by what the data says about each
annotator beyond the crowd. This script measures that margin directly, on the exact
users and splits of ``python jobs/full.py --config ukp`` (the preset's data config with
``data.seed`` = each ``--seeds`` value), with models far cheaper than a reward model and
each fitted to convergence, so a small gap cannot be blamed on under-training:

* **consensus**: the majority of the other annotators' training labels on the same pair
  (pairs without any, or tied, are left out: ``coverage``);
* **item BT / item BT + users**: Bradley–Terry over argument ids, ``s(x) = b_x``, and the
  personal form ``s_u(x) = b_x + <p_u, q_x>`` (rank ``d``) — the collaborative signal a
  graph can use, text-free;
* **text pooled / text + users**: logistic regression on frozen all-MiniLM-L6-v2 sentence
  embeddings (``e_a − e_b``), and the personal form ``w + δ_u`` with ``‖δ_u‖²`` shrinkage
  — the signal a text reward model can personalise;
* unseen users: the pooled models as they are vs the personal forms fitted on the user's
  own adaptation labels only (``p_u`` / ``δ_u``, all else frozen; their shrinkage picked
  on a fifth of those labels, then refitted on all).

Personal forms pick their shrinkage / rank on the seen users' ``val`` labels (one per
user); every figure is test-pair accuracy pooled over pairs, as the run report counts it.
A personal column that does not clear the pooled one by 2 points says the data, not the
model, caps personalisation here.

    python benchmarks/ukp_ceiling.py --seeds 0,1,2 [--data ../shared/data/ukpconvarg1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from common import machine

from copl_ray.config import load_config
from copl_ray.data.tables import format_text
from copl_ray.data.ukp import build_ukp

# shrinkage of the personal parts (per-user mean square); the large end is ~the pooled model
LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
RANKS = (1, 2, 4, 8)  # item BT + users: rank of p_u, q_x
# text + users: δ_u lives in the top principal directions of the response embeddings (a
# user's 20-100 labels cannot pin 384 free coordinates; the pooled w keeps all 384)
PERSONAL_DIMS = 64
STEPS = 400  # full-batch Adam steps: every fit below converges well within


@torch.no_grad()
def minilm_embeddings(texts: list[str]) -> torch.Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: masked mean, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    from copl_ray.reward.backbone import backbone_path

    folder = backbone_path("minilm")
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    for i in range(0, len(texts), 64):
        enc = tok(
            texts[i : i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt"
        )
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def fit(margin_fn, params: list[torch.Tensor], penalty_fn, lr: float = 0.05) -> None:
    """Minimise the BTL loss ``mean −log σ(margin)`` + penalty, full batch."""
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(STEPS):
        loss = -F.logsigmoid(margin_fn()).mean() + penalty_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()


def accuracy(margin: torch.Tensor) -> float:
    return float((margin > 0).float().mean())


class Split:
    """Index tensors of one annotation subset: user row, chosen / rejected response."""

    def __init__(self, ann: pd.DataFrame, user_row: dict[str, int]):
        self.u = torch.tensor(ann["user_id"].map(user_row).to_numpy())
        self.c = torch.tensor(ann["chosen"].to_numpy())
        self.r = torch.tensor(ann["rejected"].to_numpy())
        self.pair = ann["pair_id"].to_numpy()
        self.a_first = (ann["chosen"] < ann["rejected"]).to_numpy()

    def __len__(self) -> int:
        return len(self.c)

    def diff(self, table: torch.Tensor) -> torch.Tensor:
        """``table[chosen] − table[rejected]`` (index_select: its backward is a fast
        index_add, where advanced indexing's accumulate-put crawls on CPU)."""
        return table.index_select(0, self.c) - table.index_select(0, self.r)


def consensus(train: Split, test: Split) -> tuple[float, float]:
    """Accuracy of the other annotators' majority on the same pair, and its coverage."""
    votes = pd.DataFrame({"pair": train.pair, "a": train.a_first}).groupby("pair")["a"]
    share = votes.mean().reindex(test.pair).to_numpy()
    ok = ~np.isnan(share) & (share != 0.5)
    return float(((share[ok] > 0.5) == test.a_first[ok]).mean()), float(ok.mean())


def agreement(ann: pd.DataFrame) -> dict[str, float]:
    """How often a worker sides with the majority of the OTHER workers on the same pair
    (non-test labels; pairs where the others are absent or tied are left out)."""
    a = ann[ann["split"] != "test"]
    a_first = (a["chosen"] < a["rejected"]).astype(int)
    votes = a_first.groupby(a["pair_id"]).agg(["sum", "count"]).reindex(a["pair_id"])
    others, n = votes["sum"].to_numpy() - a_first.to_numpy(), votes["count"].to_numpy() - 1
    ok = (n > 0) & (2 * others != n)
    agree = pd.Series(((2 * others > n) == a_first.to_numpy().astype(bool))[ok])
    per_worker = agree.groupby(a["user_id"].to_numpy()[ok]).mean()
    return {
        "agree_overall": float(agree.mean()),
        "agree_median_worker": float(per_worker.median()),
        "agree_p05_worker": float(per_worker.quantile(0.05)),
        "workers_below_half": int((per_worker < 0.5).sum()),
        "workers": int(len(per_worker)),
    }


def item_bt(
    train: Split, sets: dict[str, Split], n_items: int, n_users: int, rank: int, lam: float
):
    """Item BT (rank 0) or item BT + users; margins on each named split."""
    torch.manual_seed(0)
    b = torch.zeros(n_items, requires_grad=True)
    p = (0.1 * torch.randn(n_users, max(rank, 1))).requires_grad_()
    q = (0.1 * torch.randn(n_items, max(rank, 1))).requires_grad_()

    def margin(s: Split) -> torch.Tensor:
        m = b.index_select(0, s.c) - b.index_select(0, s.r)
        return m + (p.index_select(0, s.u) * s.diff(q)).sum(1) if rank else m

    def penalty() -> torch.Tensor:
        reg = 1e-3 * b.square().mean()
        return reg + lam * (p.square().sum(1).mean() + q.square().sum(1).mean()) if rank else reg

    fit(lambda: margin(train), [b, p, q], penalty)
    return {k: margin(s).detach() for k, s in sets.items()}, (b, p, q)


def refit_users(train: Split, params, rank: int, lam: float, sets: dict[str, Split]):
    """Unseen users: fit only their ``p_u`` on their own labels, items frozen."""
    b, _, q = (t.detach() for t in params)
    n = int(max(int(train.u.max()), *(int(s.u.max()) for s in sets.values())) + 1)
    p = torch.zeros(n, max(rank, 1), requires_grad=True)

    def margin(s: Split) -> torch.Tensor:
        return s.diff(b) + (p.index_select(0, s.u) * s.diff(q)).sum(1)

    fit(lambda: margin(train), [p], lambda: lam * p.square().sum(1).mean())
    return {k: margin(s).detach() for k, s in sets.items()}


def text_model(train: Split, emb: torch.Tensor, n_users: int, lam: float | None, base=None):
    """Pooled logistic regression (``lam`` None) or pooled + per-user ``δ_u``; with ``base``
    (a fitted pooled ``w``) only the ``δ_u`` are fitted (unseen users)."""
    scale = 10.0  # normalised embeddings: differences are small, the logit needs a scale
    diffs: dict[int, torch.Tensor] = {}  # e_a − e_b of each split, computed once

    def x_of(s: Split) -> torch.Tensor:
        if id(s) not in diffs:
            diffs[id(s)] = s.diff(emb)
        return diffs[id(s)]

    w = base.detach().clone() if base is not None else torch.zeros(emb.shape[1])
    w.requires_grad_(base is None)
    d = torch.zeros(n_users, PERSONAL_DIMS, requires_grad=lam is not None)
    basis = torch.linalg.svd(emb - emb.mean(0), full_matrices=False).Vh[:PERSONAL_DIMS].T

    def margin(s: Split) -> torch.Tensor:
        x = x_of(s)
        if lam is None:
            return scale * (x @ w)
        return scale * (x @ w + ((x @ basis) * d.index_select(0, s.u)).sum(1))

    def penalty() -> torch.Tensor:
        return 1e-4 * w.square().sum() + (lam or 0.0) * 100 * d.square().sum(1).mean()

    fit(lambda: margin(train), [t for t in (w, d) if t.requires_grad], penalty, lr=0.01)
    return (lambda s: margin(s).detach()), w


def run_seed(data_path: str, seed: int, emb_cache: dict) -> dict[str, float]:
    cfg = load_config("ukp", [f"data.path={data_path}", f"data.seed={seed}"])
    t = build_ukp(cfg.data)
    ann, users = t.annotations, t.users
    user_row = {u: i for i, u in enumerate(users["user_id"])}
    seen = set(users.loc[users["seen"], "user_id"])
    is_seen = ann["user_id"].isin(seen)
    train = Split(ann[is_seen & (ann["split"] == "survey")], user_row)
    val = Split(ann[is_seen & (ann["split"] == "val")], user_row)
    test_s = Split(ann[is_seen & (ann["split"] == "test")], user_row)
    adapt_ann = ann[~is_seen & (ann["split"] == "survey")]
    adapt_u = Split(adapt_ann, user_row)
    # unseen users' shrinkage: picked on a fifth of their own adaptation labels, then refit
    shuffled = adapt_ann.sample(frac=1.0, random_state=seed)
    rank_in_user = shuffled.groupby("user_id").cumcount()
    size = shuffled.groupby("user_id")["user_id"].transform("size")
    inner_val = shuffled[rank_in_user < (size // 5).clip(lower=1)]
    inner = (Split(adapt_ann.drop(inner_val.index), user_row), Split(inner_val, user_row))
    test_u = Split(ann[~is_seen & (ann["split"] == "test")], user_row)
    n_items, n_users = int(t.responses["response_id"].max()) + 1, len(users)
    key = tuple(t.responses["text"])
    if key not in emb_cache:
        texts = [format_text(p, x) for p, x in zip(t.responses["prompt"], t.responses["text"])]
        emb_cache[key] = minilm_embeddings(texts)
    emb = torch.zeros(n_items, emb_cache[key].shape[1])
    emb[torch.tensor(t.responses["response_id"].to_numpy())] = emb_cache[key]
    out = {
        "n_seen_users": len(seen),
        "n_unseen_users": len(users) - len(seen),
        "n_train_labels": len(train),
        "n_test_seen": len(test_s),
        "n_test_unseen": len(test_u),
    }
    out["consensus_seen"], out["consensus_coverage"] = consensus(train, test_s)
    out.update(agreement(ann))
    sets = {"val": val, "seen": test_s, "unseen": test_u}
    m0, p0 = item_bt(train, sets, n_items, n_users, 0, 0.0)
    out["item_bt_seen"], out["item_bt_unseen"] = accuracy(m0["seen"]), accuracy(m0["unseen"])
    best = max(
        ((r, lam) for r in RANKS for lam in LAMBDAS),
        key=lambda rl: accuracy(item_bt(train, {"val": val}, n_items, n_users, *rl)[0]["val"]),
    )
    m1, p1 = item_bt(train, sets, n_items, n_users, *best)
    out["item_bt_users_seen"] = accuracy(m1["seen"])
    lam_u = max(
        LAMBDAS,
        key=lambda lam_: accuracy(refit_users(inner[0], p1, best[0], lam_, {"v": inner[1]})["v"]),
    )
    out["item_bt_users_unseen"] = accuracy(
        refit_users(adapt_u, p1, best[0], lam_u, {"t": test_u})["t"]
    )
    out["item_bt_users_choice"] = f"rank {best[0]}, lambda {best[1]:g} (unseen {lam_u:g})"
    margin, w = text_model(train, emb, n_users, None)
    out["text_pooled_seen"], out["text_pooled_unseen"] = (
        accuracy(margin(test_s)),
        accuracy(margin(test_u)),
    )
    lam = max(LAMBDAS, key=lambda lam_: accuracy(text_model(train, emb, n_users, lam_)[0](val)))
    margin_p, _ = text_model(train, emb, n_users, lam)
    out["text_users_seen"] = accuracy(margin_p(test_s))
    lam_u = max(
        LAMBDAS,
        key=lambda lam_: accuracy(text_model(inner[0], emb, n_users, lam_, base=w)[0](inner[1])),
    )
    out["text_users_unseen"] = accuracy(text_model(adapt_u, emb, n_users, lam_u, base=w)[0](test_u))
    out["text_users_choice"] = f"lambda {lam:g} (unseen {lam_u:g})"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1] / "../shared/data/ukpconvarg1")
    )
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(machine())
    rows, cache = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.time()
        rows.append(run_seed(str(Path(args.data).resolve()), seed, cache))
        print(f"seed {seed} ({time.time() - t0:.0f} s): {rows[-1]}", flush=True)
    frame = pd.DataFrame(rows)
    print(
        f"\n{frame['n_seen_users'][0]} seen / {frame['n_unseen_users'][0]} unseen workers, "
        f"{frame['n_train_labels'].mean():.0f} training labels, "
        f"{frame['n_test_seen'].mean():.0f} / {frame['n_test_unseen'].mean():.0f} test labels "
        f"(seen / unseen), seeds {args.seeds}; test accuracy %, mean ± sd over seeds\n"
    )
    print("| scorer | seen | unseen |\n|---|---|---|")

    def cell(c: str) -> str:
        sd = 100 * frame[c].std(ddof=1) if len(frame) > 1 else 0.0
        return f"{100 * frame[c].mean():.1f} ± {sd:.1f}"

    print(
        f"| consensus of the other annotators (coverage {cell('consensus_coverage')}) | {cell('consensus_seen')} | — |"
    )
    for name, label in (
        ("item_bt", "item BT (pooled, ids)"),
        ("item_bt_users", "item BT + users (personal)"),
        ("text_pooled", "text LR on MiniLM (pooled)"),
        ("text_users", "text LR + per-user δ_u (personal)"),
    ):
        print(f"| {label} | {cell(name + '_seen')} | {cell(name + '_unseen')} |")
    print(
        f"\nworkers agreeing with the others' majority: {100 * frame['agree_overall'].mean():.1f} % "
        f"of labels; per worker median {100 * frame['agree_median_worker'].mean():.1f} %, "
        f"5th percentile {100 * frame['agree_p05_worker'].mean():.1f} %; "
        f"{frame['workers_below_half'].mean():.0f} of {frame['workers'].mean():.0f} below 50 %"
    )
    for kind in ("item_bt", "text"):
        pooled = "item_bt" if kind == "item_bt" else "text_pooled"
        personal = "item_bt_users" if kind == "item_bt" else "text_users"
        for split in ("seen", "unseen"):
            gain = 100 * (frame[f"{personal}_{split}"] - frame[f"{pooled}_{split}"])
            print(
                f"personal − pooled, {kind}, {split}: {gain.mean():+.2f} ± {gain.std(ddof=1) if len(gain) > 1 else 0:.2f} points"
            )


if __name__ == "__main__":
    main()
