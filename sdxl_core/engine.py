"""SDXL base + refiner generation: exact loading, reproducible per-image seeds, batching.

The two stages follow the diffusers SDXL guide's "ensemble of experts": the base pipeline denoises
from pure noise to ``denoising_end=split`` and returns latents; the refiner, sharing the base's
``text_encoder_2`` and ``vae``, continues from ``denoising_start=split`` and decodes. A request whose
``refiner_split`` is None is the base alone: it runs every step and its VAE decodes. An engine loaded
with ``refiner=None`` never loads (or hashes) the refiner, and makes base-only images only.

Loading. A local diffusers folder, a hub id pinned to a commit, or a single ``.safetensors`` checkpoint
in the original SDXL layout (``from_single_file`` with ``base_config``/``refiner_config``: a local
folder holding the model's config files, so nothing is fetched). Every weight file is hashed before
anything is loaded, and ``expected_sha256`` refuses weights that differ from the configured ones.
A VAE whose config says ``force_upcast`` (the plain SDXL VAE, which overflows to NaN in float16) is
refused in float16 unless ``upcast_vae`` keeps it in float32; the fp16-fix VAE (``vae=``, whose
config says ``force_upcast: false``) runs in float16.

Generation. The sampler is chosen by name (``sdxl_core.schedulers``) on the model's own schedule, and
SDXL's micro-conditioning (original and target size, crop, the refiner's aesthetic scores) are explicit
``ImageRequest`` fields whose defaults are diffusers' own.

Reproducibility. Every image has its own ``torch.Generator`` on the CPU, seeded with its request's
seed, and the initial noise is drawn from it alone (diffusers' generator lists), so an image's noise
never depends on its neighbours or on the device. Requests that share shape and sampling parameters
run as one batch; an image's base latents are then the same, to the bit on CPU, alone or in any batch
(tests/sdxl_core/test_engine.py proves it). Requests with an empty negative prompt batch separately
from those with one, because SDXL's base uses zero embeddings for an empty negative prompt.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)

from sdxl_core.hashing import WeightHashCache, component_hash, hash_component_folder, weight_files
from sdxl_core.invariance import make_batch_invariant
from sdxl_core.schedulers import build_scheduler, check_scheduler_name, scheduler_record
from sdxl_core.seeds import SEED_BOUND

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
MIN_SIDE = 64
ROLES = ("base_unet", "refiner_unet", "text_encoder", "text_encoder_2", "vae")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MICRO_CONDITIONING = (
    "original_size",
    "target_size",
    "crops_coords_top_left",
    "aesthetic_score",
    "negative_aesthetic_score",
)


class WeightHashMismatch(ValueError):
    """A component's weights differ from the configured ``expected_sha256``: nothing is loaded."""

    def __init__(self, role: str, name: str, expected: str, actual: str) -> None:
        self.role, self.name, self.expected, self.actual = role, name, expected, actual
        super().__init__(
            f"component {role} ({name}) has sha256 {actual}, but {expected} is expected: refusing to load "
            f"weights other than the configured ones (check the model path, or update the expected hash)"
        )


