"""Record types of Stage I: ONE declaration each, from which everything else follows.

- `Problem`: one input problem (reference answer optional; Stage I never shows it to the verifier
  unless the `reference_guided` method is chosen).
- `Solution`: one generator completion, parsed into steps (exact text + character spans).
- `Verification`: one verifier completion for one solution: raw text kept beside what was parsed.
  A row of the ``verifications`` config (``schemas/verification.v2.json``).
- `StepRecord`: one labelled solution, a row of the ``default`` config
  (``schemas/step_record.v2.json``). Its label columns are declared once in `StepLabels`, which
  `spark_hub.stages.aggregate.Aggregate` extends; `StepRecord.from_labels` builds a record from it.

The dataclass fields of `Verification` and `StepRecord` (their types and their `column` metadata),
plus a few derived columns (``schema_version``, ``id``...), are the only declaration of a row.
From it follow:

- `Record.to_dict` (generated code, one dict literal: cheap on the hot path) and `Record.from_dict`
  (migrates older versions with `spark_hub.schema.migrate`, validates, checks derived columns);
- `arrow_schema` (the Parquet schema, with the ``huggingface`` metadata ``datasets`` reads, built
  without importing ``datasets``) and `features` (the same as `datasets.Features`);
- `json_schema`, which ``tests/test_schema.py`` compares with the shipped ``schemas/*.v2.json``:
  schema and record cannot drift apart;
- `describe_columns` (name, type, description) for the dataset card's "Data fields" section.

Read records back, locally or from the Hub, with `read_records`.

Schema v2 (this version) added `Verification.step_probs` / `final_prob`, `StepRecord.step_probs` /
`final_prob` / `step_spans`, and made ``steps`` the exact text of each step (``solution[start:end]``);
v1 rows are migrated on read (new fields ``None``; their ``steps`` stay whitespace-normalised).
There is no separate normalised-steps column: ``spark_hub.parsing.normalize_whitespace(step)`` gives
the v1 form of a step when needed, and ``step_spans`` locate each exact step in ``solution``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from spark_hub.errors import SparkHubError

SCHEMA_VERSION = "2"


# ----------------------------------------------------------------------------- declaration helpers


def column(default: Any = MISSING, *, doc: str, name: str | None = None, schema: dict | None = None,
           dtype: str | None = None) -> Any:
    """A dataclass field that is a column of a published row.

    Args:
        default: the field default (a list default becomes a ``default_factory``).
        doc: what the column holds (JSON Schema ``description``, dataset card).
        name: the column name when it differs from the attribute (``Verification.index`` is
            ``verification_index``).
        schema: extra JSON Schema keywords (``enum``, ``minimum``, ``minLength``...), merged
            recursively into the schema generated from the type (``{"items": {"minimum": 0}}``).
        dtype: Arrow type of an ``int`` / ``float`` leaf when not ``int32`` / ``float64``.
    """
    metadata = {"column": {"doc": doc, "name": name, "schema": schema or {}, "dtype": dtype}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Column:
    """One column of a record type, as derived from its declaration."""

    name: str
    attr: str
    """Attribute (field or property) of the record that holds the value."""
    type: Any
    doc: str
    schema: dict
    dtype: str | None = None
    derived: bool = False
    """Computed from other fields (``id``, ``first_error_step``...); checked by `from_dict`."""


@dataclass(frozen=True)
class Derived:
    """A derived column declared on a record type (value = the property ``attr``)."""

    name: str
    type: Any
    doc: str
    schema: dict = field(default_factory=dict)
    attr: str | None = None
    after: str | None = None
    """Put the column after this one (default: at the start)."""


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARROW_DEFAULT = {str: "string", int: "int32", float: "float64", bool: "bool"}


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``(T, nullable)`` for ``T | None`` or ``T``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported column type {tp!r}")
        return args[0], True
    return tp, False


def _json_for(tp: Any) -> dict[str, Any]:
    base, nullable = _split_optional(tp)
    if typing.get_origin(base) is list:
        (inner,) = typing.get_args(base)
        out = {"type": ["array", "null"] if nullable else "array", "items": _json_for(inner)}
    elif base in _JSON_TYPES:
        out = {"type": [_JSON_TYPES[base], "null"] if nullable else _JSON_TYPES[base]}
    else:
        raise TypeError(f"unsupported column type {tp!r}")
    return out


def _merge(generated: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(generated)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    if "enum" in extra or "const" in extra:
        out.pop("type", None)  # the enum / const says it all (null included in the enum when nullable)
    return out


def _column_schema(col: Column) -> dict[str, Any]:
    out = _merge(_json_for(col.type), col.schema)
    out["description"] = col.doc
    return out


def _hf_feature(tp: Any, dtype: str | None) -> dict[str, Any]:
    base, _ = _split_optional(tp)
    if typing.get_origin(base) is list:
        (inner,) = typing.get_args(base)
        return {"feature": _hf_feature(inner, dtype), "_type": "List"}
    return {"dtype": dtype or _ARROW_DEFAULT[base], "_type": "Value"}


def _arrow_type(feature: dict[str, Any]):
    import pyarrow as pa

    if feature["_type"] == "List":
        return pa.list_(_arrow_type(feature["feature"]))
    return {"string": pa.string(), "bool": pa.bool_(), "int32": pa.int32(), "int64": pa.int64(),
            "float32": pa.float32(), "float64": pa.float64()}[feature["dtype"]]


def _type_name(tp: Any) -> str:
    base, nullable = _split_optional(tp)
    if typing.get_origin(base) is list:
        name = f"list[{_type_name(typing.get_args(base)[0])}]"
    else:
        name = base.__name__
    return f"{name} | None" if nullable else name


def record(schema_name: str, *, derived: tuple[Derived, ...] = ()) -> Callable[[type], type]:
    """Class decorator (above ``@dataclass``) making a dataclass a published record type.

    Columns are: the derived ones (at the start unless ``after`` says where), then the fields the
    class declares itself, then inherited fields, each with its `column` metadata.
    """

    def wrap(cls: type) -> type:
        hints = typing.get_type_hints(cls)
        own = set(cls.__dict__.get("__annotations__", {}))
        fields = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)  # stable: own first
        cols: list[Column] = []
        for f in fields:
            meta = f.metadata.get("column")
            if meta is None:
                raise TypeError(f"{cls.__name__}.{f.name}: declare it with records.column(doc=...)")
            cols.append(Column(meta["name"] or f.name, f.name, hints[f.name], meta["doc"], meta["schema"],
                               meta["dtype"]))
        head = [d for d in derived if d.after is None]
        cols = [Column(d.name, d.attr or d.name, d.type, d.doc, d.schema, derived=True) for d in head] + cols
        for d in derived:
            if d.after is not None:
                at = next(i for i, c in enumerate(cols) if c.name == d.after) + 1
                cols.insert(at, Column(d.name, d.attr or d.name, d.type, d.doc, d.schema, derived=True))
        cls.SCHEMA = schema_name
        cls.COLUMNS = tuple(cols)
        # to_dict as one generated dict literal: 1.2-1.5 us per Verification, a loop over COLUMNS 2.4-2.6 us
        body = ", ".join(f"{c.name!r}: self.{c.attr}" for c in cols)
        namespace: dict[str, Any] = {}
        exec(f"def to_dict(self):\n    return {{{body}}}\n", namespace)
        to_dict = namespace["to_dict"]
        to_dict.__doc__ = f"The row of this record (columns of ``schemas/{schema_name}.v{SCHEMA_VERSION}.json``)."
        to_dict.__qualname__ = f"{cls.__name__}.to_dict"
        cls.to_dict = to_dict
        cls.is_valid = _compile_check(cls, cols)
        lists = ", ".join(f"{c.name!r}: [r.{c.attr} for r in records]" for c in cols)
        exec(f"def columns(records):\n    return {{{lists}}}\n", namespace)
        cls._columns = staticmethod(namespace["columns"])
        return cls

    return wrap


_CHECK_KEYWORDS = {"type", "enum", "const", "minimum", "maximum", "minLength", "items", "minItems", "maxItems",
                   "description"}
"""The JSON Schema keywords a column declaration may use (what `_check_expr` compiles)."""
_PY_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "null": (type(None),)}
_TYPE_TESTS = {"string": "type({v}) is str", "integer": "type({v}) is int", "number": "type({v}) in _NUMBER",
               "boolean": "type({v}) is bool", "null": "{v} is None", "array": "type({v}) is list"}


def _check_expr(schema: dict[str, Any], v: str, constants: dict[str, Any], depth: int = 0) -> str:
    """A Python boolean expression true when ``v`` satisfies the column ``schema``.

    Compiled from the same schema dict that becomes the shipped JSON Schema, for the keyword subset
    of `_CHECK_KEYWORDS`, with JSON Schema's semantics (a keyword constrains only instances of its
    type) but stricter types: an integer is an ``int`` (not ``1.0``), a boolean is never a number,
    and NaN is outside any range. tests/test_schema.py checks it against jsonschema on valid and
    mutated rows."""
    unknown = set(schema) - _CHECK_KEYWORDS
    if unknown:
        raise TypeError(f"column schema keyword(s) {sorted(unknown)} are not compiled by records._check_expr")
    parts = []
    for key in ("enum", "const"):
        if key in schema:
            name = f"_C{len(constants)}"
            values = schema[key] if key == "enum" else [schema[key]]
            constants[name] = frozenset((type(x), x) for x in values)
            parts.append(f"(type({v}), {v}) in {name}")
    if "type" in schema:
        branches = []
        for kind in [schema["type"]] if isinstance(schema["type"], str) else schema["type"]:
            test = [_TYPE_TESTS[kind].format(v=v)]
            if kind in ("integer", "number"):
                if "minimum" in schema:
                    test.append(f"{v} >= {schema['minimum']!r}")
                if "maximum" in schema:
                    test.append(f"{v} <= {schema['maximum']!r}")
            elif kind == "string" and "minLength" in schema:
                test.append(f"len({v}) >= {schema['minLength']!r}")
            elif kind == "array":
                if "minItems" in schema:
                    test.append(f"len({v}) >= {schema['minItems']!r}")
                if "maxItems" in schema:
                    test.append(f"len({v}) <= {schema['maxItems']!r}")
                items = schema.get("items")
                if items is not None and set(items) <= {"type", "description"} and "array" not in items["type"]:
                    # plain leaf items: one C-level pass over their types
                    name = f"_C{len(constants)}"
                    kinds = [items["type"]] if isinstance(items["type"], str) else items["type"]
                    constants[name] = frozenset(t for k in kinds for t in _PY_TYPES[k])
                    test.append(f"{name}.issuperset(map(type, {v}))")
                elif items is not None:
                    x = f"x{depth}"
                    test.append(f"all({_check_expr(schema['items'], x, constants, depth + 1)} for {x} in {v})")
            branches.append(" and ".join(test))
        parts.append("(" + " or ".join(f"({b})" for b in branches) + ")")
    return " and ".join(parts) or "True"


def _compile_check(cls: type, cols: list[Column]) -> Callable[[Any], bool]:
    """``record.is_valid()``: the record's row satisfies its JSON Schema, without building the row
    (~3x cheaper than a compiled JSON Schema validator on the dict: the write path checks every row)."""
    constants: dict[str, Any] = {"_NUMBER": (int, float)}
    lines = ["def is_valid(self):", "    try:"]
    for i, c in enumerate(cols):
        lines.append(f"        v{i} = self.{c.attr}")
        lines.append(f"        if not ({_check_expr(_column_schema(c), f'v{i}', constants)}): return False")
    lines += ["    except Exception:  # a column that cannot be computed (a derived id of bad fields)", "        return False", "    return True"]
    exec("\n".join(lines), constants)
    check = constants["is_valid"]
    check.__doc__ = f"True when this record's row satisfies ``schemas/{cls.SCHEMA}.v{SCHEMA_VERSION}.json``."
    check.__qualname__ = f"{cls.__name__}.is_valid"
    return check


class Record:
    """Base of the published record types (`Verification`, `StepRecord`)."""

    SCHEMA: ClassVar[str]
    COLUMNS: ClassVar[tuple[Column, ...]]
    schema_version: ClassVar[str] = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:  # replaced by the generated one (see `record`)
        raise NotImplementedError

    def is_valid(self) -> bool:  # replaced by the generated one (see `_compile_check`)
        """True when this record's row satisfies its JSON Schema."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, row: dict[str, Any], *, where: str = "record"):
        """A record from a row of any supported schema version (older ones are migrated).

        Raises `SparkHubError` naming ``where`` and the JSON path of the first problem: a schema
        violation, an unsupported ``schema_version``, or a derived column (``id``...) that does not
        match the record's fields.
        """
        from spark_hub.schema import migrate, validate

        if not isinstance(row, dict):
            raise SparkHubError(f"expected a JSON object, got {type(row).__name__}", where=where)
        row = migrate(row, cls.SCHEMA, where=where)
        validate(cls.SCHEMA, row, where=where)
        obj = cls(**{c.attr: row[c.name] for c in cls.COLUMNS if not c.derived})
        for c in cls.COLUMNS:
            if c.derived and row[c.name] != getattr(obj, c.attr):
                raise SparkHubError(
                    f"{c.name} is {row[c.name]!r} but the record's fields give {getattr(obj, c.attr)!r}",
                    where=f"{where}: $.{c.name}")
        obj.check(where=where)
        return obj

    def check(self, *, where: str = "record") -> None:
        """Invariants the JSON Schema cannot express (overridden per type)."""


