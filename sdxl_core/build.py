"""Build SDXL base + refiner pipelines from architecture configs, with seeded random weights.

Used for the tiny test models (then saved and reloaded through the normal loading code) and for
full-size benchmarks with no download (``--full-size-random``). Each component is built after its
own ``torch.manual_seed``, so the weights are a function of (architecture, seed) alone.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdxl_core.configs import SDXLArchitecture
from sdxl_core.tokenizer import build_clip_tokenizer

logger = logging.getLogger(__name__)


def build_random_pipelines(
    arch: SDXLArchitecture,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline]:
    """Return (base, refiner) pipelines of ``arch`` with random weights built directly on ``device``.

    The refiner shares the base's ``text_encoder_2`` and ``vae``, as in the diffusers SDXL guide's
    ensemble of experts (the published refiner's copies hold the same weights).
    """
    device = torch.device(device)

    def seeded(offset: int) -> None:
        torch.manual_seed(seed + offset)

    with torch.device(device):
        seeded(1)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
        seeded(2)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2))
        seeded(3)
        vae = AutoencoderKL(**arch.vae)
        seeded(4)
        base_unet = UNet2DConditionModel(**arch.base_unet)
        seeded(5)
        refiner_unet = UNet2DConditionModel(**arch.refiner_unet)
    # As torch modules: transformers wraps its models' ``to`` with functools.wraps, which mypy cannot bind.
    modules: tuple[torch.nn.Module, ...] = (text_encoder, text_encoder_2, vae, base_unet, refiner_unet)
    for module in modules:
        if dtype != torch.float32:
            module.to(dtype=dtype)
        module.eval().requires_grad_(False)
    logger.info(
        "built %s with random weights (seed %d) on %s in %s: base unet %.3fB params, refiner unet %.3fB",
        arch.name,
        seed,
        device,
        dtype,
        sum(p.numel() for p in base_unet.parameters()) / 1e9,
        sum(p.numel() for p in refiner_unet.parameters()) / 1e9,
    )
    base = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer("<|endoftext|>"),
        tokenizer_2=build_clip_tokenizer("!"),
        unet=base_unet,
        scheduler=EulerDiscreteScheduler.from_config(arch.scheduler),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,  # type: ignore[arg-type]  # diffusers: optional component, annotated not Optional
        text_encoder_2=text_encoder_2,
        tokenizer=None,  # type: ignore[arg-type]  # diffusers: optional component, annotated not Optional
        tokenizer_2=build_clip_tokenizer("!"),
        unet=refiner_unet,
        scheduler=EulerDiscreteScheduler.from_config(arch.scheduler),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    return base, refiner
