"""KServe v2 (Open Inference Protocol) on gradwire's port: the real tritonclient, in its own
venv and process, against a model trained by gradwire; plus typed contents and bad input
through our own generated `inference` stubs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import threading
import time
import uuid

import grpc
import numpy as np
import pytest

from gradwire.kserve import grpc_service_pb2 as pb
from gradwire.kserve import grpc_service_pb2_grpc
from gradwire.v1 import models_pb2, models_pb2_grpc, training_pb2, training_pb2_grpc
from gradwire_server.config import Settings
from gradwire_server.inference import model_path
from gradwire_server.server import create_server
from helpers import ShmObject, State, config, inline, iris, mlp, raw_tensor, shm_request
from proto_shapes import enum_values, message_fields

import triton_env
from conftest import train_iris, wait_for

NAMES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def published(channel_module):
    """An iris classifier trained by gradwire and published as registeredModels/iris-kserve v1 (production)."""
    X, y = iris()
    jobs = training_pb2_grpc.TrainingJobServiceStub(channel_module)
    job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
        display_name="kserve", inline_dataset=inline(X, y), network=mlp(8, 3), training=config(epochs=5),
        registered_model="registeredModels/iris-kserve", aliases=["production"]))
    job_id = job.name.split("/")[1]
    done = wait_for(lambda: (j := jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name))).state in (State.SUCCEEDED, State.FAILED) and j)
    assert done.state == State.SUCCEEDED, done.error
    assert done.model_version >= 1 and done.registered_model == "registeredModels/iris-kserve", job_id
    return done


@pytest.fixture(scope="module")
def channel_module(target):
    with grpc.insecure_channel(target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


def test_tritonclient_reads_metadata_and_infers_like_predict(target, published, channel_module, tmp_path):
    py, why = triton_env.ensure()
    if py is None:
        pytest.skip(why)
    X, _ = iris()
    X = X[::15]  # 10 rows
    np.save(tmp_path / "x.npy", X)
    run = subprocess.run([str(py), str(triton_env.CLIENT), target, "iris-kserve", "production", str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    assert seen["server_live"] and seen["server_ready"] and seen["model_ready"]
    assert seen["unknown_model_ready"] is False
    assert seen["server"]["name"] == "gradwire"
    assert {"classification", "statistics", "model_configuration"} <= set(seen["server"]["extensions"])
    meta = seen["metadata"]
    assert meta["platform"] == "onnxruntime_onnx" and str(published.model_version) in meta["versions"]
    assert meta["inputs"] == [["features", "FP32", [-1, 4]]]
    assert meta["outputs"][0][1:] == ["FP32", [-1, 3]]
    assert seen["response"] == {"model_version": str(published.model_version), "id": "r1"}

    # The same probabilities as gradwire's own Predict (by alias), bit for bit.
    models = models_pb2_grpc.ModelServiceStub(channel_module)
    ours = models.Predict(models_pb2.PredictRequest(name="registeredModels/iris-kserve@production", features=raw_tensor(X)))
    expected = np.frombuffer(ours.probabilities.raw_data, dtype="<f4").reshape(10, 3)
    got = np.asarray(seen["probabilities"], dtype=np.float32)
    assert seen["probabilities_dtype"] == "float32"
    np.testing.assert_array_equal(got, expected)

    # Statistics extension: the client's two 10-row requests, each its own execution (nothing
    # else ran concurrently), read by tritonclient's get_inference_statistics.
    (stats,) = seen["statistics"]
    assert (stats["name"], stats["version"]) == ("iris-kserve", str(published.model_version))  # the alias, resolved
    assert (stats["inference_count"], stats["execution_count"], stats["success"]) == (20, 2, 2), stats
    assert stats["batches"] == [[10, 2]]
    assert 0 < stats["compute_infer_ns"] < stats["success_ns"]
    assert abs(stats["last_inference"] / 1000 - time.time()) < 120

    # Model configuration extension, as tritonclient's get_model_config reads it: the batch axis
    # is implicit (max_batch_size > 0: as many rows as fit in the default 64 MiB message).
    assert seen["config"] == {
        "name": "iris-kserve", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": (64 << 20) // 16, "all_versions": True,
        "input": [["features", "TYPE_FP32", [4]]], "output": [["probabilities", "TYPE_FP32", [3]]],
        "dynamic_batching": [[64], 0],
        "instance_group": [["iris-kserve_0", "KIND_CPU", 1, []]],  # one instance (batcher) per RPC process
    }

    # The protocol as tritonclient's own generated code has it: every RPC, message and field we
    # declare exists there with the same number, type and cardinality (and our enums' values).
    theirs = seen["protocol"]
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert {m.name: [m.input_type.name, m.output_type.name] for m in service.methods}.items() <= theirs["methods"].items()
    ours, enums = message_fields(pb), enum_values(pb)  # as kserve_client.py reports tritonclient's
    assert len(ours) >= 40  # the walk saw them all, nested ones too
    for name, fields in ours.items():
        assert name in theirs["messages"], name
        assert fields.items() <= theirs["messages"][name].items(), (name, fields, theirs["messages"][name])
    assert {"DataType", "ModelInput.Format", "ModelInstanceGroup.Kind"} <= set(enums)
    for name, values in enums.items():
        assert values.items() <= theirs["enums"][name].items(), (name, values, theirs["enums"][name])

    # System shared memory extension, through tritonclient's own shared memory utilities: the
    # input read from a region, the probabilities written to one, bit for bit Predict's.
    assert ["iris-kserve", str(published.model_version), "READY"] in seen["repository_index"]
    assert "system_shared_memory" in seen["server"]["extensions"]
    shared = seen["shared_memory"]
    np.testing.assert_array_equal(np.asarray(shared["probabilities"], dtype=np.float32), expected)
    assert shared["output"] == ["FP32", [10, 3]] and shared["raw_output_contents"] == [0]
    assert [(name[:6], key, offset, size) for name, key, offset, size in shared["status"]] == [
        ("gw-in-", "/" + shared["status"][0][0], 0, 160), ("gw-out", "/" + shared["status"][1][0], 0, 120)]
    assert shared["status_after"] == []

    assert seen["compact_datatypes_equal"] == ["UINT8", "FP16"]  # tritonclient's own encoding of them

    # Streaming inference through tritonclient's start_stream / async_stream_infer: each of the
    # ten rows its own request, a bad one fourth; every answer in the order sent, the rows
    # bit for bit Predict's, the bad one an error naming the field and the value.
    stream = seen["stream"]
    assert stream["ids"] == ["s0", "s1", "s2", None, *[f"s{i}" for i in range(3, 10)]]
    (error,) = stream["errors"]
    assert "INVALID_ARGUMENT: inputs[0].name" in error and "'not-the-input'" in error, error
    np.testing.assert_array_equal(np.asarray(stream["probabilities"], dtype=np.float32), expected)
    assert stream["final_flag"] is True  # enable_empty_final_response=True: the answer is marked final

    # Classification extension: top 2 as "value:index:label", best first.
    for row, probs in zip(seen["classification"], expected):
        best = int(np.argmax(probs))
        value, index, label = row[0].split(":")
        assert (int(index), label) == (best, NAMES[best]) and abs(float(value) - probs[best]) < 1e-6
        assert len(row) == 2 and float(row[1].split(":")[0]) <= float(value)


def test_typed_contents_and_bare_model_ids(published, channel_module):
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    X, _ = iris()
    X = X[:3]
    model_id = published.model.split("/")[1]
    request = pb.ModelInferRequest(model_name=model_id, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[3, 4], contents=pb.InferTensorContents(fp32_contents=X.ravel().tolist()))])
    typed = stub.ModelInfer(request)
    assert typed.outputs[0].datatype == "FP32" and list(typed.outputs[0].shape) == [3, 3]
    by_version = stub.ModelInfer(pb.ModelInferRequest(model_name="iris-kserve", model_version=str(published.model_version),
                                                      inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[3, 4])],
                                                      raw_input_contents=[X.tobytes()]))
    assert typed.raw_output_contents[0] == by_version.raw_output_contents[0]
    as_fp64 = stub.ModelInfer(pb.ModelInferRequest(model_name=model_id, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP64", shape=[3, 4], contents=pb.InferTensorContents(fp64_contents=X.astype(np.float64).ravel().tolist()))]))
    assert as_fp64.raw_output_contents[0] == typed.raw_output_contents[0]  # converted to FP32, the model's datatype


def test_compact_datatypes_infer_as_fp32(published, channel_module):
    """UINT8, INT8, UINT16, INT16 (raw or typed) and FP16 (raw: the protocol gives it no typed
    field) are exact in FP32, the model's datatype: the same rows answer bit for bit alike."""
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    X, _ = iris()
    X = np.round(X[:6] * 10)  # whole numbers: exact in every type
    Tensor = pb.ModelInferRequest.InferInputTensor

    def infer(datatype, **where):
        return stub.ModelInfer(pb.ModelInferRequest(model_name="iris-kserve", inputs=[Tensor(
            name="features", datatype=datatype, shape=[6, 4], contents=where.get("contents"))],
            raw_input_contents=where.get("raw", [])), timeout=10)

    plain = infer("FP32", raw=[X.astype("<f4").tobytes()]).raw_output_contents[0]
    for datatype, dtype, field in (("UINT8", "u1", "uint_contents"), ("INT8", "i1", "int_contents"),
                                   ("UINT16", "<u2", "uint_contents"), ("INT16", "<i2", "int_contents"), ("FP16", "<f2", None)):
        assert infer(datatype, raw=[X.astype(dtype).tobytes()]).raw_output_contents[0] == plain, datatype
        if field is not None:
            typed = pb.InferTensorContents(**{field: X.astype(dtype).ravel().tolist()})
            assert infer(datatype, contents=typed).raw_output_contents[0] == plain, datatype
    for datatype, contents, text in (
            ("FP16", pb.InferTensorContents(fp32_contents=X.ravel().tolist()), "FP16 tensors have no typed contents"),
            ("UINT8", pb.InferTensorContents(uint_contents=[300] * 24), "300 does not fit in UINT8 (0 to 255)"),
            ("INT8", pb.InferTensorContents(int_contents=[-129] * 24), "-129 does not fit in INT8 (-128 to 127)")):
        with pytest.raises(grpc.RpcError) as err:
            infer(datatype, contents=contents)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in err.value.details(), err.value.details()


