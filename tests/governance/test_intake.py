"""Intake: what a person uploading a prompt table sees.

Files are written into tmp_path. Great Expectations is imported and its ephemeral context
created once per process (the first validation pays for it).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from governance.intake import (
    PROMPT_MAX_CHARS,
    IntakeError,
    PromptRow,
    content_sha256,
    load_prompts,
    read_prompt_table,
    validate_prompt_table,
)

REPO = Path(__file__).resolve().parents[2]

HEADER = [
    "row_id",
    "prompt",
    "negative_prompt",
    "seed",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "refiner_split",
    "num_images",
    "ref",
]
GOOD = [
    [
        "007",
        "studio photo of a walnut lamp, soft light",
        "blurry, text",
        "42",
        "256",
        "512",
        "4",
        "5.0",
        "0.8",
        "1",
        "",
    ],
    [
        "sku-2",
        'ceramic mug, "matte" glaze, café table',
        "",
        "4294967295",
        "1024",
        "1024",
        "40",
        "7.5",
        "0.75",
        "2",
        "X1",
    ],
    ["sku-3", "oak shelf\nwith a line break", "people", "0", "2048", "256", "150", "0", "0.5", "16", "camp-9"],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def write_jsonl(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """JSON lines with real JSON numbers, as an exporter would write them."""
    numeric = {"seed", "width", "height", "steps", "num_images"}
    floats = {"guidance_scale", "refiner_split"}
    lines = []
    for row in rows:
        record: dict[str, object] = {}
        for key, value in zip(header, row, strict=True):
            record[key] = int(value) if key in numeric else float(value) if key in floats else value
        lines.append(json.dumps(record, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Parquet with typed columns (int64, float64, string), as pandas would write them."""
    frame = pd.DataFrame(rows, columns=header)
    for key in ("seed", "width", "height", "steps", "num_images"):
        frame[key] = frame[key].astype("int64")
    for key in ("guidance_scale", "refiner_split"):
        frame[key] = frame[key].astype("float64")
    frame.to_parquet(path)
    return path


def rules_by_row(report) -> set[tuple[int | None, str, str]]:
    return {(f.row, f.column, f.rule) for f in report.failures}


# --- good tables -----------------------------------------------------------------------------


def test_catalogue_example_is_a_valid_batch():
    report = load_prompts(REPO / "examples" / "catalogue.csv")

    assert report.ok, report.format_failures()
    assert len(report.rows) == 12
    assert all(r.row_id == r.ref and r.row_id.startswith("sku-") for r in report.rows)
    assert {(r.width, r.height, r.steps) for r in report.rows} == {(256, 256, 4)}
    assert len({r.seed for r in report.rows}) == 12


def test_csv_jsonl_ndjson_and_parquet_give_the_same_rows_and_hash(tmp_path):
    reports = [
        load_prompts(write_csv(tmp_path / "batch.csv", HEADER, GOOD)),
        load_prompts(write_jsonl(tmp_path / "batch.jsonl", HEADER, GOOD)),
        load_prompts(write_jsonl(tmp_path / "batch.ndjson", HEADER, GOOD)),
        load_prompts(write_parquet(tmp_path / "batch.parquet", HEADER, GOOD)),
    ]

    for report in reports:
        assert report.ok, report.format_failures()
    assert reports[0].rows[0] == PromptRow(
        row_id="007",  # the leading zeros survive every format
        prompt="studio photo of a walnut lamp, soft light",
        negative_prompt="blurry, text",
        seed=42,
        width=256,
        height=512,
        steps=4,
        guidance_scale=5.0,
        refiner_split=0.8,
        num_images=1,
        ref="",
    )
    assert reports[0].rows[2].prompt == "oak shelf\nwith a line break"
    assert all(report.rows == reports[0].rows for report in reports)
    hashes = {content_sha256(report.rows) for report in reports}
    assert len(hashes) == 1
    assert len(hashes.pop()) == 64


def test_optional_columns_take_their_defaults(tmp_path):
    path = write_csv(tmp_path / "minimal.csv", ["seed", "prompt", "row_id"], [["3", "a red chair", "r1"]])

    report = load_prompts(path)

    assert report.ok, report.format_failures()
    assert report.rows[0].to_dict() == {
        "row_id": "r1",
        "prompt": "a red chair",
        "negative_prompt": "",
        "seed": 3,
        "width": 1024,
        "height": 1024,
        "steps": 40,
        "guidance_scale": 5.0,
        "refiner_split": 0.8,
        "num_images": 1,
        "ref": "",
    }


