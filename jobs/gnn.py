"""Train the GNN over the user-response graph and adapt unseen users (runs data first if needed).

    python jobs/gnn.py [--config PRESET|PATH] [--set a.b=c ...] [--run-dir DIR] [--force]

A prerequisite stage runs only when its artifact is missing or stale; the report is
refreshed afterwards and the last line printed is the path of report.json.
"""

import argparse
import sys

from copl_ray.pipeline import add_run_arguments, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, default_stages="gnn")
    return run_job(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
