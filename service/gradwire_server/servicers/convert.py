"""Tensor messages <-> numpy arrays: the one place the wire encoding of numbers is handled."""

from __future__ import annotations

import math

import numpy as np

from gradwire.v1 import tensor_pb2

from .. import errors
from ..datasets import NUMPY_DTYPES

DataType = tensor_pb2.DataType
FLOAT_TYPES = tuple(t for t, dt in NUMPY_DTYPES.items() if dt.kind == "f")
INT_TYPES = tuple(t for t, dt in NUMPY_DTYPES.items() if dt.kind in "iu")
NUMPY_TO_DTYPE = {v: k for k, v in NUMPY_DTYPES.items()}


def checked_count(shape: list[int], field: str) -> int:
    """The element count of ``shape``, refusing negative dimensions."""
    if any(d < 0 for d in shape):
        raise errors.InvalidArgument(f"dimensions must be >= 0, got {shape}", field=field)
    return math.prod(shape)


def array_from_raw(raw: bytes | memoryview, dtype: np.dtype, shape: list[int], type_name: str, field: str) -> np.ndarray:
    """``raw`` seen as ``shape`` x ``dtype`` (a view, no copy), refusing a byte count that does not fit."""
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise errors.InvalidArgument(f"shape {shape} x {type_name} needs {count * dtype.itemsize} bytes, got {len(raw)}", field=field)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def check_value_count(values, shape: list[int], field: str) -> None:
    """Refuse typed numbers whose count does not fill ``shape``."""
    count = math.prod(shape)
    if len(values) != count:
        raise errors.InvalidArgument(f"shape {shape} needs {count} values, got {len(values)}", field=field)


def tensor_to_numpy(t: tensor_pb2.Tensor, field: str, raw: bytes | memoryview | None = None) -> np.ndarray:
    """Decode a Tensor (raw bytes without copying, or typed numbers), checking shape x dtype.
    ``raw``: its raw_data, when the request was parsed without it (servicers/wire.py)."""
    if raw is None:
        raw = t.raw_data  # each read of a bytes field copies it: read it once
    if raw:
        # What the SDK sends, answered in a few steps (a third of the general path's time, which
        # counts in a one-row Predict); anything unusual goes on below, to its error message.
        dtype = NUMPY_DTYPES.get(t.dtype)
        shape = list(t.shape)
        if dtype is not None and min(shape, default=0) >= 0 and len(raw) == math.prod(shape) * dtype.itemsize \
                and not t.float_values and not t.int_values:
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
    shape = list(t.shape)
    count = checked_count(shape, f"{field}.shape")
    carriers = [name for name, values in (("raw_data", raw), ("float_values", t.float_values), ("int_values", t.int_values)) if len(values)]
    if len(carriers) > 1:
        raise errors.InvalidArgument(f"set only one of raw_data, float_values, int_values; got {', '.join(carriers)}", field=field)
    if t.dtype not in NUMPY_DTYPES and t.dtype != DataType.DATA_TYPE_UNSPECIFIED:
        raise errors.InvalidArgument(f"unknown data type {t.dtype}", field=f"{field}.dtype")
    if carriers == ["raw_data"] or (not carriers and t.dtype != DataType.DATA_TYPE_UNSPECIFIED):
        if t.dtype == DataType.DATA_TYPE_UNSPECIFIED:
            raise errors.InvalidArgument("required with raw_data, got DATA_TYPE_UNSPECIFIED", field=f"{field}.dtype")
        return array_from_raw(raw, NUMPY_DTYPES[t.dtype], shape, DataType.Name(t.dtype), f"{field}.raw_data")
    if not carriers:
        if count != 0:
            raise errors.InvalidArgument(f"shape {shape} needs {count} values, got none", field=field)
        return np.zeros(shape, dtype=np.float32)
    values = getattr(t, carriers[0])
    if not shape:
        raise errors.InvalidArgument(f"required with {carriers[0]} ({len(values)} values given)", field=f"{field}.shape")
    check_value_count(values, shape, f"{field}.{carriers[0]}")
    if carriers == ["float_values"]:
        if t.dtype in INT_TYPES:
            raise errors.InvalidArgument(f"{DataType.Name(t.dtype)} tensors carry int_values, not float_values", field=f"{field}.dtype")
        wire = t.dtype or DataType.DATA_TYPE_FLOAT32
    else:
        wire = t.dtype or DataType.DATA_TYPE_INT64
    return typed_values(values, NUMPY_DTYPES[wire], DataType.Name(wire), f"{field}.{carriers[0]}").reshape(shape)


def typed_values(values, dtype: np.dtype, type_name: str, field: str) -> np.ndarray:
    """Typed numbers (a repeated field) as a ``dtype`` array, refusing one its type cannot hold
    (300 as UINT8, 1e5 as FLOAT16) instead of wrapping it or making it infinite."""
    integer = dtype.kind in "iu"
    wide = np.asarray(values, dtype=np.int64 if integer else np.float64)  # every value the wire can carry
    if dtype.itemsize < 8 and wide.size:
        if integer:
            info = np.iinfo(dtype)
            past, bounds = (wide < info.min) | (wide > info.max), f"{info.min} to {info.max}"
        else:
            largest = float(np.finfo(dtype).max)
            past, bounds = np.isfinite(wide) & (np.abs(wide) > largest), f"largest {largest}"
        if past.any():
            raise errors.InvalidArgument(f"{wide[past][0]} does not fit in {type_name} ({bounds})", field=field)
    return wide.astype(dtype, copy=False)


FLOAT32 = np.dtype("<f4")


def numpy_to_tensor(array: np.ndarray, *, raw: bool) -> tensor_pb2.Tensor:
    """Encode an array as raw bytes (raw=True, what the SDK reads) or typed numbers (grpcurl JSON)."""
    if raw and array.dtype == FLOAT32:  # a model's output: the common case, in fewer steps
        return tensor_pb2.Tensor(shape=array.shape, dtype=DataType.DATA_TYPE_FLOAT32, raw_data=array.tobytes())
    array = np.ascontiguousarray(array)
    dtype = NUMPY_TO_DTYPE[array.dtype.newbyteorder("<")]
    t = tensor_pb2.Tensor(shape=array.shape, dtype=dtype)
    if raw:
        t.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    elif dtype in FLOAT_TYPES:
        t.float_values.extend(array.ravel().tolist())
    else:
        t.int_values.extend(array.ravel().tolist())
    return t


def is_raw(t: tensor_pb2.Tensor) -> bool:
    """Whether a decoded request tensor came as raw bytes (or empty): answer in kind. Asked of typed
    values only, since tensor_to_numpy refused a tensor with both, and reading raw_data copies it."""
    return not (t.float_values or t.int_values)