def test_header_whitespace_is_stripped_and_blank_optional_cells_take_defaults(tmp_path):
    path = write_csv(tmp_path / "spaced.csv", [" row_id ", "prompt", " seed", "steps "], [["a", "b", " 7 ", ""]])

    report = load_prompts(path)

    assert report.ok, report.format_failures()
    assert (report.rows[0].seed, report.rows[0].steps) == (7, 40)


def test_a_dataframe_built_in_code_validates_like_a_file():
    frame = pd.DataFrame({"row_id": ["a", "b"], "prompt": ["x", "y"], "seed": [1, 2], "width": [512, 768]})

    report = validate_prompt_table(frame)

    assert report.ok, report.format_failures()
    assert [(r.seed, r.width) for r in report.rows] == [(1, 512), (2, 768)]


# --- content hash ----------------------------------------------------------------------------

CHANGED_CELL = {
    "row_id": "sku-2b",
    "prompt": "ceramic mug, glossy glaze",
    "negative_prompt": "text",
    "seed": 4294967294,
    "width": 1016,
    "height": 1032,
    "steps": 39,
    "guidance_scale": 7.0000001,
    "refiner_split": 0.7,
    "num_images": 3,
    "ref": "X2",
    "pipeline": "base",
}


def test_content_hash_changes_when_any_cell_changes(tmp_path):
    rows = load_prompts(write_csv(tmp_path / "base.csv", HEADER, GOOD)).rows
    base = content_sha256(rows)
    assert set(CHANGED_CELL) == {f.name for f in dataclasses.fields(PromptRow)}

    for column, value in CHANGED_CELL.items():
        changed = [rows[0], dataclasses.replace(rows[1], **{column: value}), rows[2]]
        assert content_sha256(changed) != base, column
    assert content_sha256([rows[1], rows[0], rows[2]]) != base  # row order is content too
    assert content_sha256(rows[:2]) != base


def test_content_hash_follows_the_file_not_the_object(tmp_path):
    rows = [list(r) for r in GOOD]
    first = content_sha256(load_prompts(write_csv(tmp_path / "a.csv", HEADER, rows)).rows)
    again = content_sha256(load_prompts(write_csv(tmp_path / "b.csv", HEADER, rows)).rows)
    rows[2][HEADER.index("prompt")] += " "  # one trailing space in one prompt
    edited = content_sha256(load_prompts(write_csv(tmp_path / "c.csv", HEADER, rows)).rows)

    assert first == again
    assert edited != first


# --- bad rows --------------------------------------------------------------------------------


def test_every_bad_row_is_reported_with_its_row_number_and_rule(tmp_path):
    good = ["p", "", "1", "1024", "1024", "40", "5.0", "0.8", "1", ""]
    rows = [
        ["sku-1", *good],
        ["sku-2", "p", "", "99999999999", "1024", "1024", "40", "5.0", "0.8", "1", ""],
        ["sku-3", "p", "", "1", "250", "1024", "40", "5.0", "0.8", "1", ""],
        ["sku-4", "p", "", "1", "4096", "1024", "40", "5.0", "0.8", "1", ""],
        ["sku-5", "p", "", "1", "1024", "1024", "40", "5.0", "1.0", "1", ""],
        ["sku-6", "", "", "1", "1024", "1024", "40", "5.0", "0.8", "1", ""],
        ["sku-7", "   ", "", "1", "1024", "1024", "40", "5.0", "0.8", "1", ""],
        ["sku-1", *good],
        ["sku-9", "x" * (PROMPT_MAX_CHARS + 1), "", "1", "1024", "1024", "40", "5.0", "0.8", "1", ""],
        ["sku-10", "p", "", "1", "1024", "1024", "0", "5.0", "0.8", "1", ""],
        ["sku-11", "p", "", "abc", "1024", "1024", "40", "5.0", "0.8", "1", ""],
        ["sku-12", *good],
    ]
    path = write_csv(tmp_path / "bad.csv", HEADER, rows)

    report = load_prompts(path)

    assert not report.ok
    assert report.rows == []
    assert rules_by_row(report) == {
        (1, "row_id", "unique"),
        (2, "seed", "seed_range"),
        (3, "width", "multiple_of_8"),
        (3, "width", "size_range"),
        (4, "width", "size_range"),
        (5, "refiner_split", "refiner_split_range"),
        (6, "prompt", "not_empty"),
        (7, "prompt", "not_empty"),
        (8, "row_id", "unique"),
        (9, "prompt", "max_length"),
        (10, "steps", "steps_range"),
        (11, "seed", "type"),
    }
    lines = report.format_failures().splitlines()
    assert len(lines) == len(report.failures)
    assert "row 2 (id sku-2): seed: seed_range: 99999999999 is outside 0..4294967295" in lines
    assert "row 11 (id sku-11): seed: type: 'abc' is not a whole number" in lines
    assert "row 5 (id sku-5): refiner_split: refiner_split_range: 1.0 is not strictly between 0 and 1" in lines
    assert "row 8 (id sku-1): row_id: unique: 'sku-1' is also used by row 1; row ids must be unique" in lines
    assert f"{PROMPT_MAX_CHARS + 1} characters; at most {PROMPT_MAX_CHARS} allowed" in report.format_failures()


