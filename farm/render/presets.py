"""Model presets: which SDXL base, which PhotoMaker checkpoint and which face model a render
uses, and where their files are found on this machine.

Real presets read official weights from `FARM_MODELS_DIR` (a folder per model) or from the
Hugging Face cache, never from the network at render time: a missing file is a
`ModelNotFoundError` that names what to fetch. `farm models pull` fetches them where internet
exists.

Fast presets stack a few-step LoRA (LCM-LoRA, Hyper-SD, SDXL-Lightning) on PhotoMaker's and
render with the scheduler, step count and guidance it was distilled for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from farm.errors import InputError, ModelNotFoundError


class SchedulerKind(StrEnum):
    """The sampler a few-step LoRA was distilled for."""

    LCM = "lcm"  # LCM-LoRA: LCMScheduler
    TCD = "tcd"  # TCD-LoRA, Hyper-SD's unified LoRA: TCDScheduler
    EULER_TRAILING = "euler-trailing"  # Lightning, Hyper-SD N-step: Euler from timestep 999


@dataclass(frozen=True)
class FastLora:
    """A few-step LoRA fused on top of PhotoMaker's, with the sampling it needs: its scheduler,
    step count and guidance replace the story's (a 4-step LoRA run for 50 steps, or with the
    wrong timesteps, makes worse pictures, not better ones)."""

    repo: str  # Hugging Face repo id ("" for the tiny build's own file)
    file: str
    scheduler: SchedulerKind
    steps: int
    guidance: float
    weight: float = 1.0


@dataclass(frozen=True)
class Preset:
    name: str
    version: int  # PhotoMaker version
    base_model: str  # Hugging Face repo id of the SDXL base, diffusers layout
    checkpoint_repo: str
    checkpoint_file: str
    face_model: str  # "buffalo_l" / "antelopev2" (insightface) or "dlib"
    steps: int = 50
    guidance: float = 5.0
    size: tuple[int, int] = (1024, 1024)
    batch_size: int = 2  # renders per UNet call on one GPU
    tiny: bool = False
    fast: FastLora | None = None

    @property
    def queue(self) -> str:
        return f"render.{self.name}"

    @property
    def tokens_per_photo(self) -> int:
        """ID tokens each reference photo adds to a prompt: one in V1, two in V2."""
        return 1 if self.version == 1 else 2

    @property
    def consistency(self) -> bool:
        """Whether a story may share self-attention across scenes on this preset. Not with a
        few-step LoRA: it was distilled on the UNet's own attention, and in 2 to 8 steps no
        later step corrects what shared attention shifts; the farm refuses it until measured."""
        return self.fast is None

    def sampling(self, steps: int, guidance: float) -> tuple[int, float]:
        """The steps and guidance a render uses: the story's, unless a fast LoRA fixes them."""
        if self.fast is None:
            return steps, guidance
        return self.fast.steps, self.fast.guidance


_REALVIS = "SG161222/RealVisXL_V4.0"  # the reference demo's base model
# Written by farm.render.tiny's build_tiny (which spells it too), in kohya's layout.
TINY_FAST_LORA = "tiny-fast-lora.safetensors"