def _pair(value: object) -> object:
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class ImageRequest:
    """One image to generate. ``seed`` is the image's own seed (``seeds.image_seed``)."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    # in (0, 1): the base's denoising_end and the refiner's denoising_start; None: the base alone
    refiner_split: float | None
    # SDXL micro-conditioning, with diffusers' defaults. Sizes are (height, width) as diffusers takes
    # them; None becomes the image's own (height, width), which is what diffusers uses for None.
    original_size: tuple[int, int] | None = None
    target_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)  # (top, left)
    aesthetic_score: float = 6.0  # the refiner's (its UNet is conditioned on it)
    negative_aesthetic_score: float = 2.5

    def __post_init__(self) -> None:
        # Resolve None to explicit values, so a request always says what it is generated with.
        for name in ("original_size", "target_size"):
            value = getattr(self, name)
            object.__setattr__(self, name, (self.height, self.width) if value is None else _pair(value))
        object.__setattr__(self, "crops_coords_top_left", _pair(self.crops_coords_top_left))

    def micro_conditioning(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in MICRO_CONDITIONING}


@dataclass(frozen=True)
class ComponentInfo:
    """One loaded model component and the exact weight files it came from."""

    role: str  # "base_unet", "refiner_unet", "text_encoder", "text_encoder_2", "vae"
    name: str  # "sdxl-tiny-base/unet", "<hub id>/<subfolder>", or "<checkpoint file name>:<subfolder>"
    source: str  # local folder path, "hub:<id>@<revision>", or the single checkpoint file's path
    sha256: str  # sha256 over the sorted (relative filename, file sha256) list
    files: dict[str, str]  # relative filename -> file sha256


@dataclass
class GeneratedImage:
    request: ImageRequest
    pixels: np.ndarray  # uint8, height x width x 3, RGB
    base_latents: torch.Tensor  # the base stage's output latents for this image, float32, CPU


@dataclass(frozen=True)
class EngineConfig:
    """What to load, where and how. Every field is recorded with the images it makes.

    ``base``/``refiner``: a local diffusers folder, a hub id pinned with ``revision`` (a 40-hex
    commit; ``refiner_revision`` when the refiner repo's commit differs, which it does for the
    published SDXL repos), or a single ``.safetensors`` checkpoint in the original SDXL layout with
    ``base_config``/``refiner_config`` naming a local folder of that model's diffusers config files
    (model_index.json, unet/config.json, ..., tokenizer*/, scheduler/; weights there are ignored).
    Throughput options default to off, so CPU behaviour is plain diffusers.
    """

    base: str
    refiner: str | None  # None: base only, the refiner is neither loaded nor hashed
    revision: str | None = None
    device: str = "cpu"
    dtype: str = "float32"  # "float32" | "float16" | "bfloat16"
    refiner_revision: str | None = None
    variant: str | None = None  # weight file variant to load, e.g. "fp16"
    max_batch_size: int = 4
    # Compute the layers whose rows are images one row at a time, so an image's latents are the
    # same bits alone or in any batch (sdxl_core/invariance.py). Costs little; off only to measure.
    batch_invariant: bool = True
    hash_cache: str | None = None  # JSON file of cached weight hashes; default ~/.cache/atelier/weight-hashes.json
    # Throughput (issue 3). SDPA attention is always on (diffusers' default, checked at load).
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False  # torch.compile of both UNets and the VAE decoder; CUDA only
    compile_mode: str | None = None  # passed to torch.compile (None: its default)
    # Single-file checkpoints: the local folder with the model's diffusers configs (no network).
    base_config: str | None = None
    refiner_config: str | None = None
    # A local AutoencoderKL folder used instead of the model's VAE, e.g. the fp16-fix SDXL VAE.
    vae: str | None = None
    # Keep a VAE that needs float32 (config force_upcast, the plain SDXL VAE) in float32 when dtype is
    # float16; without it such a VAE is refused in float16 (it overflows to NaN: black images).
    upcast_vae: bool = False
    vae_tiling: bool = False  # decode in overlapping tiles (large sizes); decode is one image at a time
    scheduler: str = "euler"  # a name in sdxl_core.schedulers.SCHEDULERS, on the model's own schedule
    # role -> component sha256 the loaded weights must have; a mismatch refuses before loading.
    expected_sha256: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], **overrides: Any) -> EngineConfig:
        """The config a ``describe()["config"]`` records, with ``overrides`` (unknown keys are ignored)."""
        values = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        values.update(overrides)
        return cls(**values)


def _check_config(config: EngineConfig) -> None:
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    if not isinstance(config.max_batch_size, int) or config.max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {config.max_batch_size!r}")
    check_scheduler_name(config.scheduler)
    for role, sha in dict(config.expected_sha256).items():
        if role not in ROLES:
            raise ValueError(f"expected_sha256 has unknown component {role!r}; components are {', '.join(ROLES)}")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise ValueError(f"expected_sha256[{role!r}] must be a 64-hex lowercase sha256, got {sha!r}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for, but CUDA is not available; use device='cpu'")
    if config.compile and device.type != "cuda":
        raise ValueError(
            f"compile=True is supported on CUDA only (device is {config.device!r}): torch.compile of the SDXL "
            "UNets takes minutes on a CPU and is not tuned there; set compile=False"
        )


@dataclass(frozen=True)
class _Model:
    """Where one model's weights and configs are: a diffusers folder, or one checkpoint file + configs."""

    folder: Path  # the diffusers folder (for a single file: the folder with its configs)
    source: str
    name: str
    single_file: Path | None = None