def test_model_statistics_count_requests_rows_failures_and_executions(published, channel_module):
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    models = models_pb2_grpc.ModelServiceStub(channel_module)
    version = str(published.model_version)

    def stats() -> pb.ModelStatistics:
        (m,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="iris-kserve", version=version)).model_stats
        assert (m.name, m.version) == ("iris-kserve", version)
        return m

    def by_size(m: pb.ModelStatistics) -> dict[int, int]:
        return {b.batch_size: b.compute_infer.count for b in m.batch_stats}

    X, _ = iris()
    before = stats()
    for _ in range(3):  # Predict and ModelInfer count alike, one after the other: nothing merges
        models.Predict(models_pb2.PredictRequest(name=published.model, features=raw_tensor(X[:5])))
    stub.ModelInfer(pb.ModelInferRequest(model_name="iris-kserve", model_version=version, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[2, 4])], raw_input_contents=[X[:2].tobytes()]))
    with pytest.raises(grpc.RpcError):  # a wrong shape fails once the model is found
        models.Predict(models_pb2.PredictRequest(name=published.model, features=raw_tensor(X[:2, :3])))
    after = stats()

    assert after.inference_count - before.inference_count == 3 * 5 + 2
    assert after.execution_count - before.execution_count == 4
    s, b = after.inference_stats, before.inference_stats
    assert (s.success.count - b.success.count, s.fail.count - b.fail.count) == (4, 1)
    for stage in ("compute_input", "queue", "compute_infer", "compute_output"):
        assert getattr(s, stage).count - getattr(b, stage).count == 4, stage
    assert s.compute_infer.ns > b.compute_infer.ns and s.fail.ns > b.fail.ns
    # a request's stages add up to its duration
    assert (s.compute_input.ns + s.queue.ns + s.compute_infer.ns + s.compute_output.ns) == s.success.ns
    grown = {k: n - by_size(before).get(k, 0) for k, n in by_size(after).items()}
    assert {k: n for k, n in grown.items() if n} == {5: 3, 2: 1}
    assert after.last_inference >= before.last_inference > 0 or before.last_inference == 0

    # No name: every model served by this RPC process, under its registered name and version.
    every = {(m.name, m.version): m for m in stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats}
    assert every[("iris-kserve", version)].inference_count == after.inference_count
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelStatistics(pb.ModelStatisticsRequest(name="no-such-model"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in err.value.details()


def test_model_config_follows_the_models_batching(published, channel_module):
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    models = models_pb2_grpc.ModelServiceStub(channel_module)

    def config() -> pb.ModelConfig:
        return stub.ModelConfig(pb.ModelConfigRequest(name="iris-kserve", version="production")).config

    try:
        models.UpdateModelBatching(models_pb2.UpdateModelBatchingRequest(
            name=published.model, dynamic_batching=models_pb2.DynamicBatching(max_batch_size=8, max_delay_micros=300)))
        got = config()
        assert list(got.dynamic_batching.preferred_batch_size) == [8] and got.dynamic_batching.max_queue_delay_microseconds == 300
        models.UpdateModelBatching(models_pb2.UpdateModelBatchingRequest(
            name=published.model, dynamic_batching=models_pb2.DynamicBatching(enabled=False)))
        assert not config().HasField("dynamic_batching")  # one onnxruntime call per request
    finally:
        models.UpdateModelBatching(models_pb2.UpdateModelBatchingRequest(name=published.model))  # the server's defaults
    assert list(config().dynamic_batching.preferred_batch_size) == [64]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelConfig(pb.ModelConfigRequest(name="iris-kserve", version="staging"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "staging" in err.value.details()


@pytest.mark.parametrize(
    "mutate, code, text",
    [
        (lambda r: setattr(r, "model_name", "no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (lambda r: setattr(r, "model_version", "staging"), grpc.StatusCode.NOT_FOUND, "staging"),
        (lambda r: setattr(r.inputs[0], "name", "x"), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].name"),
        (lambda r: setattr(r.inputs[0], "datatype", "BYTES"), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].datatype"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 5), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0]"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"abc"), grpc.StatusCode.INVALID_ARGUMENT, "needs 32 bytes, got 3"),
        (lambda r: (r.inputs[0].shape.__setitem__(0, 0), r.raw_input_contents.__setitem__(0, b"")), grpc.StatusCode.INVALID_ARGUMENT,
         "inputs[0].shape: no rows to predict on ([0, 4]): send at least one"),
        (lambda r: r.raw_input_contents.__setitem__(0, np.array([[5, 3, 1, 0], [6, 3, np.nan, 2]], np.float32).tobytes()),
         grpc.StatusCode.INVALID_ARGUMENT, "inputs[0]: must be finite; row 1 holds nan at [2]"),
        (lambda r: r.outputs.add(name="nope"), grpc.StatusCode.INVALID_ARGUMENT, "outputs[0].name"),
        (lambda r: r.outputs.add(name="probabilities").parameters["classification"].MergeFrom(pb.InferParameter(int64_param=9)),
         grpc.StatusCode.INVALID_ARGUMENT, "between 1 and 3, got 9"),
    ],
)
def test_bad_infer_requests_name_the_field(published, channel_module, mutate, code, text):
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    X, _ = iris()
    request = pb.ModelInferRequest(model_name="iris-kserve", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[2, 4])], raw_input_contents=[X[:2].tobytes()])
    mutate(request)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == code and text in err.value.details(), err.value.details()


def test_the_repository_index_lists_every_model_version_by_the_name_requests_use(published, channel_module, server, target):
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    bare = train_iris(target, mlp(4, 3), epochs=1).split("/")[1]  # published to no registered model
    onnx = model_path(server.state.settings.data_dir, bare)
    moved = onnx.with_name("moved-away")
    onnx.rename(moved)  # its file gone: listed, but not ready
    try:
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    finally:
        moved.rename(onnx)
    entries = [(m.name, m.version, m.state, m.reason) for m in index]
    assert ("iris-kserve", str(published.model_version), "READY", "") in entries
    assert (bare, "", "UNAVAILABLE", "its ONNX file is missing") in entries
    assert [(m.name, m.version) for m in ready] == [(n, v) for n, v, state, _ in entries if state == "READY"]
    keys = [(n, int(v or 0)) for n, v, _, _ in entries]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for m in ready:  # each one is the name and version a request uses
        assert stub.ModelReady(pb.ModelReadyRequest(name=m.name, version=m.version)).ready, (m.name, m.version)
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="models"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "repository_name" in err.value.details()


def test_reflection_lists_the_inference_service(channel_module):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel_module)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert "inference.GRPCInferenceService" in {s.name for s in answer.list_services_response.service}


# ---- Triton's streaming inference (ModelStreamInfer) ------------------------------------------


def infer_request(model_name: str, X: np.ndarray, id: str = "", **fields) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model_name, id=id, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=list(X.shape))], raw_input_contents=[np.ascontiguousarray(X, "<f4").tobytes()],
        **fields)


