"""Ray Tune sweep over the reward stage (experts, LoRA rank, gate temperature, lr).

    python jobs/tune.py --space tune_spaces/tiny.yaml
    python jobs/tune.py --space tune_spaces/ufp4-experts.yaml --config ufp4-gemma-2b
    python jobs/tune.py --space tune_spaces/tiny.yaml --resume      # continue a sweep

Data and GNN run once (or are reused); trials train only the reward model. Writes
results.csv / results.md / best_config.yaml into the sweep folder; the last line
printed is the path of best_config.yaml (usable with jobs/full.py --config).
"""

import argparse
import sys

from copl_ray.config import load_config, resolve_paths
from copl_ray.console import log
from copl_ray.pipeline import main_with_errors
from copl_ray.preflight import check_run_dir
from copl_ray.tune import load_space, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", required=True, help="search space YAML (tune_spaces/)")
    parser.add_argument("--config", help="preset or YAML (default: the space's base)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override (repeatable)",
    )
    parser.add_argument("--run-dir", help="run directory holding the data + GNN artifacts")
    parser.add_argument("--out", help="sweep folder (default: <run dir>/tune/<space name>)")
    parser.add_argument("--num-samples", type=int, help="override the space's num_samples")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    args = parser.parse_args(argv)

    def body() -> int:
        space = load_space(args.space)
        if args.num_samples:
            space.num_samples = args.num_samples
        cfg = load_config(args.config or space.base, [*space.overrides, *args.overrides])
        if args.run_dir:
            cfg.run.dir = args.run_dir
        resolve_paths(cfg)  # absolute: trials run in Ray workers, not in this cwd
        check_run_dir(cfg)  # the sweep folder is created under it before any stage
        out = run_sweep(space, cfg, out_dir=args.out, resume=args.resume)
        print(out["results_md"].read_text(), flush=True)
        log(
            f"best {out['best']} ({space.metric} {out['best_metric']:.4f}); "
            f"results: {out['results_csv']}"
        )
        print(out["best_config"], flush=True)
        return 0

    return main_with_errors(body)


if __name__ == "__main__":
    sys.exit(main())
