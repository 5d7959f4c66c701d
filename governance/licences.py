"""The licence registry, declared use categories, and model-version records (weights to licences).

Use categories
--------------
Every batch declares what its images are for (`Batch.use_category`), from one vocabulary,
`USE_CATEGORIES`. A licence prohibits some of these categories: its `restrictions` hold one entry
per prohibited category with the clause it violates, e.g. CreativeML Open RAIL++-M prohibits
"medical-advice" by Attachment A (10), "To provide medical advice and medical results
interpretation". Intake (`check_use_category`) refuses an unknown category and any category that
a licence in the lineage prohibits, naming the clause.

Which licences are "in the lineage" at intake: a batch is submitted before any weights are
hashed, so intake checks the licence(s) configured for the models (`Settings.model_licence`), as
registered in the database (what runs will cite) or, when not yet registered, as Atelier knows
it (`KNOWN_LICENCES`). A licence that is neither cannot be checked and is refused. The run checks
again against the licences of the model versions it actually records (`check_use_category` with
their licence ids), so a changed configuration cannot slip a prohibited use through.

Obligations
-----------
The licence terms that pass downstream with every output (`obligations_for`) are recorded on each
published image (`Image.licence_obligations`) and in its provenance JSON.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import InvalidInput, NotFound
from governance.records import ATELIER_NAMESPACE, Licence, ModelVersion

# ---------------------------------------------------------------- use categories

# Every use a batch may declare. Whether a use is permitted depends on the licences in the
# lineage; the prohibited ones are here so that declaring them is refused, not unknown.
USE_CATEGORIES: dict[str, str] = {
    "general": "general-purpose imagery with no more specific declared use",
    "product-catalogue": "product photographs and renders for a catalogue or shop",
    "marketing-campaign": "advertising and campaign material",
    "editorial": "illustrations accompanying editorial content",
    "social-media": "posts on the organisation's own social media channels",
    "concept-art": "internal concept and mood boards, not published as such",
    "unlawful-use": "any use that violates applicable law or regulation",
    "exploit-minors": "exploiting or harming minors in any way",
    "disinformation": "verifiably false information or content meant to harm others",
    "personal-data-harm": "personal identifiable information that can be used to harm an individual",
    "harassment-defamation": "defaming, disparaging or harassing others",
    "automated-legal-decisions": "fully automated decisions that affect legal rights or binding obligations",
    "social-scoring": "discrimination based on social behaviour or personal or personality characteristics",
    "exploit-vulnerable-groups": "exploiting the vulnerabilities of a group to distort behaviour harmfully",
    "discrimination-protected-characteristics": "discrimination based on legally protected characteristics",
    "medical-advice": "medical advice or the interpretation of medical results",
    "law-enforcement-prediction": "predicting that an individual will commit fraud or crime",
    "justice-immigration-assessment": "administration of justice, law enforcement, immigration or asylum processes",
}

DEFAULT_USE_CATEGORY = "general"


@dataclass(frozen=True)
class UseRestriction:
    """One use-based restriction of a licence: the category it prohibits and the clause that says so."""

    category: str
    clause: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"category": self.category, "clause": self.clause, "text": self.text}


@dataclass(frozen=True)
class Obligation:
    """A licence term that passes downstream with every output."""

    id: str
    section: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "section": self.section, "text": self.text}


@dataclass(frozen=True)
class KnownLicence:
    id: str
    name: str
    url: str
    text_sha256: str
    obligations: tuple[Obligation, ...] = ()
    restrictions: tuple[UseRestriction, ...] = ()
    clauses: tuple[str, ...] = field(default=(), repr=False)  # the restriction clauses, in the licence's order


# CreativeML Open RAIL++-M, Attachment A "Use Restrictions", clause by clause in the licence's
# order, verbatim (whitespace joined): "You agree not to use the Model or Derivatives of the Model: ..."
OPENRAIL_PP_M_ATTACHMENT_A = (
    "In any way that violates any applicable national, federal, state, local or international law or regulation",
    "For the purpose of exploiting, harming or attempting to exploit or harm minors in any way",
    "To generate or disseminate verifiably false information and/or content with the purpose of harming others",
    "To generate or disseminate personal identifiable information that can be used to harm an individual",
    "To defame, disparage or otherwise harass others",
    "For fully automated decision making that adversely impacts an individual’s legal rights or otherwise "
    "creates or modifies a binding, enforceable obligation",
    "For any use intended to or which has the effect of discriminating against or harming individuals or groups "
    "based on online or offline social behavior or known or predicted personal or personality characteristics",
    "To exploit any of the vulnerabilities of a specific group of persons based on their age, social, physical or "
    "mental characteristics, in order to materially distort the behavior of a person pertaining to that group in a "
    "manner that causes or is likely to cause that person or another person physical or psychological harm",
    "For any use intended to or which has the effect of discriminating against individuals or groups based on "
    "legally protected characteristics or categories",
    "To provide medical advice and medical results interpretation",
    "To generate or disseminate information for the purpose to be used for administration of justice, law "
    "enforcement, immigration or asylum processes, such as predicting an individual will commit fraud/crime "
    "commitment (e.g. by text profiling, drawing causal relationships between assertions made in documents, "
    "indiscriminate and arbitrarily-targeted use)",
)

# Prohibited use category -> Attachment A clause number (1-based, the licence's order).
_OPENRAIL_PP_M_PROHIBITS = {
    "unlawful-use": 1,
    "exploit-minors": 2,
    "disinformation": 3,
    "personal-data-harm": 4,
    "harassment-defamation": 5,
    "automated-legal-decisions": 6,
    "social-scoring": 7,
    "exploit-vulnerable-groups": 8,
    "discrimination-protected-characteristics": 9,
    "medical-advice": 10,
    "law-enforcement-prediction": 11,
    "justice-immigration-assessment": 11,
}

# The licence of SDXL 1.0 base and refiner. The text hash is of the unchanged LICENSE-SDXL1.0 file
# in Stability AI's generative-models repository.
CREATIVEML_OPENRAIL_PP_M = KnownLicence(
    id="creativeml-openrail++-m",
    name="CreativeML Open RAIL++-M (SDXL 1.0)",
    url="https://github.com/Stability-AI/generative-models/blob/main/model_licenses/LICENSE-SDXL1.0",
    text_sha256="744afca95783155040321a97b52e56e19e38aaf28eb1340e46673ff76f8f719c",
    obligations=(
        Obligation(
            "pass-on-use-restrictions",
            "Section III, paragraph 4",
            "The use-based restrictions of Attachment A (paragraph 5) must be included as an enforceable "
            "provision in any agreement governing use or distribution, with notice to subsequent users.",
        ),
        Obligation(
            "output-accountability",
            "Section III, paragraph 5",
            "The user is accountable for the output and its subsequent uses; no use of the output may "
            "contravene the licence, including the use restrictions of Attachment A.",
        ),
    ),
    restrictions=tuple(
        UseRestriction(category, f"Attachment A ({n})", OPENRAIL_PP_M_ATTACHMENT_A[n - 1])
        for category, n in _OPENRAIL_PP_M_PROHIBITS.items()
    ),
    clauses=OPENRAIL_PP_M_ATTACHMENT_A,
)

KNOWN_LICENCES = {CREATIVEML_OPENRAIL_PP_M.id: CREATIVEML_OPENRAIL_PP_M}
DEFAULT_MODEL_LICENCE = CREATIVEML_OPENRAIL_PP_M.id


# ---------------------------------------------------------------- registry


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
        obligations=[o.to_dict() for o in known.obligations],
        restrictions=[r.to_dict() for r in known.restrictions],
    )
    session.add(licence)
    session.flush()
    record_event(
        session,
        actor,
        "licence.registered",
        "licence",
        known.id,
        {
            "name": known.name,
            "text_sha256": known.text_sha256,
            "prohibited_use_categories": sorted(r.category for r in known.restrictions),
        },
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


def restrictions_of(licence: Licence | KnownLicence) -> list[UseRestriction]:
    """A licence's use restrictions, whether stored as dicts (now) or bare category ids (older rows)."""
    out = []
    known = KNOWN_LICENCES.get(licence.id)
    by_category = {r.category: r for r in known.restrictions} if known else {}
    for entry in licence.restrictions:
        if isinstance(entry, UseRestriction):
            out.append(entry)
        elif isinstance(entry, dict):
            out.append(UseRestriction(str(entry["category"]), str(entry.get("clause", "")), str(entry.get("text", ""))))
        else:
            out.append(by_category.get(str(entry), UseRestriction(str(entry), "use restrictions", "")))
    return out