def _fast_v2(name: str, fast: FastLora) -> Preset:
    """photomaker-v2 with a few-step LoRA on top."""
    return Preset(
        name,
        2,
        _REALVIS,
        "TencentARC/PhotoMaker-V2",
        "photomaker-v2.bin",
        "buffalo_l",
        fast.steps,
        fast.guidance,
        fast=fast,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", 2, "", "", "photomaker-v2.bin", "dlib", 4, 5.0, (64, 64), 8, tiny=True),
        Preset("tiny-v1", 1, "", "", "photomaker-v1.bin", "dlib", 4, 5.0, (64, 64), 8, tiny=True),
        Preset("photomaker-v1", 1, _REALVIS, "TencentARC/PhotoMaker", "photomaker-v1.bin", "dlib"),
        Preset(
            "photomaker-v2",
            2,
            _REALVIS,
            "TencentARC/PhotoMaker-V2",
            "photomaker-v2.bin",
            "buffalo_l",
        ),
        Preset(
            "tiny-fast",
            2,
            "",
            "",
            "photomaker-v2.bin",
            "dlib",
            2,
            1.0,
            (64, 64),
            8,
            tiny=True,
            fast=FastLora("", TINY_FAST_LORA, SchedulerKind.LCM, steps=2, guidance=1.0),
        ),
        # Each LoRA with its authors' recommended sampling. Hyper-SD's CFG-preserving LoRA keeps
        # the negative prompt working (guidance 5); its DDIM-trailing recipe is Euler-trailing.
        _fast_v2(
            "photomaker-v2-lightning",
            FastLora(
                "ByteDance/SDXL-Lightning",
                "sdxl_lightning_4step_lora.safetensors",
                SchedulerKind.EULER_TRAILING,
                steps=4,
                guidance=0.0,
            ),
        ),
        _fast_v2(
            "photomaker-v2-hyper",
            FastLora(
                "ByteDance/Hyper-SD",
                "Hyper-SDXL-8steps-CFG-lora.safetensors",
                SchedulerKind.EULER_TRAILING,
                steps=8,
                guidance=5.0,
            ),
        ),
        _fast_v2(
            "photomaker-v2-lcm",
            FastLora(
                "latent-consistency/lcm-lora-sdxl",
                "pytorch_lora_weights.safetensors",
                SchedulerKind.LCM,
                steps=6,
                guidance=1.0,
            ),
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class ModelFiles:
    sdxl_dir: Path
    checkpoint: Path
    models_dir: Path  # where the face model packs are looked up
    fast_lora: Path | None = None


def _hf_cached(repo_id: str, filename: str | None = None) -> Path | None:
    """A file or snapshot already in the Hugging Face cache; never touches the network."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if filename is None:
            return Path(snapshot_download(repo_id, local_files_only=True))
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception:  # the hub client raises several kinds of "not cached"
        return None


def locate(preset: Preset, models_dir: Path, sdxl_base: str | None = None) -> ModelFiles:
    """Find a preset's files, building the tiny ones on first use."""
    if preset.tiny:
        from farm.render.tiny import ensure_tiny  # torch and diffusers: only when needed

        root = ensure_tiny(models_dir)
        fast_lora = root / preset.fast.file if preset.fast else None
        return ModelFiles(root / "sdxl", root / preset.checkpoint_file, models_dir, fast_lora)

    base = sdxl_base or preset.base_model
    candidates = [Path(base), models_dir / base, models_dir / base.split("/")[-1]]
    sdxl_dir = next((p for p in candidates if (p / "model_index.json").is_file()), None)
    if sdxl_dir is None and "/" in base and not Path(base).is_absolute():
        cached = _hf_cached(base)
        # A cached snapshot may hold only the single-file checkpoint: not a diffusers folder.
        if cached is not None and (cached / "model_index.json").is_file():
            sdxl_dir = cached
    if sdxl_dir is None:
        raise ModelNotFoundError(
            f"preset {preset.name!r} needs the SDXL base {base!r} in diffusers format: run "
            f"`farm models pull {preset.name}` where internet is available, or put the folder "
            f"at {models_dir / base.split('/')[-1]}"
        )
    checkpoint = next(
        (
            p
            for p in (
                models_dir / preset.checkpoint_file,
                models_dir / "photomaker" / preset.checkpoint_file,
            )
            if p.is_file()
        ),
        None,
    ) or _hf_cached(preset.checkpoint_repo, preset.checkpoint_file)
    if checkpoint is None:
        raise ModelNotFoundError(
            f"preset {preset.name!r} needs {preset.checkpoint_file} from {preset.checkpoint_repo}: "
            f"run `farm models pull {preset.name}`, or put the file at "
            f"{models_dir / preset.checkpoint_file}"
        )
    return ModelFiles(sdxl_dir, checkpoint, models_dir, _locate_fast_lora(preset, models_dir))


def _locate_fast_lora(preset: Preset, models_dir: Path) -> Path | None:
    fast = preset.fast
    if fast is None:
        return None
    # Several repos name their file pytorch_lora_weights.safetensors: a folder per repo.
    home = _lora_dir(models_dir, fast) / fast.file
    candidates = (home, models_dir / "loras" / fast.file)
    found = next((p for p in candidates if p.is_file()), None) or _hf_cached(fast.repo, fast.file)
    if found is None:
        raise ModelNotFoundError(
            f"preset {preset.name!r} needs the LoRA {fast.file} from {fast.repo}: run "
            f"`farm models pull {preset.name}`, or put the file at {home}"
        )
    return found


def _lora_dir(models_dir: Path, fast: FastLora) -> Path:
    return models_dir / "loras" / fast.repo.split("/")[-1]


def pull(preset: Preset, models_dir: Path, sdxl_base: str | None = None) -> ModelFiles:
    """Download a preset's weights into `models_dir` (needs internet; not for workers)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if not preset.tiny:
        base = sdxl_base or preset.base_model
        try:
            snapshot_download(
                base,
                local_dir=models_dir / base.split("/")[-1],
                # The diffusers folders only, not the single-file checkpoint beside them.
                allow_patterns=["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"],
            )
            hf_hub_download(preset.checkpoint_repo, preset.checkpoint_file, local_dir=models_dir)
            if preset.fast is not None:
                fast = preset.fast
                hf_hub_download(fast.repo, fast.file, local_dir=_lora_dir(models_dir, fast))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
            raise ModelNotFoundError(download_hint(preset, models_dir, base, error)) from None
        if preset.face_model != "dlib":
            raise_face_pack_hint(preset, models_dir)
    return locate(preset, models_dir, sdxl_base)


def download_hint(preset: Preset, models_dir: Path, base: str, error: Exception) -> str:
    """One line for a pull that could not reach the hub (no internet, a proxy, a gated repo):
    what to download and where to put it, so the files can come from another machine."""
    said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    wanted = [
        f"{base}'s diffusers folders into {models_dir / base.split('/')[-1]}",
        f"{preset.checkpoint_file} from {preset.checkpoint_repo} into {models_dir}",
    ]
    if preset.fast is not None:
        fast = preset.fast
        wanted.append(f"{fast.file} from {fast.repo} into {_lora_dir(models_dir, fast)}")
    return (
        f"cannot download preset {preset.name!r} from the Hugging Face hub ({said}); run "
        f"`farm models pull {preset.name}` where there is internet and copy the files, or put "
        + "; ".join(wanted)
    )


def raise_face_pack_hint(preset: Preset, models_dir: Path) -> None:
    """insightface's packs are not on the Hugging Face hub under a stable name; say where to
    put them rather than guessing a download."""
    pack = models_dir / "insightface" / "models" / preset.face_model
    if not any(pack.glob("*.onnx")):
        raise ModelNotFoundError(
            f"preset {preset.name!r} also needs insightface's {preset.face_model} pack: unzip "
            f"{preset.face_model}.zip from insightface's model zoo into {pack}"
        )
