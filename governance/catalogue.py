"""The catalogue: product feeds in, one current image set per SKU out.

- **Feeds** (`import_feed`): a PIM export (CSV, JSON lines, Parquet) with `sku`, `title`, `category`
  and any other product fields (colour, material, locale, ...), validated with Great Expectations like
  prompt batches (every failing row and rule; nothing stored on failure). Each import records the
  file's SHA-256 and what changed per SKU: a new `ProductVersion` for every new, changed or removed
  SKU (the product's history), `products` holding the current one. An identical feed changes nothing.
- **Templates** (`add_template`): versioned prompt templates in a sandboxed Jinja2 that reaches
  product fields and a few text filters, nothing else (no loops, calls, imports or attribute access
  beyond the product; checked on the template's syntax tree before it is stored), with generation
  parameters and the categories and locales they serve. Rendering is deterministic: the seed comes
  from (SKU, template version).
- **Standing approvals** (`approve_template`): an approver, never the template's author, approves one
  template version, pinned to its SHA-256, for a scope: categories, at most N images per run, a
  validity period. A batch made under it carries an approval by that approver that names it;
  `approvals.require_runnable` checks the standing approval again at run start (`check_standing`).
- **Refresh** (`plan_refresh`, `make_batches`, `settle`): render every current SKU, keep those whose
  rendered row differs from their latest item (new, changed product, changed template), validate and
  screen them like any batch, and make one batch per standing approval (in scope) plus one for the
  ordinary approval queue (out of scope, flagged by screening, over the scope's image limit, no live
  standing approval). After runs, `settle` makes each SKU's newest made set current, marks the older
  superseded, marks removed SKUs' sets removed, and writes a per-SKU manifest at a stable key.

Invariant 1 for the catalogue: no GPU time for a catalogue row unless an approver other than its
template's author approved that exact template version (hash) for the row's category within the
scope's limits and period, or an approver approved the batch itself as any batch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import InvalidInput, InvalidState, NotFound, PermissionDenied
from governance.holds import active_holds
from governance.pipelines import record_sha256
from governance.records import (
    Approval,
    Batch,
    CatalogueImport,
    CatalogueItem,
    Image,
    Product,
    ProductVersion,
    Prompt,
    PromptTemplate,
    StandingApproval,
    User,
    utcnow,
)
from governance.results import Result
from governance.text import first_unsafe, plain_reason
from governance.users import require_any_role, require_role

if TYPE_CHECKING:
    import pandas as pd

    from governance.intake import PromptRow, RowFailure
    from governance.pipelines import PipelineSet
    from governance.screening import Flag, PromptPolicy
    from governance.store import ObjectStore

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z"
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
REQUIRED_FIELDS = ("sku", "title", "category")
FIELD_MAX_CHARS = 500
MAX_FIELDS = 40
FEED_MAX_ROWS = 1_000_000
FEED_MAX_BYTES = 512 * 1024 * 1024
FEED_HINT = "expected a product feed with columns sku, title, category and more (CSV, JSON lines or Parquet)"
MANIFEST_PREFIX = "catalogue/skus/"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(value: Any) -> str:
    return hashlib.sha256(_canonical(value).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- feeds


def read_feed(path: Path, max_rows: int = FEED_MAX_ROWS, max_bytes: int = FEED_MAX_BYTES) -> tuple[pd.DataFrame, str]:
    """The feed as a DataFrame of text cells and the SHA-256 of its bytes; one-line errors."""
    from governance.intake import (
        SUPPORTED_SUFFIXES,
        IntakeError,
        _decode_text,
        _read_csv,
        _read_json_lines,
        _read_parquet,
    )

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InvalidInput(f"{path}: unsupported file type {suffix or '(no extension)'!r}; {FEED_HINT}")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidInput(f"{path}: {size:,} bytes, over the feed limit of {max_bytes:,}; split the feed")
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the feed ({exc.strerror or exc})") from None
    if not data.strip():
        raise InvalidInput(f"{path}: the feed is empty; {FEED_HINT}")
    try:
        if suffix == ".parquet":
            frame = _read_parquet(path, data, FEED_HINT, max_rows)
        else:
            text = _decode_text(path, data, FEED_HINT)
            frame = _read_csv(path, text, FEED_HINT) if suffix == ".csv" else _read_json_lines(path, text, FEED_HINT)
    except IntakeError as exc:
        raise InvalidInput(str(exc)) from None
    if len(frame) > max_rows:
        raise InvalidInput(f"{path}: {len(frame):,} rows, over the feed limit of {max_rows:,}")
    return frame, hashlib.sha256(data).hexdigest()


def validate_feed(frame: pd.DataFrame) -> list[RowFailure]:
    """Every failing row and rule of a product feed, checked with Great Expectations."""
    from governance.intake import _GX_LOCK, RowFailure, _gx_batch_definition, _import_gx
    from governance.text import UNSAFE

    failures: list[RowFailure] = []
    columns = [str(c) for c in frame.columns]
    for name in columns:
        if not FIELD_NAME.fullmatch(name):
            failures.append(
                RowFailure(None, None, name, "column_name", f"column {name!r}: use a-z, 0-9 and _ (40 at most)")
            )
    if len(columns) > MAX_FIELDS:
        failures.append(RowFailure(None, None, "*", "columns", f"{len(columns)} columns; at most {MAX_FIELDS}"))
    if failures:
        return failures
    frame = frame.reset_index(drop=True)
    gx = _import_gx()
    import great_expectations.expectations as gxe

    def tag(rule: str, column: str) -> dict[str, str]:
        return {"rule": rule, "column": column}

    expectations: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=FEED_MAX_ROWS, meta=tag("row_count", "*"))
    ]
    for name in REQUIRED_FIELDS:
        expectations.append(gxe.ExpectColumnToExist(column=name, meta=tag("required_column", name)))
        if name in columns:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=name, meta=tag("not_empty", name)))
    if "sku" in columns:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column="sku", meta=tag("unique", "sku")))
        expectations.append(gxe.ExpectColumnValuesToMatchRegex(column="sku", regex=SKU_PATTERN, meta=tag("sku", "sku")))
    for name in columns:
        expectations.append(
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=name, max_value=FIELD_MAX_CHARS, meta=tag("max_length", name)
            )
        )
        expectations.append(
            gxe.ExpectColumnValuesToNotMatchRegex(column=name, regex=UNSAFE.pattern, meta=tag("unsafe", name))
        )
    suite = gx.ExpectationSuite(name="atelier_product_feed", expectations=expectations)
    if len(suite.expectations) != len(expectations):
        raise RuntimeError("feed suite lost expectations")
    with _GX_LOCK:
        definition = _gx_batch_definition()
        batch = definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(
            suite,
            result_format={
                "result_format": "COMPLETE",
                "return_unexpected_index_query": False,
                "partial_unexpected_count": 0,
            },
        )
    skus = frame["sku"].tolist() if "sku" in columns else [None] * len(frame)
    messages = {
        "not_empty": "is empty; every product needs it",
        "unique": "appears more than once; each SKU once per feed",
        "sku": "is not a SKU (1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit)",
        "max_length": f"is longer than {FIELD_MAX_CHARS} characters",
        "unsafe": "holds control or invisible characters; write it as plain text",
    }
    for item in result.results:
        rule, column = item.expectation_config.meta["rule"], item.expectation_config.meta["column"]
        if item.success:
            continue
        if rule == "required_column":
            failures.append(RowFailure(None, None, column, rule, f"missing required column {column!r}"))
            continue
        if rule == "row_count":
            failures.append(RowFailure(None, None, column, rule, "the feed has no products"))
            continue
        for index in item.result.get("unexpected_index_list") or []:
            sku = skus[index]
            failures.append(
                RowFailure(index + 1, sku if isinstance(sku, str) else None, column, rule, f"{column} {messages[rule]}")
            )
    failures.sort(key=lambda f: (f.row or 0, f.column, f.rule))
    return failures


@dataclass(frozen=True)
class ImportResult(Result):
    import_id: str | None  # None: an identical feed, nothing stored
    source: str
    content_sha256: str
    counts: dict[str, int]
    identical: bool


def _fields(record: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in record.items() if k != "sku" and v is not None and str(v) != ""}


REMOVED_SHA = _sha({"removed": True})


def import_feed(session: Session, actor: str | None, path: Path) -> ImportResult:
    """Validate and import a product feed (requesters: catalogue operations); what changed per SKU."""
    from governance.batches import IntakeRejected
    from governance.intake import IntakeReport

    user = require_role(session, actor, "requester", "import product feeds")
    frame, digest = read_feed(path)
    failures = validate_feed(frame)
    if failures:
        raise IntakeRejected(Path(path), IntakeReport([], failures))
    last = session.scalar(select(CatalogueImport).order_by(CatalogueImport.imported_at.desc()).limit(1))
    if last is not None and last.content_sha256 == digest:
        n = len(frame)
        return ImportResult(None, Path(path).name, digest, {"new": 0, "changed": 0, "removed": 0, "unchanged": n}, True)
    current = {p.sku: p for p in session.scalars(select(Product))}
    record = CatalogueImport(source_name=Path(path).name, content_sha256=digest, imported_by_id=user.id)
    session.add(record)
    session.flush()
    counts = {"new": 0, "changed": 0, "removed": 0, "unchanged": 0}
    seen: set[str] = set()
    versions: list[ProductVersion] = []
    for raw in frame.to_dict(orient="records"):
        sku = str(raw["sku"])
        seen.add(sku)
        fields = _fields(raw)
        sha = _sha(fields)
        product = current.get(sku)
        if product is not None and not product.removed and product.fields_sha256 == sha:
            counts["unchanged"] += 1
            continue
        counts["new" if product is None or product.removed else "changed"] += 1
        version = ProductVersion(sku=sku, import_id=record.id, fields=fields, fields_sha256=sha)
        versions.append(version)
    for sku, product in current.items():
        if sku not in seen and not product.removed:
            counts["removed"] += 1
            versions.append(ProductVersion(sku=sku, import_id=record.id, fields=None, fields_sha256=REMOVED_SHA))
    session.add_all(versions)
    session.flush()
    for version in versions:
        product = current.get(version.sku)
        removed = version.fields is None
        if product is None:
            session.add(Product(sku=version.sku, version_id=version.id, fields_sha256=version.fields_sha256))
        else:
            product.version_id, product.fields_sha256, product.removed = version.id, version.fields_sha256, removed
    record.counts = counts
    session.flush()
    record_event(
        session,
        user.name,
        "catalogue.imported",
        "catalogue_import",
        record.id,
        {"source": record.source_name, "content_sha256": digest, "rows": len(frame), "counts": counts},
    )
    return ImportResult(record.id, record.source_name, digest, counts, False)


# ---------------------------------------------------------------- templates

ALLOWED_FILTERS = ("lower", "upper", "title", "capitalize", "trim", "default", "replace", "truncate")
TEMPLATE_MAX_CHARS = 4000
RESERVED_NAMES = frozenset({"self", "loop", "caller", "varargs", "kwargs", "namespace", "range", "lipsum", "dict",
                            "cycler", "joiner"})  # fmt: skip
PARAM_KEYS = ("width", "height", "steps", "guidance_scale", "refiner_split", "variants")
DEFAULT_PARAMS = {
    "width": 1024,
    "height": 1024,
    "steps": 30,
    "guidance_scale": 7.0,
    "refiner_split": 0.8,
    "variants": 1,
}


@functools.cache
def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, loader=None)
    env.filters = {name: env.filters[name] for name in ALLOWED_FILTERS}
    env.globals = {}
    env.tests = {name: env.tests[name] for name in ("defined", "undefined", "none", "string")}
    return env


def check_template_syntax(body: str) -> None:
    """Only output, text, product fields, allowed filters, conditions and comparisons: no loops, calls,
    macros, imports, blocks, assignments or arithmetic (nothing that runs long or reaches Python)."""
    from jinja2 import TemplateSyntaxError, nodes

    allowed = (
        nodes.Template,
        nodes.Output,
        nodes.TemplateData,
        nodes.Name,
        nodes.Const,
        nodes.Getattr,
        nodes.Getitem,
        nodes.Filter,
        nodes.If,
        nodes.CondExpr,
        nodes.Compare,
        nodes.Operand,
        nodes.And,
        nodes.Or,
        nodes.Not,
        nodes.Concat,
        nodes.Test,
    )
    if len(body) > TEMPLATE_MAX_CHARS:
        raise InvalidInput(f"the template is longer than {TEMPLATE_MAX_CHARS} characters")
    try:
        tree = _environment().parse(body)
        found = list(tree.find_all(nodes.Node))
        depth = _filter_depth(tree)
    except TemplateSyntaxError as exc:
        raise InvalidInput(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise InvalidInput("the template nests too deeply") from None
    if depth > MAX_FILTER_DEPTH:
        raise InvalidInput(f"filters nest {depth} deep; at most {MAX_FILTER_DEPTH}")
    for node in found:
        if not isinstance(node, allowed):
            raise InvalidInput(
                f"templates may not use {type(node).__name__} (line {getattr(node, 'lineno', '?')}): only product "
                f"fields, the filters {', '.join(ALLOWED_FILTERS)}, if/else and ~ are allowed"
            )
        if isinstance(node, nodes.Filter):
            _check_filter(node)
        if isinstance(node, nodes.Test) and node.name not in ALLOWED_TESTS:
            raise InvalidInput(f"test {node.name!r} is not allowed; use {', '.join(ALLOWED_TESTS)}")
        if isinstance(node, nodes.Name) and (node.ctx != "load" or node.name in RESERVED_NAMES):
            raise InvalidInput(f"{node.name!r} is not a product field: templates reach product fields only")
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            target = node.node
            if not (isinstance(target, nodes.Name) and target.name == "product"):
                raise InvalidInput("only product.FIELD (or a field by name) may be looked up in a template")
            if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const):
                raise InvalidInput("product[...] takes a field name in quotes")


# What each allowed filter may take: constant arguments only, bounded, and none that grows text without
# bound (replace never lengthens: `new` no longer than a non-empty `old`; truncate to 3..2000 characters).
FILTER_ARGS: dict[str, tuple[int, int]] = {  # name -> (fewest, most) positional arguments
    "lower": (0, 0), "upper": (0, 0), "title": (0, 0), "capitalize": (0, 0), "trim": (0, 0),
    "default": (0, 1), "replace": (2, 2), "truncate": (1, 1),
}  # fmt: skip
ALLOWED_TESTS = ("defined", "undefined", "none", "string")
MAX_FILTER_DEPTH = 4
MAX_RENDERED_CHARS = 4000


def _filter_depth(node: Any) -> int:
    from jinja2 import nodes

    below = max((_filter_depth(child) for child in node.iter_child_nodes()), default=0)
    return below + (1 if isinstance(node, nodes.Filter) else 0)


def _check_filter(node: Any) -> None:
    from jinja2 import nodes

    if node.name not in FILTER_ARGS:
        raise InvalidInput(f"filter {node.name!r} is not allowed; use {', '.join(ALLOWED_FILTERS)}")
    fewest, most = FILTER_ARGS[node.name]
    if node.kwargs or node.dyn_args or node.dyn_kwargs or not fewest <= len(node.args) <= most:
        raise InvalidInput(f"filter {node.name!r} takes {fewest}..{most} plain arguments")
    if not all(isinstance(a, nodes.Const) and isinstance(a.value, str | int) for a in node.args):
        raise InvalidInput(f"filter {node.name!r}: its arguments must be constants (text or a number)")
    values = [a.value for a in node.args]
    if any(isinstance(v, str) and len(v) > 200 for v in values):
        raise InvalidInput(f"filter {node.name!r}: arguments of at most 200 characters")
    if node.name == "replace" and not (
        all(isinstance(v, str) for v in values) and values[0] and len(values[1]) <= len(values[0])
    ):
        raise InvalidInput("replace(OLD, NEW): OLD not empty, NEW no longer than OLD (text never grows)")
    if node.name == "truncate" and not (isinstance(values[0], int) and 3 <= values[0] <= 2000):
        raise InvalidInput("truncate(N): N a whole number from 3 to 2000")


@functools.lru_cache(maxsize=256)
def _compiled(body: str) -> Any:
    check_template_syntax(body)  # stored templates passed it; checked again before anything renders
    return _environment().from_string(body)


def render_text(body: str, sku: str, fields: dict[str, str]) -> str:
    """The template rendered for one product (whitespace collapsed); InvalidInput naming the problem."""
    from jinja2 import TemplateError

    context: dict[str, Any] = {**fields, "sku": sku, "product": _Fields({**fields, "sku": sku})}
    try:
        out = _compiled(body).render(context)
    except InvalidInput:
        raise
    except TemplateError as exc:
        raise InvalidInput(f"SKU {sku}: {exc.message or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - a template's mistake is one line, never a traceback
        raise InvalidInput(f"SKU {sku}: the template failed ({type(exc).__name__}: {exc})") from None
    if len(out) > MAX_RENDERED_CHARS:
        raise InvalidInput(f"SKU {sku}: the rendered prompt is longer than {MAX_RENDERED_CHARS} characters")
    return " ".join(out.split())


def sample_fields(body: str) -> dict[str, str]:
    """A product with every field the template names (a trial rendering before it is stored)."""
    from jinja2 import meta, nodes

    tree = _environment().parse(body)
    names = set(meta.find_undeclared_variables(tree)) - {"product", "sku"}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        key = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(key, str):
            names.add(key)
    return {name: "Sample" for name in names}


class _Fields:
    """The product as templates see it: fields by name, and nothing else (a dict would also offer its
    methods, `product.items` rendering a Python repr that changes every run)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, str]):
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[name]


