"""CLI: ``python -m copl_ray.data build --config tiny [--set a.b=c ...] [--out DIR]``.

Writes the four tables + ``summary.json`` into ``--out`` (default ``<run.dir>/data``) and
prints the summary. Bad input or config prints one clear line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from copl_ray.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m copl_ray.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the preference tables and print the summary")
    b.add_argument("--config", default="tiny", help="preset name or YAML path")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C")
    b.add_argument("--out", default=None, help="output folder (default: <run.dir>/data)")
    args = parser.parse_args(argv)

    from copl_ray.data.build import build_tables
    from copl_ray.data.validate import DataError

    try:
        cfg = load_config(args.config, args.overrides)
        t0 = time.time()
        tables = build_tables(cfg)
        out = Path(args.out) if args.out else Path(cfg.run.dir) / "data"
        tables.write(out)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(tables.summary.format())
    print(f"wrote {out} in {time.time() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
