"""KServe v2 (Open Inference Protocol) on gradwire's port: the real tritonclient, in its own
venv and process, against a model trained by gradwire; plus typed contents and bad input
through our own generated `inference` stubs."""

from __future__ import annotations

import json
import subprocess
import time

import grpc
import numpy as np
import pytest

from gradwire.kserve import grpc_service_pb2 as pb
from gradwire.kserve import grpc_service_pb2_grpc
from gradwire.v1 import models_pb2, models_pb2_grpc, training_pb2, training_pb2_grpc
from helpers import State, config, inline, iris, mlp, raw_tensor

import triton_env
from conftest import wait_for

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
    }

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


def test_reflection_lists_the_inference_service(channel_module):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel_module)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert "inference.GRPCInferenceService" in {s.name for s in answer.list_services_response.service}
