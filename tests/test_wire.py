"""Large Predict and ModelInfer requests are parsed without their features' bytes, which are read
where gRPC delivered them (servicers/wire.py): the split itself against protobuf's own parser,
then real requests above and below the size where it starts, over a real channel."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import train_iris
from gradwire.kserve import grpc_service_pb2 as pb
from gradwire.kserve import grpc_service_pb2_grpc
from gradwire.v1 import datasets_pb2, models_pb2, models_pb2_grpc, tensor_pb2
from gradwire_server.servicers import wire
from helpers import iris, mlp, raw_tensor, values_tensor

F32 = tensor_pb2.DATA_TYPE_FLOAT32


def without_raw(request: models_pb2.PredictRequest) -> models_pb2.PredictRequest:
    copy = models_pb2.PredictRequest()
    copy.CopyFrom(request)
    copy.features.raw_data = b""
    return copy


@pytest.mark.parametrize("raw_bytes", [0, 4, 100, 124, 128, 200, 16_384, 300_000])
@pytest.mark.parametrize("name", ["", "models/abc", "registeredModels/x@production", "n" * 200])
def test_split_equals_protobufs_parse(raw_bytes, name):
    """Every length around the varint steps of the enclosing message's length (127/128, 16,383/16,384)."""
    raw = bytes(range(256)) * (raw_bytes // 256) + bytes(raw_bytes % 256)
    request = models_pb2.PredictRequest(name=name, features=tensor_pb2.Tensor(shape=[1, raw_bytes // 4], dtype=F32, raw_data=raw))
    request.read_mask.paths.append("probabilities")
    data = request.SerializeToString()
    split = wire.split_bytes_field(data, (wire.FEATURES, wire.RAW_DATA))
    if not raw_bytes:
        assert split is None  # proto3 leaves an empty bytes field out: nothing to split
        return
    rest, view = split
    assert models_pb2.PredictRequest.FromString(rest) == without_raw(request)
    assert bytes(view) == raw and view.obj is data  # a view into the bytes as delivered: no copy


def test_fields_in_any_order_and_unknown_fields_are_kept():
    raw = np.arange(40, dtype=np.float32).tobytes()
    tensor = tensor_pb2.Tensor(raw_data=raw).SerializeToString() + tensor_pb2.Tensor(shape=[4, 10], dtype=F32).SerializeToString()
    unknown = _VarintBytes(99 << 3 | 2) + _VarintBytes(3) + b"abc"  # field 99, not in the schema
    data = (_VarintBytes(2 << 3 | 2) + _VarintBytes(len(tensor)) + tensor + unknown
            + models_pb2.PredictRequest(name="models/x").SerializeToString())
    rest, view = wire.split_bytes_field(data, (wire.FEATURES, wire.RAW_DATA))
    parsed, reference = models_pb2.PredictRequest.FromString(rest), models_pb2.PredictRequest.FromString(data)
    assert parsed.name == "models/x" and list(parsed.features.shape) == [4, 10] and bytes(view) == raw
    assert without_raw(reference).SerializeToString() == parsed.SerializeToString()  # the unknown field too


@pytest.mark.parametrize("data", [
    # features twice (protobuf merges them): parsed the ordinary way
    models_pb2.PredictRequest(features=tensor_pb2.Tensor(raw_data=b"abcd")).SerializeToString() * 2,
    # raw_data twice inside one features (the last wins)
    _VarintBytes(2 << 3 | 2) + _VarintBytes(12) + tensor_pb2.Tensor(raw_data=b"abcd").SerializeToString() * 2,
    # truncated: a length past the end
    _VarintBytes(2 << 3 | 2) + _VarintBytes(100) + b"xx",
    # a group (wire type 3)
    _VarintBytes(5 << 3 | 3) + _VarintBytes(5 << 3 | 4),
    # no features at all
    models_pb2.PredictRequest(name="models/x").SerializeToString(),
])
def test_anything_unusual_is_left_to_protobuf(data):
    assert wire.split_bytes_field(data, (wire.FEATURES, wire.RAW_DATA)) is None


def test_small_requests_are_parsed_the_ordinary_way():
    small = models_pb2.PredictRequest(name="models/x", features=raw_tensor(np.zeros((1, 4), np.float32)))
    assert isinstance(wire.predict_request(small.SerializeToString()), models_pb2.PredictRequest)
    big = models_pb2.PredictRequest(name="models/x", features=raw_tensor(np.zeros((5000, 4), np.float32)))
    decoded = wire.predict_request(big.SerializeToString())
    assert isinstance(decoded, wire.Decoded) and len(decoded.raw) == 80_000


@pytest.fixture(scope="module")
def model(target):
    return train_iris(target, mlp(8, 3))


def test_large_requests_answer_as_small_ones(target, model):
    X, _ = iris()
    rows = np.ascontiguousarray(np.resize(X, (6000, 4)))  # 96 KB: above wire.SPLIT_MIN_BYTES
    assert rows.nbytes > wire.SPLIT_MIN_BYTES
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        models, kserve = models_pb2_grpc.ModelServiceStub(ch), grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
        small = np.concatenate([np.frombuffer(models.Predict(models_pb2.PredictRequest(
            name=model, features=raw_tensor(rows[i:i + 1000]))).probabilities.raw_data, "<f4") for i in range(0, 6000, 1000)])
        large = models.Predict(models_pb2.PredictRequest(name=model, features=raw_tensor(rows)))
        assert np.frombuffer(large.probabilities.raw_data, "<f4").tobytes() == small.tobytes()
        assert len(large.predicted_classes) == 6000
        infer = kserve.ModelInfer(pb.ModelInferRequest(model_name=model.split("/")[1], inputs=[
            pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[6000, 4])],
            raw_input_contents=[rows.tobytes()]))
        assert infer.raw_output_contents[0] == small.tobytes()

        # and their mistakes read as before, with the byte counts of what was sent
        with pytest.raises(grpc.RpcError) as err:
            models.Predict(models_pb2.PredictRequest(name=model, features=tensor_pb2.Tensor(
                shape=[6000, 4], dtype=F32, raw_data=rows.tobytes()[:-4])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "features.raw_data: shape [6000, 4] x DATA_TYPE_FLOAT32 needs 96000 bytes, got 95996"
        both = raw_tensor(rows)
        both.float_values.extend([1.0])
        with pytest.raises(grpc.RpcError) as err:
            models.Predict(models_pb2.PredictRequest(name=model, features=both))
        assert "set only one of raw_data, float_values, int_values" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            kserve.ModelInfer(pb.ModelInferRequest(model_name=model.split("/")[1], inputs=[
                pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[6000, 4],
                                                      contents=pb.InferTensorContents(fp32_contents=[1.0]))],
                raw_input_contents=[rows.tobytes()]))
        assert "set either raw_input_contents or inputs[0].contents, not both" in err.value.details()
        # a typed-numbers request of the same rows, for good measure
        typed = models.Predict(models_pb2.PredictRequest(name=model, features=values_tensor(rows[:7])))
        np.testing.assert_allclose(typed.probabilities.float_values, small[:21], atol=1e-6)


def test_upload_chunks_are_taken_as_they_arrived():
    chunk = bytes(range(256)) * 400  # 100 KB
    data = datasets_pb2.UploadDatasetRequest(labels_chunk=chunk).SerializeToString()
    got = wire.upload_request(data)
    assert isinstance(got, wire.Chunk) and got.part == "labels_chunk" and bytes(got.data) == chunk and got.data.obj is data
    header = datasets_pb2.UploadDatasetRequest(header=datasets_pb2.DatasetUploadHeader(display_name="x" * 70_000))
    assert isinstance(wire.upload_request(header.SerializeToString()), datasets_pb2.UploadDatasetRequest)
    small = datasets_pb2.UploadDatasetRequest(features_chunk=b"abcd").SerializeToString()
    assert wire.upload_request(small) == datasets_pb2.UploadDatasetRequest(features_chunk=b"abcd")
    # two parts in one message (the oneof keeps the last): protobuf decides
    both = datasets_pb2.UploadDatasetRequest(features_chunk=chunk).SerializeToString() + \
        datasets_pb2.UploadDatasetRequest(labels_chunk=b"xy").SerializeToString()
    assert wire.upload_request(both) == datasets_pb2.UploadDatasetRequest(labels_chunk=b"xy")


def test_uploads_in_large_chunks_store_exactly_their_bytes(target):
    import hashlib

    from gradwire.v1 import datasets_pb2_grpc
    from helpers import upload_requests

    rng = np.random.default_rng(1)
    X, y = rng.random((100_000, 4), dtype=np.float32), (np.arange(100_000) % 3).astype(np.int64)
    with grpc.insecure_channel(target) as ch:
        stub = datasets_pb2_grpc.DatasetServiceStub(ch)
        ds = stub.UploadDataset(upload_requests(X, y, chunk=256 * 1024), timeout=60)  # 1.6 MB + 0.8 MB in 256 KB chunks
        assert ds.sha256 == hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest() and ds.example_count == 100_000
        stub.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=ds.name), timeout=10)
        # a chunk past the declared shape is still refused, naming its field
        requests = list(upload_requests(X, y, chunk=256 * 1024))
        requests.insert(2, datasets_pb2.UploadDatasetRequest(features_chunk=bytes(100_000)))
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadDataset(iter(requests), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("features_chunk: more bytes than shape x dtype allows")


# ---- any bytes at all: the split deserializers agree with protobuf's own parser ----------------


LEN_KIND = 2


def _key(number: int, kind: int) -> bytes:
    return _VarintBytes(number << 3 | kind)


@st.composite
def _field(draw, numbers: list[int], inner=None) -> bytes:
    """One field of any wire type: mostly numbers the message has (length-delimited ones with an
    `inner` message's fields or random bytes inside), sometimes another number; sometimes a wire
    type the schema does not give that number."""
    number = draw(st.one_of(st.sampled_from(numbers), st.integers(1, 40)))
    kind = draw(st.sampled_from([LEN_KIND] * 6 + [0, 1, 5]))
    if kind == 0:
        return _key(number, 0) + _VarintBytes(draw(st.integers(0, 2**64 - 1)))
    if kind in (1, 5):
        return _key(number, kind) + draw(st.binary(min_size=8 if kind == 1 else 4, max_size=8 if kind == 1 else 4))
    if inner is not None and draw(st.booleans()):
        payload = b"".join(draw(st.lists(inner, max_size=4)))
    else:
        payload = draw(st.binary(max_size=40))
    return _key(number, LEN_KIND) + _VarintBytes(len(payload)) + payload


def _numbers(message) -> list[int]:
    return [f.number for f in message.DESCRIPTOR.fields]


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, LEN_KIND) + _VarintBytes(len(payload)) + payload


@st.composite
def _damaged(draw, fields, path) -> bytes:
    """A message made of random fields, most often with the split's field among them (inside its
    message, for a path of two), then perhaps damaged: bytes flipped, cut or inserted."""
    parts = draw(st.lists(fields, max_size=5))
    if draw(st.integers(0, 3)):
        *outer, number = path
        field = _len_field(number, draw(st.binary(min_size=1, max_size=64)))
        if outer:
            inside = draw(st.lists(TENSOR_FIELD, max_size=3))
            inside.insert(draw(st.integers(0, len(inside))), field)
            field = _len_field(outer[0], b"".join(inside))
        parts.insert(draw(st.integers(0, len(parts))), field)
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        else:
            del data[at:]
    return bytes(data)


TENSOR_FIELD = _field(_numbers(tensor_pb2.Tensor))
PREDICT_BYTES = _damaged(_field(_numbers(models_pb2.PredictRequest), inner=TENSOR_FIELD), (wire.FEATURES, wire.RAW_DATA))
UPLOAD_BYTES = _damaged(_field(_numbers(datasets_pb2.UploadDatasetRequest)), (min(wire.CHUNKS),))
INFER_BYTES = _damaged(_field(_numbers(pb.ModelInferRequest), inner=_field(_numbers(pb.ModelInferRequest.InferInputTensor))),
                       (wire.RAW_INPUT_CONTENTS,))


def _whole(message_class, parsed):
    """What the handler reads, as one message: a Decoded's bytes put back where they came from,
    a Chunk as the message of its one part."""
    if isinstance(parsed, wire.Chunk):
        return message_class(**{parsed.part: bytes(parsed.data)})
    if not isinstance(parsed, wire.Decoded):
        return parsed
    message = message_class()
    message.CopyFrom(parsed.message)
    if message_class is models_pb2.PredictRequest:
        message.features.raw_data = bytes(parsed.raw)
    else:
        message.raw_input_contents.append(bytes(parsed.raw))
    return message


@pytest.mark.parametrize("message_class, deserializer, examples", [
    (models_pb2.PredictRequest, wire.predict_request, PREDICT_BYTES),
    (pb.ModelInferRequest, wire.model_infer_request, INFER_BYTES),
    (datasets_pb2.UploadDatasetRequest, wire.upload_request, UPLOAD_BYTES),
])
def test_any_bytes_read_as_protobuf_reads_them(message_class, deserializer, examples, monkeypatch):
    """Whatever arrives, even broken or odd (a field twice, a known number with another wire type,
    unknown fields, cut short), the handler sees exactly what protobuf's parser makes of it, or
    the request fails to parse as protobuf's would. Every size is split here (SPLIT_MIN_BYTES 0)."""
    monkeypatch.setattr(wire, "SPLIT_MIN_BYTES", 0)
    seen = {"split": 0, "parsed": 0, "refused": 0}

    @settings(max_examples=1500, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(examples)
    def check(data):
        try:
            expected = message_class.FromString(data)
        except DecodeError:
            expected = None
        try:
            parsed = deserializer(data)
        except DecodeError:
            assert expected is None, f"protobuf reads {data!r}"
            seen["refused"] += 1
            return
        assert expected is not None, f"protobuf refuses {data!r}"
        seen["split" if isinstance(parsed, (wire.Decoded, wire.Chunk)) else "parsed"] += 1
        got = _whole(message_class, parsed)
        assert got == expected and got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True), data

    check()
    print(f"{message_class.__name__}: {seen}")
    assert min(seen.values()) >= 50, seen  # each way, often
