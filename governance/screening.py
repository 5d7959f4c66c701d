"""Prompt screening: what may not be generated, checked before any GPU time is spent.

A prompt policy (JSON, versioned like the safety policy; `governance/policies/prompt-policy-v1.json`
by default, `ATELIER_PROMPT_POLICY` for an organisation's own) is a list of rules, each with an
action: `block` (intake refuses the batch, naming row, rule and the matched text) or `review` (the
batch is accepted and flagged: the approver sees each flag and acknowledges it when approving).

Rule kinds:
- `terms`: words and phrases, per language (`language`: an ISO code, or "*");
- `pattern`: a regular expression (Python `re`), per language, matched against the normalised text;
- `entities`: a named-entity list an organisation maintains (`category`: people, brands, characters,
  artists), matched like terms.
A rule may list `allow` phrases: a match inside one of them does not count ("nude lipstick" for a
rule on "nude", "shooting star" for "shooting").

Matching that trivial tricks do not dodge: the prompt and every term are brought to the same
skeleton: Unicode NFKC, case folding, accents removed (NFKD without combining marks), zero-width and
other invisible characters removed, look-alike letters from other scripts (Cyrillic, Greek, ...)
mapped to the Latin letter they imitate, leetspeak digits and symbols mapped to letters, and letters
spaced out with blanks or punctuation ("t a y l o r", "t.a.y.l.o.r") joined again; a term then
matches whole words, or a run of whole words written together or split ("taylorswift", "tay lor").
Every language's rules apply to every prompt (a prompt's language is not declared).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from governance.errors import InvalidState
from governance.policyfile import read_policy_file
from governance.results import Result

POLICIES_DIR = Path(__file__).resolve().parent / "policies"
DEFAULT_PROMPT_POLICY = POLICIES_DIR / "prompt-policy-v1.json"
ACTIONS = ("block", "review")
KINDS = ("terms", "pattern", "entities")
CATEGORIES = ("people", "brands", "characters", "artists", "terms")

# Letters of other scripts that look like Latin ones (Unicode's confusables for the Latin lower-case
# alphabet, the common part: Cyrillic, Greek, Armenian, Cherokee-free), applied after case folding.
CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d",
    "ɡ": "g", "ԛ": "q", "ԝ": "w", "ү": "y", "ҽ": "e", "ɩ": "i", "ɪ": "i", "ʏ": "y", "ᴠ": "v", "ᴡ": "w",
    "ᴢ": "z", "ь": "b", "ꞓ": "c", "ԍ": "g", "ո": "n", "օ": "o", "ս": "u", "ց": "g", "հ": "h", "զ": "q",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "σ": "o", "ς": "c", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j", "ℓ": "l",
    # Latin look-alikes outside ASCII that NFKC keeps
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɛ": "e", "ɔ": "c", "ʋ": "u", "ƅ": "b", "ɢ": "g", "ʜ": "h", "ʟ": "l",
    "ɴ": "n", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d",
    "ł": "l", "ħ": "h", "þ": "th",
}  # fmt: skip
LEET = {"0": "o", "1": "i", "!": "i", "|": "i", "3": "e", "4": "a", "@": "a", "5": "s", "$": "s", "7": "t", "+": "t",
        "8": "b", "9": "g", "€": "e", "£": "l"}  # fmt: skip
# After leet, "l" and "i" look alike ("1" can be either): both sides are mapped to one skeleton letter.
SAME = {"l": "i"}
_WORD = re.compile(r"[a-z0-9]+")
_TOKEN = re.compile(r"[a-z0-9@$!|+\u20ac\u00a3]+")
_MARKS = re.compile("[\u2122\u2120\u00ae\u00a9]")  # trade mark, service mark, registered, copyright
_SPACED = re.compile(r"(?<![a-z0-9@$])(?:[a-z0-9@$][^a-z0-9@$]{1,3}){2,}[a-z0-9@$](?![a-z0-9@$])")


_ASCII_CONTROLS = {c: None for c in range(32) if chr(c) not in "\t\n"} | {127: None}


def _fold(text: str) -> str:
    """NFKC, case folding, accents and invisible characters removed, look-alikes mapped to Latin."""
    if text.isascii():  # the common case: nothing to normalise but case and control characters
        return text.lower().translate(_ASCII_CONTROLS)
    text = _MARKS.sub(lambda m: f" {m.group(0)} ", text)  # "Nike™" is two words: the name and its mark
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(
        ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
    )  # é -> e, and a combining mark someone added to break a word goes too
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cf", "Cc", "Mn", "Me") and ch not in "\t\n":
            continue  # zero-width spaces and joiners, soft hyphens, bidi controls
        out.append(CONFUSABLES.get(ch, ch))
    return "".join(out)


def normalise(text: str) -> str:
    """The text as patterns see it: folded (see _fold), whitespace collapsed."""
    return " ".join(_fold(text).split())


def skeleton_words(text: str) -> list[str]:
    """The words terms are matched against: folded, letters spaced out joined again, leetspeak read as
    letters inside words that have letters ("T4yl0r", "p@rn"; a number such as a SKU or a size stays a
    number), "l" and "i" as one letter."""
    folded = _fold(text)
    joined = _SPACED.sub(lambda m: re.sub(r"[^a-z0-9@$!|+]", "", m.group(0)), folded)
    words = []
    for token in _TOKEN.findall(joined):
        token = token.rstrip("!|+")  # "wow!" is "wow"; inside a word a "!" or "|" is a letter
        if any("a" <= c <= "z" for c in token):
            token = "".join(LEET.get(c, c) for c in token)
        words += ["".join(SAME.get(c, c) for c in w) for w in _WORD.findall(token)]
    return words


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    action: str
    category: str
    language: str
    terms: dict[str, str] = field(default_factory=dict)  # a term's skeleton words run together -> as written
    pattern: re.Pattern[str] | None = None
    allow: frozenset[str] = frozenset()  # allowed phrases, run together likewise
    example: bool = False  # a shipped example list, not an organisation's real one
    description: str = ""


@dataclass(frozen=True)
class PromptPolicy:
    version: str
    sha256: str  # of the policy file's bytes: recorded per batch
    rules: tuple[Rule, ...]
    path: str = ""


@dataclass(frozen=True)
class Flag(Result):
    """One rule that matched one row's text."""

    row: int  # 1-based data row
    row_id: str
    column: str  # prompt | negative_prompt | ref
    rule: str
    action: str  # block | review
    category: str
    matched: str  # the policy's term (or the pattern's match, as written in the prompt)


