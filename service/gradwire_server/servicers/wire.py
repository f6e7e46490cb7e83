"""Requests whose big bytes field stays where it arrived: features and upload chunks without a copy.

protobuf copies a bytes field twice on its way to Python: into the parsed message, then into a
new bytes object at each read. For Predict's ``features.raw_data`` and ModelInfer's
``raw_input_contents`` (a 1,024-row digits request: 256 KB), `split_bytes_field` finds the
field in the request as gRPC delivered it, and the message is parsed without it: the handler
gets the message and a memoryview of those bytes, which ``np.frombuffer`` reads in place.
Upload chunks are a message of one bytes field, which is taken as it is. Anything unusual (the
field twice, a message on its path split in parts, groups) is parsed the ordinary way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gradwire._tensors import encode_varint
from gradwire.kserve import grpc_service_pb2 as kserve_pb2
from gradwire.v1 import datasets_pb2, models_pb2, tensor_pb2

LEN = 2  # the length-delimited wire type
# Below this a request is parsed the ordinary way: finding the field in Python (about 6 us) costs
# more than protobuf's two copies of a few kilobytes (a 1,024-row digits request: 19 us, then 7).
SPLIT_MIN_BYTES = 64 * 1024

def _number(message, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


FEATURES, RAW_DATA = _number(models_pb2.PredictRequest, "features"), _number(tensor_pb2.Tensor, "raw_data")
RAW_INPUT_CONTENTS = _number(kserve_pb2.ModelInferRequest, "raw_input_contents")
CHUNKS = {_number(datasets_pb2.UploadDatasetRequest, part): part for part in ("features_chunk", "labels_chunk")}


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A request message without its big bytes field, and a view of that field's bytes."""

    message: Any
    raw: memoryview


def unwrap(request: Any) -> tuple[Any, memoryview | None]:
    """A handler's request as (message, the big field's bytes when they came apart, else None)."""
    return (request.message, request.raw) if isinstance(request, Decoded) else (request, None)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """(field number, wire type, tag start, payload start, payload end) of each field in buf[start:end]."""
    i = start
    while i < end:
        tag_start = i
        key, i = _varint(buf, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            _, i = _varint(buf, i)
            yield number, kind, tag_start, i, i
            continue
        if kind == 1:
            i += 8
        elif kind == 5:
            i += 4
        elif kind == LEN:
            length, i = _varint(buf, i)
            payload = i
            i += length
            if i > end:
                raise ValueError("field runs past its message")
            yield number, kind, tag_start, payload, i
            continue
        else:  # groups: not in these messages
            raise ValueError(f"wire type {kind}")
        if i > end:
            raise ValueError("field runs past its message")
        yield number, kind, tag_start, i, i


def _only(buf: bytes, start: int, end: int, number: int) -> tuple[int, int, int] | None:
    """(tag start, payload start, payload end) of field `number` when it occurs exactly once in
    buf[start:end], length-delimited; None otherwise. (With another wire type, protobuf keeps the
    field among the unknown ones, not in the message: leave it to protobuf.)"""
    found = [(k, t, s, e) for n, k, t, s, e in _fields(buf, start, end) if n == number]
    if len(found) != 1 or found[0][0] != LEN:
        return None
    return found[0][1:]


def split_bytes_field(data: bytes, path: tuple[int, ...]) -> tuple[bytes, memoryview] | None:
    """`data` without the bytes field at `path` (field numbers from the top: (2, 3) is
    features.raw_data), and a view of that field's bytes in `data`; None unless the field and each
    message on its path occur exactly once. Only the bytes around the field are copied."""
    try:
        spans = []
        start, end = 0, len(data)
        for number in path:
            found = _only(data, start, end, number)
            if found is None:
                return None
            spans.append(found)
            start, end = found[1], found[2]
    except ValueError:  # malformed: protobuf's own parser says how
        return None
    tag, payload, field_end = spans[-1]
    rest = data[:tag] + data[field_end:]  # the innermost message loses the field
    # each enclosing message is now shorter by as many bytes: rewrite its length prefix
    removed = field_end - tag
    for outer_tag, outer_payload, outer_end in reversed(spans[:-1]):
        key_end = _varint(data, outer_tag)[1]
        new_length = outer_end - outer_payload - removed
        prefix = data[outer_tag:key_end] + encode_varint(new_length)
        old_prefix_length = outer_payload - outer_tag
        rest = rest[:outer_tag] + prefix + rest[outer_payload:]
        removed += old_prefix_length - len(prefix)
    return rest, memoryview(data)[payload:field_end]


def _parse(message_class: Any, data: bytes, path: tuple[int, ...]) -> Any:
    """``message_class`` parsed from ``data``; a large one as a `Decoded`, when its field at
    ``path`` can be split off."""
    split = split_bytes_field(data, path) if len(data) >= SPLIT_MIN_BYTES else None
    if split is None:
        return message_class.FromString(data)
    return Decoded(message_class.FromString(split[0]), split[1])


def predict_request(data: bytes) -> models_pb2.PredictRequest | Decoded:
    """Predict's request deserializer."""
    return _parse(models_pb2.PredictRequest, data, (FEATURES, RAW_DATA))


def model_infer_request(data: bytes) -> kserve_pb2.ModelInferRequest | Decoded:
    """ModelInfer's request deserializer."""
    return _parse(kserve_pb2.ModelInferRequest, data, (RAW_INPUT_CONTENTS,))


@dataclasses.dataclass(frozen=True)
class Chunk:
    """An upload message that is one bytes part and nothing else: which part, and its bytes."""

    part: str
    data: memoryview


def upload_request(data: bytes) -> datasets_pb2.UploadDatasetRequest | Chunk:
    """UploadDataset's request deserializer: a chunk message (one bytes field filling the whole
    message, as every client sends them) is not parsed at all; anything else is."""
    if len(data) >= SPLIT_MIN_BYTES:
        try:
            found = list(_fields(data, 0, len(data)))
        except ValueError:
            found = []
        if len(found) == 1 and found[0][0] in CHUNKS and found[0][1] == LEN:
            number, _, _, start, end = found[0]
            return Chunk(CHUNKS[number], memoryview(data)[start:end])
    return datasets_pb2.UploadDatasetRequest.FromString(data)
