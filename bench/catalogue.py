"""Catalogue at scale (issue 15): a 100,000-SKU feed imported and diffed, a 1% change planned.

On PostgreSQL (a fresh database, dropped afterwards): a synthetic PIM export of N products (CSV;
categories, colours, materials, locales), a template and a standing approval for its categories.
Measured: import of feed v1 (read, Great Expectations validation, diff, product history written, the
event binding every new row), the plan of refresh 1 (render every SKU, intake validation, screening,
the standing approval's scope) and the batches it makes; then feed v2 with 1% of the SKUs changed:
its import, and its plan, which must hold exactly the changed SKUs. No GPU work: the batches are
made, not run. Prints a table; appends it to bench/RESULTS.md unless --no-record.

    .venv/bin/python bench/catalogue.py [--skus 100000] [--no-record]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.harness import fresh_database, record_results, results_table  # noqa: E402
from flows.runtime import Runtime  # noqa: E402
from flows.settings import get_settings  # noqa: E402
from governance.catalogue import add_template, approve_template, import_feed, make_batches, plan_refresh  # noqa: E402
from governance.db import make_engine, upgrade  # noqa: E402
from governance.licences import CREATIVEML_OPENRAIL_PP_M, register_licence  # noqa: E402
from governance.users import add_user  # noqa: E402
from tests.flows.conftest import CLI  # noqa: E402

CATEGORIES = ["lamps", "rugs", "vases", "chairs", "tables", "cushions", "mirrors", "clocks"]
COLOURS = ["white", "ivory", "sage green", "terracotta", "charcoal", "navy", "mustard", "blush", "oak", "walnut"]
MATERIALS = ["ceramic", "linen", "wool", "oak", "walnut", "brass", "glass", "rattan", "marble", "cotton"]


def write_feed(path: Path, n: int, changed: set[int] | None = None) -> None:
    rng = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sku", "title", "category", "colour", "material", "locale", "brand"])
        for i in range(n):
            cat = CATEGORIES[i % len(CATEGORIES)]
            colour = COLOURS[rng.randrange(len(COLOURS))]
            if changed and i in changed:
                colour = "limited edition " + colour
            w.writerow([f"SKU-{i:07d}", f"{cat[:-1].title()} model {i}", cat, colour,
                        MATERIALS[rng.randrange(len(MATERIALS))], "en-GB", "Atelier Home"])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    n = args.skus
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, fresh_database("bench_catalogue") as url:
        work = Path(tmp)
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        assert CLI(None, ["--data-dir", str(work / "d"), "--database-url", url])("keys", "init")[0] == 0
        rt = Runtime(get_settings(database_url=url, data_dir=work / "d"))
        with rt.sessions.begin() as s:
            add_user(s, None, "admin", ["admin"])
            add_user(s, "admin", "cat", ["requester"])
            add_user(s, "admin", "omar", ["approver"])
        with rt.sessions.begin() as s:
            register_licence(s, "admin", CREATIVEML_OPENRAIL_PP_M)
        with rt.sessions.begin() as s:
            view, _ = add_template(s, "cat", {
                "name": "studio", "body": "studio product photo of a {{ colour }} {{ material }} {{ title | lower }} "
                "by {{ brand }}, on a pure white background", "negative": "text, watermark",
                "params": {"width": 1024, "height": 1024, "steps": 30, "variants": 1},
                "match": {"categories": ["*"], "locales": ["*"]}})  # fmt: skip
        with rt.sessions.begin() as s:
            approve_template(s, "omar", view.template_id, view.sha256, CATEGORIES, 100_000, 30)
        policy = rt.settings.load_prompt_policy()

        def step(name: str, fn, count: int) -> object:  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            rows.append(
                {"step": name, "SKUs": f"{count:,}", "seconds": f"{dt:.1f}", "per second": f"{count / dt:,.0f}"}
            )
            print(rows[-1], flush=True)
            return out

        v1 = work / "v1.csv"
        write_feed(v1, n)

        def imp(path: Path) -> object:
            with rt.sessions.begin() as s:
                return import_feed(s, "cat", path)

        first = step("import feed v1 (read, validate, diff, write history)", lambda: imp(v1), n)
        assert first.counts["new"] == n, first  # type: ignore[attr-defined]

        def plan_and_make() -> tuple[int, int]:
            with rt.sessions.begin() as s:
                plan = plan_refresh(s, policy)
                made = make_batches(s, "cat", plan, policy, 10_000)
            return sum(len(v) for v in plan.standing.values()) + len(plan.queue), len(made)

        planned, batches = step("refresh 1: render, validate, screen, make batches", plan_and_make, n)  # type: ignore[misc]
        assert planned == n, planned
        changed = set(random.Random(11).sample(range(n), n // 100))
        v2 = work / "v2.csv"
        write_feed(v2, n, changed)
        second = step("import feed v2 (1% changed)", lambda: imp(v2), n)
        assert second.counts == {"new": 0, "changed": len(changed), "removed": 0,  # type: ignore[attr-defined]
                                 "unchanged": n - len(changed)}  # fmt: skip

        def plan_changed() -> list[str]:
            with rt.sessions() as s:
                plan = plan_refresh(s, policy)
            return sorted(p.row.row_id for group in [*plan.standing.values(), plan.queue] for p in group)

        skus = step("refresh 2: plan (every SKU rendered and compared)", plan_changed, n)
        assert skus == sorted(f"SKU-{i:07d}" for i in changed), "the plan must hold exactly the changed SKUs"
        rows.append({"step": f"refresh 2 plan holds exactly the {len(changed):,} changed SKUs", "SKUs": "yes",
                     "seconds": "", "per second": ""})  # fmt: skip
        rt.sessions.kw["bind"].dispose()
    table = results_table(f"catalogue, {n:,} SKUs, PostgreSQL ({batches} batches of <= 10,000 rows made)", rows)
    print(table)
    if not args.no_record:
        record_results(
            REPO / "bench" / "RESULTS.md",
            "catalogue (issue 15)",
            "`python bench/catalogue.py --skus N`: import and diff of an N-SKU feed, the plan of a refresh, "
            "a 1% change. Target: 100,000 SKUs import and diff in <= 60 s.",
            table,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
