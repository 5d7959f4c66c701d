"""Fixtures: one engine loaded from the tiny SDXL models (``tiny_models`` is tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_core.engine import EngineConfig, ImageRequest, SDXLEngine


@pytest.fixture(scope="session")
def hash_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hash-cache") / "weight-hashes.json"


@pytest.fixture(scope="session")
def tiny_config(tiny_models: tuple[Path, Path], hash_cache: Path) -> EngineConfig:
    base, refiner = tiny_models
    return EngineConfig(base=str(base), refiner=str(refiner), hash_cache=str(hash_cache))


@pytest.fixture(scope="session")
def engine(tiny_config: EngineConfig) -> SDXLEngine:
    return SDXLEngine.load(tiny_config)


def make_request(prompt: str = "a photo of a cat", seed: int = 1, **overrides: object) -> ImageRequest:
    values: dict[str, object] = {
        "prompt": prompt,
        "negative_prompt": "",
        "seed": seed,
        "width": 256,
        "height": 256,
        "steps": 4,
        "guidance_scale": 5.0,
        "refiner_split": 0.8,
    }
    values.update(overrides)
    return ImageRequest(**values)  # type: ignore[arg-type]