def test_a_stream_answers_every_request_in_order_and_its_errors_in_band(published, channel_module):
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    X, _ = iris()
    requests = [infer_request("iris-kserve", X[i:i + 1 + i % 3], id=f"r{i}", model_version="production") for i in range(40)]
    requests[7].inputs[0].name = "x"  # bad: its error names the field and the value; the stream goes on
    requests[19] = infer_request("no-such-model", X[:1], id="r19")
    requests[30] = infer_request("iris-kserve", X[:300], id="r30")  # large: parsed apart, as ModelInfer's are
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=60))

    assert [a.infer_response.id for a in answers] == [r.id for r in requests]  # one each, in the order sent
    assert "INVALID_ARGUMENT: inputs[0].name" in answers[7].error_message and "'x'" in answers[7].error_message
    assert answers[19].error_message.startswith("NOT_FOUND: ") and "no-such-model" in answers[19].error_message
    assert answers[19].infer_response.model_name == "no-such-model" and not answers[19].infer_response.outputs
    for i, (request, answer) in enumerate(zip(requests, answers)):
        if i in (7, 19):
            continue
        assert answer.error_message == "", (i, answer.error_message)
        alone = stub.ModelInfer(request)  # the same request on its own call: the same bytes
        assert answer.infer_response.raw_output_contents == alone.raw_output_contents, i
        assert (answer.infer_response.model_version, list(answer.infer_response.outputs[0].shape)) == (
            str(published.model_version), [request.inputs[0].shape[0], 3])
    assert list(stub.ModelStreamInfer(iter([]), timeout=10)) == []  # no requests: no answers, and the call ends well

    # A client that asks for Triton's final-response flags gets each answer marked final (its
    # request's only one), failed ones too; one that does not ask gets no flag.
    asked = [infer_request("iris-kserve", X[:1], id="f1"), infer_request("no-such-model", X[:1], id="f2"), requests[0]]
    for r in asked[:2]:
        r.parameters["triton_enable_empty_final_response"].bool_param = True
    flags = [dict(a.infer_response.parameters) for a in stub.ModelStreamInfer(iter(asked), timeout=30)]
    assert [f.get("triton_final_response", pb.InferParameter()).bool_param for f in flags] == [True, True, False]
    assert "triton_final_response" not in flags[2]