def _check_params(params: Any) -> dict[str, Any]:
    from governance.intake import (
        GUIDANCE_MAX,
        GUIDANCE_MIN,
        SIZE_MAX,
        SIZE_MIN,
        SIZE_MULTIPLE,
        STEPS_MAX,
    )

    if not isinstance(params, dict):
        raise InvalidInput("params must be an object")
    extra = set(params) - set(PARAM_KEYS)
    if extra:
        raise InvalidInput(f"params.{sorted(extra)[0]} is not a parameter ({', '.join(PARAM_KEYS)})")
    out = {**DEFAULT_PARAMS, **params}
    for key in ("width", "height"):
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or not SIZE_MIN <= v <= SIZE_MAX or v % SIZE_MULTIPLE:
            raise InvalidInput(
                f"params.{key} must be a whole number of pixels, {SIZE_MIN}..{SIZE_MAX}, a multiple of 8"
            )
    if not isinstance(out["steps"], int) or not 2 <= out["steps"] <= STEPS_MAX:  # base + refiner: a step each
        raise InvalidInput(
            f"params.steps must be a whole number 2..{STEPS_MAX} (the base and the refiner each run one)"
        )
    if not isinstance(out["guidance_scale"], int | float) or not GUIDANCE_MIN <= out["guidance_scale"] <= GUIDANCE_MAX:
        raise InvalidInput(f"params.guidance_scale must lie in {GUIDANCE_MIN}..{GUIDANCE_MAX}")
    if not isinstance(out["refiner_split"], int | float) or not 0 < out["refiner_split"] < 1:
        raise InvalidInput("params.refiner_split must lie strictly between 0 and 1")
    if not isinstance(out["variants"], int) or not 1 <= out["variants"] <= 8:
        raise InvalidInput("params.variants must be a whole number 1..8")
    out["guidance_scale"], out["refiner_split"] = float(out["guidance_scale"]), float(out["refiner_split"])
    return out


