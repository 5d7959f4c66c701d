import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sdxl_core.engine import EngineConfig, SDXLEngine
from sdxl_core.hashing import WeightHashCache, hash_component_folder
from sdxl_core.seeds import image_seed
from tests.sdxl_core.conftest import make_request

ROLES = ["base_unet", "refiner_unet", "text_encoder", "text_encoder_2", "vae"]


def test_same_request_same_latents_and_pixels_alone_or_in_any_batch(engine: SDXLEngine) -> None:
    target = make_request("a photo of a cat", seed=image_seed(7, 0))
    others = [make_request(p, seed=image_seed(7, i + 1)) for i, p in enumerate(["a dog", "a red car at night", "x"])]
    alone = engine.generate([target])[0]
    first = engine.generate([target, *others])[0]
    last = engine.generate([*others, target])[-1]
    for batched in (first, last):
        # Exact, not within a tolerance: each image's noise comes from its own generator, and the
        # layers whose rows are images run one row at a time (sdxl_core/invariance.py).
        assert torch.equal(alone.base_latents, batched.base_latents)
        assert np.array_equal(alone.pixels, batched.pixels)
    assert alone.base_latents.dtype == torch.float32 and alone.base_latents.device.type == "cpu"
    assert alone.base_latents.shape == (4, 32, 32)
    assert alone.pixels.shape == (256, 256, 3) and alone.pixels.dtype == np.uint8
    assert alone.pixels.std() > 0


def test_invariance_needs_the_rowwise_layers(tiny_config: EngineConfig) -> None:
    """Documents why batch_invariant exists: without it, the batch changes the last bits on CPU."""
    plain = SDXLEngine.load(dataclasses.replace(tiny_config, batch_invariant=False))
    target = make_request("a photo of a cat", seed=3)
    alone = plain.generate([target])[0].base_latents
    batched = plain.generate([target, make_request("a dog", seed=4), make_request("a boat", seed=5)])[0].base_latents
    torch.testing.assert_close(alone, batched, rtol=1e-4, atol=1e-4)  # close, but ...
    if torch.equal(alone, batched):
        pytest.skip("this CPU's matrix library happens to be batch-invariant for these shapes")


def test_results_follow_request_order_across_groups_and_chunks(engine: SDXLEngine) -> None:
    requests = [
        make_request("a cat", seed=1),
        make_request("a wide cat", seed=2, width=320, height=256),
        make_request("a cat with a negative", seed=3, negative_prompt="blurry"),
        make_request("another cat", seed=4),
        make_request("a third cat", seed=5),
        make_request("a fourth cat", seed=6),
        make_request("a fifth cat", seed=7),  # the first group (5 images) spans two chunks of 4
    ]
    images = engine.generate(requests)
    assert [im.request for im in images] == requests
    assert images[1].pixels.shape == (256, 320, 3)
    alone = engine.generate([requests[6]])[0]
    assert torch.equal(alone.base_latents, images[6].base_latents)
    assert engine.generate([]) == []


def test_seed_and_prompt_change_the_image(engine: SDXLEngine) -> None:
    a, b, c = engine.generate([make_request(seed=1), make_request(seed=2), make_request("a dog", seed=1)])
    assert not torch.equal(a.base_latents, b.base_latents)
    assert not torch.equal(a.base_latents, c.base_latents)


def test_loading_the_same_folder_twice_gives_the_same_pixels(engine: SDXLEngine, tiny_config: EngineConfig) -> None:
    request = make_request("a lighthouse in a storm", seed=11)
    again = SDXLEngine.load(tiny_config)
    assert np.array_equal(engine.generate([request])[0].pixels, again.generate([request])[0].pixels)
    assert again.components == engine.components


def test_components_record_every_weight_file(engine: SDXLEngine, tiny_models: tuple[Path, Path]) -> None:
    base, refiner = tiny_models
    assert [c.role for c in engine.components] == ROLES
    by_role = {c.role: c for c in engine.components}
    assert by_role["base_unet"].name == "sdxl-tiny-base/unet"
    assert by_role["refiner_unet"].source == str(refiner.resolve())
    assert by_role["vae"].files.keys() == {"diffusion_pytorch_model.safetensors"}
    assert by_role["text_encoder_2"].files.keys() == {"model.safetensors"}
    assert len({c.sha256 for c in engine.components}) == 5