def test_streamed_one_row_requests_merge_in_the_batcher(target, channel_module):
    """A stream keeps several requests in progress, so one client's one-row requests merge into
    larger onnxruntime calls, every one of them with its own rows back."""
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    model_id = train_iris(target, mlp(4, 3), epochs=1).split("/")[1]  # its own statistics
    X, _ = iris()
    answers = list(stub.ModelStreamInfer(iter([infer_request(model_id, X[i % 150:i % 150 + 1], id=str(i)) for i in range(400)]),
                                         timeout=120))
    assert [a.error_message for a in answers] == [""] * 400 and [a.infer_response.id for a in answers] == [str(i) for i in range(400)]
    whole = np.frombuffer(stub.ModelInfer(infer_request(model_id, X)).raw_output_contents[0], "<f4").reshape(150, 3)
    got = np.stack([np.frombuffer(a.infer_response.raw_output_contents[0], "<f4") for a in answers])
    np.testing.assert_allclose(got, whole[np.arange(400) % 150], rtol=1e-6, atol=1e-7)  # its own row, whatever it merged with
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model_id)).model_stats
    assert stats.inference_count == 400 + 150
    assert stats.execution_count < 400 + 1, "no streamed request merged with another"
    assert max(b.batch_size for b in stats.batch_stats if b.batch_size != 150) > 1