def _check_match(match: Any) -> dict[str, list[str]]:
    if not isinstance(match, dict) or set(match) - {"categories", "locales"}:
        raise InvalidInput('match must be {"categories": [...], "locales": [...]} ("*": any)')
    out = {}
    for key in ("categories", "locales"):
        values = match.get(key, ["*"])
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise InvalidInput(f'match.{key} must be a non-empty list of names, or ["*"]')
        out[key] = sorted({v.strip() for v in values})
    return out


@dataclass(frozen=True)
class TemplateView(Result):
    template_id: str
    name: str
    version: int
    sha256: str
    author: str
    body: str
    negative: str
    params: dict[str, Any]
    match: dict[str, Any]
    created_at: str

    @classmethod
    def of(cls, t: PromptTemplate) -> TemplateView:
        return cls(t.id, t.name, t.version, t.sha256, t.author.name, t.body, t.negative, t.params, t.match,
                   t.created_at.isoformat())  # fmt: skip


def add_template(session: Session, actor: str | None, spec: Any) -> tuple[TemplateView, bool]:
    """Store a template's next version (requesters); the same content as its latest version stores
    nothing. Returns the version and whether it is new."""
    user = require_role(session, actor, "requester", "add prompt templates")
    if not isinstance(spec, dict):
        raise InvalidInput("a template file is one JSON object: name, body, negative, params, match")
    extra = set(spec) - {"name", "body", "negative", "params", "match", "description"}
    if extra:
        raise InvalidInput(f"{sorted(extra)[0]!r} is not a template field (name, body, negative, params, match)")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name):
        raise InvalidInput("name must be 1-64 of a-z 0-9 . _ -")
    body, negative = spec.get("body"), spec.get("negative", "")
    if not isinstance(body, str) or not body.strip() or not isinstance(negative, str):
        raise InvalidInput("body must be the template text, negative a text (may be empty)")
    for what, text in (("body", body), ("negative", negative)):
        if (unsafe := first_unsafe(text)) is not None:
            raise InvalidInput(f"the {what} holds control or invisible characters at {unsafe[0]}: write plain text")
    check_template_syntax(body)
    render_text(body, "SAMPLE-1", sample_fields(body))  # a trial rendering: argument mistakes show now
    params, match = _check_params(spec.get("params", {})), _check_match(spec.get("match", {}))
    content = {"name": name, "body": body, "negative": negative, "params": params, "match": match}
    sha = _sha(content)
    latest = session.scalar(
        select(PromptTemplate).where(PromptTemplate.name == name).order_by(PromptTemplate.version.desc()).limit(1)
    )
    if latest is not None and latest.sha256 == sha:
        return TemplateView.of(latest), False
    version = (latest.version if latest else 0) + 1
    template = PromptTemplate(
        id=f"{name}@{version}", name=name, version=version, body=body, negative=negative, params=params,
        match=match, sha256=sha, author_id=user.id,
    )  # fmt: skip
    session.add(template)
    session.flush()
    record_event(session, user.name, "template.added", "template", template.id, {"sha256": sha, "match": match})
    session.refresh(template)
    return TemplateView.of(template), True


