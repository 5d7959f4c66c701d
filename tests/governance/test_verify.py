"""`governance.verify` as an attacker and a careless sender see it: forged manifests, hostile files,
old schemes and rotated keys. Records come from tests/governance/synthetic.py plus images published
here the way `publish.finalize_image` leaves them."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from governance import watermark
from governance.audit import record_event
from governance.credentials import ContentCredentials, init_test_ca, manifest_for
from governance.errors import InvalidInput
from governance.publish import encode_png, with_soft_binding
from governance.records import Image, image_id_for
from governance.verify import VerifyLimits, exit_code_for, expand_paths, verify_file, verify_files
from tests.catalogue import render_product
from tests.governance.synthetic import build_world

K_OLD = watermark.WatermarkKey(hashlib.sha256(b"verify tests: the key before rotation").digest())
K_NEW = watermark.WatermarkKey(hashlib.sha256(b"verify tests: the current key").digest())


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A small PNG whose header declares width x height (8-bit grey), with whatever IDAT is given."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", idat or zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def world(sessions, tmp_path):
    """The synthetic world plus two 512 px product shots published with atelier-dctss (one per key of
    the ring) and one published before the change, marked with invisible-watermark dwtDct."""
    w = build_world(sessions, tmp_path)
    keys = init_test_ca(tmp_path / "keys")
    signer = ContentCredentials.from_files(keys.chain, keys.key, keys.trust_anchors)
    files: dict[str, tuple[Path, np.ndarray]] = {}
    with sessions.begin() as s:
        template = s.get(Image, w.published[0])
        specs = [
            ("dctss-old-key", watermark.SCHEME_DCTSS, K_OLD, ("pure-white", "bottle", "white")),
            ("dctss-new-key", watermark.SCHEME_DCTSS, K_NEW, ("pastel", "ball", "green")),
            ("dwtdct", watermark.SCHEME_DWTDCT, None, ("grey", "box", "navy")),
        ]
        for n, (name, scheme, key, (bg, product, colour)) in enumerate(specs):
            image_id = image_id_for(template.prompt_id, 10 + n)
            payload = watermark.payload_for_image(image_id)
            pixels = render_product(bg, product, colour, 512, grain=3.0)
            marked = watermark.embed(pixels, payload, key=key, scheme=scheme)
            manifest = manifest_for(
                title=name,
                image_id=image_id,
                batch_id=template.batch_id,
                approval_id="a",
                models=[],
                licences=[],
                software_version="test",
            )
            data = signer.sign_png(encode_png(marked), with_soft_binding(manifest, payload, key or K_NEW))
            path = tmp_path / f"{name}.png"
            path.write_bytes(data)
            s.add(
                Image(
                    id=image_id,
                    prompt_id=template.prompt_id,
                    batch_id=template.batch_id,
                    run_id=template.run_id,
                    image_index=10 + n,
                    seed="1",
                    status="published",
                    width=512,
                    height=512,
                    safety_model="tiny",
                    safety_policy="v1",
                    safety_scores={},
                    safety_verdict="passed",
                    safety_reasons=[],
                    sha256=hashlib.sha256(data).hexdigest(),
                    watermark_payload=f"{payload:012x}",
                    watermark_scheme=scheme,
                    watermark_key_id=key.key_id if key else None,
                    phash=None,
                    store_url=w.store.url,
                    store_key=f"{name}.png",
                )
            )
            files[name] = (path, marked)
        record_event(s, "ops", "test.fixture", "image", "three")  # every write is audited (invariant 3)
    return w, files, keys.trust_anchors.read_bytes()


def check(sessions, path, anchors, keys=(K_NEW, K_OLD), limits=None):
    """`verify_file`'s result as the `--json` output a user reads (its `to_dict()`)."""
    with sessions() as s:
        return verify_file(s, path, anchors, list(keys), limits).to_dict()