def _resolve_model(model: str, revision: str | None, config_dir: str | None, what: str) -> _Model:
    local = Path(model).expanduser()
    if local.is_file():
        if local.suffix != ".safetensors":
            raise ValueError(
                f"{what} {str(local)!r} is a file but not .safetensors: only safetensors checkpoints are "
                "loaded (a pickled .ckpt can run code when loaded)"
            )
        if config_dir is None:
            raise ValueError(
                f"{what} {str(local)!r} is a single-file checkpoint: set {what}_config to a local folder with the "
                "model's diffusers config files (model_index.json, unet/, vae/, text_encoder*/, tokenizer*/, "
                "scheduler/), so that nothing is fetched from the network"
            )
        configs = Path(config_dir).expanduser()
        if not (configs / "model_index.json").is_file():
            raise ValueError(f"{what}_config {str(configs)!r} has no model_index.json; pass a diffusers config folder")
        return _Model(configs.resolve(), str(local.resolve()), local.name, single_file=local.resolve())
    folder, source, name = _resolve(model, revision, what)
    return _Model(folder, source, name)


def _resolve(model: str, revision: str | None, what: str) -> tuple[Path, str, str]:
    """Return (local folder, source record, display prefix) for a local folder or a pinned hub id."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ValueError(f"{what} folder {str(local)!r} has no model_index.json; pass a diffusers pipeline folder")
        return local.resolve(), str(local.resolve()), local.name
    if not _HUB_ID.match(model):
        raise ValueError(
            f"{what} {model!r} is neither an existing local folder, a .safetensors file, nor a hub id like 'owner/name'"
        )
    if revision is None:
        raise ValueError(
            f"{what} hub id {model!r} needs a pinned revision: set EngineConfig(revision=<40-hex commit sha>) "
            f"(and refiner_revision for the refiner repo); a floating branch would load unrecorded weights"
        )
    if not _COMMIT.match(revision):
        raise ValueError(
            f"revision {revision!r} for {model!r} is not a commit: pass the 40-hex commit sha, not a branch or tag"
        )
    folder = StableDiffusionXLPipeline.download(model, revision=revision)
    return Path(folder), f"hub:{model}@{revision}", model


def _attention_kind(unet: UNet2DConditionModel) -> str:
    kinds = {type(p).__name__ for p in unet.attn_processors.values()}
    return kinds.pop() if len(kinds) == 1 else repr(sorted(kinds))


def _check_attention(unet: UNet2DConditionModel, fused: bool, what: str) -> str:
    """Make sure every attention layer uses PyTorch SDPA; return the processor class name."""
    wanted = FusedAttnProcessor2_0 if fused else AttnProcessor2_0
    kinds = {type(p).__name__ for p in unet.attn_processors.values()}
    if kinds != {wanted.__name__}:
        raise RuntimeError(f"{what} attention processors are {sorted(kinds)}, expected {wanted.__name__} (SDPA)")
    return wanted.__name__


def check_request(request: ImageRequest) -> None:
    """Raise a short ValueError naming the bad value and the fix (like diffusers' check_inputs)."""
    r = request
    if not isinstance(r, ImageRequest):
        raise ValueError(f"expected an ImageRequest, got {type(r).__name__}")
    if not isinstance(r.prompt, str) or not r.prompt.strip():
        raise ValueError(f"prompt must be a non-empty str, got {r.prompt!r} ({type(r.prompt).__name__})")
    if not isinstance(r.negative_prompt, str):
        raise ValueError(
            f"negative_prompt must be a str ('' for none), got {r.negative_prompt!r} "
            f"({type(r.negative_prompt).__name__})"
        )
    if isinstance(r.seed, bool) or not isinstance(r.seed, int) or not 0 <= r.seed < SEED_BOUND:
        raise ValueError(f"seed must be an int in [0, 2**63), got {r.seed!r}; derive it with seeds.image_seed")
    for name in ("width", "height"):
        value = getattr(r, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SIDE or value % 8:
            raise ValueError(f"{name} must be an int >= {MIN_SIDE} divisible by 8, got {value!r}")
    least = 1 if r.refiner_split is None else 2
    if isinstance(r.steps, bool) or not isinstance(r.steps, int) or r.steps < least:
        what = "the base alone needs one" if least == 1 else "base and refiner each need one"
        raise ValueError(f"steps must be an int >= {least} ({what}), got {r.steps!r}")
    if not isinstance(r.guidance_scale, (int, float)) or not math.isfinite(r.guidance_scale) or r.guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {r.guidance_scale!r}")
    split = r.refiner_split
    if split is not None and (isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 < split < 1.0):
        raise ValueError(
            f"refiner_split must be in (0, 1), or None for the base alone, got {split!r}; e.g. 0.8 gives 80% of the "
            "steps to the base"
        )
    for name, low in (("original_size", 1), ("target_size", 1), ("crops_coords_top_left", 0)):
        value = getattr(r, name)
        if not (
            isinstance(value, tuple)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value)
        ):
            raise ValueError(f"{name} must be a pair of ints >= {low} (height, width / top, left), got {value!r}")
    for name in ("aesthetic_score", "negative_aesthetic_score"):
        value = getattr(r, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def stage_steps(scheduler: Any, steps: int, refiner_split: float) -> tuple[int, int]:
    """(base steps, refiner steps) that the SDXL pipelines run for this step count and split.

    Both pipelines cut the schedule's timesteps at round(T * (1 - split)), T the training steps:
    the base runs those at or above the cutoff, the refiner those below (first-order schedulers).
    """
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps, device="cpu")
    total = fresh.config.num_train_timesteps
    cutoff = int(round(total - refiner_split * total))
    base_steps = int((fresh.timesteps >= cutoff).sum())
    return base_steps, len(fresh.timesteps) - base_steps


def _batch_key(r: ImageRequest) -> tuple[Any, ...]:
    # diffusers takes one value per call for each of these: images that differ in any run separately.
    return (
        r.width,
        r.height,
        r.steps,
        float(r.guidance_scale),
        None if r.refiner_split is None else float(r.refiner_split),
        r.negative_prompt == "",
        r.original_size,
        r.target_size,
        r.crops_coords_top_left,
        float(r.aesthetic_score),
        float(r.negative_aesthetic_score),
    )


def _hash_components(config: EngineConfig, base: _Model, refiner: _Model | None) -> list[ComponentInfo]:
    """Hash the weight files of every component that will be loaded (cached by path, size, mtime)."""
    cache = WeightHashCache(Path(config.hash_cache) if config.hash_cache else None)
    whole_files: dict[Path, tuple[str, dict[str, str]]] = {}

    def single(path: Path) -> tuple[str, dict[str, str]]:
        if path not in whole_files:
            files = {path.name: cache.file_sha256s([path])[path]}
            whole_files[path] = (component_hash(files), files)
        return whole_files[path]

    components = []
    for role, model, sub in (
        ("base_unet", base, "unet"),
        ("refiner_unet", refiner, "unet"),
        ("text_encoder", base, "text_encoder"),
        ("text_encoder_2", base, "text_encoder_2"),
        ("vae", base, "vae"),
    ):
        if model is None:
            continue  # base only: the refiner is not loaded, so not hashed or recorded either
        if role == "vae" and config.vae is not None:
            folder = _vae_folder(config.vae)
            sha, files = hash_component_folder(folder, cache=cache)
            components.append(ComponentInfo(role, folder.name, str(folder), sha, files))
        elif model.single_file is not None:
            # One file holds every component: each component's record is that file's hash.
            sha, files = single(model.single_file)
            components.append(ComponentInfo(role, f"{model.name}:{sub}", model.source, sha, files))
        else:
            sha, files = hash_component_folder(model.folder / sub, variant=config.variant, cache=cache)
            components.append(ComponentInfo(role, f"{model.name}/{sub}", model.source, sha, files))
    return components


def _vae_folder(vae: str) -> Path:
    folder = Path(vae).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"vae {vae!r} is not a local AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors); "
            "download it once, at a pinned revision, and pass the folder"
        )
    others = [p.name for p in weight_files(folder) if not p.name.startswith("diffusion_pytorch_model")]
    if others:
        raise ValueError(
            f"vae folder {vae!r} holds weight files the loader does not read ({', '.join(others)}): keep only "
            "diffusion_pytorch_model.safetensors there, so the recorded hash is the hash of the loaded weights"
        )
    return folder.resolve()


