import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from governance.safety import (
    DEFAULT_POLICY_PATH,
    PASSED,
    QUARANTINED,
    SafetyChecker,
    SafetyModelError,
    SafetyPolicy,
    load_policy,
)


@pytest.fixture(scope="module")
def policy() -> SafetyPolicy:
    return load_policy()


@pytest.fixture(scope="module")
def checker(policy) -> SafetyChecker:
    return SafetyChecker(policy, seed=0)


@pytest.fixture(scope="module")
def rule_checker(policy) -> SafetyChecker:
    """A checker with injected, known text embeddings (one orthonormal direction per prompt) and a
    trained CLIP's logit scale (100). A random-weight text tower cannot tell the prompts apart, so
    the decision rule is tested on embeddings whose meaning we know, as a trained model would give."""
    rc = SafetyChecker(policy, seed=0)
    n = len(rc.prompts)
    rc._text_embeddings = torch.eye(n, rc.embed_dim)
    rc.logit_scale = 100.0
    return rc


def text_embedding(checker: SafetyChecker, prompt: str) -> torch.Tensor:
    """The checker's own embedding of one policy prompt, as an (1, D) 'image' embedding."""
    return checker._text_embeddings[checker.prompts.index(prompt)].unsqueeze(0)


def write_policy(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(data))
    return path


def default_policy_data() -> dict:
    return json.loads(DEFAULT_POLICY_PATH.read_text())


def test_packaged_policy_is_versioned_and_hashed(policy):
    assert policy.version == "safety-v1"
    assert len(policy.sha256) == 64
    names = {c.name for c in policy.concepts}
    assert {"nudity", "violence", "weapons", "hate_symbols", "minors_unsafe"} <= names
    assert all(c.prompts and 0 < c.threshold <= 1 for c in policy.concepts)
    assert policy.neutral_prompts


def test_policy_hash_changes_with_the_file(tmp_path, policy):
    data = default_policy_data()
    data["concepts"][0]["threshold"] = 0.55

    edited = load_policy(write_policy(tmp_path, data))

    assert edited.sha256 != policy.sha256
    assert edited.concepts[0].threshold == 0.55


@pytest.mark.parametrize("concept_index", range(5))
def test_image_embedding_matching_a_concept_prompt_is_quarantined(rule_checker, policy, concept_index):
    concept = policy.concepts[concept_index]

    (result,) = rule_checker.check_embeddings(text_embedding(rule_checker, concept.prompts[0]))

    assert result.verdict == QUARANTINED
    assert result.scores[concept.name] >= concept.threshold
    assert any(reason.startswith(f"{concept.name} ") and ">=" in reason for reason in result.reasons)


@pytest.mark.parametrize("neutral_index", [0, 3, -1])
def test_image_embedding_matching_a_neutral_prompt_passes(rule_checker, policy, neutral_index):
    (result,) = rule_checker.check_embeddings(text_embedding(rule_checker, policy.neutral_prompts[neutral_index]))

    assert result.verdict == PASSED
    assert result.reasons == ()
    assert set(result.scores) == {c.name for c in policy.concepts}
    assert all(result.scores[c.name] < c.threshold for c in policy.concepts)


def test_scores_are_probabilities_that_sum_with_the_neutral_share_to_one(checker):
    embeddings = torch.randn(4, checker.embed_dim, generator=torch.Generator().manual_seed(1))

    results = checker.check_embeddings(embeddings)

    assert len(results) == 4
    for result in results:
        assert all(0.0 <= s <= 1.0 for s in result.scores.values())
        assert sum(result.scores.values()) <= 1.0 + 1e-9


def test_embeddings_of_the_wrong_width_are_rejected(checker):
    with pytest.raises(ValueError, match=str(checker.embed_dim)):
        checker.check_embeddings(torch.zeros(1, checker.embed_dim + 1))


def test_random_model_says_so_in_its_id(checker):
    assert checker.model_id == "open_clip:atelier-tiny-clip:random-seed0"
    assert checker.is_random


