"""C2PA Content Credentials: sign every published image, read and validate any file.

Signing material comes from settings: a PEM certificate chain (signer first, then its issuers)
and a PEM private key, or a KMS/HSM hook: a callable `module:function` that takes the bytes to
sign and returns the raw signature (ES256: r||s, 64 bytes), used with the chain. `atelier keys
init` makes a local test CA and signer for development, marked NOT FOR PRODUCTION in the
certificates themselves, and a development audit key ring (governance.audit). The signer also signs
audit checkpoints; earlier signing certificates are kept in a ring (`CHECKPOINT_RING_FILE`) so the
anchors they signed keep verifying (governance.ledger.rotate_checkpoint_keys). No timestamp
authority by default (there is no network); set one in production.

A missing or unusable signer is an error, never a skip: no credentials, no publishing.
"""

from __future__ import annotations

import datetime as dt
import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governance.errors import GovernanceCheckFailed, InvalidInput, InvalidState

if TYPE_CHECKING:
    from cryptography import x509
    from sqlalchemy.orm import Session

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ATELIER_ASSERTION = "com.atelier.provenance"
TEST_ORGANISATION = "Atelier TEST CA - NOT FOR PRODUCTION"
CHAIN_FILE, KEY_FILE, ANCHOR_FILE, CA_KEY_FILE = "signer-chain.pem", "signer-key.pem", "trust-anchors.pem", "ca-key.pem"
# Earlier checkpoint signing certificates: anchors they signed keep verifying (governance.ledger).
CHECKPOINT_RING_FILE = "checkpoint-certificates.pem"


@dataclass(frozen=True)
class KeyPaths:
    chain: Path
    key: Path
    trust_anchors: Path
    audit_key: Path | None = None


def init_test_ca(
    keys_dir: Path,
    force: bool = False,
    *,
    audit_key_file: Path | None = None,
    session: Session | None = None,
    _rotating: bool = False,
) -> KeyPaths:
    """Create a development CA and an ES256 signer issued by it, and a development audit key (never
    for production). The audit key ring goes to `audit_key_file` (default `keys_dir`/audit-key.txt).

    `force` makes new ones (the old CA stays a trust anchor, the old signer certificate joins the
    checkpoint certificate ring, the old audit key stays in its ring). With `session`, `force` is
    refused once anchors exist: their signing key is rotated with `atelier keys rotate`
    (governance.ledger.rotate_checkpoint_keys), which records the rotation."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from governance.audit import KEY_FILE as AUDIT_KEY_FILE
    from governance.audit import ensure_development_audit_key, load_audit_key_ring

    audit_path = audit_key_file or keys_dir / AUDIT_KEY_FILE
    paths = KeyPaths(keys_dir / CHAIN_FILE, keys_dir / KEY_FILE, keys_dir / ANCHOR_FILE, audit_path)
    if force and not _rotating and session is not None and paths.chain.exists():
        from sqlalchemy import func, select

        from governance.records import AuditAnchor

        if session.scalar(select(func.count()).select_from(AuditAnchor)):
            raise InvalidState(
                "audit anchors were signed with the current key: `atelier keys rotate` replaces it and keeps its "
                "certificate so they still verify (and audits the rotation)"
            )
    # the development audit key: made when missing; `force` rotates it (never an organisation's ring)
    rotate_audit = force and not _rotating and audit_path.exists()
    ensure_development_audit_key(
        audit_path, rotate=rotate_audit and load_audit_key_ring(audit_path).current.development
    )
    if paths.chain.exists() and not force:
        return paths
    # A replaced CA stays a trust anchor: manifests it signed keep verifying as Atelier's; the replaced
    # signer's certificate joins the checkpoint ring: anchors it signed keep verifying.
    earlier_anchors = paths.trust_anchors.read_bytes() if paths.trust_anchors.exists() else b""
    if paths.chain.exists():
        add_to_checkpoint_ring(keys_dir, x509.load_pem_x509_certificates(paths.chain.read_bytes())[0])
    keys_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def subject(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_ORGANISATION),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "development and tests only"),
            ]
        )

    def usage(sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject("Atelier test root CA"))
        .issuer_name(subject("Atelier test root CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject("Atelier test content signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    paths.chain.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    paths.trust_anchors.write_bytes(ca.public_bytes(pem) + earlier_anchors)
    for path, private in ((paths.key, key), (keys_dir / CA_KEY_FILE, ca_key)):
        path.write_bytes(private.private_bytes(pem, pkcs8, serialization.NoEncryption()))
        path.chmod(0o600)
    return paths


def add_to_checkpoint_ring(keys_dir: Path, certificate: x509.Certificate) -> tuple[Path, int]:
    """Keep a (public) checkpoint signing certificate in the ring; returns the ring file and its size."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    path = keys_dir / CHECKPOINT_RING_FILE
    existing = x509.load_pem_x509_certificates(path.read_bytes()) if path.exists() else []
    if certificate not in existing:
        existing.append(certificate)
        keys_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in existing))
    return path, len(existing)


