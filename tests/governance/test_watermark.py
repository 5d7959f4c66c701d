"""The watermark in force (atelier-dctss/1) on the images catalogue teams make, and as an attacker sees it.

The tiny models' noise is the easy case; product shots on pure white, flat pastel and saturated
backgrounds are what broke the previous scheme (tests/governance/test_watermark_dwtdct.py), so each
property below is checked on rendered catalogue images (tests/catalogue.py) and, where scikit-image
is installed, on the real photographs it ships.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from governance import watermark
from governance.errors import GovernanceCheckFailed, InvalidInput
from governance.publish import decode_png, encode_png
from governance.watermark import (
    DEFAULT_SCHEME,
    PUBLIC_TEST_KEY,
    VERY_LIKELY_MIN_MATCH,
    WatermarkError,
    WatermarkKey,
    embed,
    ensure_development_key,
    load_key_ring,
    payload_for_image,
    verify,
)
from tests.catalogue import catalogue_subset, photographs, render_product

KEY = WatermarkKey(hashlib.sha256(b"tests' watermark key").digest())
SUBSET = catalogue_subset()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)  # Pillow's default 4:2:0
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture(scope="module")
def marked_subset() -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    out = []
    for item in SUBSET:
        payload = payload_for_image(item.name)
        out.append((item.name, item.pixels, decode_png(encode_png(embed(item.pixels, payload, key=KEY))), payload))
    return out


def test_the_scheme_in_force_is_versioned_and_keyed():
    check = verify(embed(SUBSET[0].pixels, 7, key=KEY), 7, key=KEY)
    assert DEFAULT_SCHEME == "atelier-dctss/1" == check.scheme
    assert check.key_id == KEY.key_id and check.total_bits == 64
    assert KEY.secret.hex() not in repr(KEY) and KEY.secret.hex() not in KEY.key_id


def test_every_catalogue_image_verifies_right_after_embedding(marked_subset):
    # what publish checks: the mark read back from the PNG bytes to be published
    for name, _original, marked, payload in marked_subset:
        check = verify(marked, payload, key=KEY)
        assert check.ok, (name, check)
        assert check.matched_bits == 64 and check.score > 30, (name, check)


def test_pure_white_stays_exactly_white(marked_subset):
    for name, original, marked, _payload in marked_subset:
        white = (original == 255).all(axis=2)
        if white.any():
            assert (marked[white] == 255).all(), name  # not one pure-white pixel tinted or darkened


def test_the_mark_is_faint(marked_subset):
    values = [psnr(original, marked) for _name, original, marked, _p in marked_subset]
    assert np.median(values) >= 40, values
    assert min(values) >= 36, values
    # and it is neutral: the same change on R, G and B (no tint on a coloured product)
    for _name, original, marked, _p in marked_subset:
        d = marked.astype(np.int16) - original
        unclipped = ((original > 20) & (original < 235)).all(axis=2)
        assert (np.ptp(d[unclipped], axis=1) <= 1).mean() > 0.99


@pytest.mark.parametrize("quality", [85, 70])
def test_catalogue_marks_survive_jpeg(marked_subset, quality):
    for name, _original, marked, payload in marked_subset:
        assert verify(jpeg(marked, quality), payload, key=KEY).ok, (name, quality)


def test_catalogue_marks_survive_halving_and_brightening(marked_subset):
    for name, _original, marked, payload in marked_subset:
        im = Image.fromarray(marked)
        resized = im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).resize(im.size)
        assert verify(np.asarray(resized), payload, key=KEY).ok, (name, "resize")
        brighter = np.asarray(ImageEnhance.Brightness(im).enhance(1.1))
        assert verify(brighter, payload, key=KEY).ok, (name, "brightness")


def test_a_cropped_copy_is_found_by_searching_the_grid(marked_subset):
    name, _original, marked, payload = marked_subset[1]  # white box on pure white, with grain and a label
    h, w = marked.shape[:2]
    cropped = marked[h // 20 + 3 : h - h // 20, w // 20 + 5 : w - w // 20]  # 10% off, grid moved by (3, 5)
    assert not verify(cropped, payload, key=KEY).ok  # at the original grid the mark is gone
    check = watermark.compare(watermark.read(cropped, key=KEY, search=True), payload)
    assert check.ok and check.hypotheses == 64 * 32 * 32
    assert check.score >= watermark.attribution_min_score(1_000_000, check.hypotheses), check


def test_unmarked_catalogue_images_never_verify():
    for item in SUBSET:
        check = verify(item.pixels, payload_for_image(item.name), key=KEY)
        assert not check.ok and check.score < 6, (item.name, check)


def test_unmarked_bits_are_fair_coins_whatever_the_picture():
    # keyed signs make every bit of an unmarked picture a coin toss, flat colours included, so the
    # matched count is Binomial(64, 1/2): the thresholds' bound holds for any picture
    matched = []
    flats = [np.full((256, 256, 3), c, np.uint8) for c in ((255, 255, 255), (0, 0, 0), (250, 218, 221))]
    for item in [*SUBSET, *photographs()]:
        reading = watermark.read(item.pixels, key=KEY)
        matched += [watermark.compare(reading, p).matched_bits for p in range(0, 2**48, 2**48 // 60)]
    assert 30 <= np.mean(matched) <= 34 and max(matched) < 52
    for flat in flats:  # no evidence at all: nothing matches, rather than one bit value for everything
        assert watermark.verify(flat, 12345, key=KEY).matched_bits == 0


def test_a_mark_made_with_another_key_reads_as_nothing(marked_subset):
    other = WatermarkKey(hashlib.sha256(b"someone else's key").digest())
    for name, _original, marked, payload in marked_subset:
        check = verify(marked, payload, key=other)
        assert not check.ok and check.matched_bits < 52 and check.score < 6, (name, check)


def test_another_payload_on_the_same_image_is_not_ok(marked_subset):
    for name, _original, marked, _payload in marked_subset:
        check = verify(marked, payload_for_image("someone-else/0"), key=KEY)
        assert not check.ok and check.matched_bits < VERY_LIKELY_MIN_MATCH, name


def test_photographs_shipped_by_scikit_image_verify_and_survive_jpeg():
    photos = photographs()
    if not photos:
        pytest.skip("scikit-image is not installed: its photographs are part of the dev extras")
    for item in photos:
        payload = payload_for_image(item.name)
        marked = embed(item.pixels, payload, key=KEY)
        assert verify(marked, payload, key=KEY).ok, item.name
        assert verify(jpeg(marked, 85), payload, key=KEY).ok, item.name


@pytest.mark.parametrize("size", [256, 512])
def test_tiny_model_noise_and_odd_sizes_verify(size):
    rng = np.random.default_rng(size)
    for shape in ((size, size), (size + 5, size + 13)):
        pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        marked = embed(pixels, 99, key=KEY)
        assert verify(marked, 99, key=KEY).ok
        assert marked.shape == pixels.shape


def test_a_flat_pure_white_image_cannot_be_marked_and_verify_says_so():
    white = np.full((512, 512, 3), 255, np.uint8)
    marked = embed(white, 5, key=KEY)
    assert (marked == 255).all()  # left exactly white...
    assert not verify(marked, 5, key=KEY).ok  # ...so publish quarantines it rather than ship it unmarked


def test_embed_is_deterministic_and_leaves_its_input_alone():
    pixels = render_product("pastel", "ball", "green", 256)
    before = pixels.copy()
    assert np.array_equal(embed(pixels, 3, key=KEY), embed(pixels, 3, key=KEY))
    assert np.array_equal(pixels, before) and not np.array_equal(embed(pixels, 3, key=KEY), pixels)


def test_entry_points_without_a_key_use_the_public_test_key():
    pixels = render_product("grey", "box", "navy", 256)
    check = verify(embed(pixels, 11), 11)
    assert check.ok and check.key_id == PUBLIC_TEST_KEY.key_id


@pytest.mark.parametrize("operation", ["embed", "verify"])
def test_too_small_image_is_an_error_not_a_skip(operation):
    pixels = np.zeros((255, 300, 3), dtype=np.uint8)
    with pytest.raises(WatermarkError, match=r"255x300.*256 px"):
        embed(pixels, 1) if operation == "embed" else verify(pixels, 1)


@pytest.mark.parametrize("payload", [-1, 2**48, True, 1.0])
def test_payload_out_of_range_is_rejected(payload):
    with pytest.raises(ValueError, match="payload"):
        embed(np.zeros((256, 256, 3), np.uint8), payload)


def test_development_key_ring_is_made_marked_and_rotated(tmp_path):
    path = tmp_path / "keys" / watermark.KEY_FILE
    first = ensure_development_key(path)
    assert len(first) == 1 and first[0].development
    assert "NOT FOR PRODUCTION" in path.read_text() and path.stat().st_mode & 0o077 == 0
    assert ensure_development_key(path) == first  # idempotent
    rotated = ensure_development_key(path, rotate=True)
    assert len(rotated) == 2 and rotated[1] == first[0] and rotated[0] != first[0]  # old key kept for verify


def test_a_production_key_ring_is_never_rotated_by_the_dev_tooling(tmp_path):
    path = tmp_path / "ring.txt"
    path.write_text(KEY.secret.hex() + "\n")
    assert load_key_ring(path) == [KEY] and not load_key_ring(path)[0].development
    with pytest.raises(GovernanceCheckFailed, match="not a development key ring"):
        ensure_development_key(path, rotate=True)


@pytest.mark.parametrize(
    "content, message", [("", "holds no key"), ("zz\n", "line 1: not a hex key"), ("00ff\n", "at least 16 bytes")]
)
def test_bad_key_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "ring.txt"
    path.write_text(content)
    with pytest.raises((GovernanceCheckFailed, InvalidInput), match=message):
        load_key_ring(path)
    with pytest.raises(GovernanceCheckFailed, match="atelier keys init"):
        load_key_ring(tmp_path / "missing.txt")
