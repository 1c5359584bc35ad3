"""Shared field types: finite numbers, matrices, dtypes.

Matrices are JSON lists of rows; after validation they are float64 numpy arrays
(rectangular, non-empty, finite). Booleans and numeric strings are not numbers here. Every
array field (inputs and targets) also takes an uploaded dataset's id (``DatasetRef``), which the
router replaces by the dataset's array (``service.inputs.resolve_datasets``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

_JSON_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def finite_number(**bounds: float) -> Any:
    """A finite number (JSON integer or float) within ``bounds`` (``gt``, ``ge``, ``lt``, ``le``).

    Its JSON schema is one ``{"type": "number", "exclusiveMinimum": …}``: pydantic cannot push
    bounds into the int/float union and would publish them under its own names (``"gt"``), which
    no JSON Schema validator or SDK generator reads.
    """
    schema: dict[str, Any] = {"type": "number"}
    schema.update({_JSON_BOUNDS[key]: value for key, value in bounds.items()})
    return Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False, **bounds), WithJsonSchema(schema)]


FiniteFloat: TypeAlias = finite_number()
Positive: TypeAlias = finite_number(gt=0)
NonNegative: TypeAlias = finite_number(ge=0)


def _integral(value: object) -> object:
    """A float with no fractional part is the integer it equals (JSON Schema's ``integer`` admits
    ``2.0``, and clients that hold every number as a double send it so); other values unchanged."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds: int) -> Any:
    """An integer within ``bounds`` (``gt``, ``ge``, ``lt``, ``le``), or an integral float such as
    ``2.0``; booleans and numeric strings are refused. Bound it here, not with a ``Field`` around
    the result: pydantic cannot apply those through the float conversion and would publish them
    under its own names (``"ge"``) instead of ``minimum``."""
    return Annotated[StrictInt, Field(**bounds), BeforeValidator(_integral)]


#: An integer (or an integral float such as ``2.0``); booleans and numeric strings are refused.
Integer: TypeAlias = integer()
#: A random seed: a non-negative integer below 2**53, the integers every JSON client and schema
#: validator holds exactly (they read numbers as doubles: a bound of 2**63 - 1 reads as 2**63,
#: and larger seeds would be accepted by the document yet refused here).
Seed: TypeAlias = integer(ge=0, le=2**53 - 1)
Dtype: TypeAlias = Literal["float64", "float32"]


class RequestModel(BaseModel):
    """Base of request bodies: unknown fields are refused (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _to_matrix(rows: list[list[float]]) -> np.ndarray:
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"row {i} has {len(row)} entries but row 0 has {width}; every row needs the same number of features"
            )
    array = np.array(rows, dtype=np.float64)
    if not np.isfinite(array).all():  # huge integers overflow to inf on conversion
        raise ValueError("every value must be a finite float64 number")
    return array


_Row = Annotated[list[FiniteFloat], Field(min_length=1)]


_NonEmpty = Field(min_length=1)
_NESTED = {2: list[_Row], 3: list[Annotated[list[_Row], _NonEmpty]],
           4: list[Annotated[list[Annotated[list[_Row], _NonEmpty]], _NonEmpty]]}
_INPUT_ADAPTERS = {rank: TypeAdapter(Annotated[tp, Field(min_length=1)]) for rank, tp in _NESTED.items()}
_FORMS = {2: "n × d", 3: "n × L × C", 4: "n × H × W × C"}


def _depth(value: object) -> int:
    depth = 0
    while isinstance(value, list) and value:
        depth += 1
        value = value[0]
    return depth


#: An uploaded dataset's id, in place of an array (``POST /v1/datasets``).
DATASET_ID_PATTERN = r"^ds_[A-Za-z0-9_-]{1,64}$"
_DATASET_ID = {"type": "string", "pattern": DATASET_ID_PATTERN,
               "description": "the id of an uploaded .npy dataset (POST /v1/datasets), instead of the array"}


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """A dataset id where an array belongs: the router loads it (``service.inputs``)."""

    id: str


def _dataset_ref(value: str) -> DatasetRef:
    if not re.fullmatch(DATASET_ID_PATTERN, value):
        raise ValueError(f"a string here must be a dataset id like 'ds_…' (from POST /v1/datasets), got {value!r}")
    return DatasetRef(value)


def _to_inputs(value: object) -> np.ndarray | DatasetRef:
    if isinstance(value, str):
        return _dataset_ref(value)
    rank = min(max(_depth(value), 2), 4)  # shallower or deeper: the nearest form's errors
    try:
        _INPUT_ADAPTERS[rank].validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{part}]" for part in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from None
    if rank == 2:
        return _to_matrix(value)  # type: ignore[arg-type]
    try:
        array = np.array(value, dtype=np.float64)
    except ValueError:
        raise ValueError(f"ragged {_FORMS[rank]} input: every example needs the same shape") from None
    if not np.isfinite(array).all():
        raise ValueError("every value must be a finite float64 number")
    return array


#: Inputs of a kernel: ``n × d`` rows, or ``n × L × C`` / ``n × H × W × C`` (NHWC) for
#: convolutional networks, validated into a float64 array of that rank.
Inputs: TypeAlias = Annotated[
    np.ndarray | DatasetRef,
    PlainValidator(_to_inputs),
    WithJsonSchema({
        "anyOf": [adapter.json_schema() for adapter in _INPUT_ADAPTERS.values()] + [_DATASET_ID],
        "description": "n × d rows, or n × L × C / n × H × W × C (channels last) for convolutional networks; "
                       "or the id of an uploaded dataset of that shape.",
    }),
]


def _to_targets(value: list[float] | list[list[float]] | str) -> np.ndarray | DatasetRef:
    if isinstance(value, str):
        return _dataset_ref(value)
    if value and isinstance(value[0], list):
        return _to_matrix(value)  # type: ignore[arg-type]
    array = np.array(value, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError("every value must be a finite float64 number")
    return array


#: Targets: a vector of ``n`` numbers (one output) or an ``n × k`` matrix (k outputs).
Targets: TypeAlias = Annotated[
    Annotated[list[_Row], Field(min_length=1)] | Annotated[list[FiniteFloat], Field(min_length=1)]
    | Annotated[str, Field(pattern=DATASET_ID_PATTERN, description=_DATASET_ID["description"])],
    AfterValidator(_to_targets)
]
