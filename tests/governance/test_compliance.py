"""Compliance queries: search, impact, export, report, on SQLite and PostgreSQL, and through the CLI.

Most tests use records of finished runs (tests/governance/synthetic.py); the last group makes one
real run with the tiny models through the CLI (module-scoped) and asks every query about it.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from sqlalchemy import event

from governance.compliance import (
    EXPORT_COLUMNS,
    SearchFilters,
    export_lineage,
    impact,
    neutralise,
    parse_when,
    period_report,
    require_compliance_access,
    search_images,
)
from governance.errors import InvalidInput, NotFound, PermissionDenied
from governance.trace import trace_image, trace_images
from tests.flows.conftest import CLI, write_prompts
from tests.governance.synthetic import GEN1, GEN2, T_A, T_B, World, build_world


@pytest.fixture
def world(sessions, tmp_path) -> World:
    return build_world(sessions, tmp_path)


def _ids(sessions, **filters) -> set[str]:
    with sessions() as s:
        return {r["image_id"] for r in search_images(s, SearchFilters(**filters)).images}


# ---------------------------------------------------------------- search


def test_search_by_each_filter_and_combined(sessions, world) -> None:
    a_pub = set(world.published[:2])
    a_all = a_pub | set(world.quarantined)
    b_all = set(world.published[2:])
    everything = a_all | b_all
    assert _ids(sessions) == everything
    assert _ids(sessions, prompt="walnut") == {world.published[0]} | set(world.quarantined) | {world.published[2]}
    assert _ids(sessions, prompt="WALNUT DESK") == {world.published[0]} | set(world.quarantined)  # any case
    assert _ids(sessions, prompt="100%") == {world.published[1]}  # % is literal, not a wildcard
    assert _ids(sessions, prompt="0_") == set()  # so is _
    assert _ids(sessions, requester="maria") == a_all
    assert _ids(sessions, requester="nina") == b_all
    assert _ids(sessions, approver="omar") == everything
    assert _ids(sessions, purpose="marketing") == b_all
    assert _ids(sessions, use_category="product-catalogue") == a_all
    assert _ids(sessions, model_version=GEN2["base_unet"]) == b_all
    assert _ids(sessions, model_version=GEN1["base_unet"][:10]) == a_all  # a SHA-256 prefix
    assert _ids(sessions, model_version=f"vae/{GEN1['vae']}") == everything  # shared by both runs
    assert _ids(sessions, model_version=world.models["gen1"]["refiner_unet"]) == a_all  # by id
    assert _ids(sessions, licence="creativeml-openrail++-m") == everything
    assert _ids(sessions, verdict="quarantined") == set(world.quarantined)
    assert _ids(sessions, status="published") == a_pub | b_all
    assert _ids(sessions, since=datetime(2026, 3, 10, tzinfo=UTC)) == b_all
    assert _ids(sessions, until=datetime(2026, 3, 10, tzinfo=UTC)) == a_all
    assert _ids(sessions, ref="CAMP-9") == b_all
    assert _ids(sessions, ref="+SKU-2") == {world.published[1]}
    # combined: every filter must hold
    assert _ids(sessions, prompt="walnut", requester="maria", verdict="passed") == {world.published[0]}
    assert _ids(sessions, prompt="walnut", purpose="marketing", until=datetime(2026, 3, 10, tzinfo=UTC)) == set()


def test_search_orders_newest_first_and_reports_truncation(sessions, world) -> None:
    with sessions() as s:
        full = search_images(s, SearchFilters(), limit=None).images
        assert [r["created_at"] for r in full] == sorted((r["created_at"] for r in full), reverse=True)
        part = search_images(s, SearchFilters(), limit=2)
        assert part.truncated and [r["image_id"] for r in part.images] == [r["image_id"] for r in full[:2]]
        assert not search_images(s, SearchFilters(), limit=5).truncated


def test_search_rejects_bad_filters_with_one_line(sessions, world) -> None:
    with sessions() as s:
        with pytest.raises(InvalidInput, match="unknown verdict 'maybe': choose one of passed, quarantined"):
            search_images(s, SearchFilters(verdict="maybe"))
        with pytest.raises(NotFound, match="--requester 'ghost'"):
            search_images(s, SearchFilters(requester="ghost"))
        with pytest.raises(NotFound, match="no model version matches"):
            search_images(s, SearchFilters(model_version="deadbeefdeadbeef"))
        with pytest.raises(NotFound, match="registered: creativeml-openrail\\+\\+-m"):
            search_images(s, SearchFilters(licence="mit"))
        with pytest.raises(InvalidInput, match="is not before"):
            search_images(s, SearchFilters(since=T_B, until=T_A))
    with pytest.raises(InvalidInput, match="since '31/01/2026' is not a date"):
        parse_when("31/01/2026")
    assert parse_when("2026-01-31", end=True) == datetime(2026, 2, 1, tzinfo=UTC)
    assert parse_when("2026-01-31T12:00:00+02:00") == datetime(2026, 1, 31, 10, tzinfo=UTC)


def test_trace_images_is_trace_image_for_many(sessions, world) -> None:
    ids = world.published + world.quarantined
    with sessions() as s:
        many = trace_images(s, ids)
        from governance.records import Image

        singles = [trace_image(s, s.get(Image, i)) for i in ids]
    assert many == singles
    first = many[0]
    assert first.batch.use_category == "product-catalogue" and first.approval.approved_by == "omar"
    assert {m.sha256 for m in first.models} == set(GEN1.values())
    assert [o["obligation"] for o in first.licence_obligations] == [
        "pass-on-use-restrictions",
        "output-accountability",
    ]
    assert {"batch.submitted", "batch.approved", "run.started", "image.published"} <= {a.action for a in first.audit}


def _count_statements(sessions, fn) -> int:
    engine = sessions.kw["bind"]
    seen = []

    def before(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        fn()
    finally:
        event.remove(engine, "before_cursor_execute", before)
    return len(seen)


def test_queries_are_set_based(sessions, world, tmp_path) -> None:
    """The number of statements does not grow with the number of images (one each for the images, the
    model versions, the audit events, the legal holds and the catalogue lineage, plus the session's)."""

    def trace(ids):  # type: ignore[no-untyped-def]
        def run():  # type: ignore[no-untyped-def]
            with sessions() as s:
                return trace_images(s, ids)

        return run

    few, many = world.published[:1], world.published + world.quarantined
    assert _count_statements(sessions, trace(few)) == _count_statements(sessions, trace(many)) <= 6
    n_export = _count_statements(
        sessions, lambda: export_lineage(sessions(), tmp_path / "x.csv", "csv", SearchFilters())
    )
    n_export_one = _count_statements(
        sessions, lambda: export_lineage(sessions(), tmp_path / "y.csv", "csv", SearchFilters(ref="CAMP-9"))
    )
    assert n_export == n_export_one <= 3
    assert _count_statements(sessions, lambda: impact(sessions(), licence="creativeml-openrail++-m")) <= 6


# ---------------------------------------------------------------- impact


def test_impact_of_a_model_version_and_of_a_licence(sessions, world) -> None:
    with sessions() as s:
        one = impact(s, model_version=GEN1["base_unet"]).to_dict()
        shared = impact(s, model_version=f"vae/{GEN1['vae']}").to_dict()
        lic = impact(s, licence="creativeml-openrail++-m").to_dict()
        with pytest.raises(InvalidInput, match="exactly one"):
            impact(s)
    assert {i["image_id"] for i in one["images"]} == set(world.published[:2])  # quarantined ones never left
    assert [m["role"] for m in one["model_versions"]] == ["base_unet"]
    assert {i["image_id"] for i in shared["images"]} == set(world.published)
    assert lic["published_images"] == len(world.published) and len(lic["model_versions"]) == 7
    for i in one["images"]:
        assert i["store_key"].startswith(f"images/{i['image_id']}/") and i["sha256"] and i["store_url"]
        assert i["provenance_key"] and i["run_id"] == world.run_a and i["created_at"].startswith("2026-03-02T")
    assert [i["created_at"] for i in lic["images"]] == sorted(i["created_at"] for i in lic["images"])


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_full_lineage_with_formula_cells_neutralised(sessions, world, tmp_path, fmt) -> None:
    out = tmp_path / f"lineage.{fmt}"
    with sessions() as s:
        assert export_lineage(s, out, fmt) == 5
    if fmt == "csv":
        with out.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert tuple(rows[0]) == EXPORT_COLUMNS
    else:
        table = pq.read_table(out)
        assert tuple(table.column_names) == EXPORT_COLUMNS
        rows = table.to_pylist()
        assert table.schema.field("width").type == "int64"
    by_id = {r["image_id"]: r for r in rows}
    assert list(by_id) == sorted(by_id, key=lambda i: by_id[i]["created_at"])  # oldest first
    mug = by_id[world.published[1]]
    assert mug["prompt"].startswith("'=HYPERLINK(")  # would have run as a formula
    assert mug["ref"] == "'+SKU-2"
    assert by_id[world.published[2]]["prompt"] == "'@campaign poster of a walnut chair"
    assert by_id[world.published[3]]["prompt"] == "'-summer banner with linen"
    for r in rows:  # no cell left that a spreadsheet would evaluate
        assert not any(isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") for v in r.values())
        assert r["requested_by"] in ("maria", "nina") and r["approved_by"] == "omar"
        assert r["batch_content_sha256"] == r["approval_content_sha256"]
        models = json.loads(r["models"])
        assert {m["sha256"] for m in models} == set((GEN1 if r["requested_by"] == "maria" else GEN2).values())
        assert r["licences"] == "creativeml-openrail++-m"
        if r["status"] == "published":
            assert r["sha256"] and r["store_key"] and json.loads(r["licence_obligations"])
        else:
            assert json.loads(r["safety_reasons"]) == ["nsfw score 0.93 above 0.5"]


def test_export_filters_limit_and_bad_format(sessions, world, tmp_path) -> None:
    with sessions() as s:
        assert export_lineage(s, tmp_path / "b.csv", "csv", SearchFilters(requester="nina")) == 2
        assert export_lineage(s, tmp_path / "l.parquet", "parquet", limit=1) == 1
        assert export_lineage(s, tmp_path / "none.parquet", "parquet", SearchFilters(ref="nothing")) == 0
        assert pq.read_table(tmp_path / "none.parquet").num_rows == 0
        with pytest.raises(InvalidInput, match="unknown export format 'xlsx'"):
            export_lineage(s, tmp_path / "x.xlsx", "xlsx")
        with pytest.raises(InvalidInput, match="does not exist"):
            export_lineage(s, tmp_path / "missing" / "x.csv", "csv")
    assert not list(tmp_path.glob(".*partial"))


def test_neutralise() -> None:
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"):
        assert neutralise(text) == "'" + text
    for text in ("a=1", "", "'=1", " =1", "1-1"):
        assert neutralise(text) == text


# ---------------------------------------------------------------- report


def test_period_report_is_self_contained(sessions, world, tmp_path) -> None:
    out = tmp_path / "march.html"
    with sessions() as s:
        summary = period_report(
            s, world.store, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC), out, generated_by="lee"
        )
    page = out.read_text()
    assert (summary.images, summary.published, summary.quarantined, summary.approvals, summary.thumbnails) == (
        5,
        4,
        1,
        2,
        4,
    )
    assert page.count('src="data:image/jpeg;base64,') == 4
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere
    assert "nsfw score 0.93 above 0.5" in page and "creativeml-openrail++-m" in page
    assert GEN1["base_unet"] in page and "product-catalogue" in page and "marketing-campaign" in page
    assert "<a " not in page and "<script" not in page
    with sessions() as s:
        early = period_report(
            s,
            world.store,
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 3, 10, tzinfo=UTC),
            tmp_path / "early.html",
            max_thumbnails=1,
        )
    assert (early.images, early.published, early.approvals, early.thumbnails) == (3, 2, 1, 1)