@pytest.mark.parametrize("in_flight, max_bytes, sizes, most", [
    (3, 10**9, [1] * 30, 3),  # bounded by count
    (32, 100, [40] * 30, 2),  # bounded by bytes
    (32, 100, [40, 500, 70, 40], 1),  # a request larger than the budget runs alone
])
def test_in_order_bounds_what_a_stream_has_in_progress(in_flight, max_bytes, sizes, most):
    """The scheduling under ModelStreamInfer: answers in order, and never more requests or bytes
    in progress (read, not yet answered) than allowed, with a real thread pool."""
    from concurrent import futures

    from gradwire_server.servicers.kserve import in_order

    lock, now, seen = threading.Lock(), [0], []

    def handle(request, arrived):
        with lock:
            now[0] += 1
            seen.append(now[0])
        time.sleep(0.01)
        with lock:
            now[0] -= 1
        return request

    with futures.ThreadPoolExecutor(64) as pool:
        requests = list(enumerate(sizes))
        answers = list(in_order(handle, iter(requests), pool, in_flight, max_bytes, size=lambda r: r[1]))
    assert answers == requests
    assert max(seen) == most, seen


def test_streams_are_bounded_and_a_cancelled_one_frees_its_slot(server, published):
    """Each open stream holds an RPC thread: past GRADWIRE_MAX_INFER_STREAMS a new one is refused,
    unary calls still answer, and a stream the client cancels gives its slot back. With
    GRADWIRE_INFER_STREAM_IN_FLIGHT=1 a stream's requests run one at a time: none merge."""
    settings = Settings(host="127.0.0.1", port=0, data_dir=server.state.settings.data_dir, rpc_threads=4,
                        max_infer_streams=1, infer_stream_in_flight=1, warm_aliases=False, system_shared_memory=False)
    running = create_server(settings, recover=False)  # a second server on the same store
    X, _ = iris()
    release = threading.Event()

    def held():  # one request, then the stream stays open until released
        yield infer_request("iris-kserve", X[:2], id="first")
        release.wait(30)

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
            first = stub.ModelStreamInfer(held(), timeout=60)
            assert next(first).infer_response.id == "first"
            with pytest.raises(grpc.RpcError) as err:
                list(stub.ModelStreamInfer(iter([infer_request("iris-kserve", X[:1])]), timeout=10))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "GRADWIRE_MAX_INFER_STREAMS" in err.value.details(), err.value.details()
            assert stub.ModelInfer(infer_request("iris-kserve", X[:1]), timeout=10).outputs  # unary calls still answer
            first.cancel()
            release.set()

            def opens() -> bool:
                try:
                    return [a.infer_response.id for a in stub.ModelStreamInfer(iter([infer_request("iris-kserve", X[:1], id="again")]),
                                                                                timeout=10)] == ["again"]
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    return False

            wait_for(opens, timeout=20, interval=0.1)

            def stats() -> pb.ModelStatistics:  # this server's own counts
                return stub.ModelStatistics(pb.ModelStatisticsRequest(name="iris-kserve", version="production")).model_stats[0]

            before = stats()
            answers = list(stub.ModelStreamInfer(iter([infer_request("iris-kserve", X[i:i + 1]) for i in range(100)]), timeout=60))
            after = stats()
            assert [a.error_message for a in answers] == [""] * 100
            assert (after.inference_count - before.inference_count, after.execution_count - before.execution_count) == (100, 100)
    finally:
        release.set()
        running.stop(grace=0)


# ---- Triton's system shared memory extension --------------------------------------------------