# ---------------------------------------------------------------- use categories at intake


@dataclass(frozen=True)
class _Terms:
    id: str
    name: str
    restrictions: list[UseRestriction]


def _lineage_terms(session: Session, licence_ids: Iterable[str]) -> list[_Terms]:
    terms = []
    for licence_id in sorted(set(licence_ids)):
        row: Licence | None = session.get(Licence, licence_id)
        if row is None and licence_id in KNOWN_LICENCES:
            # Known but not registered: the run would refuse it (no licence row for the lineage),
            # so intake refuses it now rather than after approval and a minute of start-up.
            raise InvalidInput(
                f"the models' licence {licence_id!r} is not registered: an admin registers it first "
                f"(`atelier licences register {licence_id}`)"
            )
        if row is None:
            raise InvalidInput(
                f"the models' licence {licence_id!r} is neither registered nor known, so its use restrictions "
                f"cannot be checked: register it, or set ATELIER_MODEL_LICENCE to one of "
                f"{', '.join(sorted(KNOWN_LICENCES))}"
            )
        terms.append(_Terms(row.id, row.name, restrictions_of(row)))
    return terms


def allowed_use_categories(session: Session, licence_ids: Iterable[str]) -> list[str]:
    """The categories no licence in the lineage prohibits, in vocabulary order."""
    prohibited = {r.category for t in _lineage_terms(session, licence_ids) for r in t.restrictions}
    return [c for c in USE_CATEGORIES if c not in prohibited]