def test_period_report_names_who_was_given_power_and_shows_hidden_characters(sessions, world, tmp_path) -> None:
    from sqlalchemy import text

    from governance.users import grant_roles

    with sessions.begin() as s:
        grant_roles(s, "admin", "lee", ["admin"])
        s.execute(text("UPDATE prompts SET ref = :r"), {"r": "SKU\u202egnp.exe"})  # written behind Atelier's back
    now = datetime.now(UTC)
    out = tmp_path / "today.html"
    with sessions() as s:
        period_report(s, world.store, now - timedelta(days=1), now + timedelta(days=1), out)
    page = out.read_text()
    grants = page.split("Grants of the approver and admin roles", 1)[1].split("Quarantined images", 1)[0]
    for user, roles, by in [("omar", "approver", "admin"), ("nina", "approver", "admin"), ("lee", "admin", "admin")]:
        assert re.search(rf"<td>{user}</td><td>{roles}</td><td>{by}</td>", grants), user
    assert "<td>maria</td>" not in grants.split("Holding them now")[0]  # a requester was given no power
    with sessions() as s:
        march = period_report(s, world.store, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC), out)
    page = out.read_text()
    assert march.quarantined == 1 and "\u202e" not in page and "SKU\\u202egnp.exe" in page


def test_csv_export_shows_hidden_characters_and_parquet_keeps_the_value(sessions, world, tmp_path) -> None:
    import pyarrow.parquet as pq
    from sqlalchemy import text

    with sessions.begin() as s:
        s.execute(text("UPDATE prompts SET prompt = :p"), {"p": "lamp \u202eevil\u202c \x1b[8mhidden"})
    with sessions() as s:
        export_lineage(s, tmp_path / "x.csv", "csv")
        export_lineage(s, tmp_path / "x.parquet", "parquet")
    csv_text = (tmp_path / "x.csv").read_text(encoding="utf-8")
    assert "\u202e" not in csv_text and "\x1b" not in csv_text and "lamp \ufffdevil\ufffd \ufffd[8mhidden" in csv_text
    assert "lamp \u202eevil" in pq.read_table(tmp_path / "x.parquet").column("prompt")[0].as_py()  # exact data


