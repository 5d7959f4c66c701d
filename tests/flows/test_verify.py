"""`atelier verify` on published images and on the copies that turn up in the wild.

One real run (tiny models, local store) publishes a small batch; each test then hands `verify`
a file as compliance would receive it.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from tests.flows.conftest import governed_run

ROWS = [
    {
        "row_id": f"sku-{i}",
        "prompt": f"studio photo of product {i}",
        "seed": 700 + i,
        "width": w,
        "height": h,
        "steps": 3,
    }
    for i, (w, h) in enumerate([(256, 256), (256, 256), (320, 256), (512, 512), (512, 512), (512, 384)])
]


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_models, prefect_server) -> tuple[list[str], list[dict]]:
    data = tmp_path_factory.mktemp("verify")
    flags, _batch_id = governed_run(data, tiny_models, ROWS, "catalogue")
    from flows.runtime import Runtime
    from flows.settings import get_settings
    from governance.records import Image as ImageRecord

    rt = Runtime(get_settings(data_dir=data / "d"))
    with rt.sessions() as s:
        records = [
            {"id": i.id, "key": i.store_key, "row_id": i.prompt.row_id}
            for i in s.query(ImageRecord).filter(ImageRecord.status == "published").all()
        ]
    assert len(records) >= 4, "the tiny safety model quarantined most of the batch"
    return flags, [{**r, "path": data / "d" / "store" / r["key"]} for r in records]


def verify(flags: list[str], path: Path, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["verify", str(path), "--json", *flags])
    return code, json.loads(capsys.readouterr().out)


def _pixels(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


TRANSFORMS = {
    "resize-50%": lambda im, out: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(out, "PNG"),
    "jpeg-q85-444": lambda im, out: im.save(out, "JPEG", quality=85, subsampling=0),
    "png-stripped": lambda im, out: Image.fromarray(np.asarray(im)).save(out, "PNG"),
}


def test_every_published_image_is_original_with_trusted_credentials(published, capsys) -> None:
    flags, records = published
    for r in records:
        code, out = verify(flags, r["path"], capsys)
        assert code == 0 and out["verdict"] == "original" and out["image_id"] == r["id"]
        c2pa = out["signals"]["c2pa"]
        assert c2pa["state"] == "Trusted" and c2pa["atelier"]["image_id"] == r["id"]
        assert c2pa["atelier"]["licences"] == ["creativeml-openrail++-m"]
        assert {m["role"] for m in c2pa["atelier"]["models"]} >= {"base_unet", "refiner_unet"}
        assert out["signals"]["watermark"]["matched_bits"] >= 36
        assert out["trace"]["prompt"]["row_id"] == r["row_id"]


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_altered_copies_are_traced_to_their_record(published, capsys, tmp_path, name) -> None:
    flags, records = published
    identified = []
    for r in records:
        copy = tmp_path / f"{r['id']}.{'jpg' if 'jpeg' in name else 'png'}"
        TRANSFORMS[name](_pixels(r["path"]), copy)
        code, out = verify(flags, copy, capsys)
        identified.append(out["verdict"] == "derived" and out["image_id"] == r["id"])
        assert out["verdict"] in ("derived", "unknown") and code in (10, 12)
    print(f"\n{name}: {sum(identified)}/{len(identified)} identified")
    assert all(identified)


def test_one_flipped_byte_in_the_pixel_data_is_tampered(published, capsys, tmp_path) -> None:
    flags, records = published
    data = bytearray(records[0]["path"].read_bytes())
    idat = data.find(b"IDAT")
    data[idat + 64] ^= 0x01
    (tmp_path / "flipped.png").write_bytes(bytes(data))
    code, out = verify(flags, tmp_path / "flipped.png", capsys)
    assert code == 11 and out["verdict"] == "tampered"
    assert out["claimed_image_id"] == records[0]["id"]
    assert any("dataHash" in f for f in out["signals"]["c2pa"]["failures"])


def test_an_unrelated_image_is_unknown(published, capsys, tmp_path) -> None:
    flags, _ = published
    rng = np.random.default_rng(99)
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(tmp_path / "other.png")
    code, out = verify(flags, tmp_path / "other.png", capsys)
    assert code == 12 and out["verdict"] == "unknown" and out["image_id"] is None


def test_a_file_that_is_not_an_image_is_a_clear_error(published, capsys, tmp_path) -> None:
    flags, _ = published
    (tmp_path / "notes.png").write_text("meeting notes")
    capsys.readouterr()
    code = main(["verify", str(tmp_path / "notes.png"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "not an image file" in err and "Traceback" not in err


def test_a_look_alike_ca_cannot_borrow_a_real_images_identity(published, capsys, tmp_path) -> None:
    # The attack as filed: an unrelated noise image, signed by a self-made CA with the same names as
    # Atelier's test CA, carrying the com.atelier.provenance assertion copied from a real image.
    from governance.credentials import ContentCredentials, init_test_ca, manifest_for
    from governance.publish import encode_png

    flags, records = published
    mallory = init_test_ca(tmp_path / "mallory")
    forger = ContentCredentials.from_files(mallory.chain, mallory.key, None)
    real = forger.read(records[0]["path"].read_bytes(), "image/png")
    manifest = manifest_for(
        title="x.png", image_id="-", batch_id="-", approval_id="-", models=[], licences=[], software_version="0.1.0"
    )
    manifest["assertions"][1]["data"] = real.atelier  # copied verbatim from the real image
    noise = np.random.default_rng(4).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    forged = tmp_path / "forged.png"
    forged.write_bytes(forger.sign_png(encode_png(noise), manifest))

    code, out = verify(flags, forged, capsys)
    assert code == 12 and out["verdict"] == "unknown" and out["image_id"] is None and out["trace"] is None
    assert out["claim"]["image_id"] == records[0]["id"] and out["claim"]["verified"] is False

    capsys.readouterr()
    assert main(["verify", str(forged), *flags]) == 12
    shown = capsys.readouterr().out
    assert "UNKNOWN" in shown and "UNTRUSTED" in shown and "UNVERIFIED" in shown
    assert "maria" not in shown and "omar" not in shown and "studio photo" not in shown  # no record's people or prompt


def test_hostile_files_give_one_line_and_exit_2_never_a_traceback(published, capsys, tmp_path) -> None:
    from tests.governance.test_verify import png_declaring

    flags, _ = published
    cases = {
        "bomb.png": png_declaring(30000, 30000),
        "huge.png": png_declaring(9000, 9000),
        "truncated.png": png_declaring(2000, 2000, zlib.compress(b"\0" * 50_000)[:-40]),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for target in [*(tmp_path / n for n in cases), Path("/dev/zero")]:
        capsys.readouterr()
        code = main(["verify", str(target), *flags])
        captured = capsys.readouterr()
        assert code == 2, (target, captured)
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
        assert "Traceback" not in captured.err + captured.out


def test_a_folder_of_files_is_verified_in_one_process(published, capsys, tmp_path) -> None:
    flags, records = published
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for r in records:
        (inbox / f"{r['id'].replace('/', '_')}.png").write_bytes(r["path"].read_bytes())
        _pixels(r["path"]).save(inbox / f"{r['id'].replace('/', '_')}-copy.jpg", "JPEG", quality=85)
    (inbox / "readme.txt").write_text("not an image")
    capsys.readouterr()
    code = main(["verify", str(inbox), "--json", *flags])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 2  # the text file could not be checked: the most serious outcome
    by_name = {Path(x["file"]).name: x for x in lines}
    assert len(lines) == 2 * len(records) + 1 and by_name["readme.txt"]["verdict"] == "error"
    for r in records:
        stem = r["id"].replace("/", "_")
        assert by_name[f"{stem}.png"]["verdict"] == "original" and by_name[f"{stem}.png"]["image_id"] == r["id"]
        copy = by_name[f"{stem}-copy.jpg"]
        assert copy["verdict"] == "derived" and copy["image_id"] == r["id"] and "watermark" in copy["identified_by"]
    capsys.readouterr()
    assert main(["verify", *(str(p) for p in sorted(inbox.glob("*.png"))), *flags]) == 0
    table = capsys.readouterr().out
    assert f"{len(records)} files: {len(records)} original" in table


def test_a_large_legal_image_is_verified_in_bounded_memory(published, tmp_path) -> None:
    # 7900 x 7900 (62 MP, under the 64 MP limit): decoded as luma only, in a process of its own
    flags, _ = published
    big = tmp_path / "big.png"
    rows = b"".join(b"\0" + bytes([y * 255 // 7900]) * (3 * 7900) for y in range(7900))
    ihdr = struct.pack(">IIBBBBB", 7900, 7900, 8, 2, 0, 0, 0)
    big.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows, 1)) + _chunk(b"IEND", b"")
    )
    del rows
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of pytest would report pytest's
    measure = (
        "import sys\nfrom flows.cli import main\ncode = main(sys.argv[1:])\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
        "print('peak-rss-kb', hwm, file=sys.stderr)\nsys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", measure, "verify", str(big), *flags], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 12, done.stderr[-2000:]
    peak_mb = int(done.stderr.split("peak-rss-kb")[1].split()[0]) / 1024
    assert peak_mb <= 500, f"peak RSS {peak_mb:.0f} MB"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
