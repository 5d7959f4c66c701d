"""SDXL base + refiner generation: exact loading, reproducible per-image seeds, batching.

The two stages follow the diffusers SDXL guide's "ensemble of experts": the base pipeline denoises
from pure noise to ``denoising_end=split`` and returns latents; the refiner, sharing the base's
``text_encoder_2`` and ``vae``, continues from ``denoising_start=split`` and decodes.

Reproducibility. Every image has its own ``torch.Generator`` on the CPU, seeded with its request's
seed, and the initial noise is drawn from it alone (diffusers' generator lists), so an image's noise
never depends on its neighbours or on the device. Requests that share shape and sampling parameters
run as one batch; an image's base latents are then the same, to the bit on CPU, alone or in any batch
(tests/sdxl_core/test_engine.py proves it). Requests with an empty negative prompt batch separately
from those with one, because SDXL's base uses zero embeddings for an empty negative prompt.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

from sdxl_core.hashing import WeightHashCache, hash_component_folder
from sdxl_core.invariance import make_batch_invariant
from sdxl_core.seeds import SEED_BOUND

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
MIN_SIDE = 64


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
    refiner_split: float  # in (0, 1): the base's denoising_end and the refiner's denoising_start


@dataclass(frozen=True)
class ComponentInfo:
    """One loaded model component and the exact weight files it came from."""

    role: str  # "base_unet", "refiner_unet", "text_encoder", "text_encoder_2", "vae"
    name: str  # "sdxl-tiny-base/unet", or "<hub id>/<subfolder>"
    source: str  # local folder path, or "hub:<id>@<revision>"
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

    ``base``/``refiner``: a local diffusers folder, or a hub id pinned with ``revision`` (a 40-hex
    commit; ``refiner_revision`` when the refiner repo's commit differs, which it does for the
    published SDXL repos). Throughput options default to off, so CPU behaviour is plain diffusers.
    """

    base: str
    refiner: str
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


def _check_config(config: EngineConfig) -> None:
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    if not isinstance(config.max_batch_size, int) or config.max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {config.max_batch_size!r}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for, but CUDA is not available; use device='cpu'")
    if config.compile and device.type != "cuda":
        raise ValueError(
            f"compile=True is supported on CUDA only (device is {config.device!r}): torch.compile of the SDXL "
            "UNets takes minutes on a CPU and is not tuned there; set compile=False"
        )


