"""The legacy scheme, invisible-watermark dwtDct: still read for images marked before atelier-dctss.

Its vectorised port stays bit-compatible with the library; its known weaknesses (why it is no longer
the scheme in force) are pinned here too.
"""

import hashlib
import io

import cv2
import numpy as np
import pytest
import pywt
from imwatermark import WatermarkDecoder, WatermarkEncoder
from PIL import Image

from governance import watermark
from governance import watermark_dwtdct as legacy
from governance.watermark import SCHEME_DWTDCT, SDXL_REFERENCE_PAYLOAD, WATERMARK_BITS, WatermarkError, bits_of
from governance.watermark import payload_for_image as payload_for_image
from governance.watermark_dwtdct import _haar_dwt2, _haar_idwt2

VERY_LIKELY_MIN_MATCH, _LIKELY, _UNCERTAIN = watermark.THRESHOLDS[SCHEME_DWTDCT]
NONE_MAX_MATCH = _UNCERTAIN - 1


def embed(pixels, payload, method="dwtDct"):
    if method == "dwtDct":
        return watermark.embed(pixels, payload, scheme=SCHEME_DWTDCT)
    watermark._check_payload(payload)
    legacy._check_method(method)
    watermark._check_pixels(pixels)
    return legacy.embed(pixels, bits_of(payload), method=method)


def decode(pixels, method="dwtDct"):
    if method == "dwtDct":
        return watermark.decode(pixels, scheme=SCHEME_DWTDCT)
    return legacy.decode(pixels, method=method)


def verify(pixels, expected, method="dwtDct"):
    if method == "dwtDct":
        return watermark.verify(pixels, expected, scheme=SCHEME_DWTDCT)
    decoded = decode(pixels, method)
    matched = WATERMARK_BITS - (decoded ^ expected).bit_count()
    return watermark.WatermarkCheck(
        expected, decoded, matched, WATERMARK_BITS, watermark.verdict_for(matched, SCHEME_DWTDCT), SCHEME_DWTDCT
    )


IMAGE_ID = "prompt-0001/0"


def noise_image(size: int) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)


def gradient_image(size: int) -> np.ndarray:
    """A smooth image: a warm-tinted diagonal brightness ramp (its chroma is constant)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    value = 25 + 100 * (x + y)
    return np.stack([value + 20, value, value - 20], axis=-1).round().astype(np.uint8)


def colour_gradient_image(size: int) -> np.ndarray:
    """A smooth image whose chroma changes across it: dwtDct's weak case."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return np.stack([60 + 150 * x, 90 + 100 * y, 200 - 120 * x], axis=-1).round().astype(np.uint8)


IMAGES = {"noise": noise_image, "gradient": gradient_image}


def png_round_trip(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def test_payload_is_first_six_bytes_of_sha256_of_image_id():
    expected = int.from_bytes(hashlib.sha256(IMAGE_ID.encode()).digest()[:6], "big")
    assert payload_for_image(IMAGE_ID) == expected
    assert payload_for_image(IMAGE_ID) != payload_for_image("prompt-0001/1")
    assert 0 <= expected < 2**WATERMARK_BITS


def test_bits_are_most_significant_first():
    # generative-models writes its message as this bit string.
    reference = "101100111110110010010000011110111011000110011110"
    assert bits_of(SDXL_REFERENCE_PAYLOAD) == [int(c) for c in reference]
    assert len(bits_of(1)) == WATERMARK_BITS and bits_of(1)[-1] == 1


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_embed_then_verify_is_very_likely(kind, size):
    pixels = IMAGES[kind](size)
    payload = payload_for_image(IMAGE_ID)

    marked = embed(pixels, payload)
    check = verify(marked, payload)

    assert marked.shape == pixels.shape and marked.dtype == np.uint8
    assert check.ok, check
    assert check.verdict == "very_likely"
    assert VERY_LIKELY_MIN_MATCH <= check.matched_bits <= check.total_bits == WATERMARK_BITS


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_other_payload_on_same_image_is_not_ok(kind):
    marked = embed(IMAGES[kind](256), payload_for_image(IMAGE_ID))

    check = verify(marked, payload_for_image("someone-else/0"))

    assert not check.ok
    assert check.matched_bits < VERY_LIKELY_MIN_MATCH


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_unmarked_image_is_not_ok(kind):
    check = verify(IMAGES[kind](256), payload_for_image(IMAGE_ID))

    assert not check.ok
    assert check.matched_bits < VERY_LIKELY_MIN_MATCH


def test_unmarked_image_does_not_read_as_the_sdxl_reference():
    check = verify(noise_image(256), SDXL_REFERENCE_PAYLOAD)

    assert check.matched_bits <= NONE_MAX_MATCH
    assert check.verdict == "none"


def test_embed_is_deterministic_and_leaves_input_alone():
    pixels = gradient_image(256)
    before = pixels.copy()
    payload = payload_for_image(IMAGE_ID)

    first = embed(pixels, payload)
    second = embed(pixels, payload)

    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(pixels, before)
    assert not np.array_equal(first, pixels)
    assert decode(first) == decode(second)


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_watermark_survives_png_round_trip(kind):
    payload = payload_for_image(IMAGE_ID)
    marked = embed(IMAGES[kind](512), payload)

    reloaded = png_round_trip(marked)

    np.testing.assert_array_equal(reloaded, marked)
    assert verify(reloaded, payload).ok


@pytest.mark.parametrize("operation", ["embed", "decode", "verify"])
def test_too_small_image_is_an_error_not_a_skip(operation):
    pixels = np.zeros((255, 300, 3), dtype=np.uint8)
    call = {
        "embed": lambda: embed(pixels, 1),
        "decode": lambda: decode(pixels),
        "verify": lambda: verify(pixels, 1),
    }[operation]

    with pytest.raises(WatermarkError, match=r"255x300.*256 px"):
        call()


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.zeros((256, 256, 3), dtype=np.float32), "uint8"),
        (np.zeros((256, 256), dtype=np.uint8), "HxWx3"),
        (np.zeros((256, 256, 4), dtype=np.uint8), "HxWx3"),
        ([[0, 0, 0]], "numpy"),
    ],
)
def test_wrong_dtype_or_shape_is_an_error(pixels, message):
    with pytest.raises(WatermarkError, match=message):
        embed(pixels, 1)


