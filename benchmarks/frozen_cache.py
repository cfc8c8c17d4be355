"""Benchmark: MoLE over a frozen pretrained backbone on CPU, naive vs cached lower layers.

The real case: UKPConvArg1 has ~45k training pairs over ~1,040 unique (prompt, argument)
texts, so a per-pair full forward recomputes the same frozen layers again and again.
Backbone ``minilm`` (all-MiniLM-L6-v2, BERT, 6 layers, 384-d), MoLE on ``query``/``value``,
variant ``copl``, the ``ukp`` preset's reward settings; one training step = forward of
``2B`` rows + BTL loss (+ balance loss) + backward + AdamW step, pure torch, no Ray.

Rows
- ``naive``        every layer adapted, full forward + backward per pair (today's path);
- ``cached k=1/2`` ``reward.adapted_layers=k``: MoLE in the top k layers, the frozen
                    layers below read from the per-text cache (warm: every text cached);
- ``fill k``        the one-off cost of the cache: lower layers under no_grad, per text,
                    extrapolated to every unique text of the data (and its memory).

    python benchmarks/frozen_cache.py                  # UKP texts from ../shared/data
    python benchmarks/frozen_cache.py --synthetic      # random word texts, same shapes
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch
from common import machine

from copl_ray.config import load_config
from copl_ray.reward import PersonalRewardModel, btl_loss, load_tokenizer
from copl_ray.reward.backbone import build_backbone


def ukp_texts(path: str) -> tuple[list[str], list[tuple[int, int]]]:
    """(unique model input texts, survey pairs as (chosen, rejected) text indices)."""
    from copl_ray.data.tables import format_text
    from copl_ray.data.ukp import build_ukp

    cfg = load_config("ukp", [f"data.path={path}"])
    tables = build_ukp(cfg.data)
    resp = tables.responses.set_index("response_id")
    texts = [format_text(p, t) for p, t in zip(resp["prompt"], resp["text"])]
    row = {rid: i for i, rid in enumerate(resp.index)}
    ann = tables.annotations[tables.annotations["split"] == "survey"]
    pairs = [(row[c], row[r]) for c, r in zip(ann["chosen"], ann["rejected"])]
    return texts, pairs


def synthetic_texts(n: int = 1040, n_pairs: int = 45000) -> tuple[list[str], list[tuple]]:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choices(words, k=rng.randint(60, 200))) for _ in range(n)]
    return texts, [tuple(rng.sample(range(n), 2)) for _ in range(n_pairs)]


def make_model(rc, variant: str, tok, backbone) -> PersonalRewardModel:
    return PersonalRewardModel(backbone, rc, variant, 64, 1, tok).train()


def clock() -> tuple[float, float]:
    """(wall s, CPU s of this process per torch thread): the CPU figure is what an idle
    machine would take (copl_ray/plan.py times the same way); the shared box's other
    sessions inflate only the wall figure."""
    return time.perf_counter(), time.process_time() / torch.get_num_threads()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    t1 = clock()
    return t1[0] - t0[0], t1[1] - t0[1]


def time_steps(model, batches, users, steps: int, warmup: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one optimizer step: the min over ``steps`` after ``warmup``."""
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        ids, mask = batches[i % len(batches)]
        b = ids.shape[0] // 2
        t0 = clock()
        s = model(ids, mask, users)
        loss = btl_loss(s[:b], s[b:]) + model.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(since(t0))
    return min(t[0] for t in times), min(t[1] for t in times)


