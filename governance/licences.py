"""The licence registry and model-version records (lineage of weights to licences)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import NotFound
from governance.records import ATELIER_NAMESPACE, Licence, ModelVersion


@dataclass(frozen=True)
class KnownLicence:
    id: str
    name: str
    url: str
    text_sha256: str
    obligations: list[str] = field(default_factory=list)
    restrictions: list[str] = field(default_factory=list)


# CreativeML Open RAIL++-M, the licence of SDXL 1.0 base and refiner. The text hash is of the
# unchanged LICENSE-SDXL1.0 file in Stability AI's generative-models repository.
CREATIVEML_OPENRAIL_PP_M = KnownLicence(
    id="creativeml-openrail++-m",
    name="CreativeML Open RAIL++-M (SDXL 1.0)",
    url="https://github.com/Stability-AI/generative-models/blob/main/model_licenses/LICENSE-SDXL1.0",
    text_sha256="744afca95783155040321a97b52e56e19e38aaf28eb1340e46673ff76f8f719c",
    obligations=[
        "Pass on the use-based restrictions of Attachment A to every downstream user (Section III.4).",
        "The user is accountable for the output and its use (Section III.5).",
    ],
    restrictions=[
        "violate-law",
        "exploit-harm-minors",
        "false-information-to-harm",
        "personal-information-harm",
        "defame-disparage-harass",
        "automated-legal-decisions",
        "discriminate-protected-characteristics",
        "exploit-vulnerable-groups",
        "medical-advice",
        "law-enforcement-prediction",
    ],
)

KNOWN_LICENCES = {CREATIVEML_OPENRAIL_PP_M.id: CREATIVEML_OPENRAIL_PP_M}


def register_licence(session: Session, actor: str, known: KnownLicence) -> Licence:
    """Add a licence to the registry (idempotent)."""
    licence = session.get(Licence, known.id)
    if licence is not None:
        return licence
    licence = Licence(
        id=known.id,
        name=known.name,
        url=known.url,
        text_sha256=known.text_sha256,
        obligations=list(known.obligations),
        restrictions=list(known.restrictions),
    )
    session.add(licence)
    session.flush()
    record_event(
        session, actor, "licence.registered", "licence", known.id,
        {"name": known.name, "text_sha256": known.text_sha256},
    )
    return licence


def get_licence(session: Session, licence_id: str) -> Licence:
    licence = session.get(Licence, licence_id)
    if licence is None:
        known = ", ".join(sorted(KNOWN_LICENCES))
        raise NotFound(
            f"licence {licence_id!r} is not registered: register it first (known: {known}), "
            "e.g. `atelier licences register creativeml-openrail++-m`"
        )
    return licence


def record_model_version(
    session: Session, actor: str, role: str, name: str, source: str, sha256: str, files: dict[str, Any],
    licence_id: str,
) -> ModelVersion:
    """The model-version record for one component, keyed by (role, weight hash); idempotent."""
    licence = get_licence(session, licence_id)
    existing = session.scalar(select(ModelVersion).where(ModelVersion.role == role, ModelVersion.sha256 == sha256))
    if existing is not None:
        return existing
    mv = ModelVersion(
        id=str(uuid.uuid5(ATELIER_NAMESPACE, f"model:{role}:{sha256}")),
        role=role, name=name, source=source, sha256=sha256, files=files, licence=licence,
    )
    session.add(mv)
    session.flush()
    record_event(
        session, actor, "model_version.registered", "model_version", mv.id,
        {"role": role, "name": name, "source": source, "sha256": sha256, "licence_id": licence_id},
    )
    return mv
