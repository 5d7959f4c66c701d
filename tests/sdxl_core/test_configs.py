"""The hard-coded SDXL 1.0 configs build the published architectures (counted on the meta device)."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdxl_core.configs import SDXL_1_0, SDXL_TINY

# Parameter counts of the published stabilityai SDXL 1.0 base and refiner components.
PUBLISHED = {
    "base_unet": 2_567_463_684,
    "refiner_unet": 2_259_526_660,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


def _build(role: str, arch=SDXL_1_0) -> torch.nn.Module:
    if role.endswith("unet"):
        return UNet2DConditionModel(**getattr(arch, role))
    if role == "vae":
        return AutoencoderKL(**arch.vae)
    cls = CLIPTextModel if role == "text_encoder" else CLIPTextModelWithProjection
    return cls(CLIPTextConfig(**getattr(arch, role)))


@pytest.mark.parametrize("role", sorted(PUBLISHED))
def test_full_size_configs_have_the_published_parameter_counts(role: str) -> None:
    with torch.device("meta"):
        module = _build(role)
    assert sum(p.numel() for p in module.parameters()) == PUBLISHED[role]


@pytest.mark.parametrize("arch", [SDXL_1_0, SDXL_TINY], ids=lambda a: a.name)
def test_conditioning_dimensions_follow_sdxl_arithmetic(arch) -> None:
    te1, te2 = arch.text_encoder, arch.text_encoder_2
    base, refiner = arch.base_unet, arch.refiner_unet
    assert base["cross_attention_dim"] == te1["hidden_size"] + te2["hidden_size"]
    assert base["projection_class_embeddings_input_dim"] == te2["projection_dim"] + 6 * base["addition_time_embed_dim"]
    assert refiner["cross_attention_dim"] == te2["hidden_size"]
    assert refiner["projection_class_embeddings_input_dim"] == (
        te2["projection_dim"] + 5 * refiner["addition_time_embed_dim"]
    )
    assert len(arch.vae["block_out_channels"]) == 4  # latent factor 8
