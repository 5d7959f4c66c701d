"""SHA-256 of model weight files, cached by (path, size, mtime).

A component's hash is the SHA-256 over its sorted list of (relative filename, file SHA-256):
each line ``f"{relative_name}\\t{file_sha256}\\n"`` in filename order, UTF-8, hashed together. Two
folders with the same weight bytes under the same names hash the same wherever they lie; changing,
adding or removing a weight file changes it.

File hashes are cached in one JSON file keyed by absolute path, size and mtime (ns), so a worker
hashes multi-gigabyte weights once, and a rewritten file (new size or mtime) is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CHUNK = 16 * 1024 * 1024
# Shard suffix of "diffusion_pytorch_model.fp16-00001-of-00002.safetensors"; the variant is the dotted
# part before it ("fp16"), absent from "diffusion_pytorch_model.safetensors" or "model.safetensors".
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")


def default_hash_cache_path() -> Path:
    """``$XDG_CACHE_HOME/atelier/weight-hashes.json`` (``~/.cache/atelier/...`` by default)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "atelier" / "weight-hashes.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class WeightHashCache:
    """File SHA-256s cached in a JSON file, keyed by ``"{absolute path}|{size}|{mtime_ns}"``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_hash_cache_path()

    def _read(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            logger.warning("ignoring unreadable weight-hash cache %s", self.path)
            return {}

    def file_sha256s(self, files: list[Path]) -> dict[Path, str]:
        """SHA-256 of each file, from the cache where its path, size and mtime still match."""
        keys = {}
        for f in files:
            st = f.stat()
            keys[f] = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        cached = self._read()
        missing = [f for f in files if keys[f] not in cached]
        if not missing:
            return {f: cached[keys[f]] for f in files}
        fresh = {keys[f]: sha256_file(f) for f in missing}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged = {**self._read(), **fresh}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".weight-hashes.", suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                json.dump(merged, handle, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        return {f: fresh.get(keys[f]) or cached[keys[f]] for f in files}


def weight_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The weight files diffusers/transformers load from one component folder.

    Files of another variant than ``variant`` are left out (``model.fp16.safetensors`` is not loaded
    when no variant is asked for), and ``.bin`` files are left out when ``.safetensors`` exist, as the
    loaders prefer them.
    """
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))

    def file_variant(p: Path) -> str | None:
        stem = _SHARD.sub("", p.name[: -len(p.suffix)])
        return stem.rsplit(".", 1)[1] if "." in stem else None

    chosen = [p for p in found if file_variant(p) == variant]
    if any(p.suffix == ".safetensors" for p in chosen):
        chosen = [p for p in chosen if p.suffix == ".safetensors"]
    return chosen


def component_hash(files: dict[str, str]) -> str:
    """SHA-256 over the sorted (relative filename, file SHA-256) list."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\t{files[name]}\n".encode())
    return digest.hexdigest()


def hash_component_folder(
    folder: Path, *, variant: str | None = None, cache: WeightHashCache | None = None
) -> tuple[str, dict[str, str]]:
    """Return (component sha256, {relative filename: file sha256}) for one component folder."""
    folder = Path(folder)
    files = weight_files(folder, variant)
    if not files:
        raise FileNotFoundError(
            f"no weight files (*.safetensors, *.bin{f', variant {variant!r}' if variant else ''}) in {folder}"
        )
    sums = (cache or WeightHashCache()).file_sha256s(files)
    by_name = {p.relative_to(folder).as_posix(): sums[p] for p in files}
    return component_hash(by_name), by_name
