"""The two images: lint-clean with hadolint, pinned bases, multi-stage, non-root, with
healthchecks, and built the way the farm needs (the CUDA torch of the project's pinned
version, onnxruntime-gpu alone in the worker, gunicorn serving the dashboard's factory).

No Docker engine runs here, so the files are read, as hadolint reads them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.tools import DEPLOY, ROOT, tool

WORKER = DEPLOY / "Dockerfile.worker"
DASHBOARD = DEPLOY / "Dockerfile.dashboard"


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str


def instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        name, _, args = whole.partition(" ")
        found.append(Instruction(name.upper(), " ".join(args.split())))
    return found


def stages(path: Path) -> list[list[Instruction]]:
    """Instructions per build stage; the global ARGs before the first FROM form stage 0."""
    result: list[list[Instruction]] = [[]]
    for instruction in instructions(path):
        if instruction.name == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(
        i.args.split("=", 1) for i in instructions(path) if i.name == "ARG" and "=" in i.args
    )


def pinned_torch() -> str:
    """The torch version pyproject.toml pins: the images must install exactly it."""
    match = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins torch"
    return match.group(1)


@pytest.mark.parametrize("dockerfile", [WORKER, DASHBOARD], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path):
    done = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("dockerfile", [WORKER, DASHBOARD], ids=lambda p: p.name)
def test_bases_are_pinned_and_the_build_is_multi_stage(dockerfile: Path):
    defaults = arg_defaults(dockerfile)
    froms = [i.args for i in instructions(dockerfile) if i.name == "FROM"]
    assert len(froms) >= 2, "a build stage and a runtime stage"
    build_stage = froms[0].split(" AS ")[1]
    for line in froms:
        image = line.split(" AS ")[0]
        variable = re.fullmatch(r"\$\{(\w+)\}", image)
        if variable:  # hadolint cannot see through an ARG, so its default is checked here
            image = defaults[variable.group(1)]
        name, _, tag = image.partition(":")
        assert name and re.search(r"\d+\.\d+", tag) and "latest" not in tag, image
    final = stages(dockerfile)[-1]
    assert f"--from={build_stage}" in " ".join(i.args for i in final if i.name == "COPY")
    assert not [i for i in final if i.name == "RUN" and "pip install" in i.args], (
        "packages are installed in the build stage; the runtime only copies them"
    )


@pytest.mark.parametrize("dockerfile", [WORKER, DASHBOARD], ids=lambda p: p.name)
def test_runs_as_a_non_root_user_with_a_healthcheck(dockerfile: Path):
    final = stages(dockerfile)[-1]
    users = [i.args for i in final if i.name == "USER"]
    assert users, "the runtime stage sets a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, users[-1]  # numeric: runAsNonRoot can check it
    last_user = max(n for n, i in enumerate(final) if i.name == "USER")
    assert not [i for i in final[last_user:] if i.name == "RUN"], "nothing runs as root after"
    (healthcheck,) = [i.args for i in final if i.name == "HEALTHCHECK"]
    assert "CMD [" in healthcheck, "exec form: no shell needed to check health"


@pytest.mark.parametrize("dockerfile", [WORKER, DASHBOARD], ids=lambda p: p.name)
def test_the_build_context_admits_only_what_is_copied(dockerfile: Path):
    """BuildKit reads `<Dockerfile>.dockerignore` beside the Dockerfile: everything out, then
    the sources the COPY lines name back in, so a venv or a data folder never ships."""
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    admitted = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {
        source
        for i in instructions(dockerfile)
        if i.name == "COPY" and "--from" not in i.args
        for source in i.args.split()[:-1]
    }
    assert copied == admitted
    for source in copied:
        assert (ROOT / source).exists(), source


def test_worker_installs_the_cuda_torch_of_the_pinned_version():
    defaults = arg_defaults(WORKER)
    assert defaults["TORCH_VERSION"] == pinned_torch()
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", defaults["TORCH_INDEX_URL"])
    cuda = re.search(r"cu(\d+)$", defaults["TORCH_INDEX_URL"]).group(1)
    base_cuda = re.search(r":(\d+)\.(\d+)", defaults["CUDA_IMAGE"])
    assert cuda == base_cuda.group(1) + base_cuda.group(2), "torch's CUDA is the base image's"
    runs = [i.args for i in instructions(WORKER) if i.name == "RUN"]
    (torch,) = [r for r in runs if "torch==" in r]
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in torch


def test_worker_keeps_onnxruntime_gpu_alone():
    """insightface requires plain onnxruntime, which shares its files with onnxruntime-gpu:
    the extra goes in, both come out, and the GPU build goes back without its dependencies."""
    (install,) = [i.args for i in instructions(WORKER) if i.name == "RUN" and '".[gpu]"' in i.args]
    steps = [step.strip() for step in install.split("&&")]
    order = [
        next(n for n, s in enumerate(steps) if "pip install --constraint" in s and '".[gpu]"' in s),
        next(n for n, s in enumerate(steps) if s.startswith("pip uninstall -y onnxruntime")),
        next(
            n
            for n, s in enumerate(steps)
            if s.startswith("pip install --no-deps")
            and "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" in s
        ),
    ]
    assert order == sorted(order)
    assert "onnxruntime-gpu" in steps[order[1]], "both builds are removed before reinstalling"
    assert re.fullmatch(r"\d+\.\d+\.\d+", arg_defaults(WORKER)["ONNXRUNTIME_GPU_VERSION"])


def test_worker_runs_farm_worker_and_reads_models_from_a_volume():
    final = stages(WORKER)[-1]
    (entrypoint,) = [i.args for i in final if i.name == "ENTRYPOINT"]
    (command,) = [i.args for i in final if i.name == "CMD"]
    assert entrypoint == '["tini", "--"]', "a PID 1 that hands SIGTERM on for warm shutdown"
    assert command.startswith('["farm", "worker", "--devices", "0"')
    assert "--beat" not in command
    env = " ".join(i.args for i in final if i.name == "ENV")
    for setting in ("FARM_MODELS_DIR=/models", "HF_HUB_OFFLINE=1", "FARM_DEVICE=cuda"):
        assert setting in env
    assert not [i for i in instructions(WORKER) if i.name == "COPY" and "models" in i.args]
    (healthcheck,) = [i.args for i in final if i.name == "HEALTHCHECK"]
    assert '"workers.probe", "--liveness"' in healthcheck
    assert re.search(r"--start-period=(\d+)m", healthcheck), "minutes to load the models"


def test_dashboard_image_serves_the_app_factory_with_gunicorn():
    final = stages(DASHBOARD)[-1]
    (command,) = [i.args for i in final if i.name == "CMD"]
    assert command == (
        '["gunicorn", "--config", "python:dashboard.gunicorn_conf", "--bind", "0.0.0.0:8000", '
        '"dashboard.app:create_app()"]'
    )
    assert (ROOT / "dashboard" / "gunicorn_conf.py").is_file()
    assert [i.args for i in final if i.name == "EXPOSE"] == ["8000"]
    (healthcheck,) = [i.args for i in final if i.name == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/healthz" in healthcheck
    defaults = arg_defaults(DASHBOARD)
    assert defaults["TORCH_VERSION"] == pinned_torch()
    assert defaults["TORCH_INDEX_URL"].endswith("/cpu"), "the dashboard never renders"
    assert re.fullmatch(r"\d+(\.\d+)+", defaults["GUNICORN_VERSION"])
