"""Published SDXL 1.0 architecture configs, and the tiny test-size ones shaped like them.

The full-size configs are those of stabilityai/stable-diffusion-xl-base-1.0 and
stabilityai/stable-diffusion-xl-refiner-1.0 (unet/, vae/, text_encoder/, text_encoder_2/,
scheduler/ config.json), written out here so that no download is ever needed: the benchmark builds
the real architectures with random weights from them, and the tiny models keep their structure
(SDXL "text_time" addition embedding, two text encoders, linear projections, VAE factor 8).

SDXL conditioning arithmetic, which the tiny configs keep:
- base cross_attention_dim = text_encoder.hidden_size + text_encoder_2.hidden_size (768 + 1280 = 2048);
- base projection_class_embeddings_input_dim = text_encoder_2.projection_dim + 6 * addition_time_embed_dim
  (pooled text embedding + original size, crop top-left, target size: 1280 + 6 * 256 = 2816);
- refiner cross_attention_dim = text_encoder_2.hidden_size (1280);
- refiner projection_class_embeddings_input_dim = text_encoder_2.projection_dim + 5 * addition_time_embed_dim
  (original size, crop top-left, aesthetic score: 1280 + 5 * 256 = 2560).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

_UNET_COMMON: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "center_input_sample": False,
    "class_embed_type": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "upcast_attention": None,
    "use_linear_projection": True,
}

SDXL_BASE_UNET_CONFIG: dict[str, Any] = {
    **_UNET_COMMON,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "layers_per_block": 2,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}

SDXL_REFINER_UNET_CONFIG: dict[str, Any] = {
    **_UNET_COMMON,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [6, 12, 24, 24],
    "block_out_channels": [384, 768, 1536, 1536],
    "cross_attention_dim": 1280,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "layers_per_block": 2,
    "projection_class_embeddings_input_dim": 2560,
    "sample_size": 128,
    "transformer_layers_per_block": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}

SDXL_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# CLIP ViT-L/14 text tower (OpenAI), SDXL's text_encoder.
SDXL_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# OpenCLIP ViT-bigG/14 text tower (LAION), SDXL's text_encoder_2 (with projection).
SDXL_TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **SDXL_TEXT_ENCODER_CONFIG,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

# Tiny test sizes. The two text encoders have different widths (32 and 48) so that any
# mix-up of their roles fails loudly on a shape mismatch.
_TINY_TIME = 8
_TINY_TE1 = 32
_TINY_TE2 = 48

TINY_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **SDXL_TEXT_ENCODER_CONFIG,
    "hidden_size": _TINY_TE1,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": _TINY_TE1,
}

TINY_TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **SDXL_TEXT_ENCODER_2_CONFIG,
    "hidden_size": _TINY_TE2,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": _TINY_TE2,
}

TINY_BASE_UNET_CONFIG: dict[str, Any] = {
    **SDXL_BASE_UNET_CONFIG,
    "addition_time_embed_dim": _TINY_TIME,
    "attention_head_dim": [2, 4],
    "block_out_channels": [32, 64],
    "cross_attention_dim": _TINY_TE1 + _TINY_TE2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "projection_class_embeddings_input_dim": _TINY_TE2 + 6 * _TINY_TIME,
    "sample_size": 32,
    "transformer_layers_per_block": [1, 1],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}

TINY_REFINER_UNET_CONFIG: dict[str, Any] = {
    **SDXL_REFINER_UNET_CONFIG,
    "addition_time_embed_dim": _TINY_TIME,
    "attention_head_dim": [2, 4, 4],
    "block_out_channels": [32, 64, 64],
    "cross_attention_dim": _TINY_TE2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "projection_class_embeddings_input_dim": _TINY_TE2 + 5 * _TINY_TIME,
    "sample_size": 32,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}

TINY_VAE_CONFIG: dict[str, Any] = {
    **SDXL_VAE_CONFIG,
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 256,
}


@dataclass(frozen=True)
class SDXLArchitecture:
    """The configs of one SDXL base + refiner pair (full size or tiny)."""

    name: str
    base_unet: dict[str, Any]
    refiner_unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    scheduler: dict[str, Any]


SDXL_1_0 = SDXLArchitecture(
    name="sdxl-1.0",
    base_unet=SDXL_BASE_UNET_CONFIG,
    refiner_unet=SDXL_REFINER_UNET_CONFIG,
    vae=SDXL_VAE_CONFIG,
    text_encoder=SDXL_TEXT_ENCODER_CONFIG,
    text_encoder_2=SDXL_TEXT_ENCODER_2_CONFIG,
    scheduler=SDXL_SCHEDULER_CONFIG,
)

SDXL_TINY = SDXLArchitecture(
    name="sdxl-tiny",
    base_unet=TINY_BASE_UNET_CONFIG,
    refiner_unet=TINY_REFINER_UNET_CONFIG,
    vae=TINY_VAE_CONFIG,
    text_encoder=TINY_TEXT_ENCODER_CONFIG,
    text_encoder_2=TINY_TEXT_ENCODER_2_CONFIG,
    scheduler=SDXL_SCHEDULER_CONFIG,
)
