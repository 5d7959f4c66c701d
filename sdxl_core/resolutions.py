"""SDXL's recommended output sizes (about one megapixel, sides multiples of 64) and a preset helper.

SDXL 1.0 was trained on buckets of about 1024x1024 pixels; Stability AI's recommended sizes are
the ones below (width x height). Other sizes work (any multiple of 8 is accepted by the engine)
but drift from what the model saw in training.
"""

from __future__ import annotations

import math

SDXL_RESOLUTIONS: list[tuple[int, int]] = [
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
]


def preset(name_or_ratio: str | float) -> tuple[int, int]:
    """(width, height) of a recommended SDXL size.

    Accepts an exact size ``"1216x832"``, an aspect ratio ``"16:9"`` or ``1.5`` (width / height), or
    ``"square"``, ``"landscape"``, ``"portrait"``; a ratio gives the recommended size nearest to it
    (by log aspect ratio, so 2:1 and 1:2 are equally far from square).
    """
    value = name_or_ratio
    if isinstance(value, str):
        text = value.strip().lower()
        named = {"square": "1:1", "landscape": "1216x832", "portrait": "832x1216"}
        text = named.get(text, text)
        if "x" in text:
            try:
                size = tuple(int(p) for p in text.split("x"))
            except ValueError:
                size = ()
            if size in SDXL_RESOLUTIONS:
                return size
            raise ValueError(
                f"{value!r} is not a recommended SDXL size; use one of "
                f"{', '.join(f'{w}x{h}' for w, h in SDXL_RESOLUTIONS)} or a ratio like '16:9'"
            )
        try:
            if ":" in text:
                w, h = (float(p) for p in text.split(":"))
                ratio = w / h
            else:
                ratio = float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"preset {value!r} is neither a size like '1216x832', a ratio like '16:9' or 1.5, "
                "nor 'square', 'landscape' or 'portrait'"
            ) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ratio = float(value)
    else:
        raise ValueError(f"preset needs a str or a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"aspect ratio must be a finite number > 0, got {value!r}")
    return min(SDXL_RESOLUTIONS, key=lambda s: abs(math.log(s[0] / s[1]) - math.log(ratio)))


__all__ = ["SDXL_RESOLUTIONS", "preset"]
