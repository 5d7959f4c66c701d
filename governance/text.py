"""Characters that make text show something other than what it holds.

A prompt is approved by a person reading it. C0 and C1 control characters (ESC starts terminal
escape sequences that hide, recolour or erase text; CR returns to the start of the line), the
Unicode bidirectional overrides and isolates (they reorder what is displayed) and zero-width
characters (invisible, they split words a reader or a policy sees as one) let a requester show an
approver one prompt and generate another. Intake refuses them (naming row and column); every face
escapes them anyway when it shows stored text, so that a record written before that check, or by
someone with database access, still displays as what it is.
"""

from __future__ import annotations

import re

# C0 controls except TAB and LF (shown as themselves by terminals and tables), DEL, C1 controls;
# bidi embeddings/overrides U+202A-202E, isolates U+2066-2069, marks U+200E/U+200F and U+061C;
# zero-width space/non-joiner/joiner U+200B-200D, word joiner U+2060, BOM U+FEFF, soft hyphen U+00AD;
# characters that show as nothing or break the line where a reader sees one line: the combining
# grapheme joiner U+034F, Hangul fillers U+115F, U+1160, U+3164, U+FFA0, Khmer inherent vowels
# U+17B4-17B5, Mongolian variation selectors and vowel separator U+180B-180F, line and paragraph
# separators U+2028-2029, invisible operators U+2061-2064, deprecated format characters U+206A-206F,
# variation selectors U+FE00-FE0F and U+E0100-E01EF, interlinear annotations U+FFF9-FFFB, and the tag
# characters U+E0000-E007F (they can spell a hidden word).
_UNSAFE = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufe00-\ufe0f\ufeff"
    "\uffa0\ufff9-\ufffb\U000e0000-\U000e007f\U000e0100-\U000e01ef"
)
UNSAFE_CLASS = _UNSAFE  # for a regex character class: `[...]`
UNSAFE = re.compile(f"[{_UNSAFE}]")
# The same class for RE2 (pyarrow.compute's regexes), kept equal by a test over every BMP code point.
UNSAFE_RE2 = (
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\x{ad}\x{34f}\x{61c}\x{115f}\x{1160}\x{17b4}\x{17b5}\x{180b}-\x{180f}"
    r"\x{200b}-\x{200f}\x{2028}\x{2029}\x{202a}-\x{202e}\x{2060}-\x{2064}\x{2066}-\x{206f}\x{3164}"
    r"\x{fe00}-\x{fe0f}\x{feff}\x{ffa0}\x{fff9}-\x{fffb}\x{e0000}-\x{e007f}\x{e0100}-\x{e01ef}]"
)
UNSAFE_IN_LINE = re.compile(f"[{_UNSAFE}\t\n]")  # in one table cell or line, TAB and LF too
# Four or more generic combining marks on one character ("Zalgo" text): drawn above and below, they
# cover the lines around them. Script-specific marks (Hebrew points, Devanagari signs, Thai vowels)
# are in other blocks and not counted; Vietnamese needs at most two even decomposed.
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
STACKED_MARKS = re.compile(f"[{_MARKS}]{{4,}}")
HIDING = re.compile(f"[{_UNSAFE}]|[{_MARKS}]{{4,}}")  # what intake refuses in text a person approves

_NAMES = {
    "\x1b": "ESC",
    "\r": "CR",
    "\x00": "NUL",
    "\x7f": "DEL",
    "\u202e": "RIGHT-TO-LEFT OVERRIDE",
    "\u202d": "LEFT-TO-RIGHT OVERRIDE",
    "\u200b": "ZERO WIDTH SPACE",
    "\u200d": "ZERO WIDTH JOINER",
    "\u200c": "ZERO WIDTH NON-JOINER",
    "\u2066": "LEFT-TO-RIGHT ISOLATE",
    "\u2067": "RIGHT-TO-LEFT ISOLATE",
    "\u2068": "FIRST STRONG ISOLATE",
    "\u2069": "POP DIRECTIONAL ISOLATE",
    "\ufeff": "ZERO WIDTH NO-BREAK SPACE",
}


def describe(char: str) -> str:
    """`U+001B (ESC)`: how a refusal names an unsafe character."""
    name = _NAMES.get(char)
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def first_unsafe(text: str) -> tuple[int, str] | None:
    """(position, character) of the first unsafe character in ``text``, or None."""
    m = UNSAFE.search(text)
    return (m.start(), m.group()) if m else None


def first_stacked_marks(text: str) -> tuple[int, int] | None:
    """(position, count) of the first run of four or more combining marks in ``text``, or None."""
    m = STACKED_MARKS.search(text)
    return (m.start(), len(m.group())) if m else None


REASON_MAX_CHARS = 2000


def plain_reason(value: str | None, missing: str) -> str:
    """A reason a person gives for a decision (a rejection, a withdrawal, a legal hold), stripped: not
    empty (`missing` says so), plain text, at most REASON_MAX_CHARS. InvalidInput naming the problem."""
    from governance.errors import InvalidInput

    value = (value or "").strip()
    if not value:
        raise InvalidInput(missing)
    if (unsafe := first_unsafe(value)) is not None:
        raise InvalidInput(f"the reason contains {describe(unsafe[1])}: write it as plain text")
    if len(value) > REASON_MAX_CHARS:
        raise InvalidInput(f"the reason is longer than {REASON_MAX_CHARS} characters")
    return value


def escape_unsafe(text: str, *, one_line: bool = False) -> str:
    """``text`` with every unsafe character written out as a visible escape (``\\x1b``, ``\\u202e``);
    with ``one_line``, TAB and LF too (a table cell)."""
    pattern = UNSAFE_IN_LINE if one_line else UNSAFE
    return pattern.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
