from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from governance.db import make_engine, make_sessionmaker, upgrade
from governance.licences import CREATIVEML_OPENRAIL_PP_M, register_licence
from governance.users import add_user
from tests.conftest import TEST_AUDIT_KEYS


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    """A migrated, empty database (SQLite file and PostgreSQL) with the usual cast of users."""
    engine = make_engine(database_url)
    upgrade(engine)
    maker = make_sessionmaker(engine, audit_keys=TEST_AUDIT_KEYS)
    with maker.begin() as s:
        add_user(s, None, "admin", ["admin"])
        add_user(s, "admin", "maria", ["requester"])
        add_user(s, "admin", "omar", ["approver"])
        add_user(s, "admin", "nina", ["approver", "requester"])
        add_user(s, "admin", "ops", ["operator"])
    with maker.begin() as s:  # the models' licence, as an admin registers it before the first batch
        register_licence(s, "admin", CREATIVEML_OPENRAIL_PP_M)
    yield maker
    engine.dispose()


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def good_rows(n: int = 3) -> list[dict[str, object]]:
    return [
        {
            "row_id": f"sku-{i}",
            "prompt": f"studio photo of product {i}",
            "seed": 100 + i,
            "width": 256,
            "height": 256,
            "steps": 2,
            "num_images": 1,
            "ref": f"SKU-{i}",
        }
        for i in range(n)
    ]
