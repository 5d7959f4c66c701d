"""Gallery thumbnails (made once, at publishing) of real catalogue pictures: product shots on pure
white stay white, the product stays recognisable, and the file is small enough for a gallery of 100."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from governance.publish import THUMBNAIL_PX, thumbnail_jpeg
from tests.catalogue import catalogue_subset

CASES = catalogue_subset()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_thumbnail_keeps_the_background_and_the_product(case) -> None:  # type: ignore[no-untyped-def]
    data = thumbnail_jpeg(case.pixels)
    thumb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
    h, w = case.pixels.shape[:2]
    assert max(thumb.shape[:2]) == THUMBNAIL_PX and abs(thumb.shape[1] / thumb.shape[0] - w / h) < 0.02
    assert len(data) < 40_000, len(data)  # 100 of them in a gallery page: a few MB at most
    # the same picture, scaled: compare with a plain resize of the original (mean error in 0..255)
    reference = np.asarray(Image.fromarray(case.pixels).resize(thumb.shape[1::-1], Image.Resampling.BOX), np.float64)
    assert np.abs(thumb - reference).mean() < 4.0
    corner = thumb[:8, :8].reshape(-1, 3).mean(axis=0)
    original_corner = case.pixels[:32, :32].reshape(-1, 3).mean(axis=0)
    assert np.abs(corner - original_corner).max() < 4.0  # pure white stays white (no grey cast, no halo)
