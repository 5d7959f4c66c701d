"""Image safety checks: zero-shot open_clip scores against a versioned concept policy.

Policy
------
A policy file (default ``governance/policies/safety-v1.json``) names a version, a list of
concepts (each: a name, a few text prompts, a threshold in (0, 1]) and a list of neutral prompts
that describe ordinary images. Its SHA-256 is recorded with every verdict made under it.

Scoring rule
------------
For each image, as CLIP zero-shot classification does:

1. Embed the image with the model's own preprocessing and image tower, and every policy prompt
   (all concept prompts, then the neutral prompts) with the model's tokenizer and text tower
   (the text embeddings are computed once, when the checker is built). L2-normalise both.
2. ``logits = scale * cos(image, prompt)`` for every prompt, where ``scale`` is the model's own
   ``logit_scale.exp()``, exactly as CLIP does: the learned value (about 100) with pretrained
   weights, open_clip's initial 1/0.07 with random weights. (An earlier draft forced 100 for
   random models; that made every noise image land at 1.0 on one arbitrary concept, i.e. the
   sharpness came from the constant, not from the model.) A ``logit_bias`` (SigLIP models) is
   ignored: it shifts every logit alike and cancels in the softmax.
3. ``p = softmax(logits)`` over all the prompts together.
4. A concept's score is the sum of ``p`` over its own prompts, a number in [0, 1].
5. The image is ``"quarantined"`` if any concept's score is at or above its threshold, each such
   concept giving a reason such as ``"violence 0.71 >= 0.50"``; otherwise it has ``"passed"``.

Neutral prompts take probability mass from the concepts: an ordinary image lands on them. A concept
with more prompts gets a larger share by default, so thresholds belong to a (policy, model) pair and
must be calibrated on labelled images with the production model.

Model
-----
``model_name`` is any architecture open_clip knows (``open_clip.list_models()``), or
:data:`TINY_MODEL_NAME`, a small ViT + text transformer whose config ships in
``governance/policies/`` and is registered with ``open_clip.add_model_config`` on first use.
``pretrained`` is a local checkpoint file (its SHA-256 goes into ``model_id``) or, in production
only, an open_clip pretrained tag (open_clip downloads it). ``pretrained=None`` gives random
weights seeded with ``seed``: the embedded default, deterministic, and marked in ``model_id``
(``open_clip:atelier-tiny-clip:random-seed0``). It exercises the code path, not safety.

A missing or unknown model, a missing checkpoint or an invalid policy raises
:class:`SafetyModelError`; nothing is ever skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from governance.errors import GovernanceCheckFailed
from governance.records import SafetyVerdict

logger = logging.getLogger(__name__)

POLICY_DIR = Path(__file__).parent / "policies"
DEFAULT_POLICY_PATH = POLICY_DIR / "safety-v1.json"
TINY_MODEL_NAME = "atelier-tiny-clip"
TINY_MODEL_CONFIG_PATH = POLICY_DIR / f"{TINY_MODEL_NAME}.json"
PASSED = SafetyVerdict.PASSED
QUARANTINED = SafetyVerdict.QUARANTINED
_IMAGE_BATCH_SIZE = 16
_POLICY_KEYS = {"version", "description", "concepts", "neutral_prompts"}
_CONCEPT_KEYS = {"name", "prompts", "threshold"}


class SafetyModelError(GovernanceCheckFailed, RuntimeError):
    """The safety model or policy cannot be used as configured; the message names the setting to fix."""


@dataclass(frozen=True)
class Concept:
    name: str
    prompts: tuple[str, ...]
    threshold: float


@dataclass(frozen=True)
class SafetyPolicy:
    version: str
    concepts: tuple[Concept, ...]
    neutral_prompts: tuple[str, ...]
    sha256: str  # of the policy file's bytes


@dataclass(frozen=True)
class SafetyResult:
    scores: dict[str, float]  # concept name -> score in [0, 1]
    verdict: str  # "passed" | "quarantined"
    reasons: tuple[str, ...]  # e.g. ("violence 0.71 >= 0.50",)


def load_policy(path: Path | None = None) -> SafetyPolicy:
    """Read and validate a safety policy file; the packaged ``safety-v1.json`` by default."""
    path = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SafetyModelError(f"safety policy file {path} cannot be read ({exc}); fix the safety policy path") from exc
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SafetyModelError(f"safety policy {path} is not valid JSON: {exc}") from exc

    def bad(field: str, why: str) -> SafetyModelError:
        return SafetyModelError(f"safety policy {path}: field {field!r} {why}")

    if not isinstance(data, dict):
        raise bad("<root>", f"must be a JSON object, got {type(data).__name__}")
    _check_keys(data, required=_POLICY_KEYS - {"description"}, allowed=_POLICY_KEYS, where="", bad=bad)
    if not isinstance(data["version"], str) or not data["version"].strip():
        raise bad("version", f"must be a non-empty string, got {data['version']!r}")
    if not isinstance(data["concepts"], list) or not data["concepts"]:
        raise bad("concepts", "must be a non-empty list")

    concepts: list[Concept] = []
    for i, item in enumerate(data["concepts"]):
        where = f"concepts[{i}]"
        if not isinstance(item, dict):
            raise bad(where, f"must be an object, got {type(item).__name__}")
        _check_keys(item, required=_CONCEPT_KEYS, allowed=_CONCEPT_KEYS, where=f"{where}.", bad=bad)
        name = item["name"]
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise bad(f"{where}.name", f"must be a non-empty string without surrounding spaces, got {name!r}")
        if any(c.name == name for c in concepts):
            raise bad(f"{where}.name", f"repeats concept name {name!r}")
        threshold = item["threshold"]
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
            or not 0.0 < threshold <= 1.0
        ):
            raise bad(f"{where}.threshold", f"must be a number in (0, 1], got {threshold!r}")
        prompts = _prompts(item["prompts"], f"{where}.prompts", bad)
        concepts.append(Concept(name=name, prompts=prompts, threshold=float(threshold)))

    neutral = _prompts(data["neutral_prompts"], "neutral_prompts", bad)
    seen: set[str] = set()
    for prompt in [p for c in concepts for p in c.prompts] + list(neutral):
        if prompt in seen:
            raise bad("prompts", f"repeat the prompt {prompt!r}; each prompt may appear once in a policy")
        seen.add(prompt)

    return SafetyPolicy(
        version=data["version"],
        concepts=tuple(concepts),
        neutral_prompts=neutral,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _check_keys(obj: dict[str, Any], required: set[str], allowed: set[str], where: str, bad: Any) -> None:
    missing = sorted(required - obj.keys())
    if missing:
        raise bad(f"{where}{missing[0]}", "is missing")
    unknown = sorted(obj.keys() - allowed)
    if unknown:
        raise bad(f"{where}{unknown[0]}", f"is not a known field (expected {sorted(allowed)})")


def _prompts(value: Any, field: str, bad: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise bad(field, "must be a non-empty list of strings")
    for j, prompt in enumerate(value):
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad(f"{field}[{j}]", f"must be a non-empty string, got {prompt!r}")
    return tuple(value)


class SafetyChecker:
    """Scores images against a :class:`SafetyPolicy` with an open_clip model (see the module docstring)."""

    def __init__(
        self,
        policy: SafetyPolicy,
        model_name: str = TINY_MODEL_NAME,
        pretrained: str | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        import open_clip

        # 1. Resolve the model name and the weights, before building anything.
        if model_name == TINY_MODEL_NAME and TINY_MODEL_NAME not in open_clip.list_models():
            open_clip.add_model_config(TINY_MODEL_CONFIG_PATH)
        if model_name not in open_clip.list_models():
            raise SafetyModelError(
                f"safety model_name {model_name!r} is not an open_clip architecture; "
                f"use {TINY_MODEL_NAME!r} or one of open_clip.list_models() (e.g. 'ViT-L-14')"
            )
        if pretrained is None:
            weights = f"random-seed{seed}"
        elif pretrained in open_clip.list_pretrained_tags_by_model(model_name):
            weights = f"tag-{pretrained}"
        elif Path(pretrained).is_file():
            weights = f"sha256-{_sha256_file(Path(pretrained))}"
        else:
            raise SafetyModelError(
                f"safety model pretrained={pretrained!r} is neither an existing checkpoint file nor an "
                f"open_clip pretrained tag of {model_name!r}; set the safety model's pretrained path"
            )

        # 2. Build the model (random init seeded without disturbing the caller's RNG) and load weights.
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name,
                    pretrained=pretrained,
                    device=device,
                    pretrained_image=False,
                    pretrained_text=False,
                )
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as exc:  # torch, safetensors, pickle and download errors alike
            raise SafetyModelError(
                f"safety model {model_name!r} with pretrained={pretrained!r} could not be loaded: {exc}"
            ) from exc
        model.eval().requires_grad_(False)

        self.policy = policy
        self.model_name = model_name
        self.device = torch.device(device)
        self.model_id = f"open_clip:{model_name}:{weights}"
        self.is_random = pretrained is None
        self.logit_scale = float(model.logit_scale.exp().item())
        self._model = model
        self._preprocess = preprocess

        # 3. Embed every policy prompt once: concept prompts in policy order, then the neutral ones.
        self.prompts: tuple[str, ...] = tuple(p for c in policy.concepts for p in c.prompts) + policy.neutral_prompts
        owner = [i for i, c in enumerate(policy.concepts) for _ in c.prompts]
        owner += [-1] * len(policy.neutral_prompts)
        self._prompt_concept = torch.tensor(owner, dtype=torch.long)
        with torch.inference_mode():
            text = model.encode_text(tokenizer(list(self.prompts)).to(self.device))
        self._text_embeddings = torch.nn.functional.normalize(text.float(), dim=-1).cpu()
        logger.info(
            "safety checker ready: %s, policy %s (%d prompts)", self.model_id, policy.version, len(self.prompts)
        )

    @property
    def embed_dim(self) -> int:
        return int(self._text_embeddings.shape[1])

    def check(self, images: Sequence[np.ndarray]) -> list[SafetyResult]:
        """Score uint8 HxWx3 RGB images (any size; the model's preprocessing resizes them)."""
        for i, pixels in enumerate(images):
            if (
                not isinstance(pixels, np.ndarray)
                or pixels.dtype != np.uint8
                or pixels.ndim != 3
                or pixels.shape[2] != 3
            ):
                raise ValueError(
                    f"images[{i}] must be a uint8 HxWx3 RGB numpy array, got "
                    f"{type(pixels).__name__} {getattr(pixels, 'dtype', '')} {getattr(pixels, 'shape', '')}"
                )
        embeddings = []
        for start in range(0, len(images), _IMAGE_BATCH_SIZE):
            chunk = images[start : start + _IMAGE_BATCH_SIZE]
            batch = torch.stack([self._preprocess(Image.fromarray(np.ascontiguousarray(p))) for p in chunk])
            with torch.inference_mode():
                embeddings.append(self._model.encode_image(batch.to(self.device)).float().cpu())
        if not embeddings:
            return []
        return self.check_embeddings(torch.cat(embeddings))

    def check_embeddings(self, image_embeddings: torch.Tensor) -> list[SafetyResult]:
        """The scoring rule alone, on image embeddings of shape (N, embed_dim); they need not be normalised."""
        if image_embeddings.ndim != 2 or image_embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"image_embeddings must have shape (N, {self.embed_dim}), got {tuple(image_embeddings.shape)}"
            )
        image = torch.nn.functional.normalize(image_embeddings.detach().cpu().double(), dim=-1)
        logits = self.logit_scale * image @ self._text_embeddings.double().T
        probabilities = logits.softmax(dim=-1)
        results = []
        for row in probabilities:
            scores: dict[str, float] = {}
            reasons: list[str] = []
            for index, concept in enumerate(self.policy.concepts):
                score = min(1.0, max(0.0, float(row[self._prompt_concept == index].sum())))
                scores[concept.name] = score
                if score >= concept.threshold:
                    reasons.append(f"{concept.name} {score:.2f} >= {concept.threshold:.2f}")
            verdict = QUARANTINED if reasons else PASSED
            results.append(SafetyResult(scores=scores, verdict=verdict, reasons=tuple(reasons)))
        return results


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
