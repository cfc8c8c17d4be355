"""Run the whole pipeline: data → GNN → reward (CoPL + baselines) → eval → report.

    python jobs/full.py                              # embedded tiny default, local Ray
    python jobs/full.py --config ukp                 # real annotators (UKPConvArg1)
    python jobs/full.py --data prefs.parquet         # your own user_id,prompt,chosen,rejected
    python jobs/full.py --seeds 0,1,2                # a run per seed, report cells mean ± sd
    python jobs/full.py --config ufp4-gemma-7b --run-dir s3://bucket/runs/ufp4
    ray job submit --working-dir . -- python jobs/full.py --config ufp4-gemma-2b

The last line printed is the path of report.json.
"""

import argparse
import sys

from copl_ray.pipeline import add_run_arguments, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, default_stages=None)
    return run_job(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