@pytest.fixture()
def shm_object():
    made: list[ShmObject] = []

    def make(size: int) -> ShmObject:
        made.append(ShmObject(size))
        return made[-1]

    yield make
    for obj in made:
        obj.remove()


@pytest.fixture()
def kserve(channel_module):
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    yield stub
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())  # every region: tests leave none


needs_shm = pytest.mark.skipif(not pathlib.Path("/dev/shm").is_dir(), reason="POSIX shared memory lives in /dev/shm (Linux)")


@needs_shm
def test_system_shared_memory_carries_inputs_and_outputs(published, kserve, shm_object):
    X, _ = iris()
    X = np.ascontiguousarray(X[:5])
    plain = kserve.ModelInfer(pb.ModelInferRequest(model_name="iris-kserve", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[5, 4])], raw_input_contents=[X.tobytes()])).raw_output_contents[0]
    assert "system_shared_memory" in kserve.ServerMetadata(pb.ServerMetadataRequest()).extensions

    # One object, two regions: the input at byte 64, the output at byte 1024 (and 12 bytes into it).
    obj = shm_object(4096)
    obj.write(X.tobytes(), 64)
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="in", key=obj.key, offset=64, byte_size=80))
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="out", key=obj.key.lstrip("/"), offset=1024,
                                                                             byte_size=256))
    status = kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
    assert {n: (r.name, r.key, r.offset, r.byte_size) for n, r in status.items()} == {
        "in": ("in", obj.key, 64, 80), "out": ("out", obj.key.lstrip("/"), 1024, 256)}
    assert list(kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="out")).regions) == ["out"]

    answer = kserve.ModelInfer(shm_request(5, out_offset=12))
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [("probabilities", "FP32", [5, 3])]
    assert list(answer.raw_output_contents) == [b""]  # the data went to the region, as Triton answers
    assert obj.read(60, 1024 + 12) == plain
    # Input from shared memory, output on the wire; and input on the wire, output to shared memory.
    assert kserve.ModelInfer(shm_request(5, out_region=None)).raw_output_contents == [plain]
    obj.write(b"\0" * 60, 1024)
    wire_in = shm_request(5, in_region=None)
    wire_in.raw_input_contents.append(X.tobytes())
    kserve.ModelInfer(wire_in)
    assert obj.read(60, 1024) == plain

    # Unregistered: a request naming it is refused, naming the field; unregistering twice is fine.
    kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="in"))
    kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="in"))
    assert list(kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions) == ["out"]
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(shm_request(5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "inputs[0].parameters.shared_memory_region" in err.value.details()
    # The name is free again, for another object.
    other = shm_object(80)
    other.write(X[::-1].tobytes(), 0)
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="in", key=other.key, byte_size=80))
    reversed_rows = kserve.ModelInfer(shm_request(5, out_region=None)).raw_output_contents[0]
    assert np.array_equal(np.frombuffer(reversed_rows, "<f4").reshape(5, 3), np.frombuffer(plain, "<f4").reshape(5, 3)[::-1])
    kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())  # all
    assert not kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions


@needs_shm
@pytest.mark.parametrize(
    "register, code, text",
    [
        (lambda key: {"name": "r", "key": "/../../etc/passwd", "byte_size": 8}, "INVALID_ARGUMENT", "key: must name a POSIX shared memory object"),
        (lambda key: {"name": "r", "key": "/", "byte_size": 8}, "INVALID_ARGUMENT", "key: "),
        (lambda key: {"name": "r", "key": "/gradwire-test-none-such", "byte_size": 8}, "NOT_FOUND", "'/gradwire-test-none-such' does not exist"),
        (lambda key: {"name": "r", "key": key, "offset": 100, "byte_size": 29}, "INVALID_ARGUMENT", "past the end of shared memory object"),
        (lambda key: {"name": "r", "key": key, "byte_size": 0}, "INVALID_ARGUMENT", "byte_size: must be > 0, got 0"),
        (lambda key: {"name": "", "key": key, "byte_size": 8}, "INVALID_ARGUMENT", "name: required"),
        (lambda key: {"name": "taken", "key": key, "byte_size": 8}, "ALREADY_EXISTS", "'taken' is already registered"),
    ],
)
def test_bad_registrations_name_the_field(kserve, shm_object, register, code, text):
    obj = shm_object(128)
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="taken", key=obj.key, byte_size=128))
    with pytest.raises(grpc.RpcError) as err:
        kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(**register(obj.key)))
    assert err.value.code().name == code and text in err.value.details(), err.value.details()
    assert list(kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions) == ["taken"]  # nothing half-made
    with pytest.raises(grpc.RpcError) as err:
        kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="r"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no system shared memory region named 'r'" in err.value.details()


def _set_param(tensor, name, param):
    tensor.parameters[name].CopyFrom(param)