def get_template(session: Session, ref: str) -> PromptTemplate:
    """NAME@VERSION, or NAME for its latest version."""
    if "@" in ref:
        found = session.get(PromptTemplate, ref)
    else:
        found = session.scalar(
            select(PromptTemplate).where(PromptTemplate.name == ref).order_by(PromptTemplate.version.desc()).limit(1)
        )
    if found is None:
        raise NotFound(f"no template {ref!r} (`atelier catalogue template list`)")
    return found


def templates(session: Session) -> list[TemplateView]:
    return [TemplateView.of(t) for t in session.scalars(select(PromptTemplate).order_by(PromptTemplate.id))]


def _latest_templates(session: Session) -> list[PromptTemplate]:
    latest: dict[str, PromptTemplate] = {}
    for t in session.scalars(select(PromptTemplate).order_by(PromptTemplate.name, PromptTemplate.version)):
        latest[t.name] = t
    return list(latest.values())


def choose_template(candidates: Sequence[PromptTemplate], fields: dict[str, str]) -> PromptTemplate | None:
    """The template for a product: a named category beats "*", then a named locale, then the name."""
    category, locale = fields.get("category", ""), fields.get("locale", "")
    best: tuple[int, int, str] | None = None
    chosen = None
    for t in candidates:
        cats, locs = t.match["categories"], t.match["locales"]
        if category not in cats and "*" not in cats:
            continue
        if locale not in locs and "*" not in locs:
            continue
        key = (0 if category in cats else 1, 0 if locale in locs else 1, t.name)
        if best is None or key < best:
            best, chosen = key, t
    return chosen


def seed_for(sku: str, template_id: str) -> int:
    return int(hashlib.sha256(f"{sku}|{template_id}".encode()).hexdigest()[:8], 16)


def render_row(template: PromptTemplate, sku: str, fields: dict[str, str]) -> PromptRow:
    from governance.intake import PromptRow

    p = template.params
    return PromptRow(
        row_id=sku,
        prompt=render_text(template.body, sku, fields),
        negative_prompt=template.negative,
        seed=seed_for(sku, template.id),
        width=p["width"],
        height=p["height"],
        steps=p["steps"],
        guidance_scale=p["guidance_scale"],
        refiner_split=p["refiner_split"],
        num_images=p["variants"],
        ref=sku,
    )


def render_sha256(template: PromptTemplate, row: PromptRow) -> str:
    return _sha({"template": template.id, "template_sha256": template.sha256, "row": row.to_dict()})


@dataclass(frozen=True)
class Preview(Result):
    sku: str
    template_id: str
    prompt: str
    seed: int
    variants: int
    error: str | None = None


def preview(session: Session, template_ref: str | None, limit: int = 20) -> list[Preview]:
    """Render current products without GPU time: with a template, the products it serves; else each
    product with the template it would get."""
    forced = get_template(session, template_ref) if template_ref else None
    candidates = [forced] if forced else _latest_templates(session)
    out: list[Preview] = []
    stmt = select(Product).where(Product.removed.is_(False)).order_by(Product.sku)
    for product in session.scalars(stmt):
        fields = product.version.fields or {}
        template = choose_template(candidates, fields)
        if template is None:
            continue
        try:
            row = render_row(template, product.sku, fields)
            out.append(Preview(product.sku, template.id, row.prompt, row.seed, row.num_images))
        except InvalidInput as exc:
            out.append(Preview(product.sku, template.id, "", 0, 0, str(exc)))
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- standing approvals


