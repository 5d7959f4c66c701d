"""Named pipeline configurations: what a batch's images are made with (issue 16).

A configuration names its stages (``base`` alone, or ``base`` then ``refiner`` with a split), the
defaults a row takes for steps, guidance and split, its sampler and dtype (``None``: the worker's
``ATELIER_SCHEDULER``/``ATELIER_DTYPE``) and the sizes it makes. They live in a versioned file like the
other policies (``governance/policies/pipelines-v1.json``; ``ATELIER_PIPELINES`` names another).

How a configuration is pinned:

- a prompt row names one configuration, or several for a comparison (``base,base+refiner``: one image
  per (row, configuration, index), with the same seeds), in its ``pipeline`` cell; the names are part
  of the content hash the approval pins (a row of the default ``base+refiner`` hashes as it always did,
  so batches stored before configurations existed keep their hashes);
- the batch records the definitions of the configurations it names when it is submitted
  (``batches.pipelines``, a governed record bound by the ledger); a run uses the batch's copy, never
  the file in force at run time, so what the approver saw is what runs;
- an image records its configuration (``images.pipeline``) and its provenance, C2PA manifest, lineage
  and ``trace`` say so; ``reproduce`` replays it.

Image ``k`` of configuration ``c`` (0-based position in the row's list) of a row with ``num_images``
images has image index ``c * num_images + k`` and seed ``image_seed(row seed, k)``: the seed does not
depend on the configuration, which is what makes a comparison fair.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from governance.errors import InvalidInput
from governance.policyfile import read_policy_file

DEFAULT_PIPELINE = "base+refiner"  # what a row that names none runs: Atelier's behaviour before issue 16
DEFAULT_FILE = Path(__file__).parent / "policies" / "pipelines-v1.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9+._-]{0,39}\Z")
MAX_PER_ROW = 4  # configurations one row may compare
_DTYPES = ("float32", "float16", "bfloat16")
_FIELDS = {
    "description",
    "refiner",
    "refiner_split",
    "steps",
    "guidance_scale",
    "scheduler",
    "dtype",
    "min_side",
    "max_side",
}


@dataclass(frozen=True)
class PipelineConfig:
    """One named configuration; ``record()`` is what a batch stores and provenance shows."""

    name: str
    refiner: bool  # False: the base runs every step and its VAE decodes; the refiner is not loaded
    steps: int
    guidance_scale: float
    refiner_split: float | None  # the default split of a refiner configuration; None without one
    scheduler: str | None = None  # None: the worker's ATELIER_SCHEDULER
    dtype: str | None = None  # None: the worker's ATELIER_DTYPE
    min_side: int = 256
    max_side: int = 2048
    description: str = ""

    @property
    def stages(self) -> tuple[str, ...]:
        return ("base", "refiner") if self.refiner else ("base",)

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stages": list(self.stages),
            "refiner": self.refiner,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "refiner_split": self.refiner_split,
            "scheduler": self.scheduler,
            "dtype": self.dtype,
            "min_side": self.min_side,
            "max_side": self.max_side,
            "description": self.description,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PipelineConfig:
        return cls(
            name=str(record["name"]),
            refiner=bool(record["refiner"]),
            steps=int(record["steps"]),
            guidance_scale=float(record["guidance_scale"]),
            refiner_split=None if record.get("refiner_split") is None else float(record["refiner_split"]),
            scheduler=record.get("scheduler"),
            dtype=record.get("dtype"),
            min_side=int(record.get("min_side", 256)),
            max_side=int(record.get("max_side", 2048)),
            description=str(record.get("description", "")),
        )


# Batches stored before configurations existed ran today's base + refiner with the worker's settings.
LEGACY = PipelineConfig(
    DEFAULT_PIPELINE, refiner=True, steps=40, guidance_scale=5.0, refiner_split=0.8, description="before issue 16"
)


@dataclass(frozen=True)
class PipelineSet:
    """The configurations of one file (or of one batch's record)."""

    version: str
    sha256: str
    configs: Mapping[str, PipelineConfig]

    @property
    def names(self) -> list[str]:
        return sorted(self.configs)

    def get(self, name: str) -> PipelineConfig:
        config = self.configs.get(name)
        if config is None:
            raise InvalidInput(unknown_message(name, self.names))
        return config

    def record_for(self, names: Sequence[str]) -> dict[str, Any]:
        """What a batch stores: the version and hash of the file, and the definitions it names."""
        return {
            "version": self.version,
            "sha256": self.sha256,
            "configurations": {n: self.get(n).record() for n in sorted(set(names))},
        }


def unknown_message(name: str, known: Sequence[str]) -> str:
    import difflib

    if not name:
        return f"an empty configuration name (a stray comma?); configurations: {', '.join(known)}"
    close = difflib.get_close_matches(name.lower(), known, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown pipeline configuration {name!r}{guess}; configurations: {', '.join(known)}"


def split_names(cell: str) -> list[str]:
    """The configuration names of a ``pipeline`` cell: comma-separated, spaces around them ignored."""
    return [part.strip() for part in cell.split(",")]


def load_pipelines(path: Path | None = None) -> PipelineSet:
    """The configurations in ``path`` (default: the packaged file); every problem is one line."""
    p = path or DEFAULT_FILE
    raw, data, bad = read_policy_file(p, "pipeline configurations", "ATELIER_PIPELINES", body="configurations")
    entries = data.get("configurations")
    if not isinstance(entries, dict) or not entries:
        raise bad("configurations", "must be an object of named configurations")
    configs: dict[str, PipelineConfig] = {}
    for name, entry in entries.items():
        where = f"configurations.{name}"
        if not NAME.match(name):
            raise bad(where, "is not a configuration name (lower-case letters, digits and + . _ -, at most 40)")
        if not isinstance(entry, dict):
            raise bad(where, "must be an object")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise bad(f"{where}.{sorted(unknown)[0]}", f"is not a configuration field ({', '.join(sorted(_FIELDS))})")
        configs[name] = _config(name, entry, lambda field, why, where=where: bad(f"{where}.{field}", why))
    return PipelineSet(str(data["version"]), hashlib.sha256(raw).hexdigest(), configs)


def _config(name: str, entry: dict[str, Any], bad: Any) -> PipelineConfig:
    from governance.intake import GUIDANCE_MAX, SIZE_MAX, SIZE_MIN, STEPS_MAX

    refiner = entry.get("refiner")
    if not isinstance(refiner, bool):
        raise bad("refiner", "must be true or false")
    steps = entry.get("steps", 40)
    if isinstance(steps, bool) or not isinstance(steps, int) or not (2 if refiner else 1) <= steps <= STEPS_MAX:
        raise bad("steps", f"must be a whole number in {2 if refiner else 1}..{STEPS_MAX}")
    guidance = entry.get("guidance_scale", 5.0)
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0 <= guidance <= GUIDANCE_MAX:
        raise bad("guidance_scale", f"must be a number in 0..{GUIDANCE_MAX:g}")
    split = entry.get("refiner_split")
    if refiner:
        if isinstance(split, bool) or not isinstance(split, int | float) or not 0 < split < 1:
            raise bad("refiner_split", "must lie strictly between 0 and 1 for a configuration with the refiner")
    elif split is not None:
        raise bad("refiner_split", "has no meaning without the refiner; remove it")
    scheduler = entry.get("scheduler")
    if scheduler is not None:
        from sdxl_core.schedulers import check_scheduler_name

        try:
            check_scheduler_name(scheduler)
        except ValueError as exc:
            raise bad("scheduler", f"{exc} (or null: the worker's ATELIER_SCHEDULER)") from None
    dtype = entry.get("dtype")
    if dtype is not None and dtype not in _DTYPES:
        raise bad("dtype", f"must be one of {', '.join(_DTYPES)} or null (the worker's ATELIER_DTYPE)")
    sides = {}
    for key, default in (("min_side", SIZE_MIN), ("max_side", SIZE_MAX)):
        value = entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not SIZE_MIN <= value <= SIZE_MAX:
            raise bad(key, f"must be a whole number in {SIZE_MIN}..{SIZE_MAX}")
        sides[key] = value
    if sides["min_side"] > sides["max_side"]:
        raise bad("min_side", "is larger than max_side")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise bad("description", "must be text")
    return PipelineConfig(
        name,
        refiner,
        steps,
        float(guidance),
        None if split is None else float(split),
        scheduler,
        dtype,
        sides["min_side"],
        sides["max_side"],
        description,
    )


@cache
def default_pipelines() -> PipelineSet:
    return load_pipelines()


# ---------------------------------------------------------------- what a stored batch and image ran


def record_sha256(record: Mapping[str, Any] | None) -> str | None:
    """SHA-256 of a batch's pinned definitions (canonical JSON): what an approval pins beside the content
    hash, so that definitions changed after approval (a database edit) refuse the run. None: a batch
    stored before configurations existed."""
    if not record:
        return None
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def batch_configs(record: Mapping[str, Any] | None) -> dict[str, PipelineConfig]:
    """The configurations a stored batch pinned (``batches.pipelines``); a batch stored before
    configurations existed has the legacy base + refiner."""
    if not record:
        return {DEFAULT_PIPELINE: LEGACY}
    return {name: PipelineConfig.from_record(r) for name, r in (record.get("configurations") or {}).items()}


def row_pipelines(cell: str | None) -> list[str]:
    """A stored prompt's configuration names, in order (``prompts.pipeline``; NULL is the default)."""
    return split_names(cell) if cell else [DEFAULT_PIPELINE]


def image_pipeline(cell: str | None, num_images: int, image_index: int) -> str:
    """The configuration of image ``image_index`` of a row (see the module docstring)."""
    names = row_pipelines(cell)
    return names[min(image_index // max(num_images, 1), len(names) - 1)]


def image_slot(num_images: int, image_index: int) -> int:
    """Which of its configuration's images ``image_index`` is: what its seed derives from."""
    return image_index % max(num_images, 1)


@dataclass(frozen=True)
class EngineNeeds:
    """What the engine of a run must load and how: the refiner only when a configuration uses it."""

    refiner: bool
    scheduler: str | None
    dtype: str | None


def engine_needs(configs: Sequence[PipelineConfig]) -> EngineNeeds:
    """One run loads one engine: the configurations of a batch share sampler and dtype (intake checks it)."""
    schedulers = {c.scheduler for c in configs}
    dtypes = {c.dtype for c in configs}
    if len(schedulers) > 1 or len(dtypes) > 1:
        raise InvalidInput(
            "the batch's pipeline configurations use different samplers or dtypes "
            f"({', '.join(sorted(c.name for c in configs))}); one run loads one engine: "
            "compare them in separate batches"
        )
    return EngineNeeds(
        any(c.refiner for c in configs) or not configs, next(iter(schedulers), None), next(iter(dtypes), None)
    )


def config_of(
    pipelines_record: Mapping[str, Any] | None, cell: str | None, num_images: int, image_index: int
) -> PipelineConfig:
    """The configuration (as the batch pinned it) of image ``image_index`` of a row."""
    return pick_config(batch_configs(pipelines_record), cell, num_images, image_index)


def pick_config(
    configs: Mapping[str, PipelineConfig], cell: str | None, num_images: int, image_index: int
) -> PipelineConfig:
    """``config_of`` with the batch's configurations read already."""
    name = image_pipeline(cell, num_images, image_index)
    if name not in configs:  # a row naming a configuration its batch did not pin: a tampered record
        raise InvalidInput(f"the batch pins no configuration {name!r}; `atelier audit verify` checks its records")
    return configs[name]


def models_of(records: Sequence[Any], config: PipelineConfig) -> list[Any]:
    """The model versions (or component records, anything with a ``role``) that made an image of
    ``config``: a run of a comparison batch loads the refiner, but a base image was not made by it."""
    return [m for m in records if config.refiner or m.role != "refiner_unet"]