@needs_shm
@pytest.mark.parametrize(
    "mutate, code, text",
    [
        (lambda r: _set_param(r.inputs[0], "shared_memory_byte_size", pb.InferParameter(int64_param=40)),
         "INVALID_ARGUMENT", "inputs[0].parameters.shared_memory_byte_size: shape [2, 4] x FP32 needs 32 bytes, got 40"),
        (lambda r: (r.inputs[0].shape.__setitem__(0, 1 << 30), _set_param(r.inputs[0], "shared_memory_byte_size",
                                                                           pb.InferParameter(int64_param=16 << 30))),
         "RESOURCE_EXHAUSTED", ("inputs[0].parameters.shared_memory_byte_size: 17179869184 bytes is more than an input may "
                                "hold, 67108864 (GRADWIRE_MAX_MESSAGE_BYTES)")),
        (lambda r: _set_param(r.inputs[0], "shared_memory_byte_size", pb.InferParameter(string_param="32")),
         "INVALID_ARGUMENT", "inputs[0].parameters.shared_memory_byte_size: must be an integer"),
        (lambda r: r.inputs[0].parameters.pop("shared_memory_byte_size"), "INVALID_ARGUMENT", "shared_memory_byte_size: required"),
        (lambda r: _set_param(r.inputs[0], "shared_memory_offset", pb.InferParameter(int64_param=20)),
         "INVALID_ARGUMENT", "32 bytes from offset 20 go past the end of system shared memory region 'in' (48 bytes)"),
        (lambda r: _set_param(r.inputs[0], "shared_memory_offset", pb.InferParameter(int64_param=-4)),
         "INVALID_ARGUMENT", "shared_memory_offset must be >= 0, got -4"),
        (lambda r: _set_param(r.inputs[0], "shared_memory_region", pb.InferParameter(int64_param=1)),
         "INVALID_ARGUMENT", "inputs[0].parameters.shared_memory_region: must be a string"),
        (lambda r: _set_param(r.inputs[0], "shared_memory_region", pb.InferParameter(string_param="nope")),
         "NOT_FOUND", "no system shared memory region named 'nope'"),
        (lambda r: r.inputs[0].parameters.pop("shared_memory_region"), "INVALID_ARGUMENT",
         "inputs[0].parameters.shared_memory_byte_size: 'shared_memory_byte_size' needs 'shared_memory_region'"),
        (lambda r: r.raw_input_contents.append(b"\0" * 32), "INVALID_ARGUMENT", "set neither raw_input_contents nor inputs[0].contents"),
        (lambda r: _set_param(r.outputs[0], "shared_memory_byte_size", pb.InferParameter(int64_param=20)),
         "INVALID_ARGUMENT", "outputs[0].parameters.shared_memory_byte_size: the output takes 24 bytes, more than the 20 given"),
        (lambda r: _set_param(r.outputs[0], "shared_memory_offset", pb.InferParameter(int64_param=30)),
         "INVALID_ARGUMENT", "24 bytes from offset 30 go past the end of system shared memory region 'out' (48 bytes)"),
        (lambda r: _set_param(r.outputs[0], "shared_memory_region", pb.InferParameter(string_param="nope")),
         "NOT_FOUND", "outputs[0].parameters.shared_memory_region: no system shared memory region named 'nope'"),
    ],
)
def test_bad_shared_memory_requests_name_the_field(published, kserve, shm_object, mutate, code, text):
    obj = shm_object(96)
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="in", key=obj.key, byte_size=48))
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="out", key=obj.key, offset=48, byte_size=48))
    request = shm_request(2)
    kserve.ModelInfer(request)  # as it stands, it works
    mutate(request)
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(request)
    assert err.value.code().name == code and text in err.value.details(), err.value.details()


