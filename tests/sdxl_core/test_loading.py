"""Loading exactly the weights claimed: single-file checkpoints, expected hashes, VAE choice and dtype."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from safetensors import safe_open

from sdxl_core.engine import EngineConfig, SDXLEngine, WeightHashMismatch
from sdxl_core.hashing import sha256_file
from sdxl_core.single_file import copy_configs, save_single_file
from tests.sdxl_core.conftest import make_request

MODULES = {"base": ["unet", "vae", "text_encoder", "text_encoder_2"], "refiner": ["unet", "text_encoder_2"]}


@pytest.fixture(scope="module")
def single_files(tiny_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base and refiner as original-layout checkpoints, and their config folders without weights."""
    root = tmp_path_factory.mktemp("single-file")
    base, refiner = tiny_models
    return {
        "base": save_single_file(base, root / "sdxl-tiny-base.safetensors", "base"),
        "refiner": save_single_file(refiner, root / "sdxl-tiny-refiner.safetensors", "refiner"),
        "base_config": copy_configs(base, root / "base-config"),
        "refiner_config": copy_configs(refiner, root / "refiner-config"),
    }


@pytest.fixture(scope="module")
def single_file_config(single_files: dict[str, Path], hash_cache: Path) -> EngineConfig:
    return EngineConfig(
        base=str(single_files["base"]),
        refiner=str(single_files["refiner"]),
        base_config=str(single_files["base_config"]),
        refiner_config=str(single_files["refiner_config"]),
        hash_cache=str(hash_cache),
    )


def test_single_file_is_in_the_original_sdxl_layout(single_files: dict[str, Path]) -> None:
    with safe_open(str(single_files["base"]), "pt") as f:
        keys = set(f.keys())
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "conditioner"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not list(single_files["base_config"].rglob("*.safetensors")), "weights must come from the single file"


def test_diffusers_reads_the_single_file_back_to_the_same_weights(
    tiny_models: tuple[Path, Path], single_files: dict[str, Path]
) -> None:
    """The writer is checked by diffusers' own reader: every tensor comes back equal, none missing."""
    base_dir, refiner_dir = tiny_models
    folder_base = StableDiffusionXLPipeline.from_pretrained(base_dir, local_files_only=True)
    file_base = StableDiffusionXLPipeline.from_single_file(
        str(single_files["base"]), config=str(single_files["base_config"]), local_files_only=True
    )
    folder_refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_dir, local_files_only=True)
    file_refiner = StableDiffusionXLImg2ImgPipeline.from_single_file(
        str(single_files["refiner"]), config=str(single_files["refiner_config"]), local_files_only=True
    )
    for kind, (a, b) in {"base": (folder_base, file_base), "refiner": (folder_refiner, file_refiner)}.items():
        for name in MODULES[kind]:
            sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
            assert sa.keys() == sb.keys(), (kind, name)
            assert all(torch.equal(sa[k], sb[k]) for k in sa), (kind, name)


def test_single_file_and_folder_loading_give_the_same_images(
    engine: SDXLEngine, single_file_config: EngineConfig, single_files: dict[str, Path]
) -> None:
    from_file = SDXLEngine.load(single_file_config)
    requests = [make_request("a lighthouse in a storm", seed=11, width=128, height=128)]
    a, b = engine.generate(requests)[0], from_file.generate(requests)[0]
    assert torch.equal(a.base_latents, b.base_latents)
    assert np.array_equal(a.pixels, b.pixels)
    # Every component's record is the checkpoint file it came from.
    by_role = {c.role: c for c in from_file.components}
    base_sha = sha256_file(single_files["base"])
    assert by_role["base_unet"].files == {"sdxl-tiny-base.safetensors": base_sha}
    assert by_role["vae"].name == "sdxl-tiny-base.safetensors:vae"
    assert by_role["base_unet"].source == str(single_files["base"].resolve())
    assert by_role["refiner_unet"].files == {"sdxl-tiny-refiner.safetensors": sha256_file(single_files["refiner"])}


def test_single_file_needs_a_local_config_folder(single_file_config: EngineConfig, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set base_config to a local folder"):
        SDXLEngine.load(dataclasses.replace(single_file_config, base_config=None))
    with pytest.raises(ValueError, match="has no model_index.json"):
        SDXLEngine.load(dataclasses.replace(single_file_config, refiner_config=str(tmp_path)))
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="only safetensors checkpoints"):
        SDXLEngine.load(dataclasses.replace(single_file_config, base=str(tmp_path / "model.ckpt")))