def json_schema(cls: type[Record]) -> dict[str, Any]:
    """The JSON Schema of ``cls`` at the current version, generated from its declaration."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": f"https://github.com/spark-hub/spark-hub/schemas/{cls.SCHEMA}.v{SCHEMA_VERSION}.json",
        "title": f"spark-hub {cls.SCHEMA.replace('_', ' ')} v{SCHEMA_VERSION}",
        "description": " ".join((cls.__doc__ or "").split()),
        "type": "object",
        "additionalProperties": False,
        "required": [c.name for c in cls.COLUMNS],
        "properties": {c.name: _column_schema(c) for c in cls.COLUMNS},
    }


def hf_features_dict(cls: type[Record]) -> dict[str, Any]:
    """``datasets.Features.to_dict()`` of ``cls``, without importing ``datasets``."""
    return {c.name: _hf_feature(c.type, c.dtype) for c in cls.COLUMNS}


def arrow_schema(cls: type[Record]):
    """The `pyarrow.Schema` of ``cls`` rows, with the metadata ``datasets`` reads its features from."""
    import pyarrow as pa

    feats = hf_features_dict(cls)
    schema = pa.schema([(name, _arrow_type(f)) for name, f in feats.items()])
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": feats}})})


def to_table(cls: type[Record], records: list[Record]):
    """The `pyarrow.Table` of ``records`` (all of type ``cls``) with the schema of `arrow_schema`,
    built column by column from the records' attributes (no row dicts: ~2x cheaper than
    ``Table.from_pylist([r.to_dict() ...])``). Arrow checks each value against its column type
    (check the records themselves with `Record.is_valid`)."""
    import pyarrow as pa

    return pa.Table.from_pydict(cls._columns(records), schema=_cached_arrow_schema(cls))


_ARROW_SCHEMAS: dict[type, Any] = {}


def _cached_arrow_schema(cls: type[Record]):
    if cls not in _ARROW_SCHEMAS:
        _ARROW_SCHEMAS[cls] = arrow_schema(cls)
    return _ARROW_SCHEMAS[cls]


def features(cls: type[Record]):
    """The `datasets.Features` of ``cls`` rows (imports ``datasets``; the write path does not need it)."""
    from datasets import Features

    return Features.from_dict(hf_features_dict(cls))


def describe_columns(cls: type[Record]) -> list[dict[str, str]]:
    """``[{"name", "type", "description"}]`` per column, for the card's "Data fields" section."""
    return [{"name": c.name, "type": _type_name(c.type), "description": c.doc} for c in cls.COLUMNS]


