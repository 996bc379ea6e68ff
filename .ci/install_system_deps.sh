#!/usr/bin/env bash
# System packages the test suite uses: a single-node SLURM cluster (slurmctld, slurmd, munge)
# for tests/test_slurm.py. Idempotent; does nothing when they are present or without root/apt.
set -euo pipefail
PKGS="slurmctld slurmd slurm-client munge"
if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v munged >/dev/null; then
  echo "SLURM present"; exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "cannot install $PKGS (needs root and apt-get); the SLURM test will skip" >&2; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
echo "installed $PKGS"
