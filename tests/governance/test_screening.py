"""The prompt policy: every rule kind, every evasion trick, the allowed phrases, and a bad policy file
refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from governance.errors import InvalidInput
from governance.intake import PromptRow
from governance.screening import load_prompt_policy, screen_rows, screen_text
from tests.screening_prompts import EVASIONS, ORDINARY

POLICY = load_prompt_policy()


def row(**given: object) -> PromptRow:
    fields: dict = dict(negative_prompt="", width=1024, height=1024, steps=30, guidance_scale=5.0)
    fields.update(refiner_split=0.8, num_images=1, ref="")
    return PromptRow(**{**fields, **given})  # type: ignore[arg-type]


def rules_hit(text: str) -> set[str]:
    return {rule.id for rule, _ in screen_text(POLICY, text)}


@pytest.mark.parametrize(
    ("text", "rule"), EVASIONS, ids=[f"{r}:{t.encode('unicode_escape').decode()[:40]}" for t, r in EVASIONS]
)
def test_every_evasion_is_caught(text: str, rule: str) -> None:
    assert rule in rules_hit(text)


def test_ordinary_catalogue_prompts_pass_without_a_flag() -> None:
    flagged = {t: rules_hit(t) for t in ORDINARY if rules_hit(t)}
    assert flagged == {}


@pytest.mark.parametrize(
    ("text", "rule", "action"),
    [
        ("swastika armband", "prohibited-en", "block"),  # terms, per language
        ("Hakenkreuz", "prohibited-de", "block"),
        ("topless model", "nudity-en", "review"),
        ("Elon Musk holding a mug", "real-people", "block"),  # entities: people, brands, characters, artists
        ("Gucci belt", "competitor-brands", "review"),
        ("Mickey Mouse ears", "protected-characters", "block"),
        ("poster by Yayoi Kusama", "living-artists", "review"),
        ("Rolex\u00ae style", "trademark-marks", "review"),  # pattern
    ],
)
def test_each_rule_kind_and_action(text: str, rule: str, action: str) -> None:
    [(hit, matched)] = [(r, m) for r, m in screen_text(POLICY, text) if r.id == rule]
    assert hit.action == action and matched


def test_allowed_phrases_only_cover_the_match_inside_them() -> None:
    assert rules_hit("nude lipstick") == set()
    assert rules_hit("nude lipstick and a nude model") == {"nudity-en"}  # the second "nude" is not allowed
    assert rules_hit("apple-green leather") == set() and rules_hit("Apple phone case") == {"competitor-brands"}
    assert rules_hit("shooting star decal") == set() and rules_hit("school shooting") == {"violence-en"}


def test_numbers_stay_numbers() -> None:
    """Leetspeak is read only inside words with letters: a SKU such as 1011 is not "loli", 5318 not "seib"."""
    for ref in ("sku-1011", "1011", "10-11", "5318008", "size 40 41", "2024", "AB-0071-X"):
        assert rules_hit(ref) == set(), ref
    assert rules_hit("p0rn") == {"prohibited-en"}  # a digit inside a word with letters is still read


def test_words_inside_other_words_do_not_match() -> None:
    assert rules_hit("a gunmetal grey watch") == set()  # "gun" only as a word
    assert rules_hit("classic pornstar martini") == set()  # a cocktail: "porn" is not a word of it
    assert rules_hit("spider plant on a man-made shelf") == set()  # words run together only when adjacent


def test_screen_rows_names_row_column_rule_and_the_matched_term() -> None:
    rows = [
        row(row_id="a", prompt="studio photo of a vase", seed=1),
        row(row_id="b", prompt="T4yl0r Sw1ft with our bag", seed=2),
        row(row_id="c", prompt="mug", seed=3, ref="SKU nike-07"),
        row(row_id="d", prompt="portrait", seed=4, negative_prompt="Taylor Swift"),
    ]
    result = screen_rows(POLICY, rows)
    assert result.policy_version == "prompt-policy-v1" and len(result.policy_sha256) == 64
    got = {(f.row, f.row_id, f.column, f.rule, f.action, f.matched) for f in result.flags}
    assert got == {
        (2, "b", "prompt", "real-people", "block", "Taylor Swift"),
        (3, "c", "ref", "competitor-brands", "review", "Nike"),
    }  # a negative prompt asks for nothing: not screened
    assert [f.row_id for f in result.blocked] == ["b"] and [f.row_id for f in result.to_review] == ["c"]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("not json", "not valid JSON"),
        ({"rules": []}, "version"),
        ({"version": "v", "rules": []}, "rules must be a non-empty list"),
        ({"version": "v", "rules": [{"id": "x", "kind": "words", "action": "block"}]}, "kind must be one of"),
        ({"version": "v", "rules": [{"id": "x", "kind": "terms", "action": "ban", "terms": ["a"]}]}, "action"),
        ({"version": "v", "rules": [{"id": "x", "kind": "terms", "action": "block", "terms": []}]}, "terms must"),
        ({"version": "v", "rules": [{"id": "x", "kind": "terms", "action": "block", "terms": ["--"]}]}, "no letters"),
        ({"version": "v", "rules": [{"id": "x", "kind": "pattern", "action": "block", "pattern": "("}]}, "regular"),
        ({"version": "v", "rules": [{"id": "X Y", "kind": "terms", "action": "block", "terms": ["a"]}]}, "id must"),
        ({"version": "v", "rules": [{"id": "x", "kind": "terms", "action": "block", "terms": ["a"], "colour": 1}]},
         "not a rule field"),
    ],
)  # fmt: skip
def test_a_bad_policy_file_is_one_line_naming_the_field(tmp_path: Path, policy: object, message: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(policy if isinstance(policy, str) else json.dumps(policy), encoding="utf-8")
    with pytest.raises(InvalidInput, match=message) as err:
        load_prompt_policy(path)
    assert "\n" not in str(err.value)


def test_the_packaged_entity_lists_are_marked_as_examples() -> None:
    entity_rules = [r for r in POLICY.rules if r.kind == "entities"]
    assert {r.category for r in entity_rules} == {"people", "brands", "characters", "artists"}
    assert all(r.example and "EXAMPLE" in r.description for r in entity_rules)
