"""The prompt policy's false-positive rate on ordinary catalogue prompts, and its catch rate on evasions.

Two ordinary sets:
- the hand-written list in tests/screening_prompts.py (ORDINARY: real catalogue phrasing, including
  the alarming-looking colour and product names the policy was tuned on);
- a held-out grid made here from colour names (fashion and paint palettes), materials, products and
  shot descriptions that the policy was NOT tuned on: its flags are the honest false-positive rate.
Each flag is listed by rule with an example, so a maintainer sees what to allow. Then the evasions
(tests/screening_prompts.py: EVASIONS) must all be caught. Appends the table to bench/RESULTS.md.

    .venv/bin/python bench/screening.py [--policy FILE] [--no-record]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import itertools
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from governance.screening import load_prompt_policy, screen_text  # noqa: E402
from tests.screening_prompts import EVASIONS, ORDINARY  # noqa: E402

COLOURS = [
    "ivory",
    "cream",
    "oatmeal",
    "sand",
    "camel",
    "cognac",
    "tan",
    "chocolate",
    "espresso",
    "charcoal",
    "slate",
    "graphite",
    "gunmetal",
    "silver",
    "champagne",
    "rose gold",
    "blush",
    "dusty pink",
    "shocking pink",
    "fuchsia",
    "coral",
    "terracotta",
    "rust",
    "burnt orange",
    "mustard",
    "lemon",
    "sage",
    "olive",
    "army green",
    "hunter green",
    "forest green",
    "emerald",
    "mint",
    "teal",
    "petrol",
    "navy",
    "cobalt",
    "electric blue",
    "sky blue",
    "lavender",
    "lilac",
    "plum",
    "burgundy",
    "oxblood",
    "cherry red",
    "scarlet",
    "bombshell red",
    "flesh tone",
    "skin tone",
    "camouflage",
    "leopard print",
    "zebra print",
    "tiger stripe",
    "snake print",
    "black",
    "white",
    "off-white",
]
MATERIALS = [
    "leather",
    "suede",
    "cotton",
    "linen",
    "wool",
    "cashmere",
    "silk",
    "velvet",
    "denim",
    "ceramic",
    "stoneware",
    "glass",
    "oak",
    "walnut",
    "bamboo",
    "stainless steel",
    "brass",
    "copper",
    "marble",
    "rattan",
]
PRODUCTS = [
    "handbag",
    "tote",
    "clutch",
    "wallet",
    "belt",
    "sneakers",
    "ankle boots",
    "killer heels",
    "loafers",
    "trench coat",
    "blazer",
    "hoodie",
    "t-shirt",
    "crop top",
    "bikini",
    "swimsuit",
    "bra",
    "lingerie set",
    "pyjamas",
    "dress",
    "scarf",
    "beanie",
    "watch strap",
    "earrings",
    "necklace",
    "ring",
    "lipstick",
    "eyeshadow palette",
    "nail polish",
    "perfume bottle",
    "vase",
    "mug",
    "teapot",
    "bowl",
    "plate set",
    "cutlery set",
    "carving knife",
    "cleaver",
    "cocktail shaker",
    "wine glass",
    "candle",
    "diffuser",
    "cushion",
    "throw",
    "rug",
    "armchair",
    "sofa",
    "bar stool",
    "desk lamp",
    "pendant light",
    "phone case",
    "laptop sleeve",
    "headphones",
    "speaker",
    "dog collar",
    "cat bed",
    "yoga mat",
    "dumbbell",
    "boxing gloves",
    "archery target",
    "fishing rod",
    "hunting jacket",
    "tactical backpack",
    "camping knife",
    "axe",
    "chainsaw",
    "nail gun",
    "paint sprayer",
    "bullet journal",
    "fire pit",
    "smoke detector",
    "baby bottle",
    "kids' pyjamas",
    "teddy bear",
    "toy blaster",
    "water pistol",
]
SHOTS = ["studio photo of a {c} {m} {p} on pure white background", "{c} {p} in {m}, flat lay, top view",
         "lifestyle shot: {c} {m} {p} in a sunlit room"]  # fmt: skip


def grid() -> list[str]:
    """Colour x material x product prompts (a spread sample), and SKU-style references."""
    out = [f"SKU-{n:05d}" for n in range(0, 100_000, 97)] + [f"{n:04d}-{n % 997:03d}" for n in range(0, 10_000, 7)]
    for i, (c, m, p) in enumerate(itertools.product(COLOURS, MATERIALS, PRODUCTS)):
        if i % 7 == 0:  # a spread sample of the full product (about 13,000 prompts)
            out.append(SHOTS[i % len(SHOTS)].format(c=c, m=m, p=p))
    return out


def flagged(policy, prompts: list[str]) -> tuple[int, collections.Counter[str], dict[str, str]]:  # type: ignore[no-untyped-def]
    count, by_rule, example = 0, collections.Counter(), {}
    for text in prompts:
        hits = screen_text(policy, text)
        if hits:
            count += 1
            for rule, matched in hits:
                key = f"{rule.id} ({rule.action}): {matched}"
                by_rule[key] += 1
                example.setdefault(key, text)
    return count, by_rule, example


def rate(n: int, total: int) -> str:
    return f"{100 * n / total:.2f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)
    policy = load_prompt_policy(args.policy)
    held_out = grid()
    t0 = time.perf_counter()
    tuned_n, tuned_rules, tuned_ex = flagged(policy, ORDINARY)
    grid_n, grid_rules, grid_ex = flagged(policy, held_out)
    per_prompt = (time.perf_counter() - t0) / (len(ORDINARY) + len(held_out))
    missed = [(t, r) for t, r in EVASIONS if r not in {rule.id for rule, _ in screen_text(policy, t)}]
    lines = [
        f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: {policy.version} (sha256 {policy.sha256[:12]})",
        "",
        "| set | prompts | flagged | rate |",
        "| --- | ---: | ---: | ---: |",
        f"| ordinary, hand-written (tuned on) | {len(ORDINARY)} | {tuned_n} | {rate(tuned_n, len(ORDINARY))} |",
        f"| ordinary, held-out grid | {len(held_out)} | {grid_n} | {rate(grid_n, len(held_out))} |",
        f"| evasions caught | {len(EVASIONS)} | {len(EVASIONS) - len(missed)} | "
        f"{100 * (len(EVASIONS) - len(missed)) / len(EVASIONS):.0f} % |",
        "",
        f"Screening speed: {per_prompt * 1e6:.0f} µs per prompt (one core).",
    ]
    if grid_rules or tuned_rules:
        lines += ["", "What the ordinary prompts tripped (rule, action: term; count; an example):", ""]
        for key, n in (tuned_rules + grid_rules).most_common():
            lines.append(f'- {key}; {n}; "{grid_ex.get(key) or tuned_ex.get(key)}"')
    if missed:
        lines += ["", "Evasions MISSED:", *[f"- {t!r} (expected {r})" for t, r in missed]]
    out = "\n".join(lines) + "\n"
    print(out)
    if not args.no_record:
        text = args.out.read_text(encoding="utf-8")
        section = "## screening (issue 14)"
        if section not in text:
            text += f"\n{section}\n\n`bench/screening.py`: false positives of the prompt policy on ordinary prompts.\n"
        args.out.write_text(text.rstrip("\n") + "\n\n" + out, encoding="utf-8")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
