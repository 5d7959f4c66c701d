"""Pipeline configurations (issue 16): the file that defines them, what intake checks of a row's
`pipeline` cell, the content hash approvals pin, how a row's images map to configurations, and what
a submitted batch records.

Files are written into tmp_path; the database tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from governance.batches import batch_progress, submit_batch
from governance.errors import InvalidInput
from governance.intake import content_sha256, load_prompts
from governance.pipelines import (
    DEFAULT_FILE,
    DEFAULT_PIPELINE,
    LEGACY,
    PipelineSet,
    batch_configs,
    config_of,
    default_pipelines,
    engine_needs,
    image_pipeline,
    image_slot,
    load_pipelines,
)
from governance.records import Batch, Prompt
from tests.governance.conftest import good_rows, write_csv

PACKAGED = json.loads(DEFAULT_FILE.read_text(encoding="utf-8"))


# --- helpers ---------------------------------------------------------------------------------


def row(row_id: str = "r1", **cells: object) -> dict[str, object]:
    """One prompt row: a small valid row, with `cells` set or added."""
    return {"row_id": row_id, "prompt": f"studio photo of {row_id}", "seed": 7, "width": 256, "height": 256} | cells


def table(path: Path, *rows: dict[str, object]) -> Path:
    """A CSV prompt table of `rows`; a column some rows lack is an empty cell in those rows."""
    header = list(dict.fromkeys(key for r in rows for key in r))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def configuration(refiner: bool = False, **fields: object) -> dict[str, object]:
    entry: dict[str, object] = {"refiner": refiner, "steps": 40, "guidance_scale": 5.0}
    if refiner:
        entry["refiner_split"] = 0.8
    return entry | fields


def pipelines_file(path: Path, configurations: dict[str, object], version: str = "test-v1") -> Path:
    path.write_text(json.dumps({"version": version, "configurations": configurations}), encoding="utf-8")
    return path


def custom(tmp_path: Path, configurations: dict[str, object]) -> PipelineSet:
    return load_pipelines(pipelines_file(tmp_path / "pipelines.json", configurations))


def rules(report) -> set[tuple[int | None, str, str]]:
    return {(f.row, f.column, f.rule) for f in report.failures}


def failure(report, rule: str):
    found = [f for f in report.failures if f.rule == rule]
    assert found, f"no {rule} in:\n{report.format_failures()}"
    return found[0]


def old_content_sha256(rows) -> str:
    """The content hash as it was computed before configurations existed (no `pipeline` key)."""
    records = []
    for r in rows:
        record = dataclasses.asdict(r)
        del record["pipeline"]
        records.append(record)
    payload = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --- the packaged file -----------------------------------------------------------------------


def test_packaged_file_defines_base_and_base_plus_refiner():
    pipelines = load_pipelines()

    assert pipelines.names == ["base", "base+refiner"]
    assert pipelines.version == "pipelines-v1"
    assert pipelines.sha256 == hashlib.sha256(DEFAULT_FILE.read_bytes()).hexdigest()
    base, both = pipelines.get("base"), pipelines.get("base+refiner")
    assert (base.refiner, base.stages, base.refiner_split) == (False, ("base",), None)
    assert (both.refiner, both.stages, both.refiner_split) == (True, ("base", "refiner"), 0.8)
    assert default_pipelines() == pipelines
    assert DEFAULT_PIPELINE in pipelines.configs


def test_a_configuration_record_reads_back_as_the_same_configuration():
    for config in load_pipelines().configs.values():
        assert batch_configs({"configurations": {config.name: config.record()}}) == {config.name: config}


def test_unknown_configuration_name_suggests_the_close_one():
    with pytest.raises(InvalidInput, match=r"unknown pipeline configuration 'basee' \(did you mean 'base'\?\)"):
        load_pipelines().get("basee")


# --- a bad configuration file: one line naming the file and the field ------------------------


def _mutated(change) -> dict[str, object]:
    data = copy.deepcopy(PACKAGED)
    change(data["configurations"])
    return data


BAD_FILES = {
    "unknown_field": (lambda c: c["base"].update(colour="blue"), "configurations.base.colour"),
    "refiner_not_bool": (lambda c: c["base"].update(refiner="yes"), "configurations.base.refiner"),
    "split_without_refiner": (lambda c: c["base"].update(refiner_split=0.5), "configurations.base.refiner_split"),
    "split_of_one": (
        lambda c: c["base+refiner"].update(refiner_split=1.0),
        "configurations.base+refiner.refiner_split",
    ),
    "unknown_scheduler": (lambda c: c["base"].update(scheduler="warp9"), "configurations.base.scheduler"),
    "dtype_float8": (lambda c: c["base"].update(dtype="float8"), "configurations.base.dtype"),
    "min_over_max": (lambda c: c["base"].update(min_side=1024, max_side=512), "configurations.base.min_side"),
    "bad_name": (lambda c: c.update({"Base Refiner": c.pop("base")}), "configurations.Base Refiner"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_configuration_file_is_one_line_naming_file_and_field(tmp_path, case):
    change, field = BAD_FILES[case]
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps(_mutated(change)), encoding="utf-8")

    with pytest.raises(InvalidInput) as caught:
        load_pipelines(path)

    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert f" {field} " in message, message


def test_bad_configuration_file_messages_say_what_is_allowed(tmp_path):
    def message(case: str) -> str:
        path = tmp_path / f"{case}.json"
        path.write_text(json.dumps(_mutated(BAD_FILES[case][0])), encoding="utf-8")
        with pytest.raises(InvalidInput) as caught:
            load_pipelines(path)
        return str(caught.value)

    assert "true or false" in message("refiner_not_bool")
    assert "no meaning without the refiner" in message("split_without_refiner")
    assert "strictly between 0 and 1" in message("split_of_one")
    assert "euler" in message("unknown_scheduler")  # the known schedulers are listed
    assert "float16" in message("dtype_float8")
    assert "larger than max_side" in message("min_over_max")
    assert "lower-case" in message("bad_name")


def test_configuration_file_that_is_not_json_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "pipelines.json"
    path.write_text('{"version": "v1", "configurations": {', encoding="utf-8")

    with pytest.raises(InvalidInput, match="not valid JSON") as caught:
        load_pipelines(path)

    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


# --- intake: the pipeline cell ---------------------------------------------------------------


def test_rows_name_configurations_and_an_empty_cell_is_base_plus_refiner(tmp_path):
    path = table(
        tmp_path / "p.csv",
        row("a", pipeline="base"),
        row("b", pipeline=" base , base+refiner "),
        row("c"),
    )

    report = load_prompts(path)

    assert report.ok, report.format_failures()
    assert [r.pipeline for r in report.rows] == ["base", "base,base+refiner", "base+refiner"]
    assert report.rows[1].pipelines == ["base", "base+refiner"]


def test_unknown_configuration_in_a_row_suggests_base(tmp_path):
    report = load_prompts(table(tmp_path / "p.csv", row("a", pipeline="basee")))

    assert rules(report) == {(1, "pipeline", "pipeline_unknown")}
    message = failure(report, "pipeline_unknown").message
    assert "did you mean 'base'?" in message
    assert "base, base+refiner" in message  # and lists what there is


def test_configuration_named_twice_in_a_row_is_refused(tmp_path):
    report = load_prompts(table(tmp_path / "p.csv", row("a", pipeline="base,base")))

    assert rules(report) == {(1, "pipeline", "pipeline_duplicate")}
    assert "name each once" in failure(report, "pipeline_duplicate").message


def test_a_row_compares_at_most_four_configurations(tmp_path):
    five = custom(tmp_path, {name: configuration() for name in ("a", "b", "c", "d", "e")})
    path = table(tmp_path / "p.csv", row("r1", pipeline="a,b,c,d,e"), row("r2", pipeline="a,b,c,d"))

    report = load_prompts(path, pipelines=five)

    assert rules(report) == {(1, "pipeline", "pipeline_too_many")}
    assert "at most 4" in failure(report, "pipeline_too_many").message


def test_five_unknown_names_are_one_failure_and_too_many(tmp_path):
    report = load_prompts(table(tmp_path / "p.csv", row("a", pipeline="v,w,x,y,z")))

    unknown = [f for f in report.failures if f.rule == "pipeline_unknown"]
    assert len(unknown) == 1 and "'v'" in unknown[0].message and "(and 4 more unknown)" in unknown[0].message
    assert rules(report) == {(1, "pipeline", "pipeline_unknown"), (1, "pipeline", "pipeline_too_many")}


def test_refiner_split_on_a_base_only_row_is_refused_but_an_empty_cell_is_fine(tmp_path):
    path = table(
        tmp_path / "p.csv",
        row("a", pipeline="base", refiner_split="0.7"),
        row("b", pipeline="base", refiner_split=""),
        row("c", pipeline="base,base+refiner", refiner_split="0.7"),
    )

    report = load_prompts(path)

    assert rules(report) == {(1, "refiner_split", "refiner_split_unused")}
    message = failure(report, "refiner_split_unused").message
    assert "runs no refiner" in message
    assert "leave it empty" in message


def test_comparison_row_needs_a_size_every_configuration_makes(tmp_path):
    pipelines = custom(
        tmp_path,
        {"small": configuration(max_side=512), "base+refiner": configuration(refiner=True)},
    )
    path = table(
        tmp_path / "p.csv",
        row("big", pipeline="small,base+refiner", width=1024, height=512),
        row("fits", pipeline="small,base+refiner", width=512, height=512),
    )

    report = load_prompts(path, pipelines=pipelines)

    assert rules(report) == {(1, "width", "pipeline_size")}
    message = failure(report, "pipeline_size").message
    assert "small" in message
    assert "256..512" in message
    assert "a comparison row needs a size every configuration makes" in message


def test_comparison_row_must_give_a_value_its_configurations_default_differently(tmp_path):
    pipelines = custom(tmp_path, {"quick": configuration(steps=30), "slow": configuration(steps=40)})

    left_empty = load_prompts(table(tmp_path / "a.csv", row("a", pipeline="quick,slow")), pipelines=pipelines)
    given = load_prompts(table(tmp_path / "b.csv", row("a", pipeline="quick,slow", steps=25)), pipelines=pipelines)
    single = load_prompts(
        table(tmp_path / "c.csv", row("a", pipeline="quick"), row("b", pipeline="slow")), pipelines=pipelines
    )

    assert rules(left_empty) == {(1, "pipeline", "pipeline_defaults_differ")}
    message = failure(left_empty, "pipeline_defaults_differ").message
    assert "steps" in message and "quick 30" in message and "slow 40" in message
    assert "give steps in this row" in message
    assert given.ok, given.format_failures()
    assert given.rows[0].steps == 25
    assert single.ok, single.format_failures()
    assert [r.steps for r in single.rows] == [30, 40]  # each takes its configuration's default


def test_configurations_with_different_samplers_cannot_share_a_batch(tmp_path):
    pipelines = custom(
        tmp_path,
        {"fast": configuration(scheduler="euler"), "smooth": configuration(scheduler="ddim")},
    )

    mixed = load_prompts(
        table(tmp_path / "a.csv", row("a", pipeline="fast"), row("b", pipeline="smooth")), pipelines=pipelines
    )
    one = load_prompts(
        table(tmp_path / "b.csv", row("a", pipeline="fast"), row("b", pipeline="fast")), pipelines=pipelines
    )

    assert rules(mixed) == {(None, "pipeline", "pipeline_engine")}
    message = failure(mixed, "pipeline_engine").message
    assert "fast, smooth" in message
    assert "separate batches" in message
    assert one.ok, one.format_failures()


def test_default_pipeline_fills_empty_cells_only(tmp_path):
    path = table(
        tmp_path / "p.csv", row("a"), row("b", pipeline="base+refiner"), row("c", pipeline="base,base+refiner")
    )

    report = load_prompts(path, default_pipeline="base")

    assert report.ok, report.format_failures()
    assert [r.pipeline for r in report.rows] == ["base", "base+refiner", "base,base+refiner"]


def test_control_character_in_the_pipeline_cell_is_refused_and_shown_escaped(tmp_path):
    report = load_prompts(table(tmp_path / "p.csv", row("a", pipeline="base\x1b[8m")))

    assert rules(report) == {(1, "pipeline", "one_line"), (1, "pipeline", "pipeline_unknown")}
    assert "U+001B (ESC)" in failure(report, "one_line").message
    assert "\x1b" not in report.format_failures()
    assert all("\x1b" not in f.message for f in report.failures)


def test_every_problem_of_a_file_is_reported_together(tmp_path):
    path = table(
        tmp_path / "p.csv",
        row("r1", pipeline="basee"),
        row("r2", pipeline="base,base"),
        row("r3", pipeline="base", refiner_split="0.5"),
        row("r4", pipeline="base", seed="-1"),
        row("r5", pipeline="base+refiner"),
    )

    report = load_prompts(path)

    assert not report.ok
    assert report.rows == []
    assert rules(report) == {
        (1, "pipeline", "pipeline_unknown"),
        (2, "pipeline", "pipeline_duplicate"),
        (3, "refiner_split", "refiner_split_unused"),
        (4, "seed", "seed_range"),
    }


# --- the content hash ------------------------------------------------------------------------


def test_rows_of_the_default_configuration_hash_as_before_configurations_existed(tmp_path):
    no_column = load_prompts(table(tmp_path / "a.csv", row("a"), row("b", steps=4))).rows
    named = load_prompts(
        table(tmp_path / "b.csv", row("a", pipeline="base+refiner"), row("b", steps=4, pipeline="base+refiner"))
    ).rows

    assert content_sha256(no_column) == old_content_sha256(no_column)
    assert content_sha256(named) == content_sha256(no_column)
    assert "pipeline" not in no_column[0].to_dict()


def test_the_configuration_names_are_part_of_the_content_hash(tmp_path):
    def hash_of(cell: str) -> str:
        report = load_prompts(table(tmp_path / "p.csv", row("a", pipeline=cell)))
        assert report.ok, report.format_failures()
        return content_sha256(report.rows)

    default = hash_of("")
    base = hash_of("base")
    base_first = hash_of("base,base+refiner")

    assert base != default
    assert base_first != hash_of("base+refiner,base")
    assert base_first == hash_of(" base ,  base+refiner")  # spaces around names do not count
    assert len({default, base, base_first}) == 3


# --- planning: which configuration makes which image ----------------------------------------


def test_image_index_maps_to_configuration_and_seed_slot():
    cell = "base,base+refiner"

    assert [image_pipeline(cell, 2, i) for i in range(4)] == ["base", "base", "base+refiner", "base+refiner"]
    assert [image_slot(2, i) for i in range(4)] == [0, 1, 0, 1]
    assert image_pipeline(None, 2, 0) == image_pipeline(None, 2, 1) == "base+refiner"


def test_an_image_takes_the_configuration_its_batch_pinned():
    record = default_pipelines().record_for(["base", "base+refiner"])
    base_only = default_pipelines().record_for(["base"])

    assert config_of(record, "base,base+refiner", 2, 1).name == "base"
    assert config_of(record, "base,base+refiner", 2, 3).name == "base+refiner"
    assert config_of(None, None, 1, 0) == LEGACY  # a batch stored before configurations existed
    with pytest.raises(InvalidInput, match="pins no configuration 'base\\+refiner'"):
        config_of(base_only, "base+refiner", 1, 0)


def test_the_refiner_is_loaded_only_when_a_configuration_uses_it():
    pipelines = default_pipelines()
    base, both = pipelines.get("base"), pipelines.get("base+refiner")

    assert engine_needs([base]).refiner is False
    assert engine_needs([base, both]).refiner is True
    assert engine_needs([]).refiner is True  # nothing known: the legacy base + refiner


# --- a submitted batch -----------------------------------------------------------------------


def test_comparison_batch_pins_both_definitions_and_plans_every_image(sessions: sessionmaker[Session], tmp_path):
    rows = [r | {"num_images": 2, "pipeline": "base,base+refiner"} for r in good_rows(3)]

    with sessions.begin() as s:
        batch = submit_batch(s, "maria", write_csv(tmp_path / "b.csv", rows), "catalogue")
        batch_id = batch.id
        record = batch.pipelines

    assert record["version"] == "pipelines-v1"
    assert record["sha256"] == default_pipelines().sha256
    assert record["configurations"] == {
        "base": default_pipelines().get("base").record(),
        "base+refiner": default_pipelines().get("base+refiner").record(),
    }
    with sessions() as s:
        assert batch_progress(s, batch_id).planned == 12  # 3 rows x 2 configurations x 2 images


def test_batch_of_default_rows_plans_num_images_each(sessions: sessionmaker[Session], tmp_path):
    rows = [r | {"num_images": 2} for r in good_rows(3)]

    with sessions.begin() as s:
        batch = submit_batch(s, "maria", write_csv(tmp_path / "b.csv", rows), "catalogue")
        batch_id = batch.id

    with sessions() as s:
        assert batch_progress(s, batch_id).planned == 6
        assert set(s.scalars(select(Prompt.pipeline).where(Prompt.batch_id == batch_id))) == {None}
        assert sorted(s.get(Batch, batch_id).pipelines["configurations"]) == ["base+refiner"]


def test_unknown_default_pipeline_is_refused_and_nothing_is_stored(sessions: sessionmaker[Session], tmp_path):
    path = write_csv(tmp_path / "b.csv", good_rows(2))

    with pytest.raises(InvalidInput) as caught, sessions.begin() as s:
        submit_batch(s, "maria", path, "catalogue", default_pipeline="nope")

    message = str(caught.value)
    assert "\n" not in message
    assert "'nope'" in message
    assert "base, base+refiner" in message
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 0
        assert s.scalar(select(func.count()).select_from(Prompt)) == 0


def test_a_refiner_configuration_needs_two_steps_the_base_alone_one(tmp_path):
    report = load_prompts(
        table(tmp_path / "p.csv", row("a", pipeline="base+refiner", steps="1"), row("b", pipeline="base", steps="1"))
    )
    assert rules(report) == {(1, "steps", "pipeline_steps")}
    assert "2 or more" in report.failures[0].message