@pytest.mark.parametrize("payload", [-1, 2**48, True, 1.0])
def test_payload_out_of_range_is_rejected(payload):
    with pytest.raises(ValueError, match="payload"):
        embed(noise_image(256), payload)


@pytest.mark.parametrize("size", [256, 512])
def test_dwtdctsvd_marks_a_smooth_colour_gradient(size):
    # dwtDct reads back only 30-41 of 48 bits on this image depending on the payload (measured);
    # the slower dwtDctSvd of the same library reads back every bit.
    pixels = colour_gradient_image(size)
    for image_id in ("prompt-0001/0", "prompt-0001/1", "prompt-0002/0"):
        payload = payload_for_image(image_id)
        check = verify(embed(pixels, payload, method="dwtDctSvd"), payload, method="dwtDctSvd")
        assert check.ok, (image_id, check)


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="dwtDct"):
        watermark.embed(noise_image(256), 1, scheme="rivaGan")


def test_flat_white_image_cannot_carry_a_watermark_and_verify_says_so():
    # dwtDct writes into the U chroma channel, which cannot move at full white: embed "succeeds" but
    # the mark is not there. This is why the pipeline verifies after embedding and fails the image.
    white = np.full((256, 256, 3), 255, dtype=np.uint8)
    payload = payload_for_image(IMAGE_ID)

    check = verify(embed(white, payload), payload)

    assert not check.ok


# --- bit-compatibility of the vectorised dwtDct with invisible-watermark itself -------------------------
#
# governance.watermark reimplements the library's dwtDct without its per-4x4-block Python loops. These
# tests run the library (imwatermark) on the same images and require identical pixels out of embed and
# identical bits out of either decoder, on every image kind and size below.

COMPAT_SIZES = [(256, 256), (320, 256), (256, 320), (512, 768), (1024, 1024), (258, 262), (257, 301)]  # H x W


def library_embed(pixels: np.ndarray, payload: int) -> np.ndarray:
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", bits_of(payload))
    return np.ascontiguousarray(encoder.encode(np.ascontiguousarray(pixels[:, :, ::-1]), "dwtDct")[:, :, ::-1])