@dataclass(frozen=True)
class StandingView(Result):
    standing_approval_id: str
    template_id: str
    template_sha256: str
    approver: str
    categories: list[str]
    max_images: int
    valid_from: str
    valid_until: str
    revoked_at: str | None

    @classmethod
    def of(cls, s: StandingApproval) -> StandingView:
        return cls(s.id, s.template_id, s.template_sha256, s.approver.name, list(s.categories), s.max_images,
                   s.valid_from.isoformat(), s.valid_until.isoformat(),
                   s.revoked_at.isoformat() if s.revoked_at else None)  # fmt: skip


def approve_template(
    session: Session,
    actor: str | None,
    template_ref: str,
    expected_sha256: str,
    categories: Sequence[str],
    max_images: int,
    days: int,
) -> StandingView:
    """A standing approval (approvers, never the template's author) pinned to the template's hash."""
    user = require_role(session, actor, "approver", "approve templates")
    template = get_template(session, template_ref)
    if template.author_id == user.id:
        raise PermissionDenied(f"{user.name} wrote template {template.id} and cannot approve it: another approver must")
    if (expected_sha256 or "").strip().lower() != template.sha256:
        raise InvalidState(
            f"template {template.id} is {template.sha256}, not the {expected_sha256 or '(none)'} you reviewed: "
            "review it again with `atelier catalogue template show`"
        )
    cats = sorted({c.strip() for c in categories if c.strip()})
    if not cats or "*" in cats:
        raise InvalidInput('name the categories the approval covers (--categories a,b); "*" is not a scope')
    if not 1 <= max_images <= 100_000:
        raise InvalidInput("--max-images must lie in 1..100000")
    if not 1 <= days <= 366:
        raise InvalidInput("--days must lie in 1..366: a standing approval is renewed at least yearly")
    now = utcnow()
    standing = StandingApproval(
        template_id=template.id, template_sha256=template.sha256, approver_id=user.id, categories=cats,
        max_images=max_images, valid_from=now, valid_until=now + timedelta(days=days),
    )  # fmt: skip
    session.add(standing)
    session.flush()
    record_event(
        session,
        user.name,
        "template.approved",
        "standing_approval",
        standing.id,
        {"template_id": template.id, "template_sha256": template.sha256, "categories": cats, "max_images": max_images,
         "valid_until": standing.valid_until.isoformat()},
    )  # fmt: skip
    session.refresh(standing)
    return StandingView.of(standing)


def revoke_standing(session: Session, actor: str | None, standing_id: str, reason: str) -> StandingView:
    user = require_any_role(session, actor, ("approver", "admin"), "revoke standing approvals")
    standing = session.get(StandingApproval, standing_id)
    if standing is None:
        raise NotFound(f"no standing approval {standing_id}")
    reason = plain_reason(reason, "revoking a standing approval needs a reason")
    if standing.revoked_at is None:
        standing.revoked_at, standing.revoke_reason = utcnow(), reason
        session.flush()
        record_event(session, user.name, "template.approval_revoked", "standing_approval", standing.id,
                     {"reason": reason.strip()})  # fmt: skip
    return StandingView.of(standing)


def standing_approvals(session: Session) -> list[StandingView]:
    return [StandingView.of(s) for s in session.scalars(select(StandingApproval).order_by(StandingApproval.valid_from))]


def _live(s: StandingApproval, now: datetime) -> bool:
    """Not revoked, in its period, its template unchanged, and its approver still an active approver."""
    approver = s.approver
    return (
        s.revoked_at is None
        and s.valid_from <= now < s.valid_until
        and s.template.sha256 == s.template_sha256
        and approver.disabled_at is None
        and "approver" in approver.role_names
    )


def check_standing(session: Session, batch: Batch, approval: Approval) -> None:
    """Invariant 1 for a batch approved by a standing approval, at run start: the approval still live
    (not revoked, within its period), the template unchanged since approved, the approver not its
    author, every row from that template and a category in scope, the images within the limit."""
    standing = session.get(StandingApproval, approval.standing_approval_id)
    if standing is None:
        raise InvalidState(f"batch {batch.id}: its standing approval is gone; it must be approved again")
    now = utcnow()
    if not _live(standing, now):
        why = "revoked" if standing.revoked_at else "out of its period, its template changed or its approver gone"
        raise InvalidState(f"batch {batch.id}: standing approval {standing.id} is {why}; it must be approved again")
    if standing.template.author_id == approval.decided_by_id or standing.approver_id != approval.decided_by_id:
        raise PermissionDenied(f"batch {batch.id}: its standing approval was not given by another approver")
    items = {i.row_id: i for i in session.scalars(select(CatalogueItem).where(CatalogueItem.batch_id == batch.id))}
    versions = select(ProductVersion.id, ProductVersion.fields).join(
        CatalogueItem, CatalogueItem.product_version_id == ProductVersion.id
    )
    categories: dict[str, dict[str, Any] | None] = {  # one query: the batch's product versions
        vid: fields for vid, fields in session.execute(versions.where(CatalogueItem.batch_id == batch.id))
    }
    images = 0
    for prompt in batch.prompts:
        item = items.get(prompt.row_id)
        if item is None or item.template_id != standing.template_id or item.standing_approval_id != standing.id:
            raise InvalidState(f"batch {batch.id}: row {prompt.row_id} is not from template {standing.template_id}")
        category = (categories.get(item.product_version_id) or {}).get("category")
        if category not in standing.categories:
            raise InvalidState(f"batch {batch.id}: row {prompt.row_id} ({category}) is outside the approved scope")
        images += prompt.num_images
    if images > standing.max_images:
        raise InvalidState(f"batch {batch.id}: {images} images, over the scope's {standing.max_images}")


# ---------------------------------------------------------------- refresh


@dataclass
class Planned:
    row: PromptRow
    product_version_id: str
    template: PromptTemplate
    render_sha256: str
    category: str
    flags: tuple[Flag, ...] = ()  # the prompt policy's review flags on this row (screened once, in the plan)


@dataclass(frozen=True)
class Skipped(Result):
    sku: str
    reason: str


