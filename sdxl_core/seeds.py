"""Per-image seeds.

An image's seed is a pure function of its prompt row's seed and its index within that row,
so that re-running a batch (after a crash, on another worker, in another batch) gives every
image the same seed, whatever else is generated beside it.

    image_seed(prompt_seed, image_index)
        = int.from_bytes(sha256(f"{prompt_seed}:{image_index}".encode()).digest()[:8], "big") >> 1

The first 8 bytes of the SHA-256 digest, read big-endian, shifted right by one bit, so the
result lies in [0, 2**63) and fits a signed 64-bit database column and ``torch.Generator``.
"""

from __future__ import annotations

import hashlib

SEED_BOUND = 2**63


def image_seed(prompt_seed: int, image_index: int) -> int:
    """Return the seed of image ``image_index`` of a prompt row whose seed is ``prompt_seed``."""
    if isinstance(prompt_seed, bool) or not isinstance(prompt_seed, int):
        raise ValueError(f"prompt_seed must be an int, got {prompt_seed!r} ({type(prompt_seed).__name__})")
    if isinstance(image_index, bool) or not isinstance(image_index, int) or image_index < 0:
        raise ValueError(f"image_index must be an int >= 0, got {image_index!r}")
    digest = hashlib.sha256(f"{prompt_seed}:{image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