BOUNDARIES = [
    # (column, value, rule or None when the value is allowed)
    ("seed", "0", None),
    ("seed", "4294967295", None),
    ("seed", "4294967296", "seed_range"),
    ("seed", "-1", "seed_range"),
    ("seed", "1.5", "type"),
    ("seed", "1_000", "type"),
    ("seed", "\u0663", "type"),  # ARABIC-INDIC DIGIT THREE: float() accepts it, intake does not
    ("width", "256", None),
    ("width", "2048", None),
    ("width", "248", "size_range"),
    ("height", "2056", "size_range"),
    ("height", "1020", "multiple_of_8"),
    ("steps", "1", "pipeline_steps"),  # within the schema, but base + refiner (the default) needs one step each
    ("steps", "150", None),
    ("steps", "151", "steps_range"),
    ("guidance_scale", "0", None),
    ("guidance_scale", "30", None),
    ("guidance_scale", "30.5", "guidance_range"),
    ("guidance_scale", "nan", "type"),
    ("refiner_split", "0", "refiner_split_range"),
    ("refiner_split", "0.999", None),
    ("num_images", "16", None),
    ("num_images", "17", "num_images_range"),
    ("num_images", "0", "num_images_range"),
    ("ref", "campaign\tq3", "one_line"),
]


def test_limits_accept_their_edges_and_reject_beyond(tmp_path):
    rows = []
    for i, (column, value, _) in enumerate(BOUNDARIES, start=1):
        cells = dict(zip(HEADER, [f"r{i}", "p", "", "1", "1024", "1024", "40", "5", "0.8", "1", ""], strict=True))
        cells[column] = value
        rows.append([cells[h] for h in HEADER])

    report = load_prompts(write_csv(tmp_path / "edges.csv", HEADER, rows))

    expected = {(i, column, rule) for i, (column, _, rule) in enumerate(BOUNDARIES, start=1) if rule}
    assert rules_by_row(report) == expected


def test_ids_with_line_breaks_are_rejected_and_failures_stay_one_per_line():
    frame = pd.DataFrame({"row_id": ["a\nb", "c"], "prompt": ["p", ""], "seed": ["1", "2"]})

    report = validate_prompt_table(frame)

    assert rules_by_row(report) == {(1, "row_id", "one_line"), (2, "prompt", "not_empty")}
    assert len(report.format_failures().splitlines()) == 2
    assert report.format_failures().startswith("row 1 (id 'a\\nb'): row_id: one_line:")


def test_missing_required_column_is_a_table_failure(tmp_path):
    path = write_csv(tmp_path / "no_seed.csv", ["row_id", "prompt"], [["a", "p"], ["b", "q"]])

    report = load_prompts(path)

    assert [(f.row, f.row_id, f.column, f.rule) for f in report.failures] == [(None, None, "seed", "required_column")]
    assert report.format_failures().startswith("table: seed: required_column: missing required column 'seed'")


def test_misspelt_column_is_reported_as_unknown_and_as_missing(tmp_path):
    path = write_csv(tmp_path / "typo.csv", ["row_id", "promt", "seed", "Width"], [["a", "p", "1", "512"]])

    report = load_prompts(path)

    assert rules_by_row(report) == {
        (None, "prompt", "required_column"),
        (None, "promt", "unknown_column"),
        (None, "Width", "unknown_column"),  # names are case-sensitive
    }
    assert "did you mean 'prompt'?" in report.format_failures()