def library_decode(pixels: np.ndarray) -> int:
    bits = WatermarkDecoder("bits", WATERMARK_BITS).decode(np.ascontiguousarray(pixels[:, :, ::-1]), "dwtDct")
    return int("".join("1" if b else "0" for b in bits), 2)


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """A picture-like image: smooth colour fields, soft shapes in random (often saturated) colours, grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.empty((height, width, 3))
    for c in range(3):
        a, b, d = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 80 * np.sin(3 * a * x + 2 * b * y + d)
    img = img.astype(np.uint8)
    for _ in range(12):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            axes = (int(rng.integers(10, width // 3)), int(rng.integers(10, height // 3)))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            corner = (cx + int(rng.integers(10, width // 2)), cy + int(rng.integers(10, height // 2)))
            cv2.rectangle(img, (cx, cy), corner, colour, -1)
    out = cv2.GaussianBlur(img, (0, 0), 2.0) + rng.normal(0, 3, img.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def compat_image(kind: str, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "gradient":  # constant chroma
        value = 25 + 100 * (x / width + y / height)
        return np.stack([value + 20, value, value - 20], axis=-1).round().astype(np.uint8)
    if kind == "colour_gradient":
        channels = [60 + 150 * x / width, 90 + 100 * y / height, 200 - 120 * x / width]
        return np.stack(channels, -1).round().astype(np.uint8)
    if kind == "photo":
        return photo_like(height, width, seed)
    if kind == "saturated":  # pure blue / yellow tiles: chroma at its limits, RGB clipping on the way back
        tiles = ((x // 37 + y // 23) % 2 == 0)[..., None]
        return np.where(tiles, np.array([0, 0, 255], np.uint8), np.array([255, 255, 0], np.uint8)).astype(np.uint8)
    if kind == "white":
        return np.full((height, width, 3), 255, np.uint8)
    if kind == "low_noise":
        return np.clip(128 + rng.normal(0, 2, (height, width, 3)), 0, 255).astype(np.uint8)
    raise AssertionError(kind)


COMPAT_KINDS = ["noise", "gradient", "colour_gradient", "photo", "saturated", "white", "low_noise"]


@pytest.mark.parametrize("size", COMPAT_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", COMPAT_KINDS)
def test_embed_is_bit_identical_to_the_library_and_decoders_agree(kind, size):
    height, width = size
    pixels = compat_image(kind, height, width, seed=height * 7 + width)
    payload = payload_for_image(f"{kind}/{height}x{width}")

    ours = embed(pixels, payload)
    theirs = library_embed(pixels, payload)

    assert ours.dtype == np.uint8 and ours.shape == pixels.shape and ours.flags["C_CONTIGUOUS"]
    assert int(np.count_nonzero(ours != theirs)) == 0  # exactly equal: no +-1 anywhere
    # Each decoder reads the other's marks with identical bits (whatever the match count on this image).
    assert decode(theirs) == library_decode(ours) == library_decode(theirs) == decode(ours)
    # And they agree on unmarked images too.
    assert decode(pixels) == library_decode(pixels)


def test_many_random_payloads_and_images_match_the_library():
    rng = np.random.default_rng(2024)
    for trial in range(24):
        height, width = (int(v) for v in rng.integers(256, 420, 2))
        kind = COMPAT_KINDS[trial % len(COMPAT_KINDS)]
        pixels = compat_image(kind, height, width, seed=trial)
        payload = int(rng.integers(0, 2**WATERMARK_BITS))
        ours, theirs = embed(pixels, payload), library_embed(pixels, payload)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"trial {trial}: {kind} {height}x{width}")
        assert decode(ours) == library_decode(ours), (trial, kind, height, width)


def test_library_marks_verify_with_our_decoder_and_ours_with_the_library():
    pixels = compat_image("noise", 512, 512, seed=5)
    payload = payload_for_image(IMAGE_ID)

    assert verify(library_embed(pixels, payload), payload).matched_bits == WATERMARK_BITS
    assert library_decode(embed(pixels, payload)) == payload


@pytest.mark.parametrize("shape", [(256, 256), (260, 300), (130, 6)])
def test_haar_transforms_match_pywavelets_bit_for_bit(shape):
    rng = np.random.default_rng(shape[0])
    channel = rng.integers(0, 256, shape, dtype=np.uint8)
    approx, (horizontal, vertical, diagonal) = pywt.dwt2(channel, "haar")

    ours = _haar_dwt2(channel)
    for mine, theirs in zip(ours, (approx, horizontal, vertical, diagonal), strict=True):
        assert mine.dtype == np.float64
        np.testing.assert_array_equal(mine, theirs)

    bands = [approx + rng.normal(0, 20, approx.shape), horizontal, vertical, diagonal]
    np.testing.assert_array_equal(_haar_idwt2(*bands), pywt.idwt2((bands[0], tuple(bands[1:])), "haar"))


def test_marks_survive_the_publish_png_round_trip():
    from governance.publish import decode_png, encode_png

    payload = payload_for_image(IMAGE_ID)
    marked = embed(compat_image("photo", 512, 512, seed=1), payload)

    data = encode_png(marked)
    back = decode_png(data)

    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(back, marked)
    assert back.dtype == np.uint8 and back.shape == marked.shape
    assert decode(back) == decode(marked) == library_decode(back)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_decode_png_converts_other_modes_to_rgb(mode):
    from governance.publish import decode_png

    buffer = io.BytesIO()
    Image.fromarray(compat_image("gradient", 256, 256, seed=0)).convert(mode).save(buffer, format="PNG")

    pixels = decode_png(buffer.getvalue())

    assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