def test_hash_mismatch_is_refused_before_any_weight_is_loaded(
    engine: SDXLEngine, tiny_config: EngineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    actual = {c.role: c.sha256 for c in engine.components}
    wrong = "0" * 64

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were loaded although a hash did not match")

    for cls in (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline):
        monkeypatch.setattr(cls, "from_pretrained", no_load)
        monkeypatch.setattr(cls, "from_single_file", no_load)
    config = dataclasses.replace(tiny_config, expected_sha256={**actual, "refiner_unet": wrong})
    with pytest.raises(WeightHashMismatch) as caught:
        SDXLEngine.load(config)
    message = str(caught.value)
    assert "refiner_unet" in message and "sdxl-tiny-refiner/unet" in message
    assert wrong in message and actual["refiner_unet"] in message
    refused = caught.value
    assert (refused.role, refused.expected, refused.actual) == ("refiner_unet", wrong, actual["refiner_unet"])


def test_matching_expected_hashes_load(engine: SDXLEngine, tiny_config: EngineConfig) -> None:
    expected = {c.role: c.sha256 for c in engine.components}
    loaded = SDXLEngine.load(dataclasses.replace(tiny_config, expected_sha256=expected))
    assert loaded.components == engine.components
    assert loaded.describe()["config"]["expected_sha256"] == expected


@pytest.mark.parametrize(
    ("expected", "message"),
    [({"unet": "0" * 64}, "unknown component 'unet'"), ({"vae": "ABC"}, "must be a 64-hex lowercase sha256")],
)
def test_bad_expected_hashes_are_refused(tiny_config: EngineConfig, expected: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SDXLEngine.load(dataclasses.replace(tiny_config, expected_sha256=expected))


def test_plain_sdxl_vae_is_refused_in_float16_unless_upcast(
    engine: SDXLEngine, tiny_config: EngineConfig, single_file_config: EngineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny VAE's config says force_upcast=true, as the published SDXL 1.0 VAE's does.
    with monkeypatch.context() as patched:  # refused before any weight is loaded
        patched.setattr(StableDiffusionXLPipeline, "from_pretrained", None)
        for config in (tiny_config, single_file_config):
            with pytest.raises(ValueError, match="plain SDXL VAE .*force_upcast=true.*NaN"):
                SDXLEngine.load(dataclasses.replace(config, dtype="float16"))
    fp32_vae = engine.base.vae.state_dict()
    for config in (tiny_config, single_file_config):
        upcast = SDXLEngine.load(dataclasses.replace(config, dtype="float16", upcast_vae=True))
        assert upcast.base.unet.dtype == torch.float16 and upcast.refiner.vae is upcast.base.vae
        assert upcast.base.vae.dtype == torch.float32 and upcast.options["vae_dtype"] == "float32"
        # Loaded in float32 from the stored weights, not cast up from float16.
        assert all(torch.equal(v, fp32_vae[k]) for k, v in upcast.base.vae.state_dict().items())


def test_fp16_fix_vae_folder_runs_in_float16(
    engine: SDXLEngine, tiny_config: EngineConfig, tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    vae = tmp_path / "sdxl-vae-fp16-fix"
    shutil.copytree(tiny_models[0] / "vae", vae)
    config_file = vae / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "force_upcast": False}))
    fixed = SDXLEngine.load(dataclasses.replace(tiny_config, dtype="float16", vae=str(vae)))
    assert fixed.base.vae.dtype == torch.float16 and fixed.refiner.vae is fixed.base.vae
    component = {c.role: c for c in fixed.components}["vae"]
    assert (component.name, component.source) == ("sdxl-vae-fp16-fix", str(vae.resolve()))
    assert component.sha256 == {c.role: c for c in engine.components}["vae"].sha256  # same weight bytes
    # A VAE folder with weights the loader would not read is refused: the hash must be of what is loaded.
    (vae / "sdxl_vae.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="weight files the loader does not read"):
        SDXLEngine.load(dataclasses.replace(tiny_config, vae=str(vae)))
