"""Two workers finalizing the same image at once (a lease ran out while its holder was only slow).

On PostgreSQL, with two real connections: the first worker's record claims the image id before
its upload; the second waits on that row, then fails before uploading anything, so the object the
record describes is never overwritten and the image is recorded once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from governance.approvals import approve_batch
from governance.batches import submit_batch
from governance.credentials import ContentCredentials, init_test_ca
from governance.db import make_engine, make_sessionmaker, upgrade
from governance.licences import CREATIVEML_OPENRAIL_PP_M, record_model_version, register_licence
from governance.publish import SafetyContext, credential_manifest, finalize_image, mark_and_encode
from governance.records import Approval, Batch, Image, Run, image_id_for
from governance.runs import start_run
from governance.safety import SafetyResult
from governance.store import LocalStore
from governance.users import add_user
from governance.watermark import ensure_development_key
from tests.conftest import TEST_AUDIT_KEYS
from tests.governance.conftest import good_rows, write_csv


class GatedStore(LocalStore):
    """A local store whose uploads wait for a gate and are counted (to see who uploaded what)."""

    def __init__(self, root: Path, gate: threading.Event):
        super().__init__(root)
        self.gate, self.puts = gate, []

    def put(self, key, data, content_type, metadata):  # type: ignore[no-untyped-def]
        self.gate.wait(30)
        self.puts.append((threading.current_thread().name, key))
        return super().put(key, data, content_type, metadata)


def test_the_second_worker_fails_before_uploading_and_the_first_record_stands(pg_url, tmp_path) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine, audit_keys=TEST_AUDIT_KEYS)
    with sessions.begin() as s:
        for name, roles in [
            ("admin", ["admin"]),
            ("maria", ["requester"]),
            ("omar", ["approver"]),
            ("ops", ["operator"]),
        ]:
            add_user(s, None if name == "admin" else "admin", name, roles)
        register_licence(s, "admin", CREATIVEML_OPENRAIL_PP_M)
        batch = submit_batch(s, "maria", write_csv(tmp_path / "b.csv", good_rows(1)), "catalogue")
        approve_batch(s, "omar", batch.id, batch.content_sha256)
        mv = record_model_version(s, "ops", "base_unet", "tiny", "/m", "ab" * 32, {}, CREATIVEML_OPENRAIL_PP_M.id)
        run = start_run(s, "ops", batch.id, [mv], engine={"device": "cpu"})
        batch_id, run_id, prompt_id = batch.id, run.id, batch.prompts[0].id
    image_id = image_id_for(prompt_id, 0)
    keys = init_test_ca(tmp_path / "keys")
    signer = ContentCredentials.from_files(keys.chain, keys.key, keys.trust_anchors)
    pixels = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    with sessions() as s:
        run_row, batch_row = s.get(Run, run_id), s.get(Batch, batch_id)
        manifest = credential_manifest(image_id, batch_row, s.get(Approval, run_row.approval_id), run_row)
    # Each worker signs its own copy: same pixels, different C2PA signature, so different bytes.
    key = ensure_development_key(tmp_path / "keys" / "watermark-key.txt")[0]
    marks = {name: mark_and_encode(image_id, pixels, signer, manifest, key) for name in ("first", "second")}
    assert marks["first"].sha256 != marks["second"].sha256
    safety = SafetyResult(scores={"nsfw": 0.01}, verdict="passed", reasons=())
    gate = threading.Event()
    store = GatedStore(tmp_path / "store", gate)
    outcome: dict[str, object] = {}

    def worker(name: str) -> None:
        try:
            with sessions.begin() as s:
                run_row = s.get(Run, run_id)
                approval = s.get(Approval, run_row.approval_id)
                prompt = s.get(Batch, batch_id).prompts[0]
                finalize_image(
                    s,
                    "ops",
                    store,
                    run_row,
                    approval,
                    prompt,
                    0,
                    7,
                    pixels,
                    safety,
                    SafetyContext("tiny", "v1"),
                    marked=marks[name],
                )
            outcome[name] = "recorded"
        except IntegrityError:
            outcome[name] = "duplicate refused"

    first = threading.Thread(target=worker, args=("first",), name="first")
    first.start()
    deadline = time.time() + 60
    while not any(a.get("query", "").startswith("INSERT INTO images") for a in _activity(engine)):
        assert time.time() < deadline and first.is_alive(), outcome
        time.sleep(0.05)  # until the first worker has inserted its record and waits to upload
    second = threading.Thread(target=worker, args=("second",), name="second")
    second.start()
    second.join(timeout=2)
    assert second.is_alive(), "the second worker should be waiting on the first one's record"
    gate.set()
    first.join(30)
    second.join(30)
    assert outcome == {"first": "recorded", "second": "duplicate refused"}
    assert [who for who, _ in store.puts] == ["first"] * 3  # provenance, thumbnail, image; none by the second
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 1
        record = s.get(Image, image_id)
        assert record is not None and record.sha256 == marks["first"].sha256
    assert store.sha256_of(record.store_key) == record.sha256  # the published object is the recorded one
    engine.dispose()


def _activity(engine) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                text(
                    "SELECT query, state FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
                )
            )
        ]