def check_use_category(session: Session, use_category: str, licence_ids: Iterable[str]) -> None:
    """Refuse (InvalidInput) an unknown use category or one any of these licences prohibits, naming the clause."""
    licence_ids = list(licence_ids)
    terms = _lineage_terms(session, licence_ids)
    if use_category not in USE_CATEGORIES:
        allowed = allowed_use_categories(session, licence_ids)
        raise InvalidInput(f"unknown use category {use_category!r}: choose one of {', '.join(allowed)}")
    for t in terms:
        for r in t.restrictions:
            if r.category == use_category:
                quoted = f': "{r.text}"' if r.text else ""
                raise InvalidInput(
                    f"use category {use_category!r} is prohibited by the models' licence {t.name} "
                    f"({t.id}), {r.clause}{quoted}"
                )


# ---------------------------------------------------------------- obligations downstream


def _obligation_dicts(licence: Licence) -> list[dict[str, str]]:
    out = []
    for entry in licence.obligations:
        if isinstance(entry, dict):
            out.append(
                {
                    "id": str(entry.get("id", "")),
                    "section": str(entry.get("section", "")),
                    "text": str(entry.get("text", "")),
                }
            )
        else:  # older rows: free text
            out.append({"id": "", "section": "", "text": str(entry)})
    return out


def obligations_for(model_versions: Sequence[ModelVersion]) -> list[dict[str, Any]]:
    """The licence obligations an output of these model versions carries downstream.

    One entry per (licence, obligation), licences in id order, each naming the licence, its text
    hash, the obligation and the model roles under that licence. Pure: reads the loaded records.
    """
    licences: dict[str, Licence] = {}
    roles: dict[str, list[str]] = {}
    for mv in model_versions:
        licences[mv.licence.id] = mv.licence
        roles.setdefault(mv.licence.id, []).append(mv.role)
    return [
        {
            "licence": lic.id,
            "licence_name": lic.name,
            "licence_url": lic.url,
            "licence_text_sha256": lic.text_sha256,
            "obligation": ob["id"],
            "section": ob["section"],
            "text": ob["text"],
            "models": sorted(roles[lic.id]),
        }
        for lic in (licences[k] for k in sorted(licences))
        for ob in _obligation_dicts(lic)
    ]


# ---------------------------------------------------------------- model versions


def record_model_version(
    session: Session,
    actor: str,
    role: str,
    name: str,
    source: str,
    sha256: str,
    files: dict[str, Any],
    licence_id: str,
) -> ModelVersion:
    """The model-version record for one component, keyed by (role, weight hash); idempotent."""
    licence = get_licence(session, licence_id)
    existing = session.scalar(select(ModelVersion).where(ModelVersion.role == role, ModelVersion.sha256 == sha256))
    if existing is not None:
        return existing
    mv = ModelVersion(
        id=str(uuid.uuid5(ATELIER_NAMESPACE, f"model:{role}:{sha256}")),
        role=role,
        name=name,
        source=source,
        sha256=sha256,
        files=files,
        licence=licence,
    )
    try:
        with session.begin_nested():  # two workers starting at once both try to register it
            session.add(mv)
    except IntegrityError:
        winner = session.scalar(select(ModelVersion).where(ModelVersion.role == role, ModelVersion.sha256 == sha256))
        assert winner is not None
        return winner
    record_event(
        session,
        actor,
        "model_version.registered",
        "model_version",
        mv.id,
        {"role": role, "name": name, "source": source, "sha256": sha256, "licence_id": licence_id},
    )
    return mv