def test_the_re2_class_and_the_python_class_agree_on_every_character() -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from governance.text import UNSAFE, UNSAFE_RE2

    chars = [chr(c) for c in [*range(0x10000), *range(0xE0000, 0xE0200)] if not 0xD800 <= c <= 0xDFFF]
    arrow = pc.match_substring_regex(pa.array(chars), pattern=UNSAFE_RE2).to_pylist()
    assert [c for c, hit in zip(chars, arrow, strict=True) if hit != bool(UNSAFE.search(c))] == []


def test_compliance_needs_auditor_or_admin(sessions, world) -> None:
    with sessions() as s:
        assert require_compliance_access(s, "lee", "search").name == "lee"
        assert require_compliance_access(s, "admin", "search").name == "admin"
        with pytest.raises(PermissionDenied, match="auditor or admin role"):
            require_compliance_access(s, "maria", "search the records")


# ---------------------------------------------------------------- CLI


def test_cli_bad_flags_give_one_line_errors(capsys, tmp_path) -> None:
    cli = CLI(capsys, ["--data-dir", str(tmp_path / "data")])
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    cli("users", "add", "lee", "--role", "auditor", actor="admin")
    cli("users", "add", "maria", "--role", "requester", actor="admin")
    cases = [
        (("compliance", "search", "--since", "yesterday"), "since 'yesterday' is not a date"),
        (("compliance", "search", "--until", "2026-13-01"), "until '2026-13-01' is not a date"),
        (("compliance", "search", "--verdict", "maybe"), 'Invalid value "maybe" for --verdict'),
        (("compliance", "search", "--limit", "-1"), "--limit"),
        (("compliance", "search", "--model-version", "nope"), "no model version matches 'nope'"),
        (("compliance", "impact", "--licence", "nope"), "no licence 'nope'"),
        (
            ("compliance", "export", "--format", "xlsx", "--out", str(tmp_path / "x")),
            'Invalid value "xlsx" for --format',
        ),
        (
            ("compliance", "report", "--from", "2026-02-01", "--to", "2026-01-01", "--out", str(tmp_path / "r.html")),
            "is not before",
        ),
    ]
    for argv, message in cases:
        code, out, err = cli(*argv, actor="lee")
        assert code in (2, 3) and err.count("\n") == 1 and message in err, (argv, err)
    code, _, err = cli("compliance", "search", actor="maria")
    assert code == 4 and "auditor or admin" in err


