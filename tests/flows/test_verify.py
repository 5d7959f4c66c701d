"""`atelier verify` on published images and on the copies that turn up in the wild.

One real run (tiny models, local store) publishes a small batch; each test then hands `verify`
a file as compliance would receive it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from tests.flows.conftest import governed_run

ROWS = [
    {"row_id": f"sku-{i}", "prompt": f"studio photo of product {i}", "seed": 700 + i, "width": w, "height": h,
     "steps": 3}
    for i, (w, h) in enumerate([(256, 256), (256, 256), (320, 256), (512, 512), (512, 512), (512, 384)])
]


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_models, prefect_server) -> tuple[list[str], list[dict]]:
    data = tmp_path_factory.mktemp("verify")
    flags, _batch_id = governed_run(data, tiny_models, ROWS, "marketing")
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
