import hashlib

import pytest

from sdxl_core.seeds import SEED_BOUND, image_seed


def test_image_seed_is_the_documented_sha256_derivation() -> None:
    digest = hashlib.sha256(b"1234:0").digest()
    assert image_seed(1234, 0) == int.from_bytes(digest[:8], "big") >> 1


def test_image_seed_is_deterministic_in_range_and_distinct_per_index() -> None:
    seeds = [image_seed(42, i) for i in range(100)]
    assert seeds == [image_seed(42, i) for i in range(100)]
    assert len(set(seeds)) == 100
    assert all(0 <= s < SEED_BOUND for s in seeds)
    assert image_seed(42, 0) != image_seed(43, 0)


@pytest.mark.parametrize("bad", [(1.5, 0), ("7", 0), (7, -1), (True, 0), (7, 1.0)])
def test_image_seed_refuses_non_integers(bad: tuple[object, object]) -> None:
    with pytest.raises(ValueError):
        image_seed(*bad)  # type: ignore[arg-type]