@dataclass
class Plan:
    standing: dict[str, list[Planned]] = field(default_factory=dict)  # standing approval id -> rows
    queue: list[Planned] = field(default_factory=list)  # the ordinary approval queue
    skipped: list[Skipped] = field(default_factory=list)
    unchanged: int = 0
    policy_version: str = ""
    policy_sha256: str = ""


def plan_refresh(session: Session, policy: PromptPolicy, now: datetime | None = None) -> Plan:
    """Which SKUs need images now, and under which approval (nothing is written)."""
    import pandas as pd

    from governance.intake import validate_prompt_table
    from governance.screening import screen_rows

    now = now or utcnow()
    plan = Plan()
    candidates = _latest_templates(session)
    # each SKU's latest set that did not fail: never a superseded one (a newer set superseded it), so the
    # history of superseded and failed sets is not read at all
    latest_items: dict[str, CatalogueItem] = {}
    live_states = ("pending", "waiting", "current", "removed")
    stmt = select(CatalogueItem).where(CatalogueItem.state.in_(live_states))
    for item in session.scalars(stmt.order_by(CatalogueItem.created_at, CatalogueItem.id)):
        latest_items[item.sku] = item
    rendered: list[Planned] = []
    for product in session.scalars(select(Product).where(Product.removed.is_(False)).order_by(Product.sku)):
        fields = product.version.fields or {}
        template = choose_template(candidates, fields)
        if template is None:
            plan.skipped.append(Skipped(product.sku, f"no template serves category {fields.get('category')!r}"))
            continue
        try:
            row = render_row(template, product.sku, fields)
        except InvalidInput as exc:
            plan.skipped.append(Skipped(product.sku, str(exc)))
            continue
        sha = render_sha256(template, row)
        last = latest_items.get(product.sku)
        if last is not None and last.render_sha256 == sha and last.state in ("pending", "waiting", "current"):
            plan.unchanged += 1
            continue
        rendered.append(Planned(row, product.version_id, template, sha, fields.get("category", "")))
    if not rendered:
        return plan
    # intake validation, as for any batch: a row that fails is reported and left out
    bad: dict[str, str] = {}
    for i in range(0, len(rendered), 50_000):
        chunk = rendered[i : i + 50_000]
        frame = pd.DataFrame([{k: str(v) for k, v in p.row.to_dict().items()} for p in chunk], dtype=object)
        report = validate_prompt_table(frame)
        bad |= {f.row_id: f.message for f in report.failures if f.row_id}
        if report.failures and not bad:
            raise InvalidState(f"rendered rows fail intake: {report.failures[0].message}")
    screening = screen_rows(policy, [p.row for p in rendered])
    blocked = {f.row_id: f for f in screening.blocked}
    flagged = {f.row_id for f in screening.to_review}
    plan.policy_sha256 = screening.policy_sha256
    plan.policy_version = screening.policy_version
    by_row: dict[str, list[Flag]] = {}
    for f in screening.flags:
        by_row.setdefault(f.row_id, []).append(f)
    for p in rendered:
        p.flags = tuple(by_row.get(p.row.row_id, ()))
    live = [s for s in session.scalars(select(StandingApproval)) if _live(s, now)]
    used: dict[str, int] = {}
    for p in rendered:
        sku = p.row.row_id
        if sku in bad:
            plan.skipped.append(Skipped(sku, f"intake: {bad[sku]}"))
            continue
        if sku in blocked:
            f = blocked[sku]
            plan.skipped.append(Skipped(sku, f"blocked by prompt policy rule {f.rule} ({f.matched!r})"))
            continue
        standing = next((s for s in live if s.template_id == p.template.id and p.category in s.categories), None)
        if standing is not None and sku not in flagged:
            if used.get(standing.id, 0) + p.row.num_images <= standing.max_images:
                used[standing.id] = used.get(standing.id, 0) + p.row.num_images
                plan.standing.setdefault(standing.id, []).append(p)
                continue
        plan.queue.append(p)
    return plan


@dataclass(frozen=True)
class MadeBatch(Result):
    batch_id: str
    status: str  # approved (standing) | submitted (waits for an approver)
    standing_approval_id: str | None
    skus: int
    images: int


def make_batches(
    session: Session,
    actor: str | None,
    plan: Plan,
    policy: PromptPolicy,
    max_rows: int = 10_000,
    pipelines: PipelineSet | None = None,
) -> list[MadeBatch]:
    """One batch per standing approval (approved by it) and one for the queue (submitted), each split
    into batches of at most `max_rows` rows (the intake limit in force)."""
    from governance.batches import submit_rows
    from governance.screening import Screening

    user = require_role(session, actor, "requester", "make catalogue batches")
    made: list[MadeBatch] = []
    groups: list[tuple[str | None, list[Planned]]] = [
        (standing_id, rows[i : i + max_rows])
        for standing_id, rows in [*plan.standing.items(), (None, plan.queue)]
        for i in range(0, max(len(rows), 1), max_rows)
    ]
    for standing_id, planned in groups:
        if not planned:
            continue
        rows = [p.row for p in planned]
        source = "catalogue refresh" + (f" (standing approval {standing_id})" if standing_id else "")
        screened = None
        if plan.policy_sha256 == policy.sha256:  # screened in the plan: the flags renumbered to this batch
            screened = Screening(
                plan.policy_version,
                plan.policy_sha256,
                tuple(dataclasses.replace(f, row=n) for n, p in enumerate(planned, start=1) for f in p.flags),
            )
        batch = submit_rows(session, user, rows, "catalogue", source, policy, use_category="product-catalogue",
                            screened=screened, pipelines=pipelines)  # fmt: skip
        for p in planned:
            session.add(
                CatalogueItem(
                    batch_id=batch.id, row_id=p.row.row_id, sku=p.row.row_id, product_version_id=p.product_version_id,
                    template_id=p.template.id, standing_approval_id=standing_id, render_sha256=p.render_sha256,
                    state="pending" if standing_id else "waiting",
                )
            )  # fmt: skip
        session.flush()
        if standing_id is not None:
            _apply_standing(session, user, batch, session.get_one(StandingApproval, standing_id))
        made.append(MadeBatch(batch.id, batch.status, standing_id, len(rows), sum(r.num_images for r in rows)))
    return made


