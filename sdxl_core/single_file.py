"""Single-file SDXL checkpoints: write a diffusers folder in the original (Stability "LDM") layout.

The published single files (``sd_xl_base_1.0.safetensors``, ``sd_xl_refiner_1.0.safetensors``) hold
every component in one safetensors file under the original repository's names:

=========================================== ====================================================
prefix                                      component
=========================================== ====================================================
``model.diffusion_model.``                  UNet (``input_blocks`` / ``middle_block`` / ``output_blocks``)
``first_stage_model.``                      VAE (``encoder.down.N.block.M``, ``mid.attn_1`` as 1x1 convs)
``conditioner.embedders.0.transformer.``    base: CLIP ViT-L text encoder (Hugging Face names)
``conditioner.embedders.1.model.``          base: OpenCLIP ViT-bigG text encoder (open_clip names,
                                            fused ``in_proj``, ``text_projection`` transposed)
``conditioner.embedders.0.model.``          refiner: the OpenCLIP ViT-bigG text encoder
=========================================== ====================================================

diffusers reads that layout (``from_single_file``, converting with ``loaders/single_file_utils.py``)
but the installed package ships no writer for it (the repository's conversion scripts are not part
of the wheel). :func:`save_single_file` is that
writer, derived from the block arithmetic of the original UNet (``openaimodel.py``) so that it also
covers the tiny test architectures. Its output is checked the only way that matters: loaded back by
diffusers' own ``from_single_file``, every tensor equals the folder's (tests/sdxl_core).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sdxl_core.hashing import weight_files

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_BASE_PREFIX = "conditioner.embedders.1.model."
OPEN_CLIP_REFINER_PREFIX = "conditioner.embedders.0.model."

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def _component_state(folder: Path) -> dict[str, torch.Tensor]:
    files = weight_files(folder)
    if not files or any(f.suffix != ".safetensors" for f in files):
        raise ValueError(f"{folder} needs its weights as .safetensors files to be written as one checkpoint")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def _unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel names -> the original UNetModel's."""
    layers = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    rename: dict[str, str] = dict(_UNET_TOP)
    for i in range(levels):
        for j in range(layers):
            n = 1 + i * (layers + 1) + j
            for ours, theirs in _RESNET.items():
                rename[f"down_blocks.{i}.resnets.{j}.{ours}."] = f"input_blocks.{n}.0.{theirs}."
            rename[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{n}.1."
        if i < levels - 1:
            rename[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{1 + i * (layers + 1) + layers}.0.op."
        for j in range(layers + 1):
            n = i * (layers + 1) + j
            for ours, theirs in _RESNET.items():
                rename[f"up_blocks.{i}.resnets.{j}.{ours}."] = f"output_blocks.{n}.0.{theirs}."
            rename[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{n}.1."
        if i < levels - 1:
            # The upsampler follows the last block's attention when the block has one.
            has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
            n = i * (layers + 1) + layers
            rename[f"up_blocks.{i}.upsamplers.0.conv."] = f"output_blocks.{n}.{2 if has_attention else 1}.conv."
    for j, ours in enumerate(("resnets.0", "attentions.0", "resnets.1")):
        if ours.startswith("resnets"):
            for r_ours, r_theirs in _RESNET.items():
                rename[f"mid_block.{ours}.{r_ours}."] = f"middle_block.{j}.{r_theirs}."
        else:
            rename[f"mid_block.{ours}."] = f"middle_block.{j}."
    return {UNET_PREFIX + _rename(key, rename, "unet"): value for key, value in state.items()}


def _vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL names -> the original AutoencoderKL's (attention as 1x1 convolutions)."""
    levels = len(config["block_out_channels"])
    rename = {
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
    }
    for part in ("encoder", "decoder"):
        for j in (0, 1):
            rename[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
        attention = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
        for ours, theirs in attention:
            rename[f"{part}.mid_block.attentions.0.{ours}."] = f"{part}.mid.attn_1.{theirs}."
    for i in range(levels):
        rename[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        rename[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        # The original decoder numbers its up blocks from the bottom: diffusers' up_blocks.0 is up.{levels-1}.
        rename[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{levels - 1 - i}.block."
        rename[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{levels - 1 - i}.upsample.conv."
    out = {}
    for key, value in state.items():
        new = _rename(key, rename, "vae", allow_same=True).replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new and new.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def _clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel (Hugging Face names, with or without the ``text_model.`` wrapper) -> SDXL's embedder 0."""
    return {CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def _open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection -> open_clip names: fused q/k/v ``in_proj``, transposed ``text_projection``."""
    top = {
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    out: dict[str, torch.Tensor] = {}
    layer = "text_model.encoder.layers."
    for key, value in state.items():
        if key in top:
            out[prefix + top[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key.startswith(layer):
            number, rest = key[len(layer) :].split(".", 1)
            base = f"{prefix}transformer.resblocks.{number}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                if rest.startswith("self_attn.q_proj."):
                    kind = rest.rsplit(".", 1)[1]  # weight | bias
                    parts = [state[f"{layer}{number}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                    out[f"{base}attn.in_proj_{kind}"] = torch.cat(parts)
                continue
            rest = (
                rest.replace("self_attn.out_proj.", "attn.out_proj.")
                .replace("layer_norm1.", "ln_1.")
                .replace("layer_norm2.", "ln_2.")
                .replace("mlp.fc1.", "mlp.c_fc.")
                .replace("mlp.fc2.", "mlp.c_proj.")
            )
            out[base + rest] = value
        else:
            raise ValueError(f"text_encoder_2 weight {key!r} has no place in the original OpenCLIP layout")
    return out


def _rename(key: str, rename: dict[str, str], what: str, allow_same: bool = False) -> str:
    # Longest matching prefix wins ("down_blocks.1.attentions.0." before "down_blocks.1.").
    for ours in sorted(rename, key=len, reverse=True):
        if key.startswith(ours):
            return rename[ours] + key[len(ours) :]
    if allow_same:
        return key
    raise ValueError(f"{what} weight {key!r} has no place in the original SDXL layout")


def to_original_layout(folder: Path, kind: str) -> dict[str, torch.Tensor]:
    """All weights of the diffusers pipeline ``folder`` (``kind`` "base" or "refiner"), in the original names."""
    folder = Path(folder)
    if kind not in ("base", "refiner"):
        raise ValueError(f"kind must be 'base' or 'refiner', got {kind!r}")

    def config(name: str) -> dict[str, Any]:
        return json.loads((folder / name / "config.json").read_text())

    out = _unet_to_ldm(_component_state(folder / "unet"), config("unet"))
    out.update(_vae_to_ldm(_component_state(folder / "vae"), config("vae")))
    if kind == "base":
        out.update(_clip_to_ldm(_component_state(folder / "text_encoder")))
        out.update(_open_clip_to_ldm(_component_state(folder / "text_encoder_2"), OPEN_CLIP_BASE_PREFIX))
    else:
        out.update(_open_clip_to_ldm(_component_state(folder / "text_encoder_2"), OPEN_CLIP_REFINER_PREFIX))
    return out


def save_single_file(folder: Path, path: Path, kind: str) -> Path:
    """Write the diffusers pipeline ``folder`` as one safetensors checkpoint in the original SDXL layout."""
    state = to_original_layout(folder, kind)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    return path


def copy_configs(folder: Path, dest: Path) -> Path:
    """Copy a diffusers pipeline folder without its weights: what ``from_single_file(config=...)`` reads."""
    folder, dest = Path(folder), Path(dest)
    for f in folder.rglob("*"):
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            target = dest / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    return dest