def test_published_files_are_original_and_stripped_copies_are_found_by_watermark(sessions, world, tmp_path):
    _w, files, anchors = world
    for name, (path, marked) in files.items():
        out = check(sessions, path, anchors)
        assert out["verdict"] == "original" and "c2pa" in out["identified_by"], name
        assert out["signals"]["c2pa"]["soft_binding"]["alg"] == "com.atelier.dctss.1"
        if name != "dwtdct":  # the manifest's record of the mark is what the pixels carry
            assert out["signals"]["c2pa"]["soft_binding_matches_pixels"] is True, out["signals"]
        copy = tmp_path / f"copy-{name}.png"
        copy.write_bytes(png_bytes(marked))  # same pixels, metadata stripped: new bytes, no manifest
        out = check(sessions, copy, anchors)
        assert out["verdict"] == "derived" and out["identified_by"] == ["watermark"], (name, out["signals"])
        assert out["image_id"] is not None and out["trace"] is not None


def test_an_image_marked_before_the_change_stays_verifiable(sessions, world, tmp_path):
    _w, files, anchors = world
    _path, marked = files["dwtdct"]
    copy = tmp_path / "legacy-copy.png"
    copy.write_bytes(png_bytes(marked))
    out = check(sessions, copy, anchors)
    assert out["verdict"] == "derived" and out["signals"]["watermark"]["scheme"] == watermark.SCHEME_DWTDCT


def test_after_rotation_images_marked_with_the_earlier_key_still_verify(sessions, world, tmp_path):
    _w, files, anchors = world
    _path, marked = files["dctss-old-key"]
    copy = tmp_path / "old-key-copy.jpg"
    PILImage.fromarray(marked).save(copy, "JPEG", quality=85)
    out = check(sessions, copy, anchors)
    assert out["verdict"] == "derived" and out["signals"]["watermark"]["key_id"] == K_OLD.key_id
    out = check(sessions, copy, anchors, keys=(K_NEW,))  # the earlier key dropped from the ring: not found
    assert "watermark" not in out["identified_by"] and out["verdict"] == "unknown"


def test_a_forged_manifest_from_a_look_alike_ca_attributes_nothing(sessions, world, tmp_path):
    w, files, anchors = world
    # Mallory's CA has exactly Atelier's test CA's names; she copies a real image's Atelier assertion
    # onto a noise image and signs it. The manifest is well-formed and well-signed ("Valid") ...
    mallory = init_test_ca(tmp_path / "mallory")
    forger = ContentCredentials.from_files(mallory.chain, mallory.key, None)
    real = forger.read(files["dctss-new-key"][0].read_bytes(), "image/png")  # anyone can read a manifest
    claimed = real.atelier["image_id"]
    manifest = manifest_for(
        title="x",
        image_id=claimed,
        batch_id=real.atelier["batch_id"],
        approval_id=real.atelier["approval_id"],
        models=[],
        licences=[],
        software_version="1",
    )
    noise = np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    forged = tmp_path / "forged.png"
    forged.write_bytes(forger.sign_png(encode_png(noise), manifest))

    out = check(sessions, forged, anchors)

    assert out["signals"]["c2pa"]["state"] == "Valid" and not out["signals"]["c2pa"]["trusted"]
    assert out["verdict"] == "unknown" and out["image_id"] is None and out["trace"] is None
    assert out["claim"] == {"image_id": claimed, "verified": False, "note": out["claim"]["note"]}
    assert "does not chain" in out["claim"]["note"]
    assert exit_code_for([out["verdict"]]) == 12


def test_an_untrusted_manifest_on_our_pixels_is_derived_by_the_watermark_and_the_claim_flagged(
    sessions, world, tmp_path
):
    w, files, anchors = world
    mallory = init_test_ca(tmp_path / "mallory")
    forger = ContentCredentials.from_files(mallory.chain, mallory.key, None)
    _path, marked = files["dctss-new-key"]
    with sessions() as s:
        other_id = s.query(Image).filter(Image.store_key == "dctss-old-key.png").one().id
        ours_id = s.query(Image).filter(Image.store_key == "dctss-new-key.png").one().id
    manifest = manifest_for(
        title="x", image_id=other_id, batch_id="b", approval_id="a", models=[], licences=[], software_version="1"
    )
    resigned = tmp_path / "resigned.png"
    resigned.write_bytes(forger.sign_png(encode_png(marked), manifest))

    out = check(sessions, resigned, anchors)

    assert out["verdict"] == "derived" and out["identified_by"] == ["watermark"] and out["image_id"] == ours_id
    assert out["claim"]["verified"] is False and f"points to image {ours_id}" in out["claim"]["note"]


