"""Intake: read a prompt table (CSV, JSON lines, Parquet) and validate it into typed prompt rows.

Pure: no database, no network, nothing written to disk. The DB service that records a batch
wraps `load_prompts` and stores `IntakeReport.rows` with `content_sha256(rows)`, the hash an
approval is pinned to.

Two kinds of bad input, kept apart on purpose:

- a file that is not a readable table (unknown extension, binary, empty, not UTF-8, corrupt
  Parquet, JSON lines that are not flat objects) raises `IntakeError` with a one-line message
  that names the file and says how to fix it;
- a readable table with bad content gives an `IntakeReport` whose `failures` list every failing
  row and rule (row number, row id, column, rule, message), checked with Great Expectations.

Great Expectations runs in one in-memory (ephemeral) context per process, created on first use;
importing it is most of the cost of a first validation, trimmed by `_import_gx`.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import io
import json
import logging
import math
import numbers
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governance.deferred_imports import deferring
from governance.errors import InvalidInput
from governance.pipelines import DEFAULT_PIPELINE, MAX_PER_ROW, PipelineSet, default_pipelines, split_names
from governance.text import HIDING, UNSAFE_CLASS, describe, first_stacked_marks, first_unsafe

if TYPE_CHECKING:
    from types import ModuleType

    import pandas as pd

    from governance.pipelines import PipelineConfig

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Limits

PROMPT_MAX_CHARS = 2000
ROW_ID_MAX_CHARS = 128
REF_MAX_CHARS = 256
PIPELINE_MAX_CHARS = 200
SEED_MIN, SEED_MAX = 0, 2**32 - 1
SIZE_MIN, SIZE_MAX = 256, 2048  # SDXL range; the downstream watermark needs >= 256 px
SIZE_MULTIPLE = 8  # the VAE works on 1/8 of the image size
STEPS_MIN, STEPS_MAX = 1, 150
GUIDANCE_MIN, GUIDANCE_MAX = 0.0, 30.0
REFINER_SPLIT_MIN, REFINER_SPLIT_MAX = 0.0, 1.0  # both exclusive
NUM_IMAGES_MIN, NUM_IMAGES_MAX = 1, 16
MAX_ROWS = 100_000  # the schema's own bound; IntakeLimits.max_rows (a setting) is the one in force


@dataclass(frozen=True)
class IntakeLimits:
    """How big a prompt file may be (ATELIER_INTAKE_MAX_FILE_BYTES, ATELIER_INTAKE_MAX_ROWS): checked
    before the file is parsed (bytes; Parquet's row count from its footer), so a huge upload is one
    clear refusal instead of hundreds of megabytes of memory."""

    max_file_bytes: int = 10 * 1024 * 1024
    max_rows: int = 10_000


SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")

_INT_PATTERN = r"^[+-]?[0-9]+(?:\.0*)?\Z"  # "42" and "42.0"; ASCII digits only
_FLOAT_PATTERN = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z"  # no nan, inf, 1_000
# Ids are one printable line: they appear in failure lines, keys and audit records.
_ONE_LINE_PATTERN = f"^[^{UNSAFE_CLASS}\n\t\u2028\u2029]*\\Z"  # ids: one printable line, nothing invisible


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # "text", "int" or "float"
    required: bool
    default: Any = None


COLUMNS: tuple[_Column, ...] = (
    _Column("row_id", "text", required=True),
    _Column("prompt", "text", required=True),
    _Column("negative_prompt", "text", required=False, default=""),
    _Column("seed", "int", required=True),
    _Column("width", "int", required=False, default=1024),
    _Column("height", "int", required=False, default=1024),
    _Column("steps", "int", required=False, default=40),
    _Column("guidance_scale", "float", required=False, default=5.0),
    _Column("refiner_split", "float", required=False, default=0.8),
    _Column("num_images", "int", required=False, default=1),
    _Column("ref", "text", required=False, default=""),
    # the pipeline configuration(s) of the row (governance.pipelines): "base", or "base,base+refiner"
    # to compare them on the same seeds; empty: the batch's --pipeline, else base+refiner
    _Column("pipeline", "text", required=False, default=DEFAULT_PIPELINE),
)
# Defaults a row takes from its configuration(s) rather than from the column (when its cell is empty).
_CONFIG_DEFAULTS = ("steps", "guidance_scale", "refiner_split")
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.required)
_BY_NAME = {c.name: c for c in COLUMNS}

# (column, minimum, maximum, strict, rule) for the numeric range checks
_RANGES: tuple[tuple[str, float, float, bool, str], ...] = (
    ("seed", SEED_MIN, SEED_MAX, False, "seed_range"),
    ("width", SIZE_MIN, SIZE_MAX, False, "size_range"),
    ("height", SIZE_MIN, SIZE_MAX, False, "size_range"),
    ("steps", STEPS_MIN, STEPS_MAX, False, "steps_range"),
    ("guidance_scale", GUIDANCE_MIN, GUIDANCE_MAX, False, "guidance_range"),
    ("refiner_split", REFINER_SPLIT_MIN, REFINER_SPLIT_MAX, True, "refiner_split_range"),
    ("num_images", NUM_IMAGES_MIN, NUM_IMAGES_MAX, False, "num_images_range"),
)
_MAX_LENGTHS = {
    "row_id": ROW_ID_MAX_CHARS,
    "prompt": PROMPT_MAX_CHARS,
    "negative_prompt": PROMPT_MAX_CHARS,
    "ref": REF_MAX_CHARS,
    "pipeline": PIPELINE_MAX_CHARS,
}

_FIX_HINT = {
    ".csv": "expected UTF-8 CSV with a header row (row_id,prompt,seed,...)",
    ".jsonl": "expected UTF-8 JSON lines, one flat object per line with keys row_id, prompt, seed, ...",
    ".ndjson": "expected UTF-8 JSON lines, one flat object per line with keys row_id, prompt, seed, ...",
    ".parquet": "expected a Parquet file with columns row_id, prompt, seed, ...",
}


# ---------------------------------------------------------------------------------------------
# Results


class IntakeError(InvalidInput, ValueError):
    """The file is not a readable prompt table. The message is one line naming the file and the fix."""


@dataclass(frozen=True)
class RowFailure:
    row: int | None  # 1-based data row number (header not counted); None for a table-level failure
    row_id: str | None
    column: str
    rule: str
    message: str

    def format(self) -> str:
        if self.row is None:
            where = "table"
        elif self.row_id and self.row_id.isprintable():
            where = f"row {self.row} (id {self.row_id})"
        elif self.row_id:
            where = f"row {self.row} (id {self.row_id!r})"
        else:
            where = f"row {self.row}"
        return f"{where}: {self.column}: {self.rule}: {self.message}"


@dataclass(frozen=True)
class PromptRow:
    row_id: str
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    refiner_split: float
    num_images: int
    ref: str  # external reference (SKU, campaign id); may be ""
    # configuration name(s), comma-separated (governance.pipelines); the default is left out of
    # to_dict, so a row of the default configuration hashes as rows did before configurations existed
    pipeline: str = DEFAULT_PIPELINE

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["pipeline"] == DEFAULT_PIPELINE:
            del out["pipeline"]
        return out

    @property
    def pipelines(self) -> list[str]:
        return split_names(self.pipeline)


@dataclass(frozen=True)
class IntakeReport:
    rows: list[PromptRow]  # empty when there are failures
    failures: list[RowFailure]

    @property
    def ok(self) -> bool:
        return not self.failures

    def format_failures(self) -> str:
        return "\n".join(f.format() for f in self.failures)


# ---------------------------------------------------------------------------------------------
# Reading


def read_prompt_table(path: Path, limits: IntakeLimits | None = None) -> pd.DataFrame:
    """Read a prompt table by its extension into a DataFrame of text cells (str or None).

    Values are kept as text ("007" stays "007"); typing is left to `validate_prompt_table`.
    Raises `IntakeError` (one line, naming the file) when the file is not a readable table, is over
    the limits, or (CSV) has a line whose number of fields differs from the header's.
    """
    limits = limits or IntakeLimits()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise IntakeError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
            "expected a .csv, .jsonl/.ndjson or .parquet prompt table"
        )
    hint = _FIX_HINT[suffix]
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise IntakeError(
                f"{path}: {size:,} bytes, over the limit of {limits.max_file_bytes:,} "
                "(ATELIER_INTAKE_MAX_FILE_BYTES); split it into several batches"
            )
        with path.open("rb") as fh:
            data = fh.read(limits.max_file_bytes + 1)
    except OSError as exc:
        raise IntakeError(f"{path}: cannot read the file ({exc.strerror or exc}); {hint}") from None
    if len(data) > limits.max_file_bytes:  # it grew while read, or is not a regular file
        raise IntakeError(f"{path}: over the limit of {limits.max_file_bytes:,} bytes (ATELIER_INTAKE_MAX_FILE_BYTES)")
    if not data.strip():
        raise IntakeError(f"{path}: the file is empty; {hint}")
    if suffix == ".parquet":
        frame = _read_parquet(path, data, hint, limits.max_rows)
    else:
        text = _decode_text(path, data, hint)
        frame = _read_csv(path, text, hint) if suffix == ".csv" else _read_json_lines(path, text, hint)
    if len(frame) > limits.max_rows:
        raise IntakeError(
            f"{path}: {len(frame):,} rows, over the limit of {limits.max_rows:,} (ATELIER_INTAKE_MAX_ROWS); "
            "split it into several batches"
        )
    logger.debug("read %s: %d rows, columns %s", path, len(frame), list(frame.columns))
    return frame


def _decode_text(path: Path, data: bytes, hint: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise IntakeError(f"{path}: UTF-16 text; re-save it as UTF-8; {hint}")
    if b"\x00" in data:
        raise IntakeError(f"{path}: looks like a binary file, not text; {hint}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IntakeError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); re-save it as UTF-8; {hint}"
        ) from None


def _check_field_counts(path: Path, text: str, hint: str) -> None:
    """Every record has as many fields as the header. One more (an unquoted comma in a prompt) made
    pandas take the first column as the index and shift every value one column: refused, by line."""
    import csv

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        bad: list[tuple[int, int]] = []
        for record in reader:
            if record and len(record) != len(header):  # blank lines are skipped, as pandas does
                bad.append((reader.line_num, len(record)))
    except csv.Error:
        return  # malformed quoting: pandas names the problem below
    if bad:
        line, fields = bad[0]
        more = f" (and {len(bad) - 1} more line{'s' if len(bad) > 2 else ''}: {', '.join(str(b[0]) for b in bad[1:6])})"
        raise IntakeError(
            f"{path}: line {line} has {fields} fields but the header has {len(header)}"
            f"{more if len(bad) > 1 else ''}; a comma inside a value needs the value in double quotes; {hint}"
        )


def _read_csv(path: Path, text: str, hint: str) -> pd.DataFrame:
    import pandas as pd  # imported on use: `batch list` and friends need no pandas

    _check_field_counts(path, text, hint)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False, index_col=False)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise IntakeError(f"{path}: not a readable CSV table ({_one_line(exc)}); {hint}") from None
    # Short rows leave NaN in the missing trailing fields even with na_filter=False.
    return frame.astype(object).where(frame.notna(), None)


def _read_json_lines(path: Path, text: str, hint: str) -> pd.DataFrame:
    import pandas as pd  # imported on use: `batch list` and friends need no pandas

    records: list[dict[str, Any]] = []
    # Split on "\n" only: str.splitlines would also split on U+2028 etc., legal inside JSON strings.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, int too long, nesting too deep
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else _one_line(exc)
            raise IntakeError(f"{path}: line {line_no} is not valid JSON ({reason}); {hint}") from None
        if not isinstance(record, dict):
            raise IntakeError(f"{path}: line {line_no} is a JSON {type(record).__name__}, not an object; {hint}")
        for key, value in record.items():
            if isinstance(value, dict | list):
                raise IntakeError(f"{path}: line {line_no}, key {key!r} holds a nested value; {hint}")
        records.append({key: _cell_text(value) for key, value in record.items()})
    return pd.DataFrame.from_records(records).astype(object).pipe(lambda f: f.where(f.notna(), None))


def _read_parquet(path: Path, data: bytes, hint: str, max_rows: int) -> pd.DataFrame:
    import pandas as pd  # imported on use: `batch list` and friends need no pandas

    if len(data) < 12 or not (data.startswith(b"PAR1") and data.endswith(b"PAR1")):
        raise IntakeError(f"{path}: not a Parquet file (no PAR1 magic bytes); {hint}")
    try:
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows  # from the footer: nothing decoded yet
    except Exception as exc:  # pyarrow raises many types (ArrowInvalid, OSError, ...); none may escape
        raise IntakeError(f"{path}: not a readable Parquet file ({_one_line(exc)}); {hint}") from None
    if rows > max_rows:
        raise IntakeError(
            f"{path}: {rows:,} rows, over the limit of {max_rows:,} (ATELIER_INTAKE_MAX_ROWS); "
            "split it into several batches"
        )
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises many types (ArrowInvalid, OSError, ...); none may escape
        raise IntakeError(f"{path}: not a readable Parquet file ({_one_line(exc)}); {hint}") from None
    out = {}
    for column in frame.columns:
        cells = []
        for row, value in enumerate(frame[column].tolist(), start=1):
            if not _is_scalar_cell(value):
                raise IntakeError(
                    f"{path}: column {column!r}, row {row} holds a {type(value).__name__}, not text or a number; {hint}"
                )
            cells.append(_cell_text(value))
        out[column] = cells
    return pd.DataFrame(out, columns=list(frame.columns), dtype=object)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_scalar_cell(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | numbers.Number) or _is_missing(value)


def _is_missing(value: Any) -> bool:
    import pandas as pd  # imported on use: `batch list` and friends need no pandas

    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # pd.isna of a list-like is an array
        return False


def _cell_text(value: Any) -> str | None:
    """One cell as text: numbers in a canonical form, missing values as None."""
    if isinstance(value, str):
        return value
    if _is_missing(value):
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


# ---------------------------------------------------------------------------------------------
# Validation


def load_prompts(
    path: Path,
    limits: IntakeLimits | None = None,
    pipelines: PipelineSet | None = None,
    default_pipeline: str | None = None,
) -> IntakeReport:
    """Read and validate a prompt table. Raises `IntakeError` only for an unreadable or oversized file."""
    return validate_prompt_table(read_prompt_table(path, limits), pipelines, default_pipeline)


def validate_prompt_table(
    df: pd.DataFrame, pipelines: PipelineSet | None = None, default_pipeline: str | None = None
) -> IntakeReport:
    """Check every row of a prompt table against the intake rules and type the good ones.

    Cells may be text, numbers or missing; missing or blank cells of optional columns take the
    column default, except steps, guidance and split, which take the defaults of the row's pipeline
    configuration(s) (`pipelines`, default the packaged file; a row whose `pipeline` cell is empty
    names `default_pipeline`, else base+refiner). Every failing (row, rule) is reported; `rows` is
    filled only when none fail.
    """
    # 1. normalise headers: strip whitespace, keep the first of duplicated names
    table_failures: list[RowFailure] = []
    frame = df.reset_index(drop=True)
    names = [str(c).strip() for c in frame.columns]
    keep: list[int] = []
    for position, name in enumerate(names):
        if name in names[:position]:
            table_failures.append(
                RowFailure(None, None, name, "duplicate_column", f"column {name!r} appears more than once")
            )
        else:
            keep.append(position)
    frame = frame.iloc[:, keep]
    frame.columns = [names[p] for p in keep]

    # 2. each row's pipeline configurations, and the defaults they give the row
    configs, canonical, row_defaults, pipeline_failures = _row_configurations(
        frame, pipelines or default_pipelines(), default_pipeline or DEFAULT_PIPELINE
    )

    # 3. build the frame Great Expectations checks: known columns typed, helpers derived
    checked, texts = _checked_frame(frame, row_defaults, [",".join(c) for c in canonical])

    # 4. one suite over the whole table, each expectation tagged with its rule and column;
    # 5. validate it, then map every unexpected index back to a row failure
    result = _validate(checked, frame.columns)
    failures = table_failures + _failures_from_result(result, checked, texts) + pipeline_failures
    failures += _configuration_fit(checked, texts, configs)
    failures.sort(key=_failure_order)
    if failures:
        return IntakeReport(rows=[], failures=failures)
    return IntakeReport(rows=_typed_rows(checked), failures=[])


def _text_col(column: str) -> str:
    # Helper columns start with a space: stripped input headers never do, so they cannot collide.
    return f" text:{column}"


def _mod_col(column: str) -> str:
    return f" mod{SIZE_MULTIPLE}:{column}"


def _row_configurations(
    frame: pd.DataFrame, pipelines: PipelineSet, default_pipeline: str
) -> tuple[list[list[PipelineConfig]], list[list[str]], list[dict[str, float]], list[RowFailure]]:
    """Each row's configurations (the known ones), its names as given, the defaults they give its empty cells, and the
    failures: unknown or repeated names, too many, and configurations whose defaults disagree where
    the row leaves the value to them (a comparison runs every configuration on the same values)."""
    n = len(frame)

    def cells(name: str) -> list[str | None]:
        if name not in frame.columns:
            return [None] * n
        return [(t.strip() or None) if t is not None else None for t in map(_cell_text, frame[name].tolist())]

    row_ids, names_cells = cells("row_id"), cells("pipeline")
    given = {name: cells(name) for name in _CONFIG_DEFAULTS}
    configs: list[list[PipelineConfig]] = []
    canonical: list[list[str]] = []
    defaults: list[dict[str, float]] = []
    failures: list[RowFailure] = []
    for i in range(n):
        cell = names_cells[i] or default_pipeline
        names = split_names(cell)
        row: list[PipelineConfig] = []

        def fail(rule: str, message: str, i: int = i) -> None:
            failures.append(RowFailure(i + 1, row_ids[i], "pipeline", rule, message))

        unknown = []
        for name in dict.fromkeys(names):
            if name in pipelines.configs:
                row.append(pipelines.configs[name])
            elif len(name) <= PIPELINE_MAX_CHARS:
                unknown.append(name)
        if unknown:  # one failure per cell, however many names it has
            more = f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
            fail("pipeline_unknown", _safe_line(_pipeline_unknown(unknown[0], pipelines)) + more)
        if len(set(names)) != len(names):
            fail("pipeline_duplicate", f"{_show(cell)} names a configuration twice; name each once")
        if len(names) > MAX_PER_ROW:
            fail("pipeline_too_many", f"{len(names)} configurations; a row compares at most {MAX_PER_ROW}")
        values: dict[str, float] = {}
        for name in _CONFIG_DEFAULTS:
            if given[name][i] is not None or not row:
                continue
            options = {getattr(c, name) for c in row if not (name == "refiner_split" and not c.refiner)}
            options.discard(None)
            if len(options) > 1:
                shown = ", ".join(f"{c.name} {getattr(c, name)}" for c in row if getattr(c, name) is not None)
                fail(
                    "pipeline_defaults_differ",
                    f"the configurations default {name} differently ({shown}); give {name} in this row so "
                    "every configuration runs on the same values",
                )
            elif options:
                values[name] = float(options.pop())
        configs.append(row)
        canonical.append(names)
        defaults.append(values)
    return configs, canonical, defaults, failures


def _pipeline_unknown(name: str, pipelines: PipelineSet) -> str:
    from governance.pipelines import unknown_message

    return unknown_message(name, pipelines.names)


def _safe_line(text: str) -> str:
    from governance.text import escape_unsafe

    return escape_unsafe(text, one_line=True)


def _configuration_fit(
    checked: pd.DataFrame, texts: dict[str, list[str | None]], configs: list[list[PipelineConfig]]
) -> list[RowFailure]:
    """Every configuration of a row can make it: its size lies in each one's sides, and a split is
    given only where a configuration has the refiner. The batch's configurations share one engine."""
    from governance.pipelines import engine_needs

    failures: list[RowFailure] = []
    row_ids = checked["row_id"].tolist() if "row_id" in checked.columns else [None] * len(checked)
    for i, row in enumerate(configs):
        for side in ("width", "height"):
            value = checked[side][i] if side in checked.columns else math.nan
            if math.isnan(value) or not SIZE_MIN <= value <= SIZE_MAX:
                continue  # not a number, or outside SDXL's range: size_range says so already
            outside = [c for c in row if not c.min_side <= value <= c.max_side]
            if outside:
                c = outside[0]
                also = " (a comparison row needs a size every configuration makes)" if len(row) > 1 else ""
                failures.append(
                    RowFailure(
                        i + 1,
                        row_ids[i],
                        side,
                        "pipeline_size",
                        f"{_num(value)} is outside {c.min_side}..{c.max_side}, the sides configuration {c.name} "
                        f"makes{also}",
                    )
                )
        steps = checked["steps"][i] if "steps" in checked.columns else math.nan
        if any(c.refiner for c in row) and not math.isnan(steps) and STEPS_MIN <= steps < 2:
            names = ", ".join(c.name for c in row if c.refiner)
            failures.append(
                RowFailure(
                    i + 1,
                    row_ids[i],
                    "steps",
                    "pipeline_steps",
                    f"{_num(steps)} step: configuration {names} runs the base and then the refiner, each at least "
                    "one step; give 2 or more",
                )
            )
        if row and not any(c.refiner for c in row) and texts.get("refiner_split", [None] * (i + 1))[i] is not None:
            names = ", ".join(c.name for c in row)
            failures.append(
                RowFailure(
                    i + 1,
                    row_ids[i],
                    "refiner_split",
                    "refiner_split_unused",
                    f"configuration {names} runs no refiner, so refiner_split would mean nothing; leave it empty",
                )
            )
    used = {c.name: c for row in configs for c in row}
    try:
        engine_needs(list(used.values()))
    except InvalidInput as exc:
        failures.append(RowFailure(None, None, "pipeline", "pipeline_engine", str(exc)))
    return failures


def _checked_frame(
    frame: pd.DataFrame,
    row_defaults: Sequence[dict[str, float]] | None = None,
    pipeline_cells: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, list[str | None]]]:
    """The frame GX checks: known columns (text as str/None, numbers as float64 with NaN), the raw
    text of each numeric column for the type check, width/height modulo 8, and unknown columns.

    Built from plain lists into object columns: pandas 3 would otherwise infer its string dtype
    and turn None into NaN.
    """
    import pandas as pd  # imported on use: `batch list` and friends need no pandas

    n = len(frame)
    checked: dict[str, pd.Series] = {}
    texts: dict[str, list[str | None]] = {}  # raw text of each known column, for messages
    for column in COLUMNS:
        if column.name in frame.columns:
            raw = [_cell_text(v) for v in frame[column.name].tolist()]
        elif column.required:
            continue  # reported by ExpectColumnToExist
        else:
            raw = [None] * n
        if column.kind == "text":
            keep_spaces = column.name in ("prompt", "negative_prompt")
            values = [(v if keep_spaces else v.strip()) if v is not None and v.strip() else column.default for v in raw]
            if column.name == "pipeline" and pipeline_cells is not None:
                values = list(pipeline_cells)  # canonical: "a,b", the batch's default where empty
            checked[column.name] = pd.Series(values, dtype=object)
            texts[column.name] = values
            continue
        text = [v.strip() or None if v is not None else None for v in raw]
        pattern = re.compile(_INT_PATTERN if column.kind == "int" else _FLOAT_PATTERN)
        defaults = [
            (row_defaults[i] if row_defaults else {}).get(column.name, column.default) for i in range(n)
        ]  # the row's configuration(s) give steps, guidance and split their defaults
        numbers_ = [
            float(v) if v is not None and pattern.match(v) else (math.nan if column.required or v else defaults[i])
            for i, v in enumerate(text)
        ]
        number = pd.Series(numbers_, dtype="float64")
        checked[column.name] = number
        checked[_text_col(column.name)] = pd.Series(text, dtype=object)
        texts[column.name] = text
        if column.name in ("width", "height"):
            checked[_mod_col(column.name)] = number % SIZE_MULTIPLE
    for name in frame.columns:
        if name not in _BY_NAME:
            checked[name] = pd.Series([_cell_text(v) for v in frame[name].tolist()], dtype=object)
    return pd.DataFrame(checked, index=pd.RangeIndex(n)), texts