def _apply_standing(session: Session, user: User, batch: Batch, standing: StandingApproval) -> None:
    if standing.approver_id == batch.requested_by_id:
        raise PermissionDenied(f"{standing.approver.name} requested batch {batch.id}; their standing approval cannot")
    approval = Approval(
        batch=batch, decision="approved", decided_by_id=standing.approver_id, content_sha256=batch.content_sha256,
        reason=f"standing approval {standing.id} of template {standing.template_id}", standing_approval_id=standing.id,
        pipelines_sha256=record_sha256(batch.pipelines),
    )  # fmt: skip
    session.add(approval)
    batch.status = "approved"
    session.flush()
    check_standing(session, batch, approval)
    record_event(
        session,
        user.name,
        "batch.approved",
        "batch",
        batch.id,
        {"approval_id": approval.id, "content_sha256": batch.content_sha256, "standing_approval_id": standing.id,
         "approved_by": standing.approver.name, "template_id": standing.template_id,
         "template_sha256": standing.template_sha256},
    )  # fmt: skip


@dataclass(frozen=True)
class Settled(Result):
    current: int
    superseded: int
    removed: int
    failed: int
    manifests: int
    batches: tuple[str, ...] = ()  # batches whose sets were settled now (each gets a run report)


def settle(session: Session, actor: str | None, store: ObjectStore, withdraw_retired: bool = False) -> Settled:
    """After runs: each SKU's newest made set current, the older superseded; a removed SKU's current set
    removed; a failed batch's items failed; per-SKU manifests written for every SKU touched. With
    `withdraw_retired` (ATELIER_CATALOGUE_WITHDRAW_RETIRED), the published images of superseded and
    removed sets are withdrawn too (governance.withdraw: the acting user needs the auditor role)."""
    user = require_any_role(session, actor, ("requester", "operator", "admin"), "settle the catalogue")
    counts = {"current": 0, "superseded": 0, "removed": 0, "failed": 0}
    touched: set[str] = set()
    settled_batches: set[str] = set()
    retired: list[tuple[CatalogueItem, str]] = []  # (set, why) whose images leave publication by policy
    open_items = list(
        session.scalars(
            select(CatalogueItem)
            .join(Batch, Batch.id == CatalogueItem.batch_id)
            .where(CatalogueItem.state.in_(("pending", "waiting")), Batch.status.in_(("completed", "failed")))
            .order_by(CatalogueItem.created_at, CatalogueItem.id)
        )
    )
    # set-based, whatever the number of SKUs: the batches' outcomes, the rows that made an image, and
    # the sets current now for the SKUs concerned (a query per thousand, not a few per SKU)
    batch_ids = sorted({i.batch_id for i in open_items})
    skus = sorted({i.sku for i in open_items})
    failed_batches: set[str] = set()
    made: set[tuple[str, str]] = set()  # (batch id, row id) with an image published or waiting for review
    current: dict[str, list[CatalogueItem]] = {}
    for i in range(0, len(batch_ids), 1000):
        chunk = batch_ids[i : i + 1000]
        failed_batches |= set(session.scalars(select(Batch.id).where(Batch.id.in_(chunk), Batch.status == "failed")))
        rows = (
            select(Prompt.batch_id, Prompt.row_id)
            .join(Image, Image.prompt_id == Prompt.id)
            .where(Prompt.batch_id.in_(chunk), Image.status.in_(("published", "review")))
            .distinct()
        )
        made |= {(b, r) for b, r in session.execute(rows)}
    for i in range(0, len(skus), 1000):
        stmt = select(CatalogueItem).where(CatalogueItem.sku.in_(skus[i : i + 1000]), CatalogueItem.state == "current")
        for older in session.scalars(stmt):
            current.setdefault(older.sku, []).append(older)
    for item in open_items:
        settled_batches.add(item.batch_id)
        touched.add(item.sku)
        if item.batch_id in failed_batches or (item.batch_id, item.row_id) not in made:
            item.state = "failed"
            counts["failed"] += 1
            continue
        for older in current.get(item.sku, []):
            older.state, older.superseded_by = "superseded", item.id
            counts["superseded"] += 1
            retired.append((older, f"catalogue: SKU {item.sku} superseded by the set of batch {item.batch_id}"))
        item.state = "current"
        current[item.sku] = [item]
        counts["current"] += 1
    gone = (
        select(CatalogueItem)
        .join(Product, Product.sku == CatalogueItem.sku)
        .where(CatalogueItem.state == "current", Product.removed.is_(True))
    )
    for item in session.scalars(gone):
        item.state = "removed"
        counts["removed"] += 1
        touched.add(item.sku)
        retired.append((item, f"catalogue: SKU {item.sku} removed from the product feed"))
    session.flush()
    if withdraw_retired:
        from governance.withdraw import withdraw

        for item, why in retired:
            found = list(
                session.scalars(
                    select(Image).join(Prompt, Prompt.id == Image.prompt_id)
                    .where(Image.batch_id == item.batch_id, Prompt.row_id == item.row_id, Image.status == "published")
                )
            )  # fmt: skip
            held = active_holds(session, found)  # a legal hold keeps them published: left, and counted
            counts["held"] = counts.get("held", 0) + len(held)
            ids = [i.id for i in found if i.id not in held]
            if ids:
                withdraw(session, user.name, store, why, image_ids=ids)
    for sku, manifest in sku_manifests(session, sorted(touched), store).items():
        store.put(MANIFEST_PREFIX + f"{sku}.json", _canonical(manifest).encode(), "application/json", {"sku": sku})
    if any(counts.values()):
        record_event(session, user.name, "catalogue.settled", "catalogue", "settle", {**counts, "skus": len(touched)})
    return Settled(
        counts["current"], counts["superseded"], counts["removed"], counts["failed"], len(touched),
        tuple(sorted(settled_batches)),
    )  # fmt: skip


REPORT_PREFIX = "catalogue/runs/"
REPORT_COLUMNS = ["sku", "variant", "image_id", "status", "key", "sha256", "reasons"]


def run_report_rows(session: Session, batch_id: str) -> list[dict[str, Any]]:
    """One row per image of a catalogue batch: SKU, variant, image, status, key, SHA-256, quarantine reasons."""
    stmt = (
        select(Prompt.row_id, Image)
        .join(Image, Image.prompt_id == Prompt.id)
        .where(Prompt.batch_id == batch_id)
        .order_by(Prompt.row_id, Image.image_index)
    )
    return [
        {"sku": sku, "variant": i.image_index, "image_id": i.id, "status": i.status, "key": i.store_key or "",
         "sha256": i.sha256 or "", "reasons": "; ".join(str(r) for r in i.safety_reasons or [])}
        for sku, i in session.execute(stmt)
    ]  # fmt: skip


