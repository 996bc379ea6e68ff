"""The ``bioflow`` command line: ``bioflow check my.yaml`` validates an experiment config
without Snakemake and prints it with the defaults filled in. (The Snakemake scripts run their
stage through :func:`bioflow.workflows.run_stage`.)"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from bioflow import __version__, workflows
from bioflow.errors import BioflowError

log = logging.getLogger("bioflow")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bioflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bioflow {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="validate an experiment config and print it with defaults")
    p_check.add_argument("config")
    p_check.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            cfg = workflows.load(args.config)
            if not args.quiet:
                sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False))
            sys.stderr.write(f"{args.config}: valid\n")
    except BioflowError as exc:
        sys.stderr.write(f"bioflow: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