# Modules Great Expectations imports at the top of files but uses only inside the functions of
# expectations, metrics and data sources this suite never runs; loading them is over a third of
# GX's import time (scipy.stats ~0.8 s: the KL-divergence and KS-test metrics; altair ~0.3 s: the
# KL-divergence charts; jsonschema ~40 ms: ExpectColumnValuesToMatchJsonSchema; boto3 ~30 ms: S3
# data sources). GX binds placeholders that import the real module on first use
# (governance.deferred_imports), so an expectation that needs one still works: it pays then.
_GX_DEFERRED_IMPORTS = ("scipy.stats", "altair", "jsonschema", "boto3")


@contextmanager
def _allocating_long_lived() -> Iterator[None]:
    """Run a block that allocates objects meant to live as long as the process (an import).

    Importing GX allocates a third of a million objects that stay (classes, pydantic models,
    registries) and about 2,000 of garbage. Left to the cyclic garbage collector, the young
    collections would walk them over and over while they pile up (a fifth of GX's import time),
    then once more in a full collection during the first validation. So the collector is off for
    the block, and then every young object (what the block allocated, mostly) is filed directly
    in the oldest generation (`gc.freeze()` then `gc.unfreeze()`: two list splices), where the
    next full collection examines it, garbage included. That filing is skipped when objects are
    frozen already: their owner froze them, and `unfreeze` would release them too. The collector
    ends on or off as it was, and nothing stays frozen.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def _import_gx() -> ModuleType:
    """`import great_expectations`; the first time without the modules GX never needs here
    (`_GX_DEFERRED_IMPORTS`) and without the garbage collector walking its objects."""
    if "great_expectations" in sys.modules:
        import great_expectations as gx

        return gx
    with _allocating_long_lived(), deferring(_GX_DEFERRED_IMPORTS) as deferred:
        import great_expectations as gx
    logger.debug("imported great_expectations; deferred %s", ", ".join(deferred) or "nothing")
    return gx


def _build_suite(checked: pd.DataFrame, input_columns: Sequence[str]) -> Any:
    gx = _import_gx()
    import great_expectations.expectations as gxe

    def tag(rule: str, column: str) -> dict[str, str]:
        return {"rule": rule, "column": column}

    expectations: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=MAX_ROWS, meta=tag("row_count", "*")),
        # Unknown columns: the checked frame holds exactly the known columns plus the unknown ones,
        # so "unexpected" in the mismatch is precisely the unknown input columns.
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[c for c in checked.columns if c not in input_columns or c in _BY_NAME],
            exact_match=True,
            meta=tag("unknown_column", "*"),
        ),
    ]
    for name in REQUIRED_COLUMNS:
        expectations.append(gxe.ExpectColumnToExist(column=name, meta=tag("required_column", name)))
    present = set(checked.columns)
    for name in ("row_id", "prompt"):
        if name in present:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=name, meta=tag("not_empty", name)))
    if "seed" in present:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=_text_col("seed"), meta=tag("not_empty", "seed")))
    if "row_id" in present:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column="row_id", meta=tag("unique", "row_id")))
    for name, limit in _MAX_LENGTHS.items():
        if name in present:
            expectations.append(
                gxe.ExpectColumnValueLengthsToBeBetween(column=name, max_value=limit, meta=tag("max_length", name))
            )
    for name in ("row_id", "ref", "pipeline"):
        if name in present:
            expectations.append(
                gxe.ExpectColumnValuesToMatchRegex(column=name, regex=_ONE_LINE_PATTERN, meta=tag("one_line", name))
            )
    for name in ("prompt", "negative_prompt"):  # text a person approves: nothing that hides or reorders it
        if name in present:
            expectations.append(
                gxe.ExpectColumnValuesToNotMatchRegex(
                    column=name, regex=HIDING.pattern, meta=tag("unsafe_characters", name)
                )
            )
    for column in COLUMNS:
        if column.kind == "text" or column.name not in present:
            continue
        pattern = _INT_PATTERN if column.kind == "int" else _FLOAT_PATTERN
        expectations.append(
            gxe.ExpectColumnValuesToMatchRegex(
                column=_text_col(column.name), regex=pattern, meta=tag("type", column.name)
            )
        )
    for name, low, high, strict, rule in _RANGES:
        if name in present:
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=name,
                    min_value=low,
                    max_value=high,
                    strict_min=strict,
                    strict_max=strict,
                    meta=tag(rule, name),
                )
            )
    for name in ("width", "height"):
        if name not in present:
            continue
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column=_mod_col(name), value_set=[0], meta=tag("multiple_of_8", name))
        )
    # Built through the constructor: add_expectation() looks the suite up in the current project's
    # store. The constructor logs and drops an invalid expectation, so count them: never a silent skip.
    suite = gx.ExpectationSuite(name="atelier_prompt_table", expectations=expectations)
    if len(suite.expectations) != len(expectations):
        raise RuntimeError(f"intake suite lost expectations: built {len(expectations)}, kept {len(suite.expectations)}")
    return suite


@functools.cache
def _gx_batch_definition() -> Any:
    """The process-wide GX ephemeral context, pandas data source and whole-dataframe batch definition.

    Created on first use: importing great_expectations and building a context takes seconds.
    In-memory stores only (nothing written to disk), analytics and progress bars off.
    """
    gx = _import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas(name="atelier_intake")
    asset = source.add_dataframe_asset(name="prompt_table")
    return asset.add_batch_definition_whole_dataframe(name="whole_table")


_GX_LOCK = threading.Lock()  # one shared context; GX does not promise thread safety


def _validate(checked: pd.DataFrame, input_columns: Sequence[str]) -> Any:
    with _GX_LOCK:
        batch_definition = _gx_batch_definition()  # first: GX objects resolve the current context
        suite = _build_suite(checked, input_columns)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": checked})
        return batch.validate(
            suite,
            result_format={
                "result_format": "COMPLETE",
                "return_unexpected_index_query": False,
                "partial_unexpected_count": 0,
            },
        )


def _failures_from_result(result: Any, checked: pd.DataFrame, texts: dict[str, list[str | None]]) -> list[RowFailure]:
    row_ids: list[str | None] = checked["row_id"].tolist() if "row_id" in checked.columns else [None] * len(checked)
    failures: list[RowFailure] = []
    for item in result.results:
        rule = item.expectation_config.meta["rule"]
        column = item.expectation_config.meta["column"]
        if item.exception_info and item.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"intake check {rule} on {column} could not run: {item.exception_info.get('exception_message')}"
            )
        if item.success:
            continue
        details = item.result
        if rule == "row_count":
            observed = details.get("observed_value")
            failures.append(
                RowFailure(None, None, column, rule, f"the table has {observed} rows; expected 1..{MAX_ROWS}")
            )
        elif rule == "unknown_column":
            for name in details["details"]["mismatched"].get("unexpected", []):
                failures.append(RowFailure(None, None, name, rule, _unknown_column_message(name)))
        elif rule == "required_column":
            failures.append(
                RowFailure(
                    None,
                    None,
                    column,
                    rule,
                    f"missing required column {column!r}; every table needs {', '.join(REQUIRED_COLUMNS)}",
                )
            )
        else:
            indices = details.get("unexpected_index_list") or []
            if rule == "unique":
                failures.extend(_duplicate_failures(indices, row_ids))
                continue
            for index in indices:
                message = _row_message(rule, column, texts[column][index])
                failures.append(RowFailure(index + 1, row_ids[index], column, rule, message))
    return failures


def _unknown_column_message(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, COLUMN_NAMES, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown column {name!r}{guess}; allowed columns: {', '.join(COLUMN_NAMES)}"


def _duplicate_failures(indices: list[int], row_ids: list[str | None]) -> list[RowFailure]:
    rows_by_id: dict[str | None, list[int]] = {}
    for index in indices:
        rows_by_id.setdefault(row_ids[index], []).append(index + 1)
    failures = []
    for row_id, rows in rows_by_id.items():
        for row in rows:
            others = [r for r in rows[:6] if r != row][:5]
            more = len(rows) - 1 - len(others)
            listed = ", ".join(map(str, others)) + (f" and {more} more" if more else "")
            message = f"{_show(row_id)} is also used by row {listed}; row ids must be unique"
            failures.append(RowFailure(row, row_id, "row_id", "unique", message))
    return failures


def _row_message(rule: str, column: str, raw: str | None) -> str:
    shown = _show(raw)
    if rule == "not_empty":
        return f"{column} is empty; every row needs a {column}"
    if rule == "max_length":
        return f"{len(raw or '')} characters; at most {_MAX_LENGTHS[column]} allowed"
    if rule == "one_line":
        unsafe = first_unsafe(raw or "")
        what = f"the character {describe(unsafe[1])}" if unsafe else "a line break or control character"
        return f"{shown} contains {what}; {column} must be one printable line"
    if rule == "unsafe_characters":
        unsafe = first_unsafe(raw or "")
        stacked = first_stacked_marks(raw or "")
        if stacked and (unsafe is None or stacked[0] < unsafe[0]):
            return (
                f"contains {stacked[1]} combining marks on one character at position {stacked[0]}: stacked "
                "marks draw over the lines around them and can hide what the approver reads; at most 3"
            )
        where = f"{describe(unsafe[1])} at position {unsafe[0] + 1}" if unsafe else "an invisible character"
        return (
            f"contains {where}: control, bidirectional-override and zero-width characters can hide or "
            "reorder what the approver reads; remove it"
        )
    if rule == "type":
        kind = "a whole number" if _BY_NAME[column].kind == "int" else "a number"
        return f"{shown} is not {kind}"
    if rule == "multiple_of_8":
        return f"{shown} is not a multiple of {SIZE_MULTIPLE}; SDXL sizes are multiples of 8 in {SIZE_MIN}..{SIZE_MAX}"
    for name, low, high, strict, range_rule in _RANGES:
        if name == column and range_rule == rule:
            if strict:
                return f"{shown} is not strictly between {_num(low)} and {_num(high)}"
            return f"{shown} is outside {_num(low)}..{_num(high)}"
    return f"{shown} breaks {rule}"


def _show(value: Any, limit: int = 40) -> str:
    if value is None:
        return "(empty)"
    text = str(value)
    if _looks_numeric(text):
        return text
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _looks_numeric(text: str) -> bool:
    try:
        return math.isfinite(float(text)) and "_" not in text and text.strip() == text
    except ValueError:
        return False


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _failure_order(failure: RowFailure) -> tuple:
    column_rank = COLUMN_NAMES.index(failure.column) if failure.column in COLUMN_NAMES else len(COLUMN_NAMES)
    return (failure.row is not None, failure.row or 0, column_rank, failure.column, failure.rule)


def _typed_rows(checked: pd.DataFrame) -> list[PromptRow]:
    rows = []
    for record in checked.to_dict(orient="records"):
        values: dict[str, Any] = {}  # int, float or str by the column's kind
        for column in COLUMNS:
            value = record[column.name]
            if column.kind == "int":
                values[column.name] = int(value)
            elif column.kind == "float":
                values[column.name] = float(value)
            else:
                values[column.name] = str(value)
        rows.append(PromptRow(**values))
    return rows


# ---------------------------------------------------------------------------------------------
# Content hash


def content_sha256(rows: Sequence[PromptRow]) -> str:
    """SHA-256 of the canonical JSON of the rows in file order: the content hash approvals pin to.

    Canonical JSON: a list of `PromptRow.to_dict()`, keys sorted, no whitespace, UTF-8, non-ASCII
    kept as is. Any change to any cell (or to the row order) changes the hash.
    """
    payload = json.dumps(
        [row.to_dict() for row in rows], sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