def checkpoint_certificates(keys_dir: Path, chain: Path) -> bytes | None:
    """The certificates anchors may name: the current signer (first of `chain`) and the ring's."""
    parts = []
    if chain.exists():
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
        parts.append(leaf.public_bytes(serialization.Encoding.PEM))
    ring = keys_dir / CHECKPOINT_RING_FILE
    if ring.exists():
        parts.append(ring.read_bytes())
    return b"".join(parts) or None


def write_signer(chain: Path, key: Path, chain_pem: bytes, key_pem: bytes | None) -> x509.Certificate:
    """Install a new signer (an organisation's certificate chain, and its key unless a KMS holds it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as exc:
        raise InvalidInput(f"the new certificate chain is not PEM certificates: {exc}") from None
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise InvalidInput("the new signing certificate must hold an EC (P-256) key: anchors are signed ES256")
    if key_pem is not None:
        private = serialization.load_pem_private_key(key_pem, None)
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.public_key().public_numbers() != (
            public.public_numbers()
        ):
            raise InvalidInput("the new private key does not belong to the new signing certificate")
        key.write_bytes(key_pem)
        key.chmod(0o600)
    chain.write_bytes(chain_pem)
    return cert


@dataclass(frozen=True)
class CredentialReport:
    """What a file's C2PA manifest says, and whether it holds."""

    present: bool
    state: str | None = None  # "Trusted", "Valid" (signature fine, signer not anchored) or "Invalid"
    label: str | None = None
    signer: dict[str, Any] = field(default_factory=dict)
    atelier: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    soft_binding: dict[str, Any] | None = None  # the c2pa.soft-binding assertion (the watermark), if any

    @property
    def intact(self) -> bool:
        """Signature and hashes hold; says nothing about who signed."""
        return self.present and self.state in ("Trusted", "Valid")

    @property
    def trusted(self) -> bool:
        """Intact and signed by a certificate that chains to the configured trust anchors."""
        return self.present and self.state == "Trusted"

    def to_dict(self) -> dict[str, Any]:
        return {
            "present": self.present,
            "state": self.state,
            "label": self.label,
            "signer": self.signer,
            "atelier": self.atelier,
            "failures": self.failures,
            "error": self.error,
            "soft_binding": self.soft_binding,
        }


