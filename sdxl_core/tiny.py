"""Tiny SDXL-architecture models for tests: real classes, random weights, the real CLIP vocabulary.

``ensure_tiny_models(root)`` builds two diffusers folders once, ``root/"sdxl-tiny-base"`` and
``root/"sdxl-tiny-refiner"``, loadable by ``StableDiffusionXLPipeline.from_pretrained`` and
``StableDiffusionXLImg2ImgPipeline.from_pretrained`` with ``local_files_only=True``. The build is
seeded (``torch.manual_seed`` per component, on the CPU in float32), so every machine with the same
torch version builds the same weights. A marker file holding the build version is written last:
a missing or stale marker (an interrupted or older build) makes the next call rebuild. A file lock
keeps concurrent callers (several test workers) from building at once.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from filelock import FileLock

from sdxl_core.build import build_random_pipelines
from sdxl_core.configs import SDXL_TINY

logger = logging.getLogger(__name__)

TINY_BASE_DIRNAME = "sdxl-tiny-base"
TINY_REFINER_DIRNAME = "sdxl-tiny-refiner"
TINY_SEED = 0
# Bump when the tiny architecture or build changes: existing folders are then rebuilt.
TINY_BUILD_VERSION = "sdxl-tiny/1"
_MARKER = ".sdxl-tiny-complete"


def ensure_tiny_models(root: Path) -> tuple[Path, Path]:
    """Build the tiny base and refiner folders under ``root`` if needed; return (base_dir, refiner_dir)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base_dir, refiner_dir = root / TINY_BASE_DIRNAME, root / TINY_REFINER_DIRNAME
    marker = root / _MARKER
    with FileLock(str(root / ".sdxl-tiny.lock")):
        if (
            marker.is_file()
            and marker.read_text().strip() == TINY_BUILD_VERSION
            and base_dir.is_dir()
            and refiner_dir.is_dir()
        ):
            return base_dir, refiner_dir
        marker.unlink(missing_ok=True)
        for folder in (base_dir, refiner_dir):
            shutil.rmtree(folder, ignore_errors=True)
        logger.info("building tiny SDXL models under %s", root)
        with torch.random.fork_rng(devices=[]):
            base, refiner = build_random_pipelines(SDXL_TINY, seed=TINY_SEED, device="cpu", dtype=torch.float32)
        base.save_pretrained(base_dir, safe_serialization=True)
        refiner.save_pretrained(refiner_dir, safe_serialization=True)
        marker.write_text(TINY_BUILD_VERSION + "\n")
    return base_dir, refiner_dir