# ----------------------------------------------------------------------------- in-memory types


@dataclass
class Problem:
    id: str
    problem: str
    reference: str | None = None
    source: str | None = None
    """Where the problem came from, e.g. ``problems.jsonl:12``."""


@dataclass
class Solution:
    problem_id: str
    index: int
    text: str
    steps: list[str]
    """Exact text of each step: ``text[start:end]`` for its span."""
    final_answer: str | None
    status: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    step_spans: list[list[int]] | None = None
    """``[start, end)`` character offsets of each step in ``text`` (None when unknown)."""

    @property
    def id(self) -> str:
        return f"{self.problem_id}/s{self.index}"


# ----------------------------------------------------------------------------- published records

_PROB = {"type": ["number", "null"], "minimum": 0, "maximum": 1}


@record("verification", derived=(
    Derived("schema_version", str, "Version of the row schema.", {"const": SCHEMA_VERSION}),
    Derived("id", str, "`{problem_id}/s{solution_index}/{kind initial}{verification_index}`.", {"minLength": 1}),
    Derived("record_id", str, "id of the step record (solution) this verification is about.", {"minLength": 1}),
))
@dataclass(kw_only=True)
class Verification(Record):
    """One raw verifier completion for one solution, with what was parsed from it (the `verifications` config of a spark-hub dataset)."""

    problem_id: str = column(doc="id of the problem.", schema={"minLength": 1})
    solution_index: int = column(doc="Index of the solution among the problem's M solutions.", schema={"minimum": 0})
    index: int = column(name="verification_index", doc="Index among the N verifications of the solution.",
                        schema={"minimum": 0})
    kind: str = column("sample", doc="`sample` (one of the N verifications), or for meta-critique `critique` / `merged`.",
                       schema={"enum": ["sample", "critique", "merged"]})
    verifier: str = column(doc="Verifier model id.")
    raw_text: str = column(doc="The completion exactly as the model wrote it.")
    text: str = column(doc="raw_text with <think> blocks removed.")
    step_verdicts: list[bool | None] = column(doc="One verdict per `## Step k` block: true correct, false incorrect, null missing.")
    final_verdict: bool | None = column(doc="The final 'Is the answer correct (Yes/No)?' verdict.")
    parse_status: str = column(doc="ok, or why the verification could not be fully parsed.", schema={"enum": [
        "ok", "step_count_mismatch", "missing_step_verdict", "no_final_verdict", "no_steps", "empty", "not_parsed"]})
    expected_steps: int = column(doc="Number of steps of the verified solution.", schema={"minimum": 0})
    step_probs: list[float | None] | None = column(
        None, doc="Per step block: the verifier's probability that the step is correct, read at its verdict token "
                  "(null where the backend gave no logprobs).", schema={"items": _PROB})
    final_prob: float | None = column(None, doc="Probability of Yes at the final verdict token.", schema=_PROB)
    finish_reason: str | None = column(None, doc="Why generation stopped (stop, length...).")
    completion_tokens: int = column(0, doc="Tokens generated.", schema={"minimum": 0})

    @property
    def id(self) -> str:
        return f"{self.problem_id}/s{self.solution_index}/{self.kind[0]}{self.index}"

    @property
    def record_id(self) -> str:
        return f"{self.problem_id}/s{self.solution_index}"

    @property
    def status(self) -> str:
        """The parse status (the name aggregation reads, shared with `ParsedVerification`)."""
        return self.parse_status


