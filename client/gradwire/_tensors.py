"""numpy <-> ``gradwire.v1.Tensor``.

The SDK always sends ``raw_data`` (little-endian, row-major bytes). Decoding also
accepts ``float_values`` / ``int_values``, which is what grpcurl users send.

    >>> import numpy as np
    >>> t = to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> list(t.shape), tensor_pb2.DataType.Name(t.dtype)
    ([2, 3], 'DATA_TYPE_FLOAT32')
    >>> from_tensor(t).tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from gradwire.v1 import tensor_pb2

__all__ = ["to_tensor", "fill_tensor", "from_tensor", "as_wire_array", "with_tensor", "encode_varint", "delimited", "DTYPES",
           "COMPACT_FEATURE_DTYPES", "feature_array", "numeric_array", "non_finite"]

# numpy dtype (little-endian) <-> wire dtype.
DTYPES: dict[np.dtype, int] = {
    np.dtype("<f4"): tensor_pb2.DATA_TYPE_FLOAT32,
    np.dtype("<f8"): tensor_pb2.DATA_TYPE_FLOAT64,
    np.dtype("<i4"): tensor_pb2.DATA_TYPE_INT32,
    np.dtype("<i8"): tensor_pb2.DATA_TYPE_INT64,
    np.dtype("u1"): tensor_pb2.DATA_TYPE_UINT8,
    np.dtype("i1"): tensor_pb2.DATA_TYPE_INT8,
    np.dtype("<u2"): tensor_pb2.DATA_TYPE_UINT16,
    np.dtype("<i2"): tensor_pb2.DATA_TYPE_INT16,
    np.dtype("<f2"): tensor_pb2.DATA_TYPE_FLOAT16,
}
# Every value of these is exact in float32: predict sends features of them as they are (image
# pixels as bytes: a quarter of the request), and the server hands the model float32.
COMPACT_FEATURE_DTYPES = frozenset(np.dtype(d) for d in ("u1", "i1", "<u2", "<i2", "<f2"))
_NUMPY_DTYPES: dict[int, np.dtype] = {wire: dt for dt, wire in DTYPES.items()}


def as_wire_array(array: ArrayLike, dtype: DTypeLike | None = None) -> np.ndarray:
    """``array`` as a C-contiguous little-endian array of a wire dtype.

    Copies only when it must (a cast, a byte swap or a non-contiguous view).
    """
    arr = np.asarray(array, dtype=dtype)
    wire = np.dtype(arr.dtype).newbyteorder("<")
    if wire not in DTYPES:
        names = ", ".join(str(d) for d in DTYPES)
        raise TypeError(f"tensors carry {names}; got dtype {arr.dtype} (pass dtype= to cast)")
    return np.asarray(arr, dtype=wire, order="C")  # (ascontiguousarray would turn a scalar into 1-D)


_KINDS = {"c": "complex numbers", "M": "datetimes", "m": "timedeltas", "U": "strings", "S": "bytes", "V": "records",
          "O": "Python objects"}


def _host(values: Any) -> Any:
    """A torch tensor as numpy: detached from autograd and on the host, bfloat16 as float32 (numpy
    refuses a tensor that requires grad, one on a GPU, and bfloat16). Anything else as it is. Duck
    typed: the SDK does not import torch."""
    if type(values).__module__.startswith("torch") and hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu()
        if str(values.dtype) == "torch.bfloat16":
            values = values.float()
        return values.numpy()
    return values


def rectangular_array(values: ArrayLike, what: str) -> np.ndarray:
    """``np.asarray(values)``, or a ValueError naming ``what`` where nested sequences do not make a
    rectangle (numpy's own words name nothing). A torch tensor is taken as `_host` gives it."""
    try:
        return np.asarray(_host(values))
    except ValueError:
        raise ValueError(f"{what} must be an array: its rows differ in length or shape") from None


def numeric_array(values: ArrayLike, what: str) -> np.ndarray:
    """``values`` as a numpy array of numbers (bool, integer or float), or a ValueError or
    TypeError that says what ``what`` held instead. numpy alone would cast complex numbers (dropping
    the imaginary part), datetimes and strings of digits to float without a word. Python objects
    that are numbers (None as NaN) are taken.

    >>> numeric_array([[1, 2], [3]], "features")
    Traceback (most recent call last):
    ...
    ValueError: features must be an array: its rows differ in length or shape
    >>> numeric_array(np.array([1 + 2j]), "features")
    Traceback (most recent call last):
    ...
    TypeError: features must be numbers (bool, integer or float), got complex numbers (dtype complex128)
    """
    if values is None:
        raise TypeError(f"{what} must be an array of numbers, got None")
    arr = rectangular_array(values, what)
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            odd = next((v for v in arr.flat if not isinstance(v, (int, float, np.number, type(None)))), None)
            raise TypeError(f"{what} must be numbers (bool, integer or float), got {type(odd).__name__} {odd!r:.60}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be numbers (bool, integer or float), got {_KINDS.get(arr.dtype.kind, 'values')} (dtype {arr.dtype})")
    return arr


def feature_array(features: ArrayLike) -> np.ndarray:
    """Predict's features as a wire array: uint8, int8, uint16, int16 and float16 as they are
    (exact in float32, and 2-4 times fewer bytes), anything else as float32."""
    arr = numeric_array(features, "features")
    if arr.ndim == 0:
        raise ValueError(f"features must be examples, (n, *input_shape), or one example, input_shape; got one value, {arr.item()!r}")
    return as_wire_array(arr, None if arr.dtype.newbyteorder("<") in COMPACT_FEATURE_DTYPES else np.float32)


_SUM_CHECK_MAX = 8192  # _all_finite: up to this many float32 values, a sum in Python; past it, numpy's isfinite


def non_finite(features: np.ndarray, as_float32: np.ndarray | None = None) -> str | None:
    """Why a batch of features (``[rows, ...]``) cannot be predicted on, or None when every value
    is a finite float32: names the first row and element that is not, and its value as sent
    (``as_float32``: the batch as the model gets it, when ``features`` is of another dtype). The
    server and the SDK (for a batch it splits) both say it in these words.

    >>> non_finite(np.array([[1.0, 2.0], [3.0, np.nan]], np.float32))
    'must be finite; row 1 holds nan at [1]'
    """
    model_sees = features if as_float32 is None else as_float32
    if _all_finite(model_sees):
        return None
    flat = int(np.flatnonzero(~np.isfinite(model_sees))[0])
    row, index = divmod(flat, max(1, math.prod(model_sees.shape[1:])))
    value = features.reshape(-1)[flat].item()
    where = list(np.unravel_index(index, model_sees.shape[1:])) if model_sees.ndim > 1 else []
    beyond = " (beyond float32's range)" if math.isfinite(value) else ""
    return f"must be finite; row {row} holds {value!r}{beyond} at {[int(i) for i in where]}"


def _all_finite(array: np.ndarray) -> bool:
    """Whether every value of a float array is finite (any other kind: True)."""
    if array.dtype.kind != "f":
        return True
    if array.dtype == np.float32 and array.size <= _SUM_CHECK_MAX and array.flags.c_contiguous:
        # A NaN or an infinity makes the sum one, and adding float32s as Python floats cannot
        # overflow. Summed in Python, not numpy: the server checks where its caches are cold,
        # and there numpy's calls cost 11-13 us for one row, this 6 us (1.2 us either way in a loop).
        return math.isfinite(sum(memoryview(array).cast("B").cast("f")))
    # The check of an unaligned array (a request's bytes, seen where they arrived) took 13-90 us for
    # 1,024 digits rows, by where the bytes lay; of a copy, 12-17 us with the copy.
    return bool(np.isfinite(array if array.flags.aligned else np.array(array)).all())


def to_tensor(array: ArrayLike, *, dtype: DTypeLike | None = None) -> tensor_pb2.Tensor:
    """Encodes an array (any layout or byte order) as a raw-bytes Tensor.

    ``dtype`` casts first (e.g. ``np.float32`` for features); without it the
    array's own dtype must be one of ``DTYPES`` (float32, float64, int32, int64,
    uint8, int8, uint16, int16, float16).
    """
    tensor = tensor_pb2.Tensor()
    fill_tensor(tensor, as_wire_array(array, dtype))
    return tensor


def encode_varint(value: int) -> bytes:
    """A non-negative integer in protobuf's base-128 varint encoding (the server's
    servicers/wire.py uses it too)."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(field: int, parts: Sequence[bytes | memoryview | np.ndarray]) -> list[bytes | memoryview | np.ndarray]:
    """A length-delimited field number ``field`` whose payload is ``parts`` one after another: its
    tag, its length and the parts, left for the caller to join once (the server's export.py uses
    it too, for an ONNX file's weights)."""
    size = sum(memoryview(part).nbytes for part in parts)
    return [encode_varint(field << 3 | 2), encode_varint(size), *parts]


_RAW_DATA = tensor_pb2.Tensor.DESCRIPTOR.fields_by_name["raw_data"].number


def with_tensor(message: bytes, field: int, wire: np.ndarray) -> bytes:
    """The serialized ``message`` with a raw-bytes Tensor of ``wire`` (an ``as_wire_array``
    result) as its field number ``field``, which ``message`` must not hold: the same bytes as
    filling the field and serializing, with ``wire``'s bytes copied once instead of three times
    (``tobytes``, into the message, out of it). Fields may come in any order on the wire."""
    raw = wire.reshape(-1).view(np.uint8)  # its bytes, no copy (C-contiguous)
    head = tensor_pb2.Tensor(shape=wire.shape, dtype=DTYPES[wire.dtype]).SerializeToString()
    return b"".join([message, *delimited(field, [head, *delimited(_RAW_DATA, [raw])])])


def fill_tensor(tensor: tensor_pb2.Tensor, wire: np.ndarray) -> None:
    """Writes ``wire`` (an ``as_wire_array`` result) into an empty Tensor message as raw bytes, in
    place: a tensor inside a request is filled where it is, not built and then copied in."""
    tensor.shape.extend(wire.shape)
    tensor.dtype = DTYPES[wire.dtype]
    tensor.raw_data = wire.tobytes(order="C")


def from_tensor(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """Decodes a Tensor into a numpy array.

    A ``raw_data`` tensor decodes without a copy: the result is a read-only view
    of the message's bytes (``.copy()`` it to modify in place).
    """
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor shape must be non-negative, got {list(shape)}")
    count = math.prod(shape)
    raw = tensor.raw_data  # read once: each read of a bytes field makes a new bytes object
    if raw:
        dt = _NUMPY_DTYPES.get(tensor.dtype)
        if dt is None:
            raise ValueError(f"raw_data needs a dtype, got {tensor_pb2.DataType.Name(tensor.dtype)}")
        if len(raw) != count * dt.itemsize:
            raise ValueError(
                f"raw_data has {len(raw)} bytes; shape {list(shape)} of {dt} needs {count * dt.itemsize}"
            )
        return np.frombuffer(raw, dtype=dt).reshape(shape)
    if len(tensor.float_values):
        values, default = tensor.float_values, tensor_pb2.DATA_TYPE_FLOAT32
    elif len(tensor.int_values):
        values, default = tensor.int_values, tensor_pb2.DATA_TYPE_INT64
    else:  # an empty tensor: no element carried any data
        values, default = (), tensor_pb2.DATA_TYPE_FLOAT32
    wire = tensor.dtype or default
    if wire not in _NUMPY_DTYPES:
        raise ValueError(f"unknown tensor dtype {wire}")
    if len(values) != count:
        raise ValueError(f"tensor has {len(values)} values; shape {list(shape)} needs {count}")
    return np.asarray(values, dtype=_NUMPY_DTYPES[wire].newbyteorder("=")).reshape(shape)
