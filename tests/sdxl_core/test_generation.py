"""Generation parameters: schedulers by name, micro-conditioning, resolution presets, VAE tiling."""

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

from sdxl_core.configs import SDXL_SCHEDULER_CONFIG
from sdxl_core.engine import MICRO_CONDITIONING, EngineConfig, ImageRequest, SDXLEngine
from sdxl_core.resolutions import SDXL_RESOLUTIONS, preset
from sdxl_core.schedulers import SCHEDULERS, build_scheduler, scheduler_from_record, scheduler_record
from tests.sdxl_core.conftest import make_request


def small(prompt: str = "a photo of a cat", seed: int = 1, **overrides: object) -> ImageRequest:
    return make_request(prompt, seed, **{"width": 128, "height": 128, **overrides})


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_config_round_trips_through_its_json_record(name: str) -> None:
    scheduler = build_scheduler(name, SDXL_SCHEDULER_CONFIG)
    record = json.loads(json.dumps(scheduler_record(scheduler, name), allow_nan=False))  # as a JSON column holds it
    rebuilt = scheduler_from_record(record)
    assert type(rebuilt) is type(scheduler) and record["class"] == type(scheduler).__name__
    assert dict(rebuilt.config) == dict(scheduler.config)
    # The model's schedule is kept; only the sampler changes.
    for key in ("beta_start", "beta_end", "beta_schedule", "timestep_spacing", "steps_offset", "prediction_type"):
        assert rebuilt.config[key] == SDXL_SCHEDULER_CONFIG[key]


def test_named_schedulers_have_their_documented_settings() -> None:
    karras = build_scheduler("dpmpp_2m_karras", SDXL_SCHEDULER_CONFIG)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler"
    assert (karras.config.algorithm_type, karras.config.solver_order, karras.config.use_karras_sigmas) == (
        "dpmsolver++",
        2,
        True,
    )
    assert type(build_scheduler("euler_a", SDXL_SCHEDULER_CONFIG)).__name__ == "EulerAncestralDiscreteScheduler"


def test_unknown_scheduler_is_refused_listing_the_known_ones(tiny_config: EngineConfig) -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'k_lms'; known schedulers: euler, euler_a, dpmpp_2m"):
        SDXLEngine.load(dataclasses.replace(tiny_config, scheduler="k_lms"))


def test_describe_records_the_scheduler_and_rebuilds_the_config(engine: SDXLEngine) -> None:
    described = json.loads(json.dumps(engine.describe(), allow_nan=False))
    assert described["scheduler"]["name"] == "euler"
    assert described["scheduler"]["class"] == "EulerDiscreteScheduler"
    assert dict(scheduler_from_record(described["scheduler"]).config) == dict(engine.base.scheduler.config)
    assert dict(scheduler_from_record(described["refiner_scheduler"]).config) == dict(engine.refiner.scheduler.config)
    assert EngineConfig.from_record(described["config"]) == engine.config
    assert described["micro_conditioning"]["aesthetic_score"] == 6.0


