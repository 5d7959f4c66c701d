import json
import shutil
from pathlib import Path

import pytest
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTokenizer

from sdxl_core import tiny
from sdxl_core.hashing import WeightHashCache, hash_component_folder
from sdxl_core.tiny import ensure_tiny_models


def test_tokenizers_round_trip_real_clip_bpe(tiny_models: tuple[Path, Path]) -> None:
    base, refiner = tiny_models
    for folder in (base / "tokenizer", base / "tokenizer_2", refiner / "tokenizer_2"):
        tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert len(tok) == 49408
        assert tok.model_max_length == 77
    # SDXL's second tokenizer pads with "!" (id 0), the first with <|endoftext|>.
    assert CLIPTokenizer.from_pretrained(base / "tokenizer_2").pad_token_id == 0
    assert CLIPTokenizer.from_pretrained(base / "tokenizer").pad_token_id == 49407


@pytest.mark.parametrize("text", ["Hello, World! it's 2024", "an astronaut riding a horse on mars, 4k", "café naïve"])
def test_tokenizer_agrees_with_open_clip(tiny_models: tuple[Path, Path], text: str) -> None:
    tok = CLIPTokenizer.from_pretrained(tiny_models[0] / "tokenizer")
    assert tok(text).input_ids[1:-1] == SimpleTokenizer().encode(text)


def test_folders_load_as_sdxl_pipelines(tiny_models: tuple[Path, Path]) -> None:
    base_dir, refiner_dir = tiny_models
    base = StableDiffusionXLPipeline.from_pretrained(base_dir, local_files_only=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_dir, local_files_only=True)
    assert base.unet.config.addition_embed_type == "text_time"
    assert base.vae_scale_factor == 8
    assert base.unet.config.cross_attention_dim == (
        base.text_encoder.config.hidden_size + base.text_encoder_2.config.hidden_size
    )
    assert refiner.text_encoder is None
    assert refiner.config.requires_aesthetics_score is True
    assert refiner.unet.config.cross_attention_dim == refiner.text_encoder_2.config.hidden_size
    assert json.loads((base_dir / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == (
        "EulerDiscreteScheduler"
    )


def test_build_is_deterministic_idempotent_and_redone_when_interrupted(
    tiny_models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, refiner = ensure_tiny_models(tmp_path)
    cache = WeightHashCache(tmp_path / "hashes.json")
    # Same seeded weights as the session's build, wherever it was built.
    for a, b in ((base, tiny_models[0]), (refiner, tiny_models[1])):
        assert hash_component_folder(a / "unet", cache=cache)[0] == hash_component_folder(b / "unet", cache=cache)[0]
    # Idempotent: a second call builds nothing.
    unet_file = base / "unet" / "diffusion_pytorch_model.safetensors"
    mtime = unet_file.stat().st_mtime_ns

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt although complete")

    monkeypatch.setattr(tiny, "build_random_pipelines", no_build)
    assert ensure_tiny_models(tmp_path) == (base, refiner)
    assert unet_file.stat().st_mtime_ns == mtime
    # Interrupted (no completed-marker): the half-built folders are removed and the build redone.
    (tmp_path / ".sdxl-tiny-complete").unlink()
    shutil.rmtree(refiner / "unet")
    with pytest.raises(AssertionError, match="rebuilt"):
        ensure_tiny_models(tmp_path)
    assert not base.exists() and not refiner.exists()
