"""Schemas: generated from the record declarations, versioned, migrated on read.

- the shipped ``schemas/*.v2.json`` equal what `spark_hub.records` declares (drift fails here);
- the released v1 files are never edited (pinned hashes);
- v1 rows (a real v1 build, ``tests/data/v1_dataset``) validate, migrate to v2 and round-trip;
- bad rows fail with one line naming the record and the JSON path.
"""

import copy
import hashlib
import typing

import pytest

from helpers import DATA, read_rows
from spark_hub import records
from spark_hub.errors import SparkHubError
from spark_hub.records import StepRecord, Verification, arrow_schema, json_schema
from spark_hub.schema import CURRENT, SCHEMAS, iter_errors, load_schema, migrate, validate
from spark_hub.validate import validate_path

V1 = DATA / "v1_dataset"
RECORD_TYPES = [StepRecord, Verification]
NEW_IN_V2 = {"step_record": {"step_spans", "step_probs", "final_prob"}, "verification": {"step_probs", "final_prob"}}


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_shipped_schema_is_generated_from_the_record(cls):
    shipped = load_schema(cls.SCHEMA, records.SCHEMA_VERSION)
    generated = json_schema(cls)
    # named differences first, so a drift says which column
    assert list(shipped["properties"]) == list(generated["properties"]), "columns differ"
    for name, prop in generated["properties"].items():
        assert shipped["properties"][name] == prop, f"column {name!r}"
    assert shipped == generated
    assert shipped["required"] == [c.name for c in cls.COLUMNS]


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_schema_types_follow_the_python_types(cls):
    """Independent of the generator: each column's JSON type follows its annotation."""
    hints = typing.get_type_hints(cls)
    props = load_schema(cls.SCHEMA)["properties"]
    to_json = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}
    for col in cls.COLUMNS:
        tp = col.type if col.derived else hints[col.attr]
        args = typing.get_args(tp)
        nullable = type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if nullable else tp
        prop = props[col.name]
        if "enum" in prop:
            assert all(isinstance(v, base) or (v is None and nullable) for v in prop["enum"]), col.name
            continue
        if "const" in prop:
            assert isinstance(prop["const"], base)
            continue
        expected = to_json[typing.get_origin(base) or base]
        assert prop["type"] == ([expected, "null"] if nullable else expected), col.name


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_arrow_schema_and_datasets_features_follow_the_record(cls):
    schema = arrow_schema(cls)
    assert schema.names == [c.name for c in cls.COLUMNS]
    assert schema.equals(records.features(cls).arrow_schema, check_metadata=True)


def test_released_v1_files_are_never_edited():
    pinned = {
        "step_record.v1.json": "d64b2c2d22dbebf286d1cc8cd9a801ff39eb45cc68c102b83ff3cdb7ca6f25d1",
        "verification.v1.json": "cae0706e77541bf16eee5860b5ca6d75a4a3ebf2083f0c403bafea8112a4b899",
    }
    folder = DATA.parent.parent / "spark_hub" / "schemas"
    for name, sha in pinned.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha, f"{name} was edited"
    assert SCHEMAS["step_record"]["1"] == "step_record.v1.json" and CURRENT["step_record"] == "2"


def test_v1_dataset_validates_as_is():
    errors, checked = validate_path(V1)
    assert errors == []
    assert checked == 4 + 15  # step records + verifications (9 samples, 3 critiques, 3 merges)


@pytest.mark.parametrize("config, cls", [("default", StepRecord), ("verifications", Verification)])
def test_v1_rows_migrate_to_v2_and_round_trip(config, cls):
    rows = read_rows(V1, config)
    assert rows and all(r["schema_version"] == "1" for r in rows)
    for row in rows:
        original = copy.deepcopy(row)
        v2 = migrate(row, cls.SCHEMA)
        assert row == original, "migrate does not modify its input"
        assert v2["schema_version"] == "2"
        assert all(v2[name] is None for name in NEW_IN_V2[cls.SCHEMA])
        validate(cls.SCHEMA, v2)
        record = cls.from_dict(row)  # from_dict migrates
        assert record.to_dict() == v2
        assert cls.from_dict(v2) == record
        # v2 minus the new fields is the v1 row again
        back = {k: v for k, v in v2.items() if k not in NEW_IN_V2[cls.SCHEMA]}
        assert {**back, "schema_version": "1"} == original


def test_v1_optional_reference_is_null_after_migration():
    row = read_rows(V1)[0]
    del row["reference"]  # optional in v1
    validate("step_record", row)
    assert StepRecord.from_dict(row).reference is None


def test_migrate_keeps_current_rows_and_rejects_unknown_versions():
    row = read_rows(V1)[0]
    v2 = migrate(row)
    assert migrate(v2) is v2
    with pytest.raises(SparkHubError, match=r"row 7: \$.schema_version: unsupported schema version '9' "
                                            r"\(this spark-hub reads versions 1, 2\)"):
        migrate({**row, "schema_version": "9"}, where="row 7")


