"""The server's thumbnail cache: what a gallery page shows without reading the store again, within
a fixed memory budget per server process (the oldest-shown thumbnails leave first)."""

from __future__ import annotations

from server.actions import ThumbnailCache


def test_the_cache_keeps_the_most_recently_shown_within_its_budget() -> None:
    cache = ThumbnailCache(budget_bytes=30)
    for key in ("a", "b", "c"):
        cache.put("s3://one/", key, key * 10)
    assert cache.size == 30
    assert cache.get("s3://one/", "a") == "a" * 10  # shown again: now the newest
    cache.put("s3://one/", "d", "d" * 10)  # over budget: the least recently shown ("b") goes
    assert cache.get("s3://one/", "b") is None
    assert [cache.get("s3://one/", k) for k in ("a", "c", "d")] == ["a" * 10, "c" * 10, "d" * 10]
    assert cache.size == 30


def test_a_thumbnail_is_cached_per_store_and_never_beyond_the_budget() -> None:
    cache = ThumbnailCache(budget_bytes=30)
    cache.put("s3://one/", "k", "x" * 10)
    assert cache.get("s3://two/", "k") is None  # the same key in another store is another object
    cache.put("s3://one/", "huge", "h" * 31)  # larger than the whole budget: not kept, nothing evicted
    assert cache.get("s3://one/", "huge") is None and cache.get("s3://one/", "k") == "x" * 10
    cache.put("s3://one/", "k", "y" * 10)  # a key never changes its thumbnail: the first stays
    assert cache.get("s3://one/", "k") == "x" * 10 and cache.size == 10