def check_expected_hashes(components: Sequence[ComponentInfo], expected: Mapping[str, str]) -> None:
    """Raise WeightHashMismatch for the first component whose sha256 is not the expected one."""
    by_role = {c.role: c for c in components}
    for role, sha in expected.items():
        if role not in by_role:
            continue  # not loaded (the refiner of a base-only engine)
        component = by_role[role]
        if component.sha256 != sha:
            raise WeightHashMismatch(role, component.name, sha, component.sha256)


class SDXLEngine:
    """SDXL base + refiner, loaded once and kept resident; see the module docstring."""

    def __init__(
        self,
        config: EngineConfig,
        base: StableDiffusionXLPipeline,
        refiner: StableDiffusionXLImg2ImgPipeline | None,
        components: list[ComponentInfo],
    ) -> None:
        _check_config(config)
        self.config = config
        self.base = base
        self.refiner = refiner
        self.components = components
        self.device = torch.device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.options: dict[str, Any] = {}
        self._prepare()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, config: EngineConfig) -> SDXLEngine:
        """Load base and refiner (the refiner sharing text_encoder_2 and vae) and hash their weights.

        Raises WeightHashMismatch, before any weight is loaded, when a component's hash is not the
        configured ``expected_sha256``.
        """
        _check_config(config)
        dtype = DTYPES[config.dtype]
        # 1. Resolve both models to local folders or files (hub ids only at a pinned commit).
        base_model = _resolve_model(config.base, config.revision, config.base_config, "base")
        refiner_model = (
            None
            if config.refiner is None
            else _resolve_model(
                config.refiner, config.refiner_revision or config.revision, config.refiner_config, "refiner"
            )
        )
        # 2. Hash the weight files of every component we will load, and check the expected hashes.
        components = _hash_components(config, base_model, refiner_model)
        check_expected_hashes(components, config.expected_sha256)
        # A VAE whose config says force_upcast (the plain SDXL VAE) overflows to NaN in float16: black
        # images. The fp16-fix VAE's says force_upcast: false. Never silently: refuse unless upcast.
        vae_dir = _vae_folder(config.vae) if config.vae is not None else base_model.folder / "vae"
        upcast = dtype == torch.float16 and json.loads((vae_dir / "config.json").read_text()).get("force_upcast", True)
        if upcast and not config.upcast_vae:
            raise ValueError(_plain_vae_refusal(str(vae_dir)))
        # 3. Load, with no network and no implicit watermarking (provenance is done downstream). An
        #    upcast VAE is loaded in float32 from its stored weights, not cast back up from float16.
        common: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "add_watermarker": False}
        shared: dict[str, Any] = {}
        vae_dtype = torch.float32 if upcast else dtype
        if config.vae is not None:
            shared["vae"] = AutoencoderKL.from_pretrained(vae_dir, dtype=vae_dtype, local_files_only=True)
        elif upcast and base_model.single_file is not None:
            shared["vae"] = AutoencoderKL.from_single_file(
                str(base_model.single_file),
                config=str(base_model.folder),
                subfolder="vae",
                torch_dtype=vae_dtype,
                local_files_only=True,
            )
        elif upcast:
            shared["vae"] = AutoencoderKL.from_pretrained(
                base_model.folder, subfolder="vae", variant=config.variant, dtype=vae_dtype, local_files_only=True
            )
        base = _load_pipeline(StableDiffusionXLPipeline, base_model, config.variant, **common, **shared)
        refiner = (
            None
            if refiner_model is None
            else _load_pipeline(
                StableDiffusionXLImg2ImgPipeline,
                refiner_model,
                config.variant,
                text_encoder_2=base.text_encoder_2,
                vae=base.vae,
                **common,
            )
        )
        logger.info(
            "loaded base %s and refiner %s in %s on %s",
            base_model.source,
            refiner_model.source if refiner_model else "(none: base only)",
            config.dtype,
            config.device,
        )
        return cls(config, base, refiner, components)

    def _prepare(self) -> None:
        """Move to the device, and apply the configured throughput options."""
        vae = self.base.vae
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", True):
            # Checked before loading too (load); here for pipelines handed over (from_pipelines).
            if not self.config.upcast_vae:
                raise ValueError(_plain_vae_refusal(str(vae.config.get("_name_or_path") or "of the base model")))
            vae.to(torch.float32)
        if self.device.type == "cpu":
            # CPU kernels pick their code path by the weights' memory alignment, so the same weights
            # loaded by another path (a single file keeps them in its memory map, unaligned) give other
            # last bits. Fresh, allocator-aligned copies make the numbers depend on the weights alone.
            # (Moving to a GPU makes fresh copies anyway.)
            for module in _modules(*self._pipes()):
                _own_aligned_storage(module)
        for name, pipe in zip(("base", "refiner"), self._pipes(), strict=False):
            # The sampler, on this pipeline's own schedule (the refiner's config is its own).
            pipe.scheduler = build_scheduler(self.config.scheduler, pipe.scheduler.config)
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            logger.debug("%s scheduler %s", name, type(pipe.scheduler).__name__)
        if self.config.vae_tiling:
            vae.enable_tiling()
        else:
            vae.disable_tiling()
        # Pipelines may be handed over already prepared (benchmarks re-wrap them with compile=True):
        # each step below is applied once.
        fused = _attention_kind(self.base.unet) == FusedAttnProcessor2_0.__name__
        unets = [pipe.unet for pipe in self._pipes()]
        if self.config.batch_invariant:
            for module in (*unets, self.base.text_encoder, self.base.text_encoder_2):
                make_batch_invariant(module)
        if self.config.fuse_qkv and not fused:
            self.base.fuse_qkv_projections(unet=True, vae=True)
            if self.refiner is not None:
                self.refiner.fuse_qkv_projections(unet=True, vae=False)  # the vae is the base's, fused already
            fused = True
        attention = _check_attention(self.base.unet, fused=fused, what="base unet")
        if self.refiner is not None:
            _check_attention(self.refiner.unet, fused=fused, what="refiner unet")
        if self.config.channels_last:
            for module in (*unets, self.base.vae):
                module.to(memory_format=torch.channels_last)
        if self.config.compile and not isinstance(self.base.unet, torch._dynamo.eval_frame.OptimizedModule):
            # Static shapes: every chunk is padded to max_batch_size (see _generate_chunk), so each
            # (size, batch) compiles once; the caller warms up outside any timed region (warm_up).
            kwargs: dict[str, Any] = {"fullgraph": True, "dynamic": False}
            if self.config.compile_mode:
                kwargs["mode"] = self.config.compile_mode
            self.base.unet = torch.compile(self.base.unet, **kwargs)
            if self.refiner is not None:
                self.refiner.unet = torch.compile(self.refiner.unet, **kwargs)
            self.base.vae.decode = torch.compile(self.base.vae.decode, **kwargs)
        self.options = {
            "attention": attention,
            "channels_last": self.config.channels_last,
            "fuse_qkv": self.config.fuse_qkv,
            "batch_invariant": self.config.batch_invariant,
            "compile": self.config.compile,
            "compile_mode": self.config.compile_mode,
            "max_batch_size": self.config.max_batch_size,
            "generator_device": "cpu",
            "vae_dtype": str(self.base.vae.dtype).removeprefix("torch."),
            "vae_tiling": self.config.vae_tiling,
            "decode": "one image at a time (VAE slicing)",
            "scheduler": self.config.scheduler,
            "stages": list(self.stages),
        }

    def _pipes(self) -> list[Any]:
        return [self.base] if self.refiner is None else [self.base, self.refiner]

    @property
    def stages(self) -> tuple[str, ...]:
        """("base",) when the refiner is not loaded, else ("base", "refiner")."""
        return ("base",) if self.refiner is None else ("base", "refiner")

    def without_refiner(self) -> SDXLEngine:
        """This engine as a base-only one: the same loaded base (nothing loaded again), no refiner,
        and the refiner left out of ``components``, ``config`` and ``describe()``: what a run of base-only
        configurations records when a worker already holds the full engine."""
        if self.refiner is None:
            return self
        view = object.__new__(SDXLEngine)
        view.__dict__.update(self.__dict__)
        view.refiner = None
        view.config = replace(
            self.config,
            refiner=None,
            refiner_revision=None,
            refiner_config=None,
            expected_sha256={k: v for k, v in self.config.expected_sha256.items() if k != "refiner_unet"},
        )
        view.components = [c for c in self.components if c.role != "refiner_unet"]
        view.options = {**self.options, "stages": ["base"]}
        return view

    # --------------------------------------------------------------- generation
    def check_requests(self, requests: Sequence[ImageRequest]) -> None:
        """Check every request before any work: values, and prompt lengths against the tokenizers."""
        for r in requests:
            check_request(r)
        if self.refiner is None and any(r.refiner_split is not None for r in requests):
            raise ValueError(
                "this engine was loaded without the refiner (a base-only configuration): a request with a "
                "refiner_split needs an engine loaded with one"
            )
        for key in {(r.steps, float(r.refiner_split)) for r in requests if r.refiner_split is not None}:
            base_steps, refiner_steps = self.stage_steps(*key)
            if base_steps < 1 or refiner_steps < 1:
                raise ValueError(
                    f"refiner_split {key[1]} with {key[0]} steps gives the base {base_steps} and the refiner "
                    f"{refiner_steps} steps; each needs at least one: raise steps or move the split towards 0.5"
                )
        for tokenizer in (self.base.tokenizer, self.base.tokenizer_2):
            limit = tokenizer.model_max_length
            for r in requests:
                for name, text in (("prompt", r.prompt), ("negative_prompt", r.negative_prompt)):
                    n = len(tokenizer(text).input_ids)
                    if n > limit:
                        raise ValueError(
                            f"{name} is {n} CLIP tokens, over the limit of {limit} (the rest would be cut off "
                            f"silently); shorten it: {text[:60]!r}..."
                        )

    def stage_steps(self, steps: int, refiner_split: float) -> tuple[int, int]:
        """(base steps, refiner steps) that diffusers runs for this step count and split."""
        return stage_steps(self.base.scheduler, steps, refiner_split)

    def generate(self, requests: Sequence[ImageRequest]) -> list[GeneratedImage]:
        """Generate one image per request, in the order given.

        Requests sharing (width, height, steps, guidance, split, empty negative prompt) run together,
        in chunks of at most ``max_batch_size``; each image keeps its own generator.
        """
        requests = list(requests)
        self.check_requests(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, r in enumerate(requests):
            groups.setdefault(_batch_key(r), []).append(index)
        results: list[GeneratedImage | None] = [None] * len(requests)
        size = self.config.max_batch_size
        for indices in groups.values():
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                for index, image in zip(chunk, self._generate_chunk([requests[i] for i in chunk]), strict=True):
                    results[index] = image
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _generate_chunk(self, requests: list[ImageRequest]) -> list[GeneratedImage]:
        first = requests[0]
        count = len(requests)
        if self.config.compile and count < self.config.max_batch_size:
            # Pad to the compiled batch size with copies of the last request; outputs are dropped.
            # Images never depend on their neighbours, so padding changes nothing for the real ones.
            requests = requests + [requests[-1]] * (self.config.max_batch_size - count)
        # 1. One CPU generator per image: the noise depends on the image's seed alone, on any device.
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
        prompts = [r.prompt for r in requests]
        negatives = None if first.negative_prompt == "" else [r.negative_prompt for r in requests]
        common: dict[str, Any] = {
            "prompt": prompts,
            "negative_prompt": negatives,
            "num_inference_steps": first.steps,
            "guidance_scale": float(first.guidance_scale),
            "generator": generators,
        }
        sizes = {
            "original_size": first.original_size,
            "target_size": first.target_size,
            "crops_coords_top_left": first.crops_coords_top_left,
        }
        # 2. Base: pure noise -> latents at denoising_end=split (every step for the base alone).
        split = None if first.refiner_split is None else float(first.refiner_split)
        latents = self.base(
            **common,
            **sizes,
            width=first.width,
            height=first.height,
            denoising_end=split,
            output_type="latent",
        ).images
        if split is None:
            refined = latents  # the base alone: its VAE decodes its own latents
        else:
            # 3. Refiner: from denoising_start=split to the end, still latents.
            assert self.refiner is not None  # check_requests refuses a split without a refiner
            refined = self.refiner(
                **common,
                **sizes,
                aesthetic_score=float(first.aesthetic_score),
                negative_aesthetic_score=float(first.negative_aesthetic_score),
                image=latents,
                denoising_start=split,
                output_type="latent",
            ).images
        # 4. Decode one image at a time (the VAE's convolutions are not batch-invariant on every
        #    backend; one at a time, an image's pixels are the same bits alone or in a batch), then
        #    uint8 HxWx3 on the device and one copy to the host.
        pixels = torch.stack([self._decode(refined[i : i + 1])[0] for i in range(count)]).cpu().numpy()
        base_latents = latents.float().cpu()
        return [
            GeneratedImage(request=r, pixels=np.ascontiguousarray(pixels[i]), base_latents=base_latents[i].clone())
            for i, r in enumerate(requests[:count])
        ]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (1, 4, h, w) -> uint8 (1, H, W, 3), as the SDXL pipelines decode and postprocess."""
        vae = self.base.vae
        latents = latents.to(vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            latents = latents * std_t / vae.config.scaling_factor + mean_t
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        # VaeImageProcessor.denormalize, then numpy_to_pil's rounding.
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        return (image * 255).round().to(torch.uint8).permute(0, 2, 3, 1)

    def warm_up(self, width: int, height: int, steps: int, guidance_scale: float, refiner_split: float | None) -> None:
        """Run one full batch at this shape (compiles it when compile=True); call outside timed regions."""
        request = ImageRequest("warm-up", "", 0, width, height, steps, guidance_scale, refiner_split)
        self.generate([request] * self.config.max_batch_size)

    def describe(self) -> dict[str, Any]:
        """Everything needed to record, and redo, how images were made; JSON-safe.

        config (``EngineConfig.from_record`` rebuilds it), options, versions, components, each stage's
        scheduler (name, class, full config: ``schedulers.scheduler_from_record`` rebuilds it), and the
        micro-conditioning defaults every ``ImageRequest`` that does not set its own is made with.
        """
        defaults = {f.name: f.default for f in fields(ImageRequest) if f.name in MICRO_CONDITIONING}
        return _json_ready(
            {
                "device": self.config.device,
                "dtype": self.config.dtype,
                "config": {k: getattr(self.config, k) for k in self.config.__dataclass_fields__},
                "options": dict(self.options),
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "components": [c.__dict__ for c in self.components],
                "scheduler": scheduler_record(self.base.scheduler, self.config.scheduler),
                "refiner_scheduler": (
                    None if self.refiner is None else scheduler_record(self.refiner.scheduler, self.config.scheduler)
                ),
                "stages": list(self.stages),
                "micro_conditioning": {**defaults, "sizes_none_mean": "the image's (height, width), as in diffusers"},
            }
        )

    @classmethod
    def from_pipelines(
        cls,
        config: EngineConfig,
        base: StableDiffusionXLPipeline,
        refiner: StableDiffusionXLImg2ImgPipeline | None,
        components: list[ComponentInfo] | None = None,
    ) -> SDXLEngine:
        """Wrap pipelines built in memory (benchmarks with random full-size weights): no weight files, so
        ``components`` is given by the caller (default: none)."""
        return cls(config, base, refiner, components or [])


def _plain_vae_refusal(where: str) -> str:
    return (
        f"the VAE ({where}) is the plain SDXL VAE (its config says force_upcast=true): in float16 it overflows "
        "to NaN (black images). Use vae=<fp16-fix VAE folder> (e.g. madebyollin/sdxl-vae-fp16-fix), or "
        "upcast_vae=True to decode in float32, or dtype='bfloat16'"
    )


def _load_pipeline(cls: Any, model: _Model, variant: str | None, **kwargs: Any) -> Any:
    if model.single_file is not None:
        # diffusers converts the original layout itself; config= keeps it from looking anything up online.
        return cls.from_single_file(str(model.single_file), config=str(model.folder), **kwargs)
    return cls.from_pretrained(model.folder, variant=variant, **kwargs)


def _modules(*pipes: Any) -> list[torch.nn.Module]:
    """The distinct torch modules of these pipelines (shared ones once)."""
    seen: dict[int, torch.nn.Module] = {}
    for pipe in pipes:
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                seen.setdefault(id(module), module)
    return list(seen.values())


def _own_aligned_storage(module: torch.nn.Module) -> None:
    """Give every parameter and buffer its own freshly allocated (64-byte aligned) contiguous storage."""
    with torch.no_grad():
        for sub in module.modules():
            for param in sub._parameters.values():
                if param is not None:
                    param.data = param.data.clone(memory_format=torch.contiguous_format)
            for key, buffer in sub._buffers.items():
                if buffer is not None:
                    sub._buffers[key] = buffer.clone(memory_format=torch.contiguous_format)


def _json_ready(value: Any) -> Any:
    """Tuples as lists, dict keys as str: what a JSON column stores and gives back."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


__all__ = [
    "MICRO_CONDITIONING",
    "ROLES",
    "WeightHashMismatch",
    "check_expected_hashes",
    "ComponentInfo",
    "EngineConfig",
    "GeneratedImage",
    "ImageRequest",
    "SDXLEngine",
    "check_request",
    "stage_steps",
]