# ---------------------------------------------------------------- one real run, every query


@pytest.fixture(scope="module")
def produced(tmp_path_factory, tiny_models, prefect_server, s3_server):
    """One governed batch through the CLI: SQLite, S3 (moto), Prefect, the tiny SDXL models."""
    import boto3

    tmp = tmp_path_factory.mktemp("compliance-e2e")
    base, refiner = tiny_models
    with pytest.MonkeyPatch.context() as mp:
        for k, v in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            mp.setenv(k, v)
        bucket = f"atelier-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        flags = [
            "--data-dir",
            str(tmp / "data"),
            "--database-url",
            f"sqlite:///{tmp / 'e2e.db'}",
            "--store-url",
            f"s3://{bucket}/published",
            "--s3-endpoint-url",
            s3_server,
            "--base-model",
            str(base),
            "--refiner-model",
            str(refiner),
        ]

        cli = CLI(None, flags)  # each actor acts with its own API token

        def ok(*argv: str, actor: str | None = None) -> str:
            code, out, err = cli(*argv, actor=actor)
            assert code == 0, f"{argv}: {err}"
            return out

        ok("db", "upgrade")
        ok("keys", "init")
        ok("users", "add", "admin", "--role", "admin")
        for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator"), ("lee", "auditor")]:
            ok("users", "add", name, "--role", role, actor="admin")
        ok("licences", "register", "creativeml-openrail++-m", actor="admin")
        rows = [
            {
                "row_id": "sku-1",
                "prompt": "studio photo of a walnut desk lamp",
                "seed": 11,
                "width": 256,
                "height": 256,
                "steps": 2,
                "num_images": 2,
                "ref": "SKU-1",
            },
            {
                "row_id": "sku-2",
                "prompt": "=studio photo of a ceramic mug",
                "seed": 12,
                "width": 256,
                "height": 256,
                "steps": 2,
                "num_images": 1,
                "ref": "SKU-2",
            },
        ]
        submitted = ok(
            "batch",
            "submit",
            str(write_prompts(tmp / "p.csv", rows)),
            "--purpose",
            "catalogue",
            "--use-category",
            "product-catalogue",
            "--json",
            actor="maria",
        )
        batch_id, content = json.loads(submitted)["batch_id"], json.loads(submitted)["content_sha256"]
        ok("batch", "approve", batch_id, "--content-sha256", content, actor="omar")
        [result] = json.loads(ok("run", "--batch", batch_id, "--json", actor="ops"))
        yield {
            "cli": cli,
            "ok": ok,
            "tmp": tmp,
            "batch_id": batch_id,
            "result": result,
            "bucket": bucket,
            "s3": s3_server,
        }


