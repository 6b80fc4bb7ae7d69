#!/bin/sh
# Install npusim into a fresh virtual environment: what deploy/Dockerfile runs, and what CI runs
# too (tests/test_deploy.py), so the image's recipe is tested where no container engine exists.
#
#   deploy/install.sh PREFIX [SOURCE]
#
# PREFIX: the venv to create (e.g. /opt/npusim); SOURCE: a checkout or a wheel (default: this
# checkout). Runtime dependencies only: no test extras, no torch.
set -eu
prefix="${1:?usage: install.sh PREFIX [SOURCE]}"
source="${2:-$(cd "$(dirname "$0")/.." && pwd)}"
python3 -m venv "$prefix"
"$prefix/bin/pip" install --no-cache-dir --disable-pip-version-check --quiet "$source"
"$prefix/bin/npusim" --help > /dev/null
echo "installed npusim into $prefix"