@dataclass(kw_only=True)
class StepLabels:
    """The aggregated label columns of a `StepRecord` (what `stages.aggregate.aggregate` computes)."""

    status: str = column(doc="ok: labels present. Otherwise why this solution is unlabelled.", schema={"enum": [
        "ok", "tie", "no_valid_verification", "no_consistent_verification", "no_steps", "merge_failed"]})
    labels: list[bool] | None = column(doc="Per-step label: true = correct.")
    final_label: bool | None = column(doc="Aggregated final verdict: is the answer correct?")
    votes_correct: list[int] = column(doc="Per step: verifications that judged it correct.", schema={"items": {"minimum": 0}})
    votes_incorrect: list[int] = column(doc="Per step: verifications that judged it incorrect.",
                                        schema={"items": {"minimum": 0}})
    agreement: list[float | None] = column(doc="Per step: share of votes for the majority label.",
                                           schema={"items": {"minimum": 0, "maximum": 1}})
    step_probs: list[float | None] | None = column(
        None, doc="Per step: mean probability of 'correct' over the verifications that voted on it (soft label; "
                  "null without logprobs).", schema={"items": _PROB})
    final_votes_yes: int = column(doc="Verifications whose final verdict is Yes.", schema={"minimum": 0})
    final_votes_no: int = column(doc="Verifications whose final verdict is No.", schema={"minimum": 0})
    final_prob: float | None = column(None, doc="Mean probability of Yes at the final verdict (null without logprobs).",
                                      schema=_PROB)
    n_parsed: int = column(doc="Verifications that parsed with status ok.", schema={"minimum": 0})


