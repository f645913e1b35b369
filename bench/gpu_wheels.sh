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
# pyyaml, but not diffusers, nor what the farm's modules on a bench's import path need besides:
# pydantic (the story), boto3 (storage), prometheus-client and psutil (metrics). Those are
# fetched without their dependencies, each of which is listed, so that nothing replaces the
# machine's own torch (diffusers' importlib_metadata requirement is for Python < 3.8 only).
# About 26 MB; the versions are ones pyproject.toml allows.
set -euo pipefail

dest="${1:-.whl}"
python="${PYTHON:-python3}"
mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    -d "$dest" \
    "diffusers==0.42.1" \
    "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" \
    "typing-inspection==0.4.5" \
    "boto3==1.44.8" "botocore==1.44.8" "s3transfer==0.19.3" "jmespath==1.1.0" \
    "python-dateutil==2.9.0.post0" "six==1.17.0" \
    "prometheus-client==0.26.0" "psutil==7.2.2"
ls -l "$dest"
