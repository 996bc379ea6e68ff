"""The ``bioflow`` command line: ``bioflow check my.yaml`` validates an experiment config
without Snakemake and prints it with the defaults filled in; ``bioflow profile install slurm``
installs the SLURM profile so that ``snakemake --profile slurm`` finds it. (The Snakemake scripts run their
stage through :func:`bioflow.workflows.run_stage`.)"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from bioflow import __version__, cluster_profile, workflows
from bioflow.errors import BioflowError

log = logging.getLogger("bioflow")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bioflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bioflow {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="validate an experiment config and print it with defaults")
    p_check.add_argument("config")
    p_check.add_argument("--quiet", action="store_true")
    p_prof = sub.add_parser("profile", help="Snakemake profiles")
    p_prof_sub = p_prof.add_subparsers(dest="action", required=True)
    p_inst = p_prof_sub.add_parser(
        "install", help="write a profile into your Snakemake config folder, for `snakemake --profile NAME`")
    p_inst.add_argument("name", choices=sorted(cluster_profile.TEMPLATES))
    p_inst.add_argument("--account", help="SLURM account (asked when omitted on a terminal; empty: none)")
    p_inst.add_argument("--partition", help="partition of the CPU stages (empty: the cluster's default)")
    p_inst.add_argument("--gpu-partition", help="partition of the GPU stages, train and predict")
    p_inst.add_argument("--force", action="store_true", help="replace an existing profile of that name")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            cfg = workflows.load(args.config)
            if not args.quiet:
                sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False))
            sys.stderr.write(f"{args.config}: valid\n")
        elif args.cmd == "profile":
            values = {k: getattr(args, k) for k in ("account", "partition", "gpu_partition")}
            if sys.stdin.isatty():  # ask for what the command line left out
                for key, question in (("account", "SLURM account"), ("partition", "CPU partition"),
                                      ("gpu_partition", "GPU partition")):
                    if values[key] is None:
                        values[key] = input(f"{question} (empty: leave out): ").strip() or None
            path = cluster_profile.install(args.name, force=args.force, **values)
            sys.stderr.write(f"wrote {path}; use it with: snakemake --profile {args.name} --configfile my.yaml\n")
    except BioflowError as exc:
        sys.stderr.write(f"bioflow: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