def test_header_only_table_has_no_rows_to_approve(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text(",".join(HEADER) + "\n", encoding="utf-8")

    report = load_prompts(path)

    assert [f.rule for f in report.failures] == ["row_count"]


# --- unreadable files ------------------------------------------------------------------------


def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 4)
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _latin1(path: Path) -> Path:
    path.write_bytes("row_id,prompt,seed\na,crème brûlée on a plate,1\n".encode("latin-1"))
    return path


def _text(path: Path) -> Path:
    path.write_text("row_id,prompt,seed\na,p,1\n", encoding="utf-8")
    return path


def _corrupt_parquet(path: Path) -> Path:
    pd.DataFrame({"row_id": ["a"], "prompt": ["p"], "seed": [1]}).to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[:4] + b"\x00" * (len(data) - 8) + data[-4:])
    return path


def _csv_as_parquet(path: Path) -> Path:
    path.write_text("row_id,prompt,seed\na,p,1\n", encoding="utf-8")
    return path


def _jsonl_array(path: Path) -> Path:
    path.write_text('{"row_id": "a", "prompt": "p", "seed": 1}\n["b", "q", 2]\n', encoding="utf-8")
    return path


def _jsonl_broken(path: Path) -> Path:
    path.write_text('{"row_id": "a", "prompt": "p", "seed": 1\n', encoding="utf-8")
    return path


def _utf16(path: Path) -> Path:
    path.write_text("row_id,prompt,seed\na,p,1\n", encoding="utf-16")
    return path


def _jsonl_huge_number(path: Path) -> Path:
    path.write_text('{"row_id": "a", "prompt": "p", "seed": ' + "9" * 5000 + "}\n", encoding="utf-8")
    return path


def _ragged_csv(path: Path) -> Path:
    path.write_text("row_id,prompt,seed\na,p,1\nb,q,2,extra\n", encoding="utf-8")
    return path


UNREADABLE = [
    ("binary.csv", _binary, "binary"),
    ("empty.csv", _empty, "empty"),
    ("latin1.csv", _latin1, "UTF-8"),
    ("utf16.csv", _utf16, "UTF-16"),
    ("huge.jsonl", _jsonl_huge_number, "line 1"),
    ("prompts.txt", _text, ".txt"),
    ("corrupt.parquet", _corrupt_parquet, "Parquet"),
    ("really_csv.parquet", _csv_as_parquet, "Parquet"),
    ("array.jsonl", _jsonl_array, "line 2"),
    ("broken.ndjson", _jsonl_broken, "line 1"),
    ("ragged.csv", _ragged_csv, "line 3"),
]