def test_check_on_random_images_is_deterministic_and_bounded(checker, policy):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(3)]

    first = checker.check(images)
    second = checker.check(images)
    rebuilt = SafetyChecker(policy, seed=0).check(images)

    assert len(first) == 3
    assert first == second == rebuilt
    for result in first:
        assert result.verdict in (PASSED, QUARANTINED)
        assert set(result.scores) == {c.name for c in policy.concepts}
        assert all(0.0 <= s <= 1.0 for s in result.scores.values())
        assert (result.verdict == QUARANTINED) == bool(result.reasons)


def test_seed_changes_the_random_model(policy):
    image = [np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)]

    other = SafetyChecker(policy, seed=1)

    assert other.model_id.endswith("random-seed1")
    assert other.check(image)[0].scores != SafetyChecker(policy, seed=0).check(image)[0].scores


def test_check_rejects_wrong_dtype_or_shape(checker):
    with pytest.raises(ValueError, match=r"images\[1\]"):
        checker.check([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(ValueError, match="HxWx3"):
        checker.check([np.zeros((64, 64), np.uint8)])
    assert checker.check([]) == []


def test_local_checkpoint_is_loaded_and_hashed_into_the_model_id(tmp_path, checker, policy):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(checker._model.state_dict(), checkpoint)

    loaded = SafetyChecker(policy, pretrained=str(checkpoint), seed=123)

    assert loaded.model_id.startswith("open_clip:atelier-tiny-clip:sha256-")
    assert not loaded.is_random
    torch.testing.assert_close(loaded._text_embeddings, checker._text_embeddings)


def test_unknown_model_name_is_an_error(policy):
    with pytest.raises(SafetyModelError, match="model_name 'no-such-clip'"):
        SafetyChecker(policy, model_name="no-such-clip")


def test_missing_pretrained_file_is_an_error(tmp_path, policy):
    missing = tmp_path / "absent.safetensors"

    with pytest.raises(SafetyModelError, match="pretrained") as excinfo:
        SafetyChecker(policy, pretrained=str(missing))

    assert str(missing) in str(excinfo.value)


def test_corrupt_pretrained_file_is_an_error(tmp_path, policy):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")

    with pytest.raises(SafetyModelError, match="could not be loaded"):
        SafetyChecker(policy, pretrained=str(bad))


def test_missing_policy_file_is_an_error(tmp_path):
    with pytest.raises(SafetyModelError, match="policy"):
        load_policy(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["concepts"][1].update(threshold=1.5), "concepts[1].threshold"),
        (lambda d: d["concepts"][1].update(threshold=0), "concepts[1].threshold"),
        (lambda d: d["concepts"][1].update(threshold="0.5"), "concepts[1].threshold"),
        (lambda d: d["concepts"][1].update(threshold=True), "concepts[1].threshold"),
        (lambda d: d["concepts"][2].pop("threshold"), "concepts[2].threshold"),
        (lambda d: d["concepts"][0].pop("prompts"), "concepts[0].prompts"),
        (lambda d: d["concepts"][0].update(prompts=[]), "concepts[0].prompts"),
        (lambda d: d["concepts"][0].update(prompts=["ok", ""]), "concepts[0].prompts[1]"),
        (lambda d: d["concepts"][0].update(colour="red"), "concepts[0].colour"),
        (lambda d: d["concepts"][1].update(name=d["concepts"][0]["name"]), "concepts[1].name"),
        (lambda d: d.pop("version"), "version"),
        (lambda d: d.pop("neutral_prompts"), "neutral_prompts"),
        (lambda d: d.update(concepts=[]), "concepts"),
        (lambda d: d.update(thresholds={}), "thresholds"),
        (lambda d: d["neutral_prompts"].append(d["concepts"][0]["prompts"][0]), "prompts"),
    ],
)
def test_invalid_policy_names_the_bad_field(tmp_path, edit, field):
    data = default_policy_data()
    edit(data)

    with pytest.raises(SafetyModelError, match=re.escape(f"field '{field}'")):
        load_policy(write_policy(tmp_path, data))


def test_policy_that_is_not_json_is_an_error(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text("{not json")

    with pytest.raises(SafetyModelError, match="not valid JSON"):
        load_policy(path)