class ContentCredentials:
    """Signs PNGs with a C2PA manifest and reads manifests back against the configured trust anchors."""

    def __init__(
        self,
        chain_pem: bytes,
        key_pem: bytes | None = None,
        sign_callback: Callable[[bytes], bytes] | None = None,
        trust_anchors_pem: bytes | None = None,
        tsa_url: str | None = None,
    ):
        import c2pa

        if (key_pem is None) == (sign_callback is None):
            raise GovernanceCheckFailed("C2PA signer needs exactly one of a private key or a signing callback")
        self._c2pa = c2pa
        self.trust_anchors_pem = trust_anchors_pem
        try:
            if sign_callback is not None:
                self._signer = c2pa.Signer.from_callback(
                    sign_callback, c2pa.C2paSigningAlg.ES256, chain_pem.decode(), tsa_url
                )
            else:
                self._signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain_pem, key_pem, tsa_url))
        except Exception as exc:  # the native library's message names the problem
            raise GovernanceCheckFailed(f"C2PA signer could not be created: {exc}") from None
        settings: dict[str, Any] = {"builder": {"thumbnail": {"enabled": False}}}
        if trust_anchors_pem:
            settings["trust"] = {"trust_anchors": trust_anchors_pem.decode()}
        self._context = c2pa.Context.from_dict(settings)

    @classmethod
    def from_files(
        cls,
        chain: Path,
        key: Path | None,
        trust_anchors: Path | None,
        tsa_url: str | None = None,
        callback: str | None = None,
    ) -> ContentCredentials:
        def read(path: Path, what: str) -> bytes:
            try:
                return path.read_bytes()
            except OSError:
                raise GovernanceCheckFailed(
                    f"C2PA {what} {path} is missing: run `atelier keys init` for development keys, "
                    f"or set ATELIER_C2PA_CERT / ATELIER_C2PA_KEY to your organisation's"
                ) from None

        sign_callback = load_callback(callback) if callback else None
        return cls(
            read(chain, "certificate chain"),
            None if sign_callback else read(key, "private key") if key else None,
            sign_callback,
            read(trust_anchors, "trust anchors") if trust_anchors else None,
            tsa_url,
        )

    def sign_png(self, png: bytes, manifest: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        try:
            with self._c2pa.Builder(manifest, context=self._context) as builder:
                builder.sign(self._signer, "image/png", io.BytesIO(png), out)
        except Exception as exc:
            raise GovernanceCheckFailed(f"C2PA signing failed: {exc}") from None
        return out.getvalue()

    def read(self, data: bytes, mime: str | None = None) -> CredentialReport:
        return read_credentials(data, mime, self._context)


def read_credentials(data: bytes, mime: str | None = None, context: Any = None) -> CredentialReport:
    """Read a file's manifest (if any) and validate it; never raises for a bad or missing manifest."""
    import c2pa

    try:
        reader = c2pa.Reader.try_create(mime or "", io.BytesIO(data), context=context)
    except Exception as exc:
        # A manifest store that cannot even be parsed is a failed manifest. A file whose container is
        # broken (truncated, say) and holds no manifest store at all (no JUMBF box labelled "c2pa")
        # carries no claim to fail: it is not "tampered", it is damaged.
        error = str(exc).splitlines()[0][:300]
        if b"c2pa" not in data or b"jumb" not in data:
            return CredentialReport(present=False, error=error)
        return CredentialReport(present=True, state="Invalid", error=error)
    if reader is None:
        return CredentialReport(present=False)
    with reader:
        manifest = reader.get_active_manifest() or {}
        results = reader.get_validation_results() or {}
        failures = [
            f"{f.get('code')}: {f.get('explanation', '')}"
            for f in (results.get("activeManifest") or {}).get("failure", [])
        ]
        assertions = manifest.get("assertions", [])
        atelier = next((a.get("data") for a in assertions if a.get("label") == ATELIER_ASSERTION), None)
        soft = next((a.get("data") for a in assertions if a.get("label") == "c2pa.soft-binding"), None)
        return CredentialReport(
            present=True,
            state=reader.get_validation_state(),
            label=manifest.get("label"),
            signer=manifest.get("signature_info") or {},
            atelier=atelier,
            failures=failures,
            soft_binding=soft,
        )


def load_callback(spec: str, what: str = "C2PA signing callback") -> Callable[..., Any]:
    """`package.module:function` -> the callable (a KMS/HSM hook: the C2PA signer, the watermark key)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInput(f"{what} {spec!r} must look like package.module:function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise GovernanceCheckFailed(f"{what} {spec!r} cannot be loaded: {exc}") from None
    if not callable(fn):
        raise GovernanceCheckFailed(f"{what} {spec!r} is not callable")
    return fn


def manifest_for(
    *,
    title: str,
    image_id: str,
    batch_id: str,
    approval_id: str,
    models: list[dict[str, Any]],
    licences: list[str],
    software_version: str,
    pipeline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest every Atelier image carries: c2pa.created by a trained model, and the Atelier record
    (with the pipeline configuration that made it: `{"name", "stages"}`)."""
    agents = ", ".join(f"{m['role']}={m['name']}" for m in models)
    stages = "+".join((pipeline or {}).get("stages") or ["base", "refiner"])
    extra = {"pipeline": pipeline} if pipeline else {}
    return {
        "claim_generator_info": [{"name": "atelier", "version": software_version}],
        "title": title,
        "format": "image/png",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": DIGITAL_SOURCE_TYPE,
                            "softwareAgent": {"name": f"Atelier SDXL {stages} ({agents})"},
                        }
                    ]
                },
            },
            {
                "label": ATELIER_ASSERTION,
                "data": {
                    "image_id": image_id,
                    "batch_id": batch_id,
                    "approval_id": approval_id,
                    "models": [{"role": m["role"], "sha256": m["sha256"]} for m in models],
                    "licences": licences,
                    **extra,
                },
            },
        ],
    }