def test_real_run_every_published_image_has_complete_lineage(produced) -> None:
    ok, result = produced["ok"], produced["result"]
    assert result["status"] == "completed" and result["published"] >= 1
    traces = json.loads(ok("compliance", "search", "--json", actor="lee"))
    assert len(traces) == result["published"] + result["quarantined"]
    published = [t for t in traces if t["status"] == "published"]
    for t in published:
        assert t["batch"]["id"] == produced["batch_id"] and t["batch"]["requested_by"] == "maria"
        assert t["batch"]["use_category"] == "product-catalogue"
        assert (
            t["approval"]["approved_by"] == "omar" and t["approval"]["content_sha256"] == t["batch"]["content_sha256"]
        )
        assert t["prompt"]["id"] and t["prompt"]["text"] and t["run"]["id"]
        assert {m["role"] for m in t["models"]} == {
            "base_unet",
            "refiner_unet",
            "text_encoder",
            "text_encoder_2",
            "vae",
        }
        assert all(
            re.fullmatch(r"[0-9a-f]{64}", m["sha256"]) and m["licence"] == "creativeml-openrail++-m"
            for m in t["models"]
        )
        assert t["sha256"] and t["store"]["key"] and t["store"]["provenance_key"]
        assert {"batch.submitted", "batch.approved", "run.started", "image.published"} <= {
            a["action"] for a in t["audit"]
        }
        # each matches `atelier trace`
        assert json.loads(ok("trace", t["image_id"], "--json")) == t


