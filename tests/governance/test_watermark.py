import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from governance.watermark import (
    NONE_MAX_MATCH,
    SDXL_REFERENCE_PAYLOAD,
    VERY_LIKELY_MIN_MATCH,
    WATERMARK_BITS,
    WatermarkError,
    bits_of,
    decode,
    embed,
    payload_for_image,
    verify,
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


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="dwtDct"):
        embed(noise_image(256), 1, method="rivaGan")


def test_flat_white_image_cannot_carry_a_watermark_and_verify_says_so():
    # dwtDct writes into the U chroma channel, which cannot move at full white: embed "succeeds" but
    # the mark is not there. This is why the pipeline verifies after embedding and fails the image.
    white = np.full((256, 256, 3), 255, dtype=np.uint8)
    payload = payload_for_image(IMAGE_ID)

    check = verify(embed(white, payload), payload)

    assert not check.ok