def test_without_trust_anchors_no_manifest_is_trusted(sessions, world):
    _w, files, _anchors = world
    path, _ = files["dctss-new-key"]
    out = check(sessions, path, None)
    assert out["verdict"] == "original"  # the bytes still match
    assert out["signals"]["c2pa"]["state"] == "Valid" and "c2pa" not in out["identified_by"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(png_declaring(30000, 30000)), "decompression bomb"),
        (lambda p: p.write_bytes(png_declaring(9000, 9000)), r"9000x9000 pixels \(81 MP\), over the limit of 64 MP"),
        (lambda p: p.write_bytes(png_bytes(render_product("grey", "box", "red", 512))[:5000]), "damaged or truncated"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100), "not an image file"),
        (lambda p: p.write_text("meeting notes"), "not an image file"),
        (lambda p: p.write_bytes(b""), "not an image file"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_hostile_files_are_one_clear_refusal(sessions, world, tmp_path, make, message):
    path = tmp_path / "hostile.png"
    make(path)
    with pytest.raises(InvalidInput, match=message) as info:
        check(sessions, path, world[2])
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_devices_and_oversized_files_are_refused_before_reading(sessions, world, tmp_path):
    with pytest.raises(InvalidInput, match="not a regular file"):
        check(sessions, Path("/dev/zero"), world[2])
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(render_product("grey", "box", "red", 512)))
    with pytest.raises(InvalidInput, match="over the limit of 1,024 bytes"):
        check(sessions, big, world[2], limits=VerifyLimits(max_file_bytes=1024))
    with pytest.raises(InvalidInput, match="No such file"):
        check(sessions, tmp_path / "missing.png", world[2])


def test_many_files_and_folders_in_one_call(sessions, world, tmp_path):
    _w, files, anchors = world
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(files["dctss-new-key"][0].read_bytes())
    (folder / "b.txt").write_text("not an image")
    (folder / ".hidden.png").write_text("skipped")
    paths = expand_paths([folder, files["dwtdct"][0]])
    assert [p.name for p in paths] == ["b.txt", "a.png", "dwtdct.png"]
    with sessions() as s:
        results = list(verify_files(s, paths, anchors, [K_NEW, K_OLD]))
    assert [r.verdict for r in results] == ["error", "original", "original"]
    assert "not an image file" in (results[0].error or "") and results[0].signals is None
    assert exit_code_for(r.verdict for r in results) == 2 and results[0].exit_code == 2
    assert exit_code_for(["original", "derived", "unknown"]) == 12
    assert exit_code_for(["original", "tampered", "unknown"]) == 11


def test_without_a_watermark_key_verify_says_the_mark_was_not_checked(sessions, world):
    _w, files, anchors = world
    path, _ = files["dctss-new-key"]
    out = check(sessions, path, anchors, keys=())
    assert out["verdict"] == "original"  # bytes and manifest still count
    signal = out["signals"]["watermark"]  # only the legacy decoder could run: it says what it could not read
    assert signal["scheme"] == "invisible-watermark dwtDct" and "ATELIER_WATERMARK_KEY_FILE" in signal["note"]
    with sessions() as s:  # and with no legacy image either, the mark is plainly "not checked"
        from governance.verify import Candidates

        result = verify_file(s, path, anchors, [], None, Candidates())
    assert result.signals is not None and result.signals.watermark is not None
    assert result.signals.watermark.verdict == "not checked"
    assert "ATELIER_WATERMARK_KEY_FILE" in (result.signals.watermark.reason or "")
