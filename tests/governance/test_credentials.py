"""C2PA content credentials: the test CA, signing, reading back, and what tampering looks like."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from PIL import Image

from governance.credentials import (
    ATELIER_ASSERTION,
    DIGITAL_SOURCE_TYPE,
    ContentCredentials,
    init_test_ca,
    manifest_for,
    read_credentials,
)
from governance.errors import GovernanceCheckFailed


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    return init_test_ca(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def signer(keys) -> ContentCredentials:
    return ContentCredentials.from_files(keys.chain, keys.key, keys.trust_anchors)


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


MANIFEST = manifest_for(
    title="x.png",
    image_id="img-1",
    batch_id="batch-1",
    approval_id="appr-1",
    models=[{"role": "base_unet", "name": "tiny", "sha256": "ab" * 32}],
    licences=["creativeml-openrail++-m"],
    software_version="test",
)


def test_test_ca_says_not_for_production_in_the_certificate(keys) -> None:
    certs = x509.load_pem_x509_certificates(keys.chain.read_bytes())
    assert len(certs) == 2
    for cert in certs:
        assert "NOT FOR PRODUCTION" in cert.subject.rfc4514_string()
    assert oct(keys.key.stat().st_mode)[-3:] == "600"
    assert init_test_ca(keys.chain.parent) == keys  # idempotent: existing keys are kept


def test_signed_png_carries_trusted_credentials_with_atelier_assertions(signer) -> None:
    signed = signer.sign_png(_png(), MANIFEST)
    report = signer.read(signed, "image/png")
    assert report.present and report.state == "Trusted" and report.intact and report.failures == []
    assert report.atelier == {
        "image_id": "img-1",
        "batch_id": "batch-1",
        "approval_id": "appr-1",
        "models": [{"role": "base_unet", "sha256": "ab" * 32}],
        "licences": ["creativeml-openrail++-m"],
    }
    assert "NOT FOR PRODUCTION" in report.signer["issuer"]
    import c2pa

    with c2pa.Reader("image/png", io.BytesIO(signed)) as reader:
        manifest = reader.get_active_manifest()
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    assert actions[0]["action"] == "c2pa.created" and actions[0]["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert "tiny" in actions[0]["softwareAgent"]["name"]
    assert any(a["label"] == ATELIER_ASSERTION for a in manifest["assertions"])


def test_without_trust_anchors_the_signature_is_valid_but_not_trusted(signer) -> None:
    report = read_credentials(signer.sign_png(_png(), MANIFEST), "image/png")
    assert report.state == "Valid" and report.intact


def test_one_flipped_pixel_byte_invalidates_the_manifest(signer) -> None:
    signed = bytearray(signer.sign_png(_png(), MANIFEST))
    idat = signed.find(b"IDAT")
    signed[idat + 40] ^= 0x01
    report = signer.read(bytes(signed), "image/png")
    assert report.present and report.state == "Invalid" and not report.intact
    assert any("dataHash.mismatch" in f for f in report.failures)


def test_a_file_without_a_manifest_says_so(signer) -> None:
    assert not signer.read(_png(), "image/png").present


def test_kms_style_callback_signs_like_a_key(keys, tmp_path: Path, monkeypatch) -> None:
    """The HSM/KMS hook: a function that signs bytes; here backed by the test key (no KMS exists here)."""
    import sys

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key = serialization.load_pem_private_key(keys.key.read_bytes(), None)
    (tmp_path / "fake_kms.py").write_text("SIGN = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_kms  # type: ignore[import-not-found]

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    fake_kms.SIGN = sign
    creds = ContentCredentials.from_files(keys.chain, None, keys.trust_anchors, callback="fake_kms:SIGN")
    assert creds.read(creds.sign_png(_png(), MANIFEST), "image/png").state == "Trusted"
    sys.modules.pop("fake_kms", None)


def test_missing_signer_is_an_error_not_a_skip(tmp_path: Path) -> None:
    with pytest.raises(GovernanceCheckFailed, match="atelier keys init"):
        ContentCredentials.from_files(tmp_path / "nope.pem", tmp_path / "nope-key.pem", None)
    with pytest.raises(GovernanceCheckFailed, match="cannot be loaded"):
        ContentCredentials.from_files(tmp_path / "nope.pem", None, None, callback="no_such_module:fn")


def test_a_key_that_does_not_match_the_certificate_is_refused(keys, tmp_path: Path) -> None:
    other = init_test_ca(tmp_path / "other")
    with pytest.raises(GovernanceCheckFailed):
        creds = ContentCredentials.from_files(keys.chain, other.key, keys.trust_anchors)
        creds.sign_png(_png(), MANIFEST)
