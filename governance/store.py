"""The object store Atelier publishes to: a local folder (embedded default) or S3 over boto3.

Keys are deterministic, so a re-run after a crash writes the same key again; `put` first asks
whether an object with the same SHA-256 is already there and then writes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from governance.errors import InvalidInput


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    version_id: str | None
    created: bool  # False when an identical object was already there


class ObjectStore(Protocol):
    url: str

    worm: bool  # True when put_retained really cannot be overwritten or deleted (S3 Object Lock)

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject: ...
    def put_retained(self, key: str, data: bytes, content_type: str, retain_until: datetime) -> StoredObject: ...
    def get(self, key: str, version_id: str | None = None) -> bytes: ...
    def sha256_of(self, key: str) -> str | None: ...
    def keys(self, prefix: str = "") -> list[str]: ...
    def location(self, key: str) -> str: ...
    def delete(self, key: str, version_id: str | None = None) -> None: ...
    def purge(self, key: str) -> int: ...
    def legal_hold(self, key: str, version_id: str | None, on: bool) -> bool: ...


def image_key(image_id: str, pixels_sha256: str) -> str:
    """Invariant 4: the key is derived from the image id and its content hash.

    The content hash is of the pixels, not of the file: the file carries a C2PA signature that
    differs on every signing, so a re-run after a crash writes the same key again (and replaces
    an unrecorded upload) instead of leaving an orphan beside it.
    """
    return f"images/{image_id}/{pixels_sha256}.png"


def provenance_key(image_id: str, pixels_sha256: str) -> str:
    return f"images/{image_id}/{pixels_sha256}.provenance.json"


def thumbnail_key(image_id: str, pixels_sha256: str) -> str:
    """The gallery thumbnail beside the image (governance.publish.thumbnail_jpeg)."""
    return f"images/{image_id}/{pixels_sha256}.thumb.jpg"


class LocalStore:
    """A folder; metadata goes to a `.meta.json` sidecar next to each object."""

    worm = False

    def __init__(self, root: Path):
        self.root = root
        self._resolved = root.resolve()
        self.url = self._resolved.as_uri()

    def put_retained(self, key: str, data: bytes, content_type: str, retain_until: datetime) -> StoredObject:
        """A folder cannot enforce retention: the object is written read-only, and `worm` says so."""
        path = self._path(key)
        if path.exists():
            raise FileExistsError(f"{key} already exists and is retained")
        stored = self.put(key, data, content_type, {"retain-until": retain_until.isoformat()})
        path.chmod(0o444)
        return stored

    def _path(self, key: str) -> Path:
        """The file of `key`, never outside the folder. A plain key (relative, no `.`/`..`/empty parts)
        maps directly, without a syscall per path component; anything else is resolved and checked. A
        symbolic link inside the folder is followed: whoever can make one can rewrite the objects too."""
        parts = key.split("/")
        if key and "\x00" not in key and "\\" not in key and all(p not in ("", ".", "..") for p in parts):
            return self._resolved / key
        path = (self._resolved / key).resolve()
        if self._resolved not in path.parents:
            raise InvalidInput(f"store key {key!r} escapes the store folder")
        return path

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        digest = hashlib.sha256(data).hexdigest()
        if self.sha256_of(key) == digest:
            return StoredObject(key, digest, None, created=False)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"content_type": content_type, "sha256": digest, "metadata": metadata}
        for target, payload in ((path.with_name(path.name + ".meta.json"), json.dumps(meta).encode()), (path, data)):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, target)
        return StoredObject(key, digest, None, created=True)

    def get(self, key: str, version_id: str | None = None) -> bytes:
        return self._path(key).read_bytes()

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Remove the object and its metadata sidecar (a folder keeps no versions); absent is fine."""
        path = self._path(key)
        for target in (path, path.with_name(path.name + ".meta.json")):
            target.unlink(missing_ok=True)

    def purge(self, key: str) -> int:
        """Delete the object for good (a folder keeps no versions): the number of objects removed."""
        existed = self._path(key).exists()
        self.delete(key)
        return int(existed)

    def legal_hold(self, key: str, version_id: str | None, on: bool) -> bool:
        """A folder cannot hold anything against its owner: False (the database's hold is what stands)."""
        return False

    def sha256_of(self, key: str) -> str | None:
        path = self._path(key)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

    def keys(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        out = []
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and not rel.endswith(".meta.json") and not path.name.startswith(".tmp-"):
                if rel.startswith(prefix):
                    out.append(rel)
        return sorted(out)

    def location(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    """S3 or any S3-compatible server. PUTs carry a SHA-256 checksum the server verifies."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str | None = None,
        client: Any = None,  # a boto3 S3 client (boto3 is untyped); default: one made here
        timeout_s: float = 30,
        max_attempts: int = 5,
    ):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self._object_lock: bool | None = None
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            # boto3 retries 5xx, throttling and timeouts itself; governance.retry rides out longer outages.
            config=Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
            ),
        )

    worm = True

    def _key(self, key: str) -> str:
        return self.prefix + key

    def put_retained(self, key: str, data: bytes, content_type: str, retain_until: datetime) -> StoredObject:
        """PUT under S3 Object Lock in COMPLIANCE mode: nobody, root included, can overwrite or delete
        this version before `retain_until`. The bucket must have Object Lock enabled."""
        digest = hashlib.sha256(data)
        resp = self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
            Metadata={"sha256": digest.hexdigest()},
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=retain_until,
        )
        return StoredObject(key, digest.hexdigest(), resp.get("VersionId"), created=True)

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        digest = hashlib.sha256(data)
        existing = self._head(key)
        if existing is not None and existing.get("Metadata", {}).get("sha256") == digest.hexdigest():
            return StoredObject(key, digest.hexdigest(), existing.get("VersionId"), created=False)
        resp = self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
            Metadata={**metadata, "sha256": digest.hexdigest()},
        )
        return StoredObject(key, digest.hexdigest(), resp.get("VersionId"), created=True)

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def get(self, key: str, version_id: str | None = None) -> bytes:
        extra = {"VersionId": version_id} if version_id else {}
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)["Body"].read()

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Delete the object; with `version_id` (a versioned bucket) that version itself, so the bytes
        are gone rather than hidden behind a delete marker."""
        extra = {"VersionId": version_id} if version_id else {}
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key), **extra)

    def purge(self, key: str) -> int:
        """Delete every version of the object (and its delete markers), so the bytes are gone from a
        versioned bucket too: the number of versions removed. A version under an Object Lock legal
        hold or retention makes S3 refuse (AccessDenied), as it should."""
        full = self._key(key)
        removed = 0
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] == full:
                    self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=v["VersionId"])
                    removed += "Size" in v  # a version, not a marker
        return removed

    def object_lock(self) -> bool:
        """Whether the bucket has S3 Object Lock (asked once)."""
        if self._object_lock is None:
            from botocore.exceptions import ClientError

            try:
                conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                self._object_lock = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                    raise
                self._object_lock = False
        return self._object_lock

    def legal_hold(self, key: str, version_id: str | None, on: bool) -> bool:
        """Set or clear the S3 Object Lock legal hold on the object (that version, or the current one):
        while ON, S3 refuses to delete or overwrite that version, whoever asks. False when the bucket
        has no Object Lock (then only the database's hold stands), or when there is no such object (a
        thumbnail never made, a copy already removed): nothing to hold."""
        from botocore.exceptions import ClientError

        if not self.object_lock():
            return False
        extra = {"VersionId": version_id} if version_id else {}
        try:
            self.client.put_object_legal_hold(
                Bucket=self.bucket, Key=self._key(key), LegalHold={"Status": "ON" if on else "OFF"}, **extra
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchVersion", "NotFound"):
                return False
            raise
        return True

    def sha256_of(self, key: str) -> str | None:
        """The object's SHA-256: from the checksum S3 stored at upload when there is one (no download)."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        if head.get("ChecksumSHA256") and "-" not in head["ChecksumSHA256"]:
            return base64.b64decode(head["ChecksumSHA256"]).hex()
        return hashlib.sha256(self.get(key)).hexdigest()

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            out.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        return sorted(out)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(url: str, endpoint_url: str | None = None, timeout_s: float = 30, max_attempts: int = 5) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidInput(f"store URL {url!r} has no bucket: use s3://BUCKET/PREFIX")
        return S3Store(parsed.netloc, parsed.path, endpoint_url, timeout_s=timeout_s, max_attempts=max_attempts)
    raise InvalidInput(f"unsupported store URL {url!r}: use file:///path or s3://bucket/prefix")
