"""OpenLineage run events: built from the records, valid against the spec, delivered by both sinks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from governance.lineage import (
    BATCHES_NAMESPACE,
    CUSTOM_FACET_SCHEMAS,
    MODELS_NAMESPACE,
    FileSink,
    HttpSink,
    LineageError,
    emit_run_event,
    open_sink,
    run_event,
)
from governance.records import Image
from tests.conftest import SHARED
from tests.governance.synthetic import GEN1, build_world

SPEC_DIR = SHARED / "specs" / "openlineage"


class OpenLineageValidator:
    """The OpenLineage 2-0-2 JSON schema, its facet schemas and Atelier's, resolved locally (no network).

    `check(event)` validates the event against OpenLineage.json, then every facet against the very
    schema its `_schemaURL` names, and that standard facets sit under their spec-given key.
    """

    def __init__(self, spec_dir: Path):
        from jsonschema import Draft202012Validator, FormatChecker
        from referencing import Registry, Resource

        self.core = json.loads((spec_dir / "OpenLineage.json").read_text())
        schemas = [self.core] + [json.loads(p.read_text()) for p in sorted((spec_dir / "facets").glob("*.json"))]
        schemas += list(CUSTOM_FACET_SCHEMAS.values())
        self.registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
        self.ids = {s["$id"] for s in schemas}
        self.facet_key = {}  # standard facet schema $id -> the key the spec gives it
        for s in schemas[1:]:
            for key, prop in s.get("properties", {}).items():
                if "$ref" in prop:
                    self.facet_key[s["$id"] + prop["$ref"]] = key
        self._validator = Draft202012Validator
        self._formats = FormatChecker()

    def _validate(self, schema: dict[str, Any], value: Any) -> None:
        self._validator(schema, registry=self.registry, format_checker=self._formats).validate(value)

    def check(self, event: dict[str, Any]) -> None:
        self._validate(self.core, event)
        assert urlparse(event["producer"]).scheme and urlparse(event["schemaURL"]).scheme
        facet_sets = [event["run"].get("facets", {}), event["job"].get("facets", {})]
        for ds in event.get("inputs", []) + event.get("outputs", []):
            facet_sets += [ds.get("facets", {}), ds.get("inputFacets", {}), ds.get("outputFacets", {})]
        for facets in facet_sets:
            for key, facet in facets.items():
                url = facet["_schemaURL"]
                assert url.split("#")[0] in self.ids, f"facet {key}: unknown schema {url}"
                self._validate({"$ref": url}, facet)
                expected_key = self.facet_key.get(url)
                if expected_key is not None:
                    assert key == expected_key, f"facet {key} should be named {expected_key}"


@pytest.fixture(scope="session")
def openlineage() -> OpenLineageValidator:
    if not (SPEC_DIR / "OpenLineage.json").is_file():
        pytest.skip(f"OpenLineage spec not found at {SPEC_DIR} (the shared specs folder ../shared is absent)")
    return OpenLineageValidator(SPEC_DIR)


@pytest.fixture
def world(sessions, tmp_path):
    return build_world(sessions, tmp_path)


def test_run_events_validate_against_the_openlineage_schema(sessions, world, openlineage) -> None:
    with sessions() as s:
        events = {
            t: run_event(s, world.run_a, t, error="boom" if t == "FAIL" else None).to_dict()
            for t in ("START", "COMPLETE", "FAIL")
        }
    for event in events.values():
        openlineage.check(event)
        assert event["run"]["runId"] == world.run_a
        assert event["job"] == {**event["job"], "namespace": "atelier", "name": "produce-batch"}

    start, complete, fail = events["START"], events["COMPLETE"], events["FAIL"]
    assert start["outputs"] == [] and "errorMessage" not in start["run"]["facets"]
    assert fail["run"]["facets"]["errorMessage"]["message"] == "boom"

    # inputs: every model version (role/sha256) and the prompt batch at its approved content hash
    models = [d for d in complete["inputs"] if d["namespace"] == MODELS_NAMESPACE]
    assert sorted(d["name"] for d in models) == sorted(f"{role}/{digest}" for role, digest in GEN1.items())
    for d in models:
        assert d["facets"]["version"]["datasetVersion"] == d["name"].split("/")[1]
        assert d["facets"]["atelierModel"]["licence"] == "creativeml-openrail++-m"
    [batch] = [d for d in complete["inputs"] if d["namespace"] == BATCHES_NAMESPACE]
    assert batch["name"] == world.batch_a
    assert batch["facets"]["atelierBatch"]["approvedBy"] == "omar"
    assert batch["facets"]["atelierBatch"]["useCategory"] == "product-catalogue"

    # outputs: exactly the published images of this run, at their store location and content hash
    with sessions() as s:
        published = {
            (i.store_url, i.store_key, i.sha256)
            for i in s.query(Image).filter_by(run_id=world.run_a, status="published")
        }
    assert {
        (d["namespace"], d["name"], d["facets"]["version"]["datasetVersion"]) for d in complete["outputs"]
    } == published and len(published) == 2

    # the licence facet: which licence, for which models, with its prohibited uses and obligations
    [lic] = complete["run"]["facets"]["atelierLicences"]["licences"]
    assert complete["run"]["facets"]["atelierLicences"]["useCategory"] == "product-catalogue"
    assert lic["id"] == "creativeml-openrail++-m" and sorted(lic["models"]) == sorted(GEN1)
    assert "medical-advice" in lic["prohibitedUseCategories"]
    assert {o["id"] for o in lic["obligations"]} == {"pass-on-use-restrictions", "output-accountability"}


def test_validator_rejects_a_broken_event(sessions, world, openlineage) -> None:
    """The schema check has teeth: a bad run id, a facet without _producer, a custom facet missing a field."""
    from jsonschema import ValidationError

    with sessions() as s:
        good = run_event(s, world.run_a, "COMPLETE").to_dict()
    bad_id = json.loads(json.dumps(good))
    bad_id["run"]["runId"] = "not-a-uuid"
    no_producer = json.loads(json.dumps(good))
    del no_producer["job"]["facets"]["jobType"]["_producer"]
    custom = json.loads(json.dumps(good))
    del custom["run"]["facets"]["atelierLicences"]["useCategory"]
    for event in (bad_id, no_producer, custom):
        with pytest.raises(ValidationError):
            openlineage.check(event)


def test_file_sink_appends_json_lines(sessions, world, tmp_path) -> None:
    sink = open_sink(None, tmp_path / "data")
    assert isinstance(sink, FileSink)
    with sessions() as s:
        emit_run_event(s, sink, world.run_a, "START")
        emit_run_event(s, sink, world.run_b, "COMPLETE")
    sink.close()
    lines = (tmp_path / "data" / "lineage" / "events.jsonl").read_text().splitlines()
    assert [(e["eventType"], e["run"]["runId"]) for e in map(json.loads, lines)] == [
        ("START", world.run_a),
        ("COMPLETE", world.run_b),
    ]


class _Marquez:
    """A tiny real HTTP server on 127.0.0.1 that records POSTs and answers with scripted status codes."""

    def __init__(self, statuses: list[int]):
        self.statuses = statuses
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
                code = outer.statuses.pop(0) if outer.statuses else 201
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b'{"error": "scripted"}' if code >= 400 else b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Marquez:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def marquez() -> Iterator[_Marquez]:
    with _Marquez([]) as server:
        yield server


def test_http_sink_posts_to_the_lineage_api(sessions, world, marquez, openlineage) -> None:
    sink = open_sink(marquez.url + "/", Path("unused"))
    assert isinstance(sink, HttpSink)
    with sessions() as s:
        sent = emit_run_event(s, sink, world.run_b, "COMPLETE")
    [(path, content_type, body)] = marquez.received
    assert path == "/api/v1/lineage" and content_type == "application/json"
    assert body == sent.to_dict()
    openlineage.check(body)


def test_http_sink_retries_server_errors_and_refuses_on_client_errors(sessions, world) -> None:
    with sessions() as s:
        event = run_event(s, world.run_a, "START")
    with _Marquez([503, 201]) as server:
        HttpSink(server.url, backoff_s=0.01).emit(event)
        assert len(server.received) == 2  # retried once, then delivered
    with _Marquez([400]) as server:
        with pytest.raises(LineageError, match="HTTP 400"):
            HttpSink(server.url, backoff_s=0.01).emit(event)
        assert len(server.received) == 1  # a refusal is not retried
    with _Marquez([500, 500, 500]) as server:
        with pytest.raises(LineageError, match="not delivered"):
            HttpSink(server.url, attempts=3, backoff_s=0.01).emit(event)
        assert len(server.received) == 3
    with _Marquez([]) as server:
        dead = server.url
    with pytest.raises(LineageError, match="not delivered"):
        HttpSink(dead, attempts=1, timeout_s=2).emit(event)


def test_bad_lineage_url_is_refused() -> None:
    with pytest.raises(LineageError, match="http"):
        open_sink("ftp://marquez", Path("."))
