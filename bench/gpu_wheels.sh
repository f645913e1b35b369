#!/usr/bin/env bash
# The wheels bench/gpu_render.py needs on a GPU machine that has PyTorch but no network.
#
# Run once, from the repository root, where PyPI is reachable:
#     bash bench/gpu_wheels.sh            # writes .whl/ (ignored by git)
# then carry .whl/ to the GPU machine together with the checkout and, from its root:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#         --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#     PYTHONUNBUFFERED=1 python3 bench/gpu_render.py --out bench/results/gpu_render.json
#
# Such machines (Python 3.12, x86-64, CUDA PyTorch) ship transformers, tokenizers, safetensors,
# huggingface-hub (>= 1.32, as diffusers 0.42 asks), numpy, pillow, regex, requests, filelock and
# pyyaml, but not diffusers. Only diffusers is fetched, without its dependencies, so that nothing
# replaces the machine's own torch (its importlib_metadata requirement is for Python < 3.8 only;
# 3.12 uses the standard library's). 6.4 MB; the version is the one pyproject.toml allows.
set -euo pipefail

dest="${1:-.whl}"
python="${PYTHON:-python3}"
mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    -d "$dest" \
    "diffusers==0.42.1"
ls -l "$dest"