def test_component_hash_is_stable_and_changes_with_the_weights(tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    shutil.copytree(tiny_models[0] / "unet", folder)
    cache = WeightHashCache(tmp_path / "hashes.json")
    first = hash_component_folder(folder, cache=cache)
    assert hash_component_folder(folder, cache=cache) == first
    assert hash_component_folder(folder, cache=WeightHashCache(tmp_path / "fresh.json")) == first
    assert hash_component_folder(tiny_models[0] / "unet", cache=cache)[0] == first[0]  # location-independent
    weights = folder / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    changed = hash_component_folder(folder, cache=cache)
    assert changed[0] != first[0]
    assert changed[1]["diffusion_pytorch_model.safetensors"] != first[1]["diffusion_pytorch_model.safetensors"]
    (folder / "extra.safetensors").write_bytes(b"x")
    assert hash_component_folder(folder, cache=cache)[0] != changed[0]


def test_hub_id_needs_a_pinned_commit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="revision"):
        SDXLEngine.load(EngineConfig(base="stabilityai/stable-diffusion-xl-base-1.0", refiner=str(tmp_path)))
    with pytest.raises(ValueError, match="40-hex commit"):
        SDXLEngine.load(
            EngineConfig(
                base="stabilityai/stable-diffusion-xl-base-1.0",
                refiner="stabilityai/stable-diffusion-xl-refiner-1.0",
                revision="main",
            )
        )
    with pytest.raises(ValueError, match="neither an existing local folder"):
        SDXLEngine.load(EngineConfig(base=str(tmp_path / "missing"), refiner=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 260}, "width must be an int >= 64 divisible by 8, got 260"),
        ({"height": 256.0}, "height must be an int"),
        ({"steps": 1}, "steps must be an int >= 2"),
        ({"refiner_split": 1.0}, "refiner_split must be in"),
        ({"refiner_split": 0.05, "steps": 4}, "gives the base 0 and the refiner 4 steps"),
        ({"seed": -1}, r"seed must be an int in \[0, 2\*\*63\)"),
        ({"seed": 2**63}, "seed must be an int"),
        ({"prompt": "   "}, "prompt must be a non-empty str"),
        ({"negative_prompt": None}, "negative_prompt must be a str"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
        ({"prompt": "cat " * 80}, "over the limit of 77"),
    ],
)
def test_bad_requests_are_refused_before_any_work(engine: SDXLEngine, overrides: dict, message: str) -> None:
    good = make_request(seed=1)
    with pytest.raises(ValueError, match=message):
        engine.generate([good, make_request(**{"seed": 2, **overrides})])


def test_bad_config_is_refused(tiny_config: EngineConfig) -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        SDXLEngine.load(dataclasses.replace(tiny_config, dtype="fp16"))
    with pytest.raises(ValueError, match="max_batch_size"):
        SDXLEngine.load(dataclasses.replace(tiny_config, max_batch_size=0))


def test_compile_is_refused_on_cpu_with_a_clear_message(tiny_config: EngineConfig) -> None:
    with pytest.raises(ValueError, match="compile=True is supported on CUDA only"):
        SDXLEngine.load(dataclasses.replace(tiny_config, compile=True))


def test_throughput_options_keep_the_images(engine: SDXLEngine, tiny_config: EngineConfig) -> None:
    fast = SDXLEngine.load(dataclasses.replace(tiny_config, channels_last=True, fuse_qkv=True))
    assert fast.options["attention"] == "FusedAttnProcessor2_0"
    assert engine.options["attention"] == "AttnProcessor2_0"
    request = make_request("a bowl of fruit", seed=5)
    a, b = engine.generate([request])[0], fast.generate([request])[0]
    torch.testing.assert_close(a.base_latents, b.base_latents, rtol=1e-4, atol=1e-4)
    assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 2


@pytest.mark.gpu
def test_compiled_engine_matches_eager_on_cuda(tiny_config: EngineConfig) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: torch.compile of the engine is CUDA-only")
    eager = SDXLEngine.load(dataclasses.replace(tiny_config, device="cuda"))
    compiled = SDXLEngine.load(dataclasses.replace(tiny_config, device="cuda", compile=True))
    request = make_request("a bowl of fruit", seed=5)
    compiled.warm_up(256, 256, 4, 5.0, 0.8)
    a, b = eager.generate([request])[0], compiled.generate([request])[0]
    torch.testing.assert_close(a.base_latents, b.base_latents, rtol=1e-3, atol=1e-3)