def fill(model, tok, texts: list[str], max_length: int, chunk: int = 32):
    """(wall, CPU) seconds to cache ``texts`` (no_grad lower layers, ``chunk`` a call)."""
    t0 = clock()
    for i in range(0, len(texts), chunk):
        enc = tok(
            texts[i : i + chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        model.frozen.prefill(enc["input_ids"], enc["attention_mask"])
    return since(t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/ukpconvarg1")
    ap.add_argument("--synthetic", action="store_true", help="random texts instead of UKP")
    ap.add_argument("--batch", type=int, default=16, help="pairs per step (ukp preset: 16)")
    ap.add_argument("--max-length", type=int, default=256, help="tokens (ukp preset: 256)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--layers", default="1,2", help="adapted_layers values to time")
    ap.add_argument("--fill-texts", type=int, default=256, help="texts timed for the fill")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.synthetic or not Path(args.data).is_dir():
        texts, pairs, source = *synthetic_texts(), "synthetic"
    else:
        texts, pairs, source = *ukp_texts(args.data), f"UKPConvArg1 ({args.data})"
    rng = random.Random(0)
    picked = rng.sample(pairs, args.batch * (args.steps + args.warmup))
    tok = load_tokenizer("minilm")
    batches = []
    for i in range(0, len(picked), args.batch):
        chunk = picked[i : i + args.batch]
        rows = [texts[c] for c, _ in chunk] + [texts[r] for _, r in chunk]
        enc = tok(
            rows, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"
        )
        batches.append((enc["input_ids"], enc["attention_mask"]))
    lengths = [len(t) for t in tok(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    base = load_config(
        "ukp",
        [
            "reward.backbone=minilm",
            "reward.target_modules=[query, value]",
            f"reward.max_length={args.max_length}",
        ],
    ).reward
    users = torch.randn(args.batch, 64)
    pristine = build_backbone(base, tok)
    print(f"machine: {machine()}")
    print(
        f"data {source}: {len(texts)} unique texts, {len(pairs)} survey pairs, "
        f"{sum(lengths) / len(lengths):.0f} tokens a text on average (max {args.max_length}); "
        f"minilm, copl (experts {base.num_experts}, rank {base.rank}) on query/value; "
        f"{args.batch} pairs a step, min of {args.steps} steps after {args.warmup} warm-up"
    )
    import copy
    import dataclasses

    rows = []
    naive = make_model(base, "copl", tok, copy.deepcopy(pristine))
    t = time_steps(naive, batches, users, args.steps, args.warmup)
    rows.append(("naive (all 6 layers)", t, None))
    del naive
    for k in (int(x) for x in args.layers.split(",")):
        rc = dataclasses.replace(base, adapted_layers=k, cache_max_mb=1e6)
        model = make_model(rc, "copl", tok, copy.deepcopy(pristine))
        subset = texts[: args.fill_texts]
        per_text = [x / len(subset) for x in fill(model, tok, subset, args.max_length)]
        mb_per_token = model.frozen.cache.nbytes / 2**20 / sum(lengths[: len(subset)])
        for ids, mask in batches:  # warm: the timed batches' texts are cached too
            model.frozen.prefill(ids, mask)
        t = time_steps(model, batches, users, args.steps, args.warmup)
        rows.append((f"cached k={k}", t, (per_text, mb_per_token * sum(lengths))))
        del model
    for i, clock_name in enumerate(("wall s", "CPU s / thread (idle-machine figure)")):
        naive_s = rows[0][1][i]
        print(f"-- {clock_name}")
        print(
            f"{'path':22s} {'step s':>8s} {'steps/s':>8s} {'pairs/s':>8s} {'speed-up':>8s} "
            f"{'fill all s':>10s} {'cache MiB':>9s}"
        )
        for name, t, extra in rows:
            fill_s = f"{extra[0][i] * len(texts):10.1f}" if extra else f"{'-':>10s}"
            mib = f"{extra[1]:9.0f}" if extra else f"{'-':>9s}"
            print(
                f"{name:22s} {t[i]:8.3f} {1 / t[i]:8.3f} {args.batch / t[i]:8.1f} "
                f"{naive_s / t[i]:7.1f}x {fill_s} {mib}"
            )
    print(
        f"fill: timed on {min(args.fill_texts, len(texts))} texts, x {len(texts)} unique texts "
        f"(one-off per process: each Ray Train worker fills its own); pid {os.getpid()}"
    )


if __name__ == "__main__":
    main()