def test_real_run_lineage_events(produced) -> None:
    """START then COMPLETE for the run, valid OpenLineage, outputs = exactly the published images."""
    from tests.governance.test_lineage import SPEC_DIR, OpenLineageValidator

    events_file = produced["tmp"] / "data" / "lineage" / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    run_id = produced["result"]["run_id"]
    assert [e["eventType"] for e in events if e["run"]["runId"] == run_id] == ["START", "COMPLETE"]
    complete = events[-1]
    traces = json.loads(produced["ok"]("compliance", "search", "--status", "published", "--json", actor="lee"))
    assert {(d["namespace"], d["name"]) for d in complete["outputs"]} == {
        (t["store"]["url"], t["store"]["key"]) for t in traces
    }
    assert {d["name"] for d in complete["inputs"] if d["namespace"] == "atelier-models"} == {
        f"{m['role']}/{m['sha256']}" for m in traces[0]["models"]
    }
    if (SPEC_DIR / "OpenLineage.json").is_file():
        validator = OpenLineageValidator(SPEC_DIR)
        for e in events:
            validator.check(e)


def test_real_run_search_impact_export_report(produced) -> None:
    ok, tmp = produced["ok"], produced["tmp"]
    n_pub = produced["result"]["published"]
    hits = json.loads(
        ok(
            "compliance",
            "search",
            "--prompt",
            "WALNUT",
            "--requester",
            "maria",
            "--approver",
            "omar",
            "--purpose",
            "catalogue",
            "--use-category",
            "product-catalogue",
            "--licence",
            "creativeml-openrail++-m",
            "--since",
            "2000-01-01",
            "--ref",
            "SKU-1",
            "--json",
            actor="lee",
        )
    )
    assert {t["prompt"]["row_id"] for t in hits} == {"sku-1"} and len(hits) == 2
    table = ok("compliance", "search", "--ref", "SKU-2", actor="lee")
    assert "SKU-2" in table and "IMAGE_ID" in table

    any_trace = hits[0]
    base = next(m for m in any_trace["models"] if m["role"] == "base_unet")
    for flag, value in (("--model-version", base["sha256"]), ("--licence", "creativeml-openrail++-m")):
        out = json.loads(ok("compliance", "impact", flag, value, "--json", actor="lee"))
        assert out["published_images"] == n_pub
    assert "published images depend on them" in ok(
        "compliance", "impact", "--model-version", base["sha256"][:12], actor="lee"
    )

    out_file = tmp / "all.csv"
    assert f"lineage of {produced['result']['published'] + produced['result']['quarantined']} images" in ok(
        "compliance", "export", "--format", "csv", "--out", str(out_file), actor="lee"
    )
    with out_file.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["prompt"] for r in rows if r["row_id"] == "sku-2"} == {"'=studio photo of a ceramic mug"}
    parquet = tmp / "all.parquet"
    ok("compliance", "export", "--format", "parquet", "--out", str(parquet), "--status", "published", actor="lee")
    assert pq.read_table(parquet).num_rows == n_pub

    today = datetime.now(UTC).date().isoformat()
    report = tmp / "report.html"
    assert "report" in ok("compliance", "report", "--from", today, "--to", today, "--out", str(report), actor="lee")
    page = report.read_text()
    assert page.count("data:image/jpeg;base64,") == n_pub  # thumbnails fetched from S3 and inlined
    assert "omar" in page and "creativeml-openrail++-m" in page


def test_real_run_images_record_their_licence_obligations(produced) -> None:
    """Each published image carries `licences.obligations_for(its run's model versions)`."""
    from governance.db import make_engine, make_sessionmaker
    from governance.licences import obligations_for
    from governance.records import Image, Run

    engine = make_engine(f"sqlite:///{produced['tmp'] / 'e2e.db'}")
    with make_sessionmaker(engine)() as s:
        images = s.query(Image).filter_by(status="published").all()
        run = s.get(Run, produced["result"]["run_id"])
        expected = obligations_for(run.model_versions)
        recorded = [i.licence_obligations for i in images]
    engine.dispose()
    assert expected and {o["obligation"] for o in expected} == {"pass-on-use-restrictions", "output-accountability"}
    assert recorded and all(r == expected for r in recorded)
