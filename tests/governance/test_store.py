"""Publishing targets: the S3 protocol over HTTP (moto's server) and a local folder."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import boto3
import pytest

from governance.errors import InvalidInput
from governance.store import LocalStore, open_store


def test_s3_put_carries_checksum_and_metadata_and_is_idempotent(s3_server: str, s3_env: str) -> None:
    store = open_store(f"s3://{s3_env}/published", s3_server)
    data = b"\x89PNG fake bytes for the store test"
    first = store.put("images/a/b.png", data, "image/png", {"image-id": "a"})
    again = store.put("images/a/b.png", data, "image/png", {"image-id": "a"})
    assert first.created and not again.created
    assert first.sha256 == hashlib.sha256(data).hexdigest() == store.sha256_of("images/a/b.png")
    client = boto3.client("s3", endpoint_url=s3_server)
    head = client.head_object(Bucket=s3_env, Key="published/images/a/b.png", ChecksumMode="ENABLED")
    assert head["Metadata"]["image-id"] == "a"
    # the server stored the SHA-256 checksum the PUT carried (S3 verifies it against the body)
    assert base64.b64decode(head["ChecksumSHA256"]) == hashlib.sha256(data).digest()
    assert head["ContentType"] == "image/png"
    assert store.keys() == ["images/a/b.png"]
    assert store.get("images/a/b.png") == data


def test_local_store_round_trip(tmp_path: Path) -> None:
    store = open_store((tmp_path / "st").as_uri())
    assert isinstance(store, LocalStore)
    r = store.put("images/x/y.png", b"abc", "image/png", {})
    assert r.created and not store.put("images/x/y.png", b"abc", "image/png", {}).created
    assert store.keys() == ["images/x/y.png"] and store.get("images/x/y.png") == b"abc"
    with pytest.raises(InvalidInput, match="escapes"):
        store.put("../outside", b"x", "text/plain", {})


@pytest.mark.parametrize("key", ["../outside", "images/../../outside", "/etc/passwd", "images/./../../x", ".."])
def test_local_store_keys_cannot_leave_the_folder(tmp_path: Path, key: str) -> None:
    """Plain keys map without resolving the path (the gallery reads 100 thumbnails a page); any key
    with an absolute, `.`, `..` or empty part is resolved and refused if it leaves the folder."""
    (tmp_path / "outside").write_bytes(b"secret")
    store = LocalStore(tmp_path / "st")
    for act in (
        lambda: store.get(key),
        lambda: store.put(key, b"x", "text/plain", {}),
        lambda: store.sha256_of(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(InvalidInput, match="escapes the store folder"):
            act()
    assert (tmp_path / "outside").read_bytes() == b"secret"
    store.put("images/./a.png", b"inside", "image/png", {})  # resolved, and inside: fine
    assert store.get("images/a.png") == b"inside"


@pytest.mark.parametrize("url", ["ftp://host/x", "s3:///nobucket", "plain-path"])
def test_bad_store_urls_are_named(url: str) -> None:
    with pytest.raises(InvalidInput):
        open_store(url)
