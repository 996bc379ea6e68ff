"""Command line and the glue every Snakemake script shares.

`bioflow check my.yaml` validates a config without Snakemake. `script_main` runs a stage
inside a `workflow/scripts/*.py` script: logging into the rule's log file, and a user error
(BioflowError) printed as one line with a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from bioflow.errors import BioflowError

log = logging.getLogger("bioflow")


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)


def script_main(snakemake, stage_fn) -> None:
    """Run ``stage_fn(cfg)`` for a Snakemake script, with logging and clean user errors."""
    setup_logging(snakemake.log[0] if snakemake.log else None)
    if getattr(snakemake, "threads", None):
        # Intra-op threads = the cores Snakemake gave the job (also under SLURM).
        try:
            import torch

            torch.set_num_threads(max(1, int(snakemake.threads)))
        except ImportError:
            pass
        os.environ.setdefault("OMP_NUM_THREADS", str(snakemake.threads))
    try:
        stage_fn(snakemake.config)
    except BioflowError as exc:
        log.error("%s", exc)
        sys.stderr.write(f"bioflow: error: {exc}\n")
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    from bioflow import __version__, config

    parser = argparse.ArgumentParser(prog="bioflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bioflow {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="validate an experiment config and print it with defaults")
    p_check.add_argument("config")
    p_check.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            import yaml

            from bioflow import workflows
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