def test_ancestral_sampler_keeps_each_image_to_its_own_generator(tiny_config: EngineConfig) -> None:
    """Euler ancestral draws fresh noise every step: from each image's generator, so batches still do not matter."""
    euler_a = SDXLEngine.load(dataclasses.replace(tiny_config, scheduler="euler_a"))
    assert type(euler_a.base.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert type(euler_a.refiner.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    target = small(seed=3)
    alone = euler_a.generate([target])[0]
    batched = euler_a.generate([small("a dog", seed=4), target])[1]
    assert torch.equal(alone.base_latents, batched.base_latents)
    assert np.array_equal(alone.pixels, batched.pixels)
    assert euler_a.describe()["scheduler"]["name"] == "euler_a"


def test_dpmpp_2m_karras_generates(engine: SDXLEngine, tiny_config: EngineConfig) -> None:
    dpm = SDXLEngine.load(dataclasses.replace(tiny_config, scheduler="dpmpp_2m_karras"))
    request = small(seed=3)
    a, b = dpm.generate([request])[0], engine.generate([request])[0]
    assert a.pixels.std() > 0 and not torch.equal(a.base_latents, b.base_latents)


def test_micro_conditioning_defaults_are_diffusers_defaults() -> None:
    request = small()
    assert request.original_size == request.target_size == (128, 128)  # (height, width), as diffusers' None
    assert request == small(original_size=(128, 128), target_size=[128, 128], crops_coords_top_left=[0, 0])
    refiner_call = inspect.signature(StableDiffusionXLImg2ImgPipeline.__call__).parameters
    base_call = inspect.signature(StableDiffusionXLPipeline.__call__).parameters
    assert request.aesthetic_score == refiner_call["aesthetic_score"].default == 6.0
    assert request.negative_aesthetic_score == refiner_call["negative_aesthetic_score"].default == 2.5
    assert request.crops_coords_top_left == base_call["crops_coords_top_left"].default == (0, 0)
    assert set(request.micro_conditioning()) == set(MICRO_CONDITIONING)


def test_micro_conditioning_reaches_the_pipelines_and_splits_batches(engine: SDXLEngine) -> None:
    plain = small("a red chair", seed=21)
    cropped = dataclasses.replace(plain, crops_coords_top_left=(32, 32))
    low_aesthetic = dataclasses.replace(plain, aesthetic_score=2.0)
    images = engine.generate([plain, cropped, low_aesthetic])
    # The crop conditions the base; the aesthetic score only the refiner (same base latents, other pixels).
    assert not torch.equal(images[0].base_latents, images[1].base_latents)
    assert torch.equal(images[0].base_latents, images[2].base_latents)
    assert not np.array_equal(images[0].pixels, images[2].pixels)
    # Each ran in its own group: the same as alone.
    assert np.array_equal(engine.generate([low_aesthetic])[0].pixels, images[2].pixels)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"original_size": (0, 128)}, "original_size must be a pair of ints >= 1"),
        ({"target_size": (128,)}, "target_size must be a pair"),
        ({"crops_coords_top_left": (-1, 0)}, "crops_coords_top_left must be a pair of ints >= 0"),
        ({"aesthetic_score": float("inf")}, "aesthetic_score must be a finite number"),
    ],
)
def test_bad_micro_conditioning_is_refused(engine: SDXLEngine, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine.generate([small(**overrides)])


def test_resolution_presets() -> None:
    assert len(SDXL_RESOLUTIONS) == 9 and all(w % 64 == 0 and h % 64 == 0 for w, h in SDXL_RESOLUTIONS)
    assert all(0.9e6 < w * h < 1.1e6 for w, h in SDXL_RESOLUTIONS)
    assert preset("1216x832") == (1216, 832)
    assert preset("square") == preset("1:1") == preset(1) == (1024, 1024)
    assert preset("16:9") == (1344, 768)
    assert preset("9:16") == (768, 1344)
    assert preset("4:3") == (1152, 896)
    assert preset("21:9") == (1536, 640)
    assert preset("portrait") == (832, 1216)
    with pytest.raises(ValueError, match="not a recommended SDXL size"):
        preset("1000x1000")
    with pytest.raises(ValueError, match="neither a size"):
        preset("wide")
    with pytest.raises(ValueError, match="finite number > 0"):
        preset(0)


def test_vae_tiling_decodes_large_images_one_at_a_time(tiny_config: EngineConfig) -> None:
    tiled = SDXLEngine.load(dataclasses.replace(tiny_config, vae_tiling=True))
    assert tiled.base.vae.use_tiling and tiled.options["vae_tiling"] is True
    latents = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(0))
    pixels = tiled._decode(latents)
    assert pixels.shape == (1, 384, 384, 3) and pixels.dtype == torch.uint8