def _resolve(model: str, revision: str | None, what: str) -> tuple[Path, str, str]:
    """Return (local folder, source record, display prefix) for a local folder or a pinned hub id."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ValueError(f"{what} folder {str(local)!r} has no model_index.json; pass a diffusers pipeline folder")
        return local.resolve(), str(local.resolve()), local.name
    if not _HUB_ID.match(model):
        raise ValueError(f"{what} {model!r} is neither an existing local folder nor a hub id like 'owner/name'")
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


def _attention_kind(unet: torch.nn.Module) -> str:
    kinds = {type(p).__name__ for p in unet.attn_processors.values()}
    return kinds.pop() if len(kinds) == 1 else repr(sorted(kinds))


def _check_attention(unet: torch.nn.Module, fused: bool, what: str) -> str:
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
    if isinstance(r.steps, bool) or not isinstance(r.steps, int) or r.steps < 2:
        raise ValueError(f"steps must be an int >= 2 (base and refiner each need one), got {r.steps!r}")
    if not isinstance(r.guidance_scale, (int, float)) or not math.isfinite(r.guidance_scale) or r.guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {r.guidance_scale!r}")
    split = r.refiner_split
    if not isinstance(split, (int, float)) or not 0.0 < split < 1.0:
        raise ValueError(f"refiner_split must be in (0, 1), got {split!r}; e.g. 0.8 gives 80% of the steps to the base")


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
    return (r.width, r.height, r.steps, float(r.guidance_scale), float(r.refiner_split), r.negative_prompt == "")


class SDXLEngine:
    """SDXL base + refiner, loaded once and kept resident; see the module docstring."""

    def __init__(
        self,
        config: EngineConfig,
        base: StableDiffusionXLPipeline,
        refiner: StableDiffusionXLImg2ImgPipeline,
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
        """Load base and refiner (the refiner sharing text_encoder_2 and vae) and hash their weights."""
        _check_config(config)
        dtype = DTYPES[config.dtype]
        # 1. Resolve both models to local folders (hub ids only at a pinned commit).
        base_dir, base_source, base_name = _resolve(config.base, config.revision, "base")
        refiner_dir, refiner_source, refiner_name = _resolve(
            config.refiner, config.refiner_revision or config.revision, "refiner"
        )
        # 2. Hash the weight files of every component we will load (cached by path, size, mtime).
        cache = WeightHashCache(Path(config.hash_cache) if config.hash_cache else None)
        components = []
        for role, folder, source, name in (
            ("base_unet", base_dir / "unet", base_source, f"{base_name}/unet"),
            ("refiner_unet", refiner_dir / "unet", refiner_source, f"{refiner_name}/unet"),
            ("text_encoder", base_dir / "text_encoder", base_source, f"{base_name}/text_encoder"),
            ("text_encoder_2", base_dir / "text_encoder_2", base_source, f"{base_name}/text_encoder_2"),
            ("vae", base_dir / "vae", base_source, f"{base_name}/vae"),
        ):
            sha, files = hash_component_folder(folder, variant=config.variant, cache=cache)
            components.append(ComponentInfo(role=role, name=name, source=source, sha256=sha, files=files))
        # 3. Load, with no network and no implicit watermarking (provenance is done downstream).
        common: dict[str, Any] = {
            "dtype": dtype,
            "local_files_only": True,
            "add_watermarker": False,
            "variant": config.variant,
        }
        base = StableDiffusionXLPipeline.from_pretrained(base_dir, **common)
        refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            refiner_dir, text_encoder_2=base.text_encoder_2, vae=base.vae, **common
        )
        logger.info(
            "loaded base %s and refiner %s in %s on %s", base_source, refiner_source, config.dtype, config.device
        )
        return cls(config, base, refiner, components)

    def _prepare(self) -> None:
        """Move to the device, and apply the configured throughput options."""
        for pipe in (self.base, self.refiner):
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
        vae = self.base.vae
        if vae.dtype == torch.float16 and vae.config.force_upcast:
            # SDXL's VAE overflows to NaN (black images) in float16; its config says so (force_upcast).
            # Keep it in float32, as the diffusers pipelines do at decode time.
            vae.to(torch.float32)
        # Pipelines may be handed over already prepared (benchmarks re-wrap them with compile=True):
        # each step below is applied once.
        fused = _attention_kind(self.base.unet) == FusedAttnProcessor2_0.__name__
        if self.config.batch_invariant:
            for module in (self.base.unet, self.refiner.unet, self.base.text_encoder, self.base.text_encoder_2):
                make_batch_invariant(module)
        if self.config.fuse_qkv and not fused:
            self.base.fuse_qkv_projections(unet=True, vae=True)
            self.refiner.fuse_qkv_projections(unet=True, vae=False)  # the vae is the base's, fused already
            fused = True
        attention = _check_attention(self.base.unet, fused=fused, what="base unet")
        _check_attention(self.refiner.unet, fused=fused, what="refiner unet")
        if self.config.channels_last:
            for module in (self.base.unet, self.refiner.unet, self.base.vae):
                module.to(memory_format=torch.channels_last)
        if self.config.compile and not isinstance(self.base.unet, torch._dynamo.eval_frame.OptimizedModule):
            # Static shapes: every chunk is padded to max_batch_size (see _generate_chunk), so each
            # (size, batch) compiles once; the caller warms up outside any timed region (warm_up).
            kwargs: dict[str, Any] = {"fullgraph": True, "dynamic": False}
            if self.config.compile_mode:
                kwargs["mode"] = self.config.compile_mode
            self.base.unet = torch.compile(self.base.unet, **kwargs)
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
            "decode": "one image at a time",
        }

    # --------------------------------------------------------------- generation
    def check_requests(self, requests: Sequence[ImageRequest]) -> None:
        """Check every request before any work: values, and prompt lengths against the tokenizers."""
        for r in requests:
            check_request(r)
        for key in {(r.steps, float(r.refiner_split)) for r in requests}:
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
        # 2. Base: pure noise -> latents at denoising_end=split.
        latents = self.base(
            **common,
            width=first.width,
            height=first.height,
            denoising_end=float(first.refiner_split),
            output_type="latent",
        ).images
        # 3. Refiner: from denoising_start=split to the end, still latents.
        refined = self.refiner(
            **common,
            image=latents,
            denoising_start=float(first.refiner_split),
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

    def warm_up(self, width: int, height: int, steps: int, guidance_scale: float, refiner_split: float) -> None:
        """Run one full batch at this shape (compiles it when compile=True); call outside timed regions."""
        request = ImageRequest("warm-up", "", 0, width, height, steps, guidance_scale, refiner_split)
        self.generate([request] * self.config.max_batch_size)

    def describe(self) -> dict[str, Any]:
        """Everything needed to record how images were made: config, options, components."""
        return {
            "config": {k: getattr(self.config, k) for k in self.config.__dataclass_fields__},
            "options": dict(self.options),
            "torch": torch.__version__,
            "components": [c.__dict__ for c in self.components],
            "scheduler": dict(self.base.scheduler.config),
            "refiner_scheduler": dict(self.refiner.scheduler.config),
        }

    @classmethod
    def from_pipelines(
        cls,
        config: EngineConfig,
        base: StableDiffusionXLPipeline,
        refiner: StableDiffusionXLImg2ImgPipeline,
        components: list[ComponentInfo] | None = None,
    ) -> SDXLEngine:
        """Wrap pipelines built in memory (benchmarks with random full-size weights): no weight files, so
        ``components`` is given by the caller (default: none)."""
        return cls(config, base, refiner, components or [])


__all__ = [
    "ComponentInfo",
    "EngineConfig",
    "GeneratedImage",
    "ImageRequest",
    "SDXLEngine",
    "check_request",
    "stage_steps",
]