@dataclass(frozen=True)
class Screening(Result):
    policy_version: str
    policy_sha256: str
    flags: tuple[Flag, ...] = field(default_factory=tuple)

    @property
    def blocked(self) -> tuple[Flag, ...]:
        return tuple(f for f in self.flags if f.action == "block")

    @property
    def to_review(self) -> tuple[Flag, ...]:
        return tuple(f for f in self.flags if f.action == "review")


def _compact(term: str) -> str:
    return "".join(skeleton_words(term))


def load_prompt_policy(path: Path | str | None = None) -> PromptPolicy:
    """Read and check a prompt policy file; every problem is one line naming the field."""
    p = Path(path) if path else DEFAULT_PROMPT_POLICY
    raw, data, bad = read_policy_file(p, "prompt policy", "ATELIER_PROMPT_POLICY")
    rules_in = data.get("rules")
    if not isinstance(rules_in, list) or not rules_in:
        raise bad("rules", "must be a non-empty list")
    rules: list[Rule] = []
    seen: set[str] = set()
    allowed_keys = {"id", "kind", "action", "category", "language", "terms", "entities", "pattern", "allow"}
    allowed_keys |= {"example", "description"}
    for i, r in enumerate(rules_in):
        where = f"rules[{i}]"
        if not isinstance(r, dict):
            raise bad(where, "must be an object")
        extra = set(r) - allowed_keys
        if extra:
            raise bad(f"{where}.{sorted(extra)[0]}", "is not a rule field")
        rid = r.get("id")
        if not isinstance(rid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", rid):
            raise bad(f"{where}.id", "must be 1-64 of a-z 0-9 . _ -")
        if rid in seen:
            raise bad(f"{where}.id", f"{rid!r} is used twice")
        seen.add(rid)
        kind, action = r.get("kind"), r.get("action")
        if kind not in KINDS:
            raise bad(f"{where}.kind", f"must be one of {', '.join(KINDS)}")
        if action not in ACTIONS:
            raise bad(f"{where}.action", f"must be one of {', '.join(ACTIONS)}")
        category = r.get("category", "terms")
        if category not in CATEGORIES:
            raise bad(f"{where}.category", f"must be one of {', '.join(CATEGORIES)}")
        language = r.get("language", "*")
        if not isinstance(language, str) or not re.fullmatch(r"\*|[a-z]{2,3}", language):
            raise bad(f"{where}.language", 'must be an ISO 639 code such as "en", or "*"')
        allow = r.get("allow", [])
        if not isinstance(allow, list) or not all(isinstance(a, str) and a.strip() for a in allow):
            raise bad(f"{where}.allow", "must be a list of phrases")
        common = {
            "id": rid,
            "kind": kind,
            "action": action,
            "category": category,
            "language": language,
            "allow": frozenset(c for c in (_compact(a) for a in allow) if c),
            "example": bool(r.get("example", False)),
            "description": str(r.get("description", "")),
        }
        if kind == "pattern":
            pattern = r.get("pattern")
            if not isinstance(pattern, str) or not pattern:
                raise bad(f"{where}.pattern", "must be a regular expression")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise bad(f"{where}.pattern", f"is not a valid regular expression ({exc})") from None
            rules.append(Rule(**common, pattern=compiled))
            continue
        listed = r.get("entities" if kind == "entities" else "terms")
        name = "entities" if kind == "entities" else "terms"
        if not isinstance(listed, list) or not listed or not all(isinstance(t, str) and t.strip() for t in listed):
            raise bad(f"{where}.{name}", "must be a non-empty list of words or phrases")
        empty = [t for t in listed if not _compact(t)]
        if empty:
            raise bad(f"{where}.{name}", f"has {empty[0]!r}, which has no letters or digits to match")
        rules.append(Rule(**common, terms={_compact(t): t for t in reversed(listed)}))
    return PromptPolicy(data["version"], hashlib.sha256(raw).hexdigest(), tuple(rules), str(p))


def _spans(words: Sequence[str], wanted: frozenset[str] | dict[str, str], longest: int) -> list[tuple[int, int, str]]:
    """Spans [i, j) of whole words that, run together, are one of `wanted`: "taylor swift",
    "taylorswift" and "tay lor swift" all spell "taylorswift" (a term's words run together)."""
    found = []
    for i in range(len(words)):
        joined = ""
        for j in range(i, len(words)):
            joined += words[j]
            if len(joined) > longest:
                break
            if joined in wanted:
                found.append((i, j + 1, joined))
    return found


def screen_text(policy: PromptPolicy, text: str) -> list[tuple[Rule, str]]:
    """Every rule `text` matches, with what it matched (the policy's term, or the pattern's match)."""
    if not text:
        return []
    words = skeleton_words(text)
    folded = normalise(text)
    hits: list[tuple[Rule, str]] = []
    for rule in policy.rules:
        if rule.pattern is not None:
            m = rule.pattern.search(folded)
            if m:
                hits.append((rule, m.group(0)))
            continue
        longest = max(map(len, rule.terms), default=0)
        matches = _spans(words, rule.terms, longest)
        if not matches:
            continue
        allowed = _spans(words, rule.allow, max(map(len, rule.allow), default=0)) if rule.allow else []
        for i, j, term in matches:
            if not any(lo <= i and j <= hi for lo, hi, _ in allowed):  # not inside an allowed phrase
                hits.append((rule, rule.terms[term]))
                break
    return hits


# not the negative prompt: it names what must NOT appear, so naming a person there asks for nothing
SCREENED_COLUMNS = ("prompt", "ref")


def screen_rows(policy: PromptPolicy, rows: Iterable[Any]) -> Screening:
    """Screen every row's SCREENED_COLUMNS (prompt and reference); rows are intake's PromptRow."""
    flags = []
    for n, row in enumerate(rows, start=1):
        for column in SCREENED_COLUMNS:
            for rule, matched in screen_text(policy, str(getattr(row, column, "") or "")):
                flags.append(Flag(n, str(row.row_id), column, rule.id, rule.action, rule.category, matched))
    return Screening(policy.version, policy.sha256, tuple(flags))


def describe_flag(f: Flag) -> str:
    return f"row {f.row} ({f.row_id}), {f.column}: rule {f.rule} ({f.category}, {f.action}) matched {f.matched!r}"


def record_of(s: Screening) -> dict[str, Any]:
    """What a batch keeps (`batches.screening`): the policy and the review flags (blocks never get in)."""
    return {"policy": s.policy_version, "sha256": s.policy_sha256, "flags": [f.to_dict() for f in s.to_review]}


def flags_of(record: dict[str, Any] | None) -> tuple[Flag, ...]:
    return tuple(Flag(**f) for f in (record or {}).get("flags", []))


def flag_key(f: Flag) -> str:
    return f"{f.row_id}|{f.column}|{f.rule}|{f.matched}"


def recheck(
    policy: PromptPolicy, record: dict[str, Any] | None, acknowledged: Iterable[Any], rows: Iterable[Any]
) -> None:
    """At run start: screen the stored rows again under the policy now in force. A block refuses the
    run; a review flag that the approval did not acknowledge refuses it too (the approver never saw
    it): the requester edits the batch, which screens it again and sends it back to the queue."""
    if record is not None and record.get("sha256") == policy.sha256:
        return  # screened under this very policy at intake
    again = screen_rows(policy, rows)
    if again.blocked:
        f = again.blocked[0]
        raise InvalidState(
            f"the prompt policy now in force ({policy.version}) blocks {describe_flag(f)}"
            + (f" (and {len(again.blocked) - 1} more)" if len(again.blocked) > 1 else "")
            + ": this batch cannot run; its requester edits it"
        )
    seen = {flag_key(Flag(**a)) if isinstance(a, dict) else str(a) for a in acknowledged}
    new = [f for f in again.to_review if flag_key(f) not in seen]
    if new:
        raise InvalidState(
            f"the prompt policy now in force ({policy.version}) flags {describe_flag(new[0])}"
            + (f" (and {len(new) - 1} more)" if len(new) > 1 else "")
            + ", which the approval did not acknowledge: the requester edits the batch (`atelier batch edit`) "
            "so that an approver reviews it again"
        )
