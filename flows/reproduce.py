"""`atelier reproduce IMAGE_ID`: regenerate a published image from its record and compare its pixels.

    1. read the record: the image (seed as stored), its prompt row, its run's engine description
       (sampler, dtype, options, micro-conditioning) and model versions;
    2. load the models of the current settings with the run's engine settings, refusing (before any
       GPU work) when a component's weight hash differs from the run's;
    3. generate the image alone (an image never depends on its batch), embed the image's watermark
       payload again, and compare with the pixels of the published file.

The file's bytes are not compared: its C2PA manifest holds a signature (and may hold a timestamp) that
differs on every signing, so two correct files of the same pixels differ. The pixels are compared:
bit-exact on the same hardware and software; across hardware (other GPU, kernels, dtype rounding) a
small difference is expected, so "matches" means identical or within :data:`TOLERANCE`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from flows.runtime import Runtime
from governance import watermark
from governance.errors import GovernanceCheckFailed, InvalidState, NotFound
from governance.records import Image
from governance.results import Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance(Result):
    """Mean and max absolute difference per channel value (0-255) that still count as the same image
    regenerated on other hardware; anything else is a different image."""

    mean_abs_diff: float = 1.0
    max_abs_diff: int = 8


TOLERANCE = Tolerance()


@dataclass(frozen=True)
class PixelHashes(Result):
    recorded: str | None
    reproduced: str
    equal: bool


@dataclass(frozen=True)
class ReproductionEngine(Result):
    scheduler: str
    dtype: str
    device: str
    recorded_device: str | None  # where the run made the image
    models: dict[str, str]  # component role -> weight SHA-256 (equal to the run's, or it refused)


@dataclass(frozen=True)
class Reproduction(Result):
    """`atelier reproduce`: the image made again from its record, compared with the published file."""

    image_id: str
    run_id: str
    verdict: str  # identical | within_tolerance | different
    max_abs_diff: int | None  # None: sizes differ
    mean_abs_diff: float | None
    tolerance: Tolerance
    pixels_sha256: PixelHashes
    request: dict[str, Any]  # the prompt row's fields and micro-conditioning used
    engine: ReproductionEngine
    notes: tuple[str, ...]
    pipeline: str = "base+refiner"  # the configuration replayed (its stages: the base alone, or base + refiner)

    @property
    def matches(self) -> bool:
        return self.verdict in ("identical", "within_tolerance")

    @property
    def identical(self) -> bool:
        return self.verdict == "identical"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "matches": self.matches, "identical": self.identical}


BYTES_NOTE = (
    "the file's bytes are not compared: its C2PA manifest carries a signature that differs on every "
    "signing, so the decoded pixels are compared instead"
)


def _key_for(rt: Runtime, image_id: str, scheme: str, key_id: str | None) -> watermark.WatermarkKey | None:
    """The key that marked the image, from the key ring (the legacy scheme has none)."""
    if scheme == watermark.SCHEME_DWTDCT:
        return None
    for key in rt.watermark_keys:
        if key.key_id == key_id:
            return key
    raise InvalidState(
        f"cannot reproduce image {image_id}: it was marked with watermark key {key_id}, which is not in the key ring; "
        "add it to ATELIER_WATERMARK_KEY_FILE (after the current key)"
    )


def reproduce_image(rt: Runtime, image_id: str) -> Reproduction:
    """Regenerate ``image_id`` and compare it with its published file; see the module docstring."""
    from governance.pipelines import config_of, image_slot
    from governance.publish import pixels_sha256
    from sdxl_core.engine import MICRO_CONDITIONING, ROLES, EngineConfig, ImageRequest, SDXLEngine, WeightHashMismatch
    from sdxl_core.seeds import image_seed

    notes = [BYTES_NOTE]
    # 1. The record.
    with rt.sessions() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise NotFound(f"no image {image_id!r}; `atelier compliance search` or `atelier trace` find image ids")
        if image.status != "published" or not image.store_key or image.watermark_payload is None:
            raise InvalidState(f"image {image_id} is {image.status}: only a published image has a file to compare with")
        prompt, run = image.prompt, image.run
        recorded: dict[str, Any] = dict(run.engine or {})
        expected = {mv.role: mv.sha256 for mv in run.model_versions if mv.role in ROLES}
        seed = int(image.seed)
        slot = image_slot(prompt.num_images, image.image_index)
        if seed != image_seed(prompt.seed, slot):
            notes.append(f"stored seed {seed} is not image_seed({prompt.seed}, {slot}); used as stored")
        # the configuration the batch pinned for this image: the base alone loads and runs no refiner
        config_used = config_of(prompt.batch.pipelines, prompt.pipeline, prompt.num_images, image.image_index)
        fields: dict[str, Any] = {
            "prompt": prompt.prompt,
            "negative_prompt": prompt.negative_prompt,
            "seed": seed,
            "width": prompt.width,
            "height": prompt.height,
            "steps": prompt.steps,
            "guidance_scale": prompt.guidance_scale,
            "refiner_split": prompt.refiner_split if config_used.refiner else None,
        }
        run_id, store_key, payload = run.id, image.store_key, int(image.watermark_payload, 16)
        scheme, key_id = image.watermark_scheme or watermark.SCHEME_DWTDCT, image.watermark_key_id
        recorded_pixels_sha256 = image.pixels_sha256
    micro = {k: v for k, v in (recorded.get("micro_conditioning") or {}).items() if k in MICRO_CONDITIONING}
    request = ImageRequest(**fields, **{k: v for k, v in micro.items() if v is not None})
    if "scheduler" not in recorded or "micro_conditioning" not in recorded:
        notes.append(
            "the run recorded no sampler or micro-conditioning: assumed the model's own sampler (euler) "
            "and diffusers' defaults"
        )

    # 2. The run's engine settings on the current models; their hashes must be the run's.
    base, refiner = rt.model_sources(refiner=config_used.refiner)
    current = rt.settings.engine_config(base, refiner)
    config = EngineConfig.from_record(
        recorded.get("config") or recorded,  # runs recorded before the full description: device and dtype
        base=current.base,
        refiner=current.refiner,
        revision=current.revision,
        refiner_revision=current.refiner_revision,
        base_config=current.base_config,
        refiner_config=current.refiner_config,
        vae=current.vae,
        device=current.device,
        hash_cache=current.hash_cache,
        compile=False,
        compile_mode=None,
        max_batch_size=1,
        expected_sha256=expected,
    )
    try:
        engine = SDXLEngine.load(config)
    except WeightHashMismatch as exc:  # as everywhere: a governance check that cannot pass (exit 6)
        raise GovernanceCheckFailed(
            f"cannot reproduce image {image_id}: the current models differ from run {run_id}'s: component "
            f"{exc.role} ({exc.name}) has sha256 {exc.actual}, the run used {exc.expected}; point the model "
            "settings (ATELIER_BASE_MODEL, ATELIER_REFINER_MODEL, ATELIER_VAE_MODEL) at the run's weights"
        ) from None

    # 3. Regenerate, watermark again, compare pixels with the published file's.
    generated = engine.generate([request])[0]
    reproduced = watermark.embed(generated.pixels, payload, scheme=scheme, key=_key_for(rt, image_id, scheme, key_id))
    with PILImage.open(io.BytesIO(rt.store.get(store_key))) as published_file:
        published = np.asarray(published_file.convert("RGB"))
    if published.shape != reproduced.shape:
        max_diff, mean_diff = None, None
        verdict = "different"
        notes.append(f"sizes differ: published {published.shape}, reproduced {reproduced.shape}")
    else:
        diff = np.abs(published.astype(np.int16) - reproduced.astype(np.int16))
        max_diff, mean_diff = int(diff.max()), float(diff.mean())
        if max_diff == 0:
            verdict = "identical"
        elif mean_diff <= TOLERANCE.mean_abs_diff and max_diff <= TOLERANCE.max_abs_diff:
            verdict = "within_tolerance"
        else:
            verdict = "different"
    reproduced_sha = pixels_sha256(reproduced)
    log.info("reproduced image %s: %s", image_id, verdict)
    return Reproduction(
        image_id=image_id,
        run_id=run_id,
        verdict=verdict,
        max_abs_diff=max_diff,
        mean_abs_diff=mean_diff,
        tolerance=TOLERANCE,
        pixels_sha256=PixelHashes(recorded_pixels_sha256, reproduced_sha, recorded_pixels_sha256 == reproduced_sha),
        request={**fields, **request.micro_conditioning()},
        engine=ReproductionEngine(
            scheduler=config.scheduler,
            dtype=config.dtype,
            device=config.device,
            recorded_device=recorded.get("device"),
            models={c.role: c.sha256 for c in engine.components},
        ),
        notes=tuple(notes),
        pipeline=config_used.name,
    )