@needs_shm
def test_a_shrunk_or_removed_object_is_an_error_not_a_crash(published, kserve, shm_object):
    """A mapping of an object the client has shrunk faults (SIGBUS): the server reads and writes
    with preadv/pwrite instead, and answers FAILED_PRECONDITION."""
    obj = shm_object(96)
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="in", key=obj.key, byte_size=48))
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="out", key=obj.key, offset=48, byte_size=48))
    kserve.ModelInfer(shm_request(2))
    obj.truncate(60)  # the input still fits; the output (48..72) does not
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(shm_request(2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert "outputs[0].parameters.shared_memory_region: system shared memory region 'out' ends early" in err.value.details()
    assert obj.path.stat().st_size == 60  # not grown back by the server
    obj.truncate(16)  # now the input does not fit either
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(shm_request(2, out_region=None))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert "inputs[0].parameters.shared_memory_region: system shared memory region 'in' ends early: shared memory " \
           "object" in err.value.details() and "now holds 16 bytes, 32 were to be read from byte 0" in err.value.details()
    obj.remove()
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(shm_request(2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "does not exist" in err.value.details()
    assert kserve.ServerLive(pb.ServerLiveRequest()).live
    plain = shm_request(1, in_region=None, out_region=None)
    plain.raw_input_contents.append(b"\0" * 16)
    assert kserve.ModelInfer(plain).outputs[0].shape == [1, 3]


@needs_shm
def test_links_and_non_files_are_refused(kserve, tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"x" * 64)
    link = pathlib.Path("/dev/shm") / f"gradwire-test-link-{uuid.uuid4().hex[:8]}"
    folder = pathlib.Path("/dev/shm") / f"gradwire-test-dir-{uuid.uuid4().hex[:8]}"
    link.symlink_to(outside)
    folder.mkdir()
    try:
        for key in (f"/{link.name}", f"/{folder.name}"):
            with pytest.raises(grpc.RpcError) as err:
                kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="r", key=key, byte_size=8))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and f"cannot open shared memory object '{key}'" in err.value.details()
    finally:
        link.unlink()
        folder.rmdir()
    assert not kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions


def test_system_shared_memory_can_be_turned_off(tmp_path):
    running = create_server(Settings(host="127.0.0.1", port=0, data_dir=tmp_path, system_shared_memory=False))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
            extensions = set(stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).extensions)
            assert "system_shared_memory" not in extensions and "statistics" in extensions
            for call, request in ((stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(name="r", key="/x", byte_size=8)),
                                  (stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest())):
                with pytest.raises(grpc.RpcError) as err:
                    call(request, timeout=10)
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "turned off (GRADWIRE_SYSTEM_SHARED_MEMORY)" in err.value.details(), err.value.details()
    finally:
        running.stop(grace=0)


@needs_shm
def test_the_number_of_regions_is_bounded(kserve, shm_object, monkeypatch):
    from gradwire_server import shm

    monkeypatch.setattr(shm, "MAX_REGIONS", 2)
    obj = shm_object(64)
    for name in ("a", "b"):
        kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name=name, key=obj.key, byte_size=64))
    with pytest.raises(grpc.RpcError) as err:
        kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="c", key=obj.key, byte_size=64))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 system shared memory regions" in err.value.details()
    kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="a"))
    kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="c", key=obj.key, byte_size=64))
    assert sorted(kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions) == ["b", "c"]


def test_tritonclient_loads_and_is_told_what_is_not_served(target, published, tmp_path):
    """Triton's model control through tritonclient: a load loads the model's sessions (its latest
    version and those its aliases point at); one with a config, and an unload, are refused saying
    why, and so are the methods gradwire does not serve (not gRPC's bare "Method not found!")."""
    py, why = triton_env.ensure()
    if py is None:
        pytest.skip(why)
    X, _ = iris()
    np.save(tmp_path / "x.npy", X[:2])
    run = subprocess.run([str(py), str(triton_env.CLIENT), target, "iris-kserve", "production", str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    control = json.loads(run.stdout)["model_control"]
    assert control["load"] is None and control["ready_after"] is True
    assert control["load_config"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "parameters['config']: gradwire's models come from its training jobs" in control["load_config"][1]
    assert control["unload"][0] == "StatusCode.FAILED_PRECONDITION"
    assert "there is no unload" in control["unload"][1] and "DeleteModel" in control["unload"][1]
    assert control["log_settings"] == ["StatusCode.UNIMPLEMENTED", "inference.GRPCInferenceService/LogSettings is not "
                                       "served: gradwire's logging is a server setting (GRADWIRE_LOG_LEVEL), fixed while it runs"]
    assert control["cuda_shared_memory"][0] == "StatusCode.UNIMPLEMENTED"
    assert "SystemSharedMemoryRegister" in control["cuda_shared_memory"][1]


def test_repository_load_loads_the_models_sessions(server, published, channel_module):
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_module)
    model_id = published.model.split("/")[1]
    server.state.sessions.evict(model_id)
    assert model_id not in server.state.sessions.loaded()
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="iris-kserve"))
    assert model_id in server.state.sessions.loaded()  # latest and production: the same version here
    server.state.sessions.evict(model_id)
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=model_id))  # a model id
    assert model_id in server.state.sessions.loaded()
    for request, code, text in (
        (pb.RepositoryModelLoadRequest(model_name="no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (pb.RepositoryModelLoadRequest(), grpc.StatusCode.INVALID_ARGUMENT, "model_name: required"),
        (pb.RepositoryModelLoadRequest(repository_name="r", model_name="iris-kserve"), grpc.StatusCode.NOT_FOUND,
         "repository_name: gradwire serves one model repository"),
        (pb.RepositoryModelLoadRequest(model_name="iris-kserve", parameters={"file:1/model.onnx": pb.ModelRepositoryParameter(
            bytes_param=b"x")}), grpc.StatusCode.INVALID_ARGUMENT, "parameters['file:1/model.onnx']"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(request)
        assert err.value.code() == code and text in err.value.details(), (request, err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="no-such-model"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="iris-kserve"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The methods not served answer UNIMPLEMENTED, whatever their request bytes.
    trace = channel_module.unary_unary("/inference.GRPCInferenceService/TraceSetting")
    with pytest.raises(grpc.RpcError) as err:
        trace(b"\x0a\x01x")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "ModelStatistics" in err.value.details()