@record("step_record", derived=(
    Derived("schema_version", str, "Version of the row schema.", {"const": SCHEMA_VERSION}),
    Derived("id", str, "`{problem_id}/s{solution_index}`.", {"minLength": 1}),
    Derived("first_error_step", int | None, "0-based index of the first incorrect step, -1 if none, null if "
            "unlabelled (ProcessBench convention).", {"minimum": -1}, after="final_label"),
))
@dataclass(kw_only=True)
class StepRecord(StepLabels, Record):
    """One solution labelled step by step by aggregating N reference-free verifications (SPARK Stage I). Step indices are 0-based."""

    problem_id: str = column(doc="id of the problem.", schema={"minLength": 1})
    problem: str = column(doc="The problem text.", schema={"minLength": 1})
    reference: str | None = column(doc="Reference answer, when the input had one (never shown to the verifier "
                                       "unless the method is reference_guided).")
    solution_index: int = column(doc="Index of the solution among the problem's M solutions.", schema={"minimum": 0})
    solution: str = column(doc="The solution text exactly as generated (or formatted from given steps).")
    steps: list[str] = column(doc="Exact text of each step: solution[start:end] for its span in step_spans.")
    step_spans: list[list[int]] | None = column(
        None, doc="[start, end) character offsets of each step in solution (null when unknown, e.g. migrated v1 rows).",
        schema={"items": {"minItems": 2, "maxItems": 2, "items": {"minimum": 0}}})
    final_answer: str | None = column(doc="The solution's final answer, as parsed.")
    solution_status: str = column(doc="How the solution parsed.",
                                  schema={"enum": ["ok", "fallback_steps", "no_answer", "empty", "given"]})
    generator: str = column(doc="Generator model id (or the solutions file).")
    verifier: str = column(doc="Verifier model id.")
    method: str = column(doc="Aggregation method.")
    n_verifications: int = column(doc="Verifications sampled for this solution.", schema={"minimum": 0})
    cot_target: str | None = column(None, doc="The verification text (think blocks stripped) used as PRM-CoT target.")
    cot_verification_index: int | None = column(
        None, doc="Index of the CoT target among the N sampled verifications (for meta-critique methods: the "
                  "critiqued one).", schema={"minimum": 0})
    cot_verification_id: str | None = column(
        None, doc="id of the CoT target's row in the verifications config (a merged verification for meta-critique "
                  "methods).")
    cot_exact_match: bool | None = column(
        None, doc="Whether the CoT target's step labels and final verdict equal the aggregated ones.")

    @property
    def first_error_step(self) -> int | None:
        """0-based index of the first step labelled incorrect; -1 if all correct; None if unlabelled."""
        if self.labels is None:
            return None
        return next((i for i, ok in enumerate(self.labels) if not ok), -1)

    @property
    def id(self) -> str:
        return f"{self.problem_id}/s{self.solution_index}"

    @classmethod
    def from_labels(cls, labels: StepLabels, **fields: Any) -> StepRecord:
        """A record from aggregated labels (an `Aggregate`) plus the other columns."""
        values = {f.name: getattr(labels, f.name) for f in dataclasses.fields(StepLabels)}
        return cls(**values, **fields)

    def check(self, *, where: str = "record") -> None:
        """Per-step lists have one entry per step; each span's text is the step."""
        n = len(self.steps)
        for name in ("labels", "votes_correct", "votes_incorrect", "agreement", "step_probs", "step_spans"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise SparkHubError(f"{name} has {len(value)} entries for {n} steps", where=f"{where}: $.{name}")
        for i, (start, end) in enumerate(self.step_spans or ()):
            if not 0 <= start <= end <= len(self.solution) or self.solution[start:end] != self.steps[i]:
                raise SparkHubError(f"span [{start}, {end}) of solution is not the text of step {i}",
                                    where=f"{where}: $.step_spans[{i}]")


#: Record type of each dataset config.
CONFIG_RECORDS: dict[str, type[Record]] = {"default": StepRecord, "verifications": Verification}


# ----------------------------------------------------------------------------- reading


def iter_records(path_or_repo: str | Path, revision: str | None = None, config: str = "default",
                 **hub_kwargs: Any) -> Iterator[Record]:
    """Records of one config of a dataset, one at a time (see `read_records`)."""
    if config not in CONFIG_RECORDS:
        raise SparkHubError(f"unknown config {config!r}", hint=f"valid: {', '.join(CONFIG_RECORDS)}")
    cls = CONFIG_RECORDS[config]
    from spark_hub.inputs import iter_rows
    from spark_hub.storage import CONFIGS

    path = Path(path_or_repo)
    if not path.exists():
        source = str(path_or_repo)
        if _looks_local(source):
            raise SparkHubError(f"file not found: {source}")
        from spark_hub.hub import download

        path = Path(download(source, revision=revision, repo_type="dataset", **hub_kwargs))
    elif revision is not None:
        raise SparkHubError(f"revision {revision!r} given for a local path", where=str(path),
                            hint="revision applies to Hub repos only")
    if path.is_dir():
        folder = path / CONFIGS[config]
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if not files:
            raise SparkHubError(f"no {CONFIGS[config]}/*.parquet in {path}",
                                hint="pass a spark-hub dataset folder, a .parquet/.jsonl file or a Hub dataset id")
    else:
        files = [path]
    other = "verifications" if config == "default" else "default"
    for file in files:
        for i, (where, row) in enumerate(iter_rows(file)):
            if i == 0 and isinstance(row, dict) and _config_of(row) != config:
                raise SparkHubError(f"this file holds {other} rows, not {config} rows", where=where,
                                    hint=f"read_records(..., config={other!r})")
            yield cls.from_dict(row, where=where)


def read_records(path_or_repo: str | Path, revision: str | None = None, config: str = "default",
                 **hub_kwargs: Any) -> list[Record]:
    """Read the step records (``config="default"``) or verifications of a spark-hub dataset.

    Args:
        path_or_repo: a dataset folder (``data/``, ``verifications/``), one ``.parquet`` / ``.jsonl``
            / ``.json`` file of rows, or a Hub dataset id (``ORG/NAME``, fetched with
            `spark_hub.hub.download`, which checks the files against the manifest).
        revision: Hub branch, tag or commit (Hub ids only).
        config: ``default`` (`StepRecord`) or ``verifications`` (`Verification`).
        **hub_kwargs: passed to `spark_hub.hub.download` (``endpoint``, ``token``...).

    Returns:
        The records, in file order. Rows of an older schema version are migrated.

    Raises:
        `SparkHubError`: a missing file, an invalid row (file, row and JSON path named), an
            unsupported ``schema_version``, or rows of the other config.
    """
    return list(iter_records(path_or_repo, revision, config, **hub_kwargs))


def _config_of(row: dict[str, Any]) -> str:
    return "verifications" if "raw_text" in row or "verification_index" in row else "default"


def _looks_local(source: str) -> bool:
    """A path that is not there but is clearly meant as a local file or folder (never a Hub id)."""
    return (source.startswith((".", "/", "~")) or "\\" in source or source.count("/") != 1
            or source.lower().endswith((".parquet", ".jsonl", ".json", ".ndjson")))


__all__ = ["CONFIG_RECORDS", "Column", "Problem", "Record", "Solution", "StepLabels", "StepRecord", "Verification", "SCHEMA_VERSION",
           "arrow_schema", "column", "describe_columns", "features", "iter_records", "json_schema", "read_records"]