@pytest.mark.parametrize(("name", "make", "says"), UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_unreadable_file_raises_one_line_intake_error_naming_the_file(tmp_path, name, make, says):
    path = make(tmp_path / name)

    with pytest.raises(IntakeError) as caught:
        load_prompts(path)

    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert says in message
    assert "expected" in message  # and says what a good file looks like


def test_intake_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        read_prompt_table(_empty(tmp_path / "empty.jsonl"))


def test_validation_writes_nothing_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_csv(tmp_path / "batch.csv", HEADER, GOOD)

    assert load_prompts(path).ok

    assert [p.name for p in tmp_path.iterdir()] == ["batch.csv"]


# --- what an attacker would try (issue 12) ---------------------------------------------------


@pytest.mark.parametrize(
    "column, value, named",
    [
        ("prompt", "\x1b[8mnude portrait\x1b[0m studio photo of a lamp", "U+001B (ESC)"),
        ("prompt", "text \x1b[2K\r studio photo of a vase", "U+001B (ESC)"),
        ("prompt", "studio photo of a \u202eesav\u202c", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("negative_prompt", "blurry, wa\u200btermark", "U+200B (ZERO WIDTH SPACE)"),
        ("prompt", "lamp \u2066hidden\u2069", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
        ("prompt", "bell \x07 lamp", "U+0007"),
        ("prompt", "c1 \x9b31m lamp", "U+009B"),
        ("row_id", "sku\u202e1", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("ref", "camp\u200d9", "U+200D (ZERO WIDTH JOINER)"),
    ],
)
def test_characters_that_hide_or_reorder_text_are_refused_naming_row_and_column(tmp_path, column, value, named):
    rows = [list(r) for r in GOOD[:2]]
    rows[1][HEADER.index(column)] = value
    quoted = io.StringIO()
    csv.writer(quoted, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows([HEADER, *rows])
    (tmp_path / "b.csv").write_text(quoted.getvalue(), encoding="utf-8")
    for path in (tmp_path / "b.csv", write_jsonl(tmp_path / "b.jsonl", HEADER, rows)):
        report = load_prompts(path)
        assert not report.ok and report.rows == []
        [failure] = report.failures
        assert (failure.row, failure.column) == (2, column), failure
        assert named in failure.message and "\x1b" not in failure.format() and "\u202e" not in failure.format()


def test_ordinary_unicode_text_is_not_refused(tmp_path):
    rows = [list(r) for r in GOOD[:1]]
    rows[0][HEADER.index("prompt")] = "café crème, Müsli-Schale, 日本の茶碗, שולחן, emoji 🙂, tab\there"
    assert load_prompts(write_csv(tmp_path / "b.csv", HEADER, rows)).ok


def test_a_row_with_more_fields_than_the_header_is_refused_naming_the_line(tmp_path):
    # The attack as filed: an unquoted comma in a prompt, which pandas took as the index column,
    # shifting every value one column to the left. Now the whole file is refused, by line.
    good = ",".join(HEADER[:7])
    lines = [good, "a,studio photo,,1,256,256,4", "b,studio photo, soft light,,2,256,256,4", "c,mug,,3,256,256,4"]
    path = tmp_path / "shifted.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(IntakeError, match=r"line 3 has 8 fields but the header has 7.*double quotes"):
        load_prompts(path)
    lines.append("d,short")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(IntakeError, match=r"line 3 has 8 fields .*\(and 1 more line: 5\)"):
        load_prompts(path)
    quoted = [good, 'b,"studio photo, soft light",,2,256,256,4']  # quoted: fine
    path.write_text("\n".join(quoted) + "\n", encoding="utf-8")
    [row] = load_prompts(path).rows
    assert row.prompt == "studio photo, soft light" and row.seed == 2


def test_size_and_row_limits_refuse_before_parsing(tmp_path):
    from governance.intake import IntakeLimits

    rows = [[f"r{i}", "studio photo of a lamp", "", str(i), "256", "256", "4", "5", "0.8", "1", ""] for i in range(50)]
    path = write_csv(tmp_path / "b.csv", HEADER, rows)
    assert load_prompts(path, IntakeLimits(max_file_bytes=path.stat().st_size, max_rows=50)).ok  # edges accepted
    with pytest.raises(IntakeError, match=r"over the limit of 1,000 \(ATELIER_INTAKE_MAX_FILE_BYTES\)"):
        load_prompts(path, IntakeLimits(max_file_bytes=1000, max_rows=50))
    with pytest.raises(IntakeError, match=r"50 rows, over the limit of 49 \(ATELIER_INTAKE_MAX_ROWS\)"):
        load_prompts(path, IntakeLimits(max_rows=49))
    parquet = write_parquet(tmp_path / "b.parquet", HEADER, rows)
    with pytest.raises(IntakeError, match=r"50 rows, over the limit of 10"):
        load_prompts(parquet, IntakeLimits(max_rows=10))  # from the footer, before decoding


def test_great_expectations_is_imported_without_the_modules_it_never_uses_here(tmp_path):
    """`batch submit` imports GX with scipy.stats, altair, jsonschema and boto3 deferred (a third of
    GX's import time); an expectation that needs one still gets the real module on first use."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from governance.intake import load_prompts\n"
        f"assert load_prompts({str(REPO / 'examples' / 'catalogue.csv')!r}).ok\n"
        "import great_expectations\n"
        "print(sorted(m for m in ('scipy.stats', 'altair', 'jsonschema') if m in sys.modules))\n"
        "from great_expectations.expectations.metrics.column_aggregate_metrics import "
        "column_bootstrapped_ks_test_p_value as m\n"
        "import scipy.stats\n"
        "print(m.stats.kstest is scipy.stats.kstest, type(scipy.stats).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    unloaded, forwarded = done.stdout.splitlines()
    assert unloaded == "[]" and forwarded == "True module", done.stdout