def write_run_report(session: Session, store: ObjectStore, batch_id: str) -> dict[str, str]:
    """The run's manifest (CSV and Parquet) and an HTML contact sheet (thumbnails by SKU, quarantines with
    their reasons), published beside the images under catalogue/runs/<batch>/. Returns the keys."""
    import csv
    import io

    import pandas as pd

    rows = run_report_rows(session, batch_id)
    base = f"{REPORT_PREFIX}{batch_id}/"
    out = io.StringIO()
    writer = csv.DictWriter(out, REPORT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    keys = {"csv": base + "manifest.csv", "parquet": base + "manifest.parquet", "html": base + "contact-sheet.html"}
    store.put(keys["csv"], out.getvalue().encode("utf-8"), "text/csv", {"batch-id": batch_id})
    frame = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    store.put(keys["parquet"], buf.getvalue(), "application/vnd.apache.parquet", {"batch-id": batch_id})
    thumbs: dict[str, bytes] = {}
    for r in rows:  # published thumbnails only: never one waiting for review
        thumb_key = r["key"].rsplit(".", 1)[0] + ".thumb.jpg" if r["key"] else ""
        if r["status"] == "published" and store.sha256_of(thumb_key) is not None:
            thumbs[r["image_id"]] = store.get(thumb_key)
    page = contact_sheet_html(batch_id, rows, thumbs)
    store.put(keys["html"], page.encode("utf-8"), "text/html; charset=utf-8", {"batch-id": batch_id})
    return keys


def contact_sheet_html(batch_id: str, rows: list[dict[str, Any]], thumbs: dict[str, bytes]) -> str:
    """The contact sheet: thumbnails (JPEG bytes by image id) grouped by SKU, the others with their status
    and reasons. Every value escaped; no script. Thumbnails sit on grey in a frame, so a product shot on
    pure white still shows where it ends."""
    import base64
    import html

    cards: dict[str, list[str]] = {}
    for r in rows:
        if r["image_id"] in thumbs:
            data = base64.b64encode(thumbs[r["image_id"]]).decode()
            body = f'<img alt="{html.escape(r["sku"])} variant {r["variant"]}" src="data:image/jpeg;base64,{data}">'
        else:
            body = f'<p class="q">{html.escape(r["status"])}: {html.escape(r["reasons"] or "no file")}</p>'
        cards.setdefault(r["sku"], []).append(
            f"<figure>{body}<figcaption>{html.escape(r['image_id'])} ({html.escape(r['status'])})</figcaption></figure>"
        )
    sections = "".join(f"<section><h2>{html.escape(sku)}</h2>{''.join(c)}</section>" for sku, c in cards.items())
    counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Catalogue run {html.escape(batch_id)}</title><style>body{{font-family:sans-serif}}"
        "figure{display:inline-block;margin:4px;width:180px;vertical-align:top}"
        "img{display:block;max-width:176px;background:#e6e6e6;border:1px solid #999}"
        "figcaption{font-size:11px;word-break:break-all}.q{color:#a00}</style></head><body>"
        f"<h1>Catalogue run {html.escape(batch_id)}</h1><p>{html.escape(_canonical(counts))}</p>"
        f"{sections}</body></html>"
    )


@dataclass(frozen=True)
class SkuImage(Result):
    image_id: str
    variant: int
    status: str
    key: str | None
    location: str | None
    sha256: str | None


@dataclass(frozen=True)
class SkuSet(Result):
    sku: str
    state: str  # current | superseded | removed | pending | waiting | failed
    batch_id: str
    template_id: str
    product_version_id: str
    standing_approval_id: str | None
    created_at: str
    images: tuple[SkuImage, ...]


def sku_sets(session: Session, sku: str, store: ObjectStore | None = None) -> list[SkuSet]:
    """Every image set made for a SKU, newest first (the current one says so)."""
    items = list(
        session.scalars(select(CatalogueItem).where(CatalogueItem.sku == sku).order_by(CatalogueItem.created_at.desc()))
    )
    out = []
    for item in items:
        images = session.scalars(
            select(Image).join(Prompt, Prompt.id == Image.prompt_id)
            .where(Image.batch_id == item.batch_id, Prompt.row_id == item.row_id).order_by(Image.image_index)
        )  # fmt: skip
        out.append(
            SkuSet(
                sku, item.state, item.batch_id, item.template_id, item.product_version_id, item.standing_approval_id,
                item.created_at.isoformat(),
                tuple(
                    SkuImage(i.id, i.image_index, i.status, i.store_key,
                             store.location(i.store_key) if store and i.store_key else None, i.sha256)
                    for i in images
                ),
            )
        )  # fmt: skip
    return out


def sku_manifests(session: Session, skus: Sequence[str], store: ObjectStore | None = None) -> dict[str, dict[str, Any]]:
    """What downstream systems read at `catalogue/skus/<sku>.json`, for many SKUs at once (two queries per
    thousand SKUs, not a few per SKU): each SKU's status and its current set's published images."""
    out: dict[str, dict[str, Any]] = {}
    now = utcnow().isoformat()
    wanted = sorted(set(skus))
    for i in range(0, len(wanted), 1000):
        chunk = wanted[i : i + 1000]
        removed = set(session.scalars(select(Product.sku).where(Product.sku.in_(chunk), Product.removed.is_(True))))
        current = {
            item.sku: item
            for item in session.scalars(
                select(CatalogueItem).where(CatalogueItem.sku.in_(chunk), CatalogueItem.state == "current")
            )
        }
        images: dict[str, list[dict[str, Any]]] = {}
        if current:
            stmt = (
                select(CatalogueItem.sku, Image)
                .join(Prompt, (Prompt.batch_id == CatalogueItem.batch_id) & (Prompt.row_id == CatalogueItem.row_id))
                .join(Image, Image.prompt_id == Prompt.id)
                .where(CatalogueItem.id.in_([c.id for c in current.values()]), Image.status == "published")
                .order_by(Image.image_index)
            )
            for sku, image in session.execute(stmt):
                images.setdefault(sku, []).append(
                    SkuImage(
                        image.id,
                        image.image_index,
                        image.status,
                        image.store_key,
                        store.location(image.store_key) if store and image.store_key else None,
                        image.sha256,
                    ).to_dict()
                )
        for sku in chunk:
            item = current.get(sku)
            out[sku] = {
                "sku": sku,
                "status": "removed" if sku in removed else ("current" if item else "none"),
                "template_id": item.template_id if item else None,
                "product_version_id": item.product_version_id if item else None,
                "images": images.get(sku, []),
                "updated_at": now,
            }
    return out
