"""`atelier reproduce`: a published image regenerated from its record has the same pixels.

One real run (tiny models, local store, CPU) publishes a small batch; each test then asks
`reproduce` about one of its images.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from tests.flows.conftest import governed_run

ROWS = [
    {
        "row_id": f"sku-{i}",
        "prompt": f"catalogue photo of item {i}",
        "seed": 900 + i,
        "width": 256,
        "height": 256,
        "steps": 3,
    }
    for i in range(4)
]


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_models, prefect_server) -> tuple[list[str], Path, list[dict]]:
    data = tmp_path_factory.mktemp("reproduce")
    flags, _batch_id = governed_run(data, tiny_models, ROWS, "catalogue")
    from flows.runtime import Runtime
    from flows.settings import get_settings
    from governance.records import Image as ImageRecord

    rt = Runtime(get_settings(data_dir=data / "d"))
    with rt.sessions() as s:
        records = [
            {"id": i.id, "key": i.store_key, "engine": i.run.engine}
            for i in s.query(ImageRecord).filter(ImageRecord.status == "published").all()
        ]
    assert records, "the tiny safety model quarantined the whole batch"
    return flags, data / "d" / "store", records


def reproduce(flags: list[str], image_id: str, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["reproduce", image_id, "--json", *extra, *flags])
    out = capsys.readouterr().out
    return code, json.loads(out) if out else {}


def test_the_run_records_its_sampler_and_micro_conditioning(published) -> None:
    _, _, records = published
    engine = records[0]["engine"]
    assert engine["scheduler"]["class"] == "EulerDiscreteScheduler" and engine["scheduler"]["config"]
    assert engine["config"]["scheduler"] == "euler"
    assert engine["micro_conditioning"]["aesthetic_score"] == 6.0
    assert engine["safety_model"]


def test_published_images_reproduce_bit_exact_on_cpu(published, capsys) -> None:
    flags, _, records = published
    for r in records[:2]:
        code, out = reproduce(flags, r["id"], capsys)
        assert code == 0, out
        assert out["verdict"] == "identical" and out["identical"] and out["max_abs_diff"] == 0
        assert out["pixels_sha256"]["equal"], "the regenerated, re-watermarked pixels hash as recorded"
        assert out["engine"]["scheduler"] == "euler" and any("C2PA" in n for n in out["notes"])
    capsys.readouterr()
    assert main(["reproduce", records[0]["id"], *flags]) == 0
    text = capsys.readouterr().out
    assert "IDENTICAL pixels (bit-exact)" in text and "signature that differs on every signing" in text


def test_reproduce_uses_the_runs_sampler_not_the_current_setting(published, capsys, monkeypatch) -> None:
    flags, _, records = published
    monkeypatch.setenv("ATELIER_SCHEDULER", "dpmpp_2m_karras")
    code, out = reproduce(flags, records[0]["id"], capsys)
    assert code == 0 and out["verdict"] == "identical" and out["engine"]["scheduler"] == "euler"


def test_other_model_weights_are_refused_naming_the_component(published, capsys, tiny_models, tmp_path) -> None:
    flags, _, records = published
    base = tmp_path / "base"
    shutil.copytree(tiny_models[0], base)
    weights = base / "text_encoder_2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    other = [*flags[:2], "--base-model", str(base), *flags[4:]]
    capsys.readouterr()
    code = main(["reproduce", records[0]["id"], *other])
    err = capsys.readouterr().err
    assert code == 6, err  # GovernanceCheckFailed, as when a run refuses the same weights
    assert "component text_encoder_2 (base/text_encoder_2)" in err and "the run used" in err
    assert records[0]["engine"]["components"][3]["sha256"] in err


def _rewrite_pixels(path: Path, change) -> bytes:
    original = path.read_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(original)).convert("RGB")).astype(np.int16)
    Image.fromarray(np.clip(change(pixels), 0, 255).astype(np.uint8)).save(path, "PNG")
    return original


def test_a_file_with_other_pixels_is_reported_with_its_difference(published, capsys) -> None:
    flags, store, records = published
    path = store / records[0]["key"]

    def nudged(p: np.ndarray) -> np.ndarray:  # what other hardware might give: a few values off by a little
        q = p.copy()
        q[::16, ::16] += np.where(q[::16, ::16] < 250, 3, -3)
        return q

    def edited(p: np.ndarray) -> np.ndarray:  # a real edit: a block painted over
        q = p.copy()
        q[:64, :64] = 255 - q[:64, :64]
        return q

    for change, verdict, code_wanted in ((nudged, "within_tolerance", 0), (edited, "different", 13)):
        original = _rewrite_pixels(path, change)
        try:
            code, out = reproduce(flags, records[0]["id"], capsys)
        finally:
            path.write_bytes(original)
        assert (code, out["verdict"]) == (code_wanted, verdict), out
        if change is nudged:
            assert out["max_abs_diff"] == 3 and 0 < out["mean_abs_diff"] <= 1.0
        else:
            assert out["max_abs_diff"] > 8
        assert out["pixels_sha256"]["equal"], "the reproduction itself is still exact; the file changed"


def test_unknown_image_is_a_clear_error(published, capsys) -> None:
    flags, _, _ = published
    capsys.readouterr()
    code = main(["reproduce", "no-such-image", *flags])
    err = capsys.readouterr().err
    assert code == 3 and "no image 'no-such-image'" in err and "Traceback" not in err


def test_configured_model_hashes_refuse_the_engine_before_loading(tiny_models, tmp_path, monkeypatch) -> None:
    """ATELIER_MODEL_SHA256 pins the weights a worker may load; a mismatch is a governance refusal."""
    from flows.runtime import Runtime
    from flows.settings import get_settings
    from governance.errors import GovernanceCheckFailed

    base, refiner = tiny_models
    monkeypatch.setenv("ATELIER_MODEL_SHA256", json.dumps({"vae": "0" * 64}))
    rt = Runtime(get_settings(data_dir=tmp_path, base_model=str(base), refiner_model=str(refiner)))
    assert rt.settings.model_sha256 == {"vae": "0" * 64}
    with pytest.raises(GovernanceCheckFailed, match=r"component vae \(sdxl-tiny-base/vae\) has sha256 [0-9a-f]{64}"):
        rt.engine  # noqa: B018