def test_a_broken_v1_row_is_reported_against_v1():
    row = {**read_rows(V1)[0], "labels": [True, "yes"]}
    with pytest.raises(SparkHubError) as e:
        StepRecord.from_dict(row, where="old.parquet: row 0")
    assert str(e.value).startswith("old.parquet: row 0: $.labels[1]: 'yes' is not of type 'boolean'")


def _v2_row():
    return migrate(read_rows(V1)[1])  # a labelled record


def _with(**changes):
    def make():
        row = _v2_row()
        for key, value in changes.items():
            if value is KeyError:
                del row[key]
            else:
                row[key] = value(row) if callable(value) else value
        return row
    return make


BAD_ROWS = [
    (_with(labels=lambda r: [*r["labels"][:-1], "yes"]), r"\$.labels\[1\]: 'yes' is not of type 'boolean'"),
    (_with(step_probs=lambda r: [0.5, 1.5]), r"\$.step_probs\[1\]: 1.5 is greater than the maximum of 1"),
    (_with(step_spans=[[0, 1, 2], [3, 4]]), r"\$.step_spans\[0\]: \[0, 1, 2\] is too long"),
    (_with(problem=KeyError), r"\$: 'problem' is a required property"),
    (_with(status="great"), r"\$.status: 'great' is not one of"),
    (_with(extra_column=1), r"\$: Additional properties are not allowed \('extra_column' was unexpected\)"),
    (_with(schema_version="3"), r"\$.schema_version: unsupported schema version '3'"),
    # what the schema cannot say: checked by from_dict
    (_with(id="someone/else"), r"\$.id: id is 'someone/else' but the record's fields give"),
    (_with(first_error_step=5), r"\$.first_error_step: first_error_step is 5 but the record's fields give"),
    (_with(agreement=[1.0]), r"\$.agreement: agreement has 1 entries for 2 steps"),
    (_with(steps=lambda r: r["steps"], step_spans=lambda r: [[0, 3], [4, 9]]),
     r"\$.step_spans\[0\]: span \[0, 3\) of solution is not the text of step 0"),
]


@pytest.mark.parametrize("make, message", BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_bad_record_fails_with_record_and_json_path(make, message):
    row = make()
    with pytest.raises(SparkHubError, match=r"^data.parquet: row 3: " + message) as e:
        StepRecord.from_dict(row, where="data.parquet: row 3")
    assert "\n" not in str(e.value)


def test_iter_errors_lists_every_violation_with_paths():
    row = {**_v2_row(), "labels": ["a", "b"], "n_parsed": -1}
    errors = dict(iter_errors("step_record", row))
    assert set(errors) == {"$.labels[0]", "$.labels[1]", "$.n_parsed"}


def test_verification_from_dict_checks_its_id():
    row = migrate(read_rows(V1, "verifications")[-1])
    assert Verification.from_dict(row).kind == "merged"
    with pytest.raises(SparkHubError, match=r"^r: \$.id: id is 'x' but the record's fields give "):
        Verification.from_dict({**row, "id": "x"}, where="r")


def test_manifest_keeps_its_own_version():
    assert CURRENT["manifest"] == "1"
    errors = dict(iter_errors("manifest", {"schema_version": "2"}))
    assert errors == {"$.schema_version": "unsupported schema version '2' (this spark-hub reads version 1)"}


MUTATIONS = [None, "x", "", -1, 0, 3, 2.5, True, [], [None], ["x"], [1], [-1], [True], [0.5], [1.5],
             [[0, 1]], [[0, 1, 2]], [[-1, 2]], {"a": 1}, "ok", "sample", "merged", "2"]


@pytest.mark.parametrize("config, cls", [("default", StepRecord), ("verifications", Verification)])
def test_compiled_check_agrees_with_jsonschema_on_every_column_mutation(config, cls):
    """`Record.is_valid` (what the build checks every row with) says exactly what the shipped
    JSON Schema says, for real rows and for each column set to each value of a pool of wrong ones."""
    records_ = [cls.from_dict(row) for row in read_rows(V1, config)]
    assert records_ and all(r.is_valid() for r in records_)
    compared = disagreements = 0
    for record in records_[:3]:
        for column in cls.COLUMNS:
            if column.derived:
                continue
            for value in MUTATIONS:
                bad = copy.copy(record)
                setattr(bad, column.attr, copy.deepcopy(value))
                try:
                    row = bad.to_dict()
                except Exception:  # a derived column (first_error_step, id) cannot be computed
                    assert not bad.is_valid(), (column.attr, value)
                    continue
                expected = not list(iter_errors(cls.SCHEMA, row))
                compared += 1
                if bad.is_valid() != expected:
                    disagreements += 1
                    pytest.fail(f"{cls.__name__}.{column.attr} = {value!r}: is_valid {not expected}, jsonschema {expected}")
    assert compared > 300 and disagreements == 0


def test_compiled_check_is_stricter_only_where_documented():
    row = _v2_row()
    record = StepRecord.from_dict(row)
    record.solution_index = 1.0  # JSON Schema counts 1.0 as an integer; Parquet's int32 column would not
    assert not record.is_valid()
    record = StepRecord.from_dict(row)
    record.agreement = [float("nan")] * len(record.steps)  # NaN passes a JSON Schema range: not ours
    assert not record.is_valid()
