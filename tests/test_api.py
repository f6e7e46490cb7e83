"""The gradwire.v1 API over a real channel: upload, train, watch, predict, export, and every kind of bad input."""

from __future__ import annotations

import hashlib
import json

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gradwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    network_pb2,
    tensor_pb2,
    training_pb2,
    training_pb2_grpc,
)
import gradwire as gw
from helpers import State, config, inline, iris, mlp, raw_tensor, upload_requests, values_tensor


@pytest.fixture()
def stubs(channel):
    return (
        datasets_pb2_grpc.DatasetServiceStub(channel),
        training_pb2_grpc.TrainingJobServiceStub(channel),
        models_pb2_grpc.ModelServiceStub(channel),
    )


@pytest.fixture(scope="module")
def trained(target):
    """An iris classifier trained from an inline dataset, as grpcurl users do."""
    with grpc.insecure_channel(target) as ch:
        jobs = training_pb2_grpc.TrainingJobServiceStub(ch)
        X, y = iris()
        job = jobs.CreateTrainingJob(
            training_pb2.CreateTrainingJobRequest(
                display_name="iris", inline_dataset=inline(X, y), network=mlp(16, 3),
                training=config(epochs=40, batch_size=16, lr=0.05, validation_split=0.2,
                                input_normalization=network_pb2.INPUT_NORMALIZATION_STANDARDIZE),
            ),
            timeout=10,
        )
        events = list(jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=120))
        return job, events, jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name), timeout=10)


def test_create_returns_queued_at_once(trained):
    job, _, _ = trained
    assert job.state == State.QUEUED
    assert job.name.startswith("trainingJobs/") and job.dataset.startswith("datasets/")
    assert job.seed == 0 and job.parameter_count == 4 * 16 + 16 + 16 * 3 + 3


def test_watch_replays_then_follows_to_the_end(trained, stubs):
    job, events, final = trained
    assert final.state == State.SUCCEEDED, final.error
    states = [e.state for e in events]
    assert states[0] == State.QUEUED and states[-1] == State.SUCCEEDED and State.RUNNING in states
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    epochs = [e.epoch for e in events if e.HasField("epoch")]
    assert [m.epoch for m in epochs] == list(range(1, len(final.history) + 1))
    first = epochs[0]
    assert first.iterations == int(np.ceil(120 / 16))  # 150 examples, 20% held out
    assert first.HasField("validation_loss") and first.HasField("validation_accuracy")
    assert first.learning_rate == pytest.approx(0.05) and first.samples_per_second > 0 and first.elapsed_seconds > 0
    # a second watch of a finished job replays the same history and ends
    replay = list(stubs[1].WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=10))
    assert [e.sequence for e in replay] == [e.sequence for e in events]
    assert events[-1].model == final.model


def test_predict_with_numbers_and_raw_bytes(trained, stubs):
    _, _, final = trained
    models = stubs[2]
    model = models.GetModel(models_pb2.GetModelRequest(name=final.model), timeout=10)
    assert model.class_names == ["setosa", "versicolor", "virginica"] and list(model.input_shape) == [4]
    assert 0 <= model.parity_max_abs_diff <= 1e-4
    assert model.final_metrics.validation_accuracy >= 0.85
    X, y = iris()
    by_values = models.Predict(models_pb2.PredictRequest(name=model.name, features=values_tensor(X)), timeout=10)
    assert list(by_values.probabilities.shape) == [150, 3] and len(by_values.probabilities.float_values) == 450
    probs = np.array(by_values.probabilities.float_values).reshape(150, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (np.array(by_values.predicted_classes) == y).mean() >= 0.9
    assert by_values.predicted_class_names[0] == model.class_names[by_values.predicted_classes[0]]
    by_raw = models.Predict(models_pb2.PredictRequest(name=model.name, features=raw_tensor(X)), timeout=10)
    raw = np.frombuffer(by_raw.probabilities.raw_data, dtype="<f4").reshape(150, 3)
    np.testing.assert_allclose(raw, probs, atol=1e-7)


def test_read_mask_fills_only_the_fields_asked_for(trained, stubs):
    _, _, final = trained
    models = stubs[2]
    X, _ = iris()
    full = models.Predict(models_pb2.PredictRequest(name=final.model, features=raw_tensor(X)), timeout=10)
    assert full.HasField("probabilities") and len(full.predicted_classes) == len(full.predicted_class_names) == 150

    def ask(*paths):
        request = models_pb2.PredictRequest(name=final.model, features=raw_tensor(X))
        request.read_mask.paths.extend(paths)
        return models.Predict(request, timeout=10)

    probs = ask("probabilities", "values")  # what the SDK's predict() asks: values do not apply here
    assert probs.probabilities == full.probabilities
    assert not probs.predicted_classes and not probs.predicted_class_names and not probs.HasField("values")
    names = ask("predicted_class_names")
    assert not names.HasField("probabilities") and not names.predicted_classes
    assert names.predicted_class_names == full.predicted_class_names
    both = ask("predicted_classes", "predicted_class_names")
    assert both.predicted_classes == full.predicted_classes and both.predicted_class_names == full.predicted_class_names
    assert not both.HasField("probabilities")
    with pytest.raises(grpc.RpcError) as err:
        ask("probabilities", "logits")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("read_mask.paths[1]: 'logits' is not a PredictResponse field"), err.value.details()


def test_exported_onnx_runs_without_gradwire(trained, stubs, tmp_path):
    _, _, final = trained
    models = stubs[2]
    model = models.GetModel(models_pb2.GetModelRequest(name=final.model), timeout=10)
    data = b"".join(c.chunk_data for c in models.ExportModel(models_pb2.ExportModelRequest(name=model.name), timeout=10))
    assert len(data) == model.onnx_size_bytes and hashlib.sha256(data).hexdigest() == model.onnx_sha256
    props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert json.loads(props["class_names"]) == ["setosa", "versicolor", "virginica"]
    assert json.loads(props["input_shape"]) == [4]
    normalization = json.loads(props["normalization"])
    assert normalization["kind"] == "INPUT_NORMALIZATION_STANDARDIZE" and len(normalization["offset"]) == 4
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] != 1  # a dynamic batch axis
    X, _ = iris()
    (probs,) = session.run(["probabilities"], {session.get_inputs()[0].name: X})
    served = models.Predict(models_pb2.PredictRequest(name=model.name, features=raw_tensor(X)), timeout=10)
    np.testing.assert_array_equal(probs, np.frombuffer(served.probabilities.raw_data, dtype="<f4").reshape(150, 3))


def test_upload_in_many_chunks_then_get_list_delete(stubs):
    datasets = stubs[0]
    X, y = iris()
    ds = datasets.UploadDataset(upload_requests(X, y, chunk=1000, names=["a", "b", "c"]), timeout=30)
    other = datasets.UploadDataset(upload_requests(X, y), timeout=30)  # paging below needs two, whatever ran before
    assert ds.example_count == 150 and list(ds.feature_shape) == [4] and ds.class_count == 3
    assert ds.label_kind == datasets_pb2.LABEL_KIND_CLASSES and len(ds.sha256) == 64
    assert datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=ds.name), timeout=10) == ds
    names = [d.name for d in datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets]
    assert ds.name in names
    page = datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(page_size=1), timeout=10)
    assert len(page.datasets) == 1 and page.next_page_token
    for token in ("99999999999999999999", "\u00b2", "-1", "x"):  # past SQLite's integers, a digit int() refuses, ...
        with pytest.raises(grpc.RpcError) as err:
            datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(page_size=1, page_token=token), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == f"page_token: not a token from a previous response: {token!r}"
    datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=ds.name), timeout=10)
    datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=other.name), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=ds.name), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_regression_dataset_trains_and_predicts_values(stubs):
    _, jobs, models = stubs
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5], dtype=np.float32) + 0.3).astype(np.float32)
    request = training_pb2.CreateTrainingJobRequest(
        inline_dataset=datasets_pb2.InlineDataset(features=values_tensor(X), labels=values_tensor(y), label_kind=datasets_pb2.LABEL_KIND_REGRESSION),
        network=mlp(1),
        training=network_pb2.TrainingConfig(
            loss=network_pb2.Loss(mse=network_pb2.MeanSquaredErrorLoss()),
            optimizer=network_pb2.Optimizer(sgd=network_pb2.SGD(learning_rate=0.1)),
            batching=network_pb2.Batching(full_batch=network_pb2.FullBatch()),
            epochs=200, seed=1,
        ),
    )
    job = jobs.CreateTrainingJob(request, timeout=10)
    events = list(jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=120))
    assert events[-1].state == State.SUCCEEDED, events[-1].error
    assert all(e.epoch.iterations == 1 for e in events if e.HasField("epoch"))  # full batch: one step per epoch
    out = models.Predict(models_pb2.PredictRequest(name=events[-1].model, features=values_tensor(X[:5])), timeout=10)
    values = np.array(out.values.float_values).reshape(5, 1)
    np.testing.assert_allclose(values[:, 0], y[:5], atol=0.05)
    assert not out.predicted_classes


def test_cancel_running_job_and_refuse_cancel_of_finished(stubs):
    _, jobs, _ = stubs
    X, y = iris()
    request = training_pb2.CreateTrainingJobRequest(
        inline_dataset=inline(X, y), network=mlp(32, 3),
        training=network_pb2.TrainingConfig(
            loss=network_pb2.Loss(cross_entropy=network_pb2.CrossEntropyLoss()),
            optimizer=network_pb2.Optimizer(sgd=network_pb2.SGD(learning_rate=0.01)),
            batching=network_pb2.Batching(online=network_pb2.Online()), epochs=10_000, seed=0,
        ),
    )
    job = jobs.CreateTrainingJob(request, timeout=10)
    for event in jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=60):
        if event.HasField("epoch"):
            break
    cancelling = jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=job.name), timeout=10)
    assert cancelling.state in (State.CANCELLING, State.CANCELLED)
    events = list(jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=30))
    assert events[-1].state == State.CANCELLED
    with pytest.raises(grpc.RpcError) as err:
        jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=job.name), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CANCELLED" in err.value.details()


def test_an_unfinished_jobs_test_set_cannot_be_deleted(stubs):
    """A dataset an unfinished job will be scored on is kept, like the one it trains on."""
    datasets, jobs, _ = stubs
    X, y = iris()
    train_set = datasets.UploadDataset(upload_requests(X[:120], y[:120], names=["a", "b", "c"]), timeout=30)
    test_set = datasets.UploadDataset(upload_requests(X[120:], y[120:], names=["a", "b", "c"]), timeout=30)
    job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
        dataset=train_set.name, test_dataset=test_set.name, network=mlp(32, 3),
        training=network_pb2.TrainingConfig(
            loss=network_pb2.Loss(cross_entropy=network_pb2.CrossEntropyLoss()),
            optimizer=network_pb2.Optimizer(sgd=network_pb2.SGD(learning_rate=0.01)),
            batching=network_pb2.Batching(online=network_pb2.Online()), epochs=10_000, seed=0)), timeout=10)
    for which, role in ((test_set, " as its test set"), (train_set, "")):
        with pytest.raises(grpc.RpcError) as err:
            datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=which.name), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details().endswith(f"is used by unfinished job '{job.name}'{role}"), err.value.details()
        assert datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=which.name), timeout=10) == which
    jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=job.name), timeout=10)
    assert list(jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=60))[-1].state == State.CANCELLED
    for which in (test_set, train_set):
        datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=which.name), timeout=10)


# ---- bad input: each answered with its field path and value; the server keeps serving ----

def _create(jobs, **kw):
    X, y = iris(30)
    fields = {"inline_dataset": inline(X, y), "network": mlp(8, 3), "training": config()}
    fields.update(kw)
    return jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(**fields), timeout=10)


def _conv_net(kernel: int) -> network_pb2.NetworkSpec:
    return network_pb2.NetworkSpec(layers=[
        network_pb2.Layer(conv2d=network_pb2.Conv2d(filters=4, kernel_size=kernel)),
        network_pb2.Layer(flatten=network_pb2.Flatten()),
        network_pb2.Layer(dense=network_pb2.Dense(units=3)),
    ])


def _inline_raw(X, y, **kw):
    d = inline(X, y)
    for k, v in kw.items():
        getattr(d, k).CopyFrom(v) if hasattr(v, "DESCRIPTOR") else setattr(d, k, v)
    return d


X30, Y30 = iris(30)
IMG = np.zeros((30, 1, 4, 4), dtype=np.float32)
UNKNOWN_LAYER = network_pb2.NetworkSpec.FromString(b"\x0a\x03\xfa\x06\x00")  # a Layer with only an unknown field 111

BAD_CREATES = {
    "empty layer": (dict(network=network_pb2.NetworkSpec(layers=[network_pb2.Layer()])), "network.layers[0]", "not set"),
    "unknown layer": (dict(network=UNKNOWN_LAYER), "network.layers[0]", "not set"),
    "no layers": (dict(network=network_pb2.NetworkSpec()), "network.layers", ""),
    "zero units": (dict(network=mlp(0, 3)), "network.layers[0].dense.units", "0"),
    "negative units": (dict(network=mlp(-4, 3)), "network.layers[0].dense.units", "-4"),
    "conv2d on 1-D": (dict(network=_conv_net(3)), "network.layers[0].conv2d", "(4,)"),
    "kernel too large": (dict(inline_dataset=_inline_raw(IMG, Y30, features=values_tensor(IMG)), network=_conv_net(5)), "network.layers[0].conv2d.kernel_size", "5"),
    "width mismatch": (dict(network=mlp(8, 5)), "network.layers[2]", "5"),
    "label out of range": (dict(inline_dataset=inline(X30, np.where(Y30 == 2, 7, Y30))), "inline_dataset.labels", "7"),
    "nan feature": (dict(inline_dataset=inline(np.where(np.arange(120).reshape(30, 4) == 9, np.nan, X30).astype(np.float32), Y30)), "inline_dataset.features", "nan"),
    "inf feature": (dict(inline_dataset=inline(np.where(np.arange(120).reshape(30, 4) == 9, np.inf, X30).astype(np.float32), Y30)), "inline_dataset.features", "inf"),
    "count mismatch": (dict(inline_dataset=inline(X30, Y30[:29])), "inline_dataset.labels_shape", "30 vs 29"),
    "bytes mismatch": (dict(inline_dataset=_inline_raw(X30, Y30, features=tensor_pb2.Tensor(shape=[30, 4], dtype=tensor_pb2.DATA_TYPE_FLOAT32, raw_data=b"\0" * 100))), "inline_dataset.features.raw_data", "100"),
    "empty dataset": (dict(inline_dataset=inline(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))), "inline_dataset.features_shape", "0 examples"),
    "batch too large": (dict(training=config(batch_size=31)), "training.batching.mini_batch.batch_size", "31"),
    "unspecified label kind": (dict(inline_dataset=_inline_raw(X30, Y30, label_kind=datasets_pb2.LABEL_KIND_UNSPECIFIED)), "inline_dataset.label_kind", "LABEL_KIND_UNSPECIFIED"),
    "unspecified normalization": (dict(training=config(input_normalization=network_pb2.INPUT_NORMALIZATION_UNSPECIFIED)), "training.input_normalization", "UNSPECIFIED"),
    "unspecified dtype": (dict(inline_dataset=_inline_raw(X30, Y30, features=tensor_pb2.Tensor(shape=[30, 4], raw_data=X30.tobytes()))), "inline_dataset.features.dtype", "UNSPECIFIED"),
    "no optimizer": (dict(training=network_pb2.TrainingConfig(loss=config().loss, batching=config().batching, epochs=1)), "training.optimizer", ""),
    "loss does not fit labels": (dict(training=network_pb2.TrainingConfig(loss=network_pb2.Loss(mse=network_pb2.MeanSquaredErrorLoss()), optimizer=config().optimizer, batching=config().batching, epochs=1)), "training.loss", "mse"),
    "missing dataset": (dict(inline_dataset=None, dataset="datasets/doesnotexist"), None, "doesnotexist"),
    "malformed dataset name": (dict(inline_dataset=None, dataset="../../etc/passwd"), "dataset", "../../etc/passwd"),
}


@pytest.mark.parametrize("case", list(BAD_CREATES), ids=list(BAD_CREATES))
def test_bad_create_is_refused_with_field_and_value(stubs, case):
    datasets, jobs, _ = stubs
    kwargs, field, value = BAD_CREATES[case]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if "dataset" in kwargs:
        kwargs.pop("inline_dataset", None)
    before_jobs = len(jobs.ListTrainingJobs(training_pb2.ListTrainingJobsRequest(page_size=1000), timeout=10).training_jobs)
    before_data = len(datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets)
    with pytest.raises(grpc.RpcError) as err:
        X, y = iris(30)
        fields = {"inline_dataset": inline(X, y), "network": mlp(8, 3), "training": config()}
        if "dataset" in kwargs:
            del fields["inline_dataset"]
        fields.update(kwargs)
        jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(**fields), timeout=10)
    code = grpc.StatusCode.NOT_FOUND if case == "missing dataset" else grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.code() == code, err.value.details()
    details = err.value.details()
    if field:
        assert details.startswith(field + ":") or details.startswith(field + "."), details
    assert value.lower() in details.lower(), details
    assert "Traceback" not in details
    # nothing half-made: no job, no orphaned inline dataset
    assert len(jobs.ListTrainingJobs(training_pb2.ListTrainingJobsRequest(page_size=1000), timeout=10).training_jobs) == before_jobs
    assert len(datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets) == before_data


def test_bad_uploads(stubs):
    datasets = stubs[0]
    X, y = iris(20)

    def fail(requests, code=grpc.StatusCode.INVALID_ARGUMENT):
        with pytest.raises(grpc.RpcError) as err:
            datasets.UploadDataset(iter(requests), timeout=10)
        assert err.value.code() == code, err.value.details()
        return err.value.details()

    good = list(upload_requests(X, y))
    assert "header" in fail(good[1:])
    assert fail(good[:-1]).startswith("labels_chunk: shape x dtype needs 160 bytes, got 0")
    extra = good + [datasets_pb2.UploadDatasetRequest(labels_chunk=b"\0" * 8)]
    assert fail(extra).startswith("labels_chunk: more bytes")
    bad_header = datasets_pb2.UploadDatasetRequest()
    bad_header.CopyFrom(good[0])
    bad_header.header.features_dtype = tensor_pb2.DATA_TYPE_INT64
    assert "header.features_dtype" in fail([bad_header, *good[1:]])
    bad_header.header.features_dtype = 99  # proto3 enums take any number; the message names it
    assert fail([bad_header, *good[1:]]) == "header.features_dtype: must be DATA_TYPE_FLOAT32, got 99"
    bad_header.CopyFrom(good[0])
    bad_header.header.labels_dtype = 42
    assert fail([bad_header, *good[1:]]) == "header.labels_dtype: class labels must be DATA_TYPE_INT64 or DATA_TYPE_INT32, got 42"
    # a class index past what a class count (an int32) holds, without class names to bound it
    huge = y.copy()
    huge[7] = 2**31 - 1
    assert fail(upload_requests(X, huge)) == "header.labels: label of example 7 is 2147483647; class indices must be below 2147483647"
    assert list((datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), timeout=10).datasets)) is not None


def test_bad_predicts(trained, stubs):
    _, _, final = trained
    models = stubs[2]
    with pytest.raises(grpc.RpcError) as err:
        models.Predict(models_pb2.PredictRequest(name="models/nosuchmodel", features=values_tensor(X30)), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "models/nosuchmodel" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        models.Predict(models_pb2.PredictRequest(name=final.model, features=values_tensor(IMG)), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("features.shape:") and "[30, 1, 4, 4]" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        models.Predict(models_pb2.PredictRequest(name=final.model, features=raw_tensor(np.zeros((0, 4), np.float32))), timeout=10)
    assert err.value.details() == "features.shape: no rows to predict on ([0, 4]): send at least one"


@pytest.mark.parametrize(
    "features, message",
    [
        (raw_tensor(np.where(np.arange(120).reshape(30, 4) == 9, np.nan, X30).astype(np.float32)),
         "features: must be finite; row 2 holds nan at [1]"),
        (values_tensor(np.where(np.arange(120).reshape(30, 4) == 119, -np.inf, X30)),
         "features: must be finite; row 29 holds -inf at [3]"),
        (raw_tensor(np.where(np.arange(120).reshape(30, 4) == 4, 1e39, X30.astype(np.float64)), tensor_pb2.DATA_TYPE_FLOAT64),
         "features: must be finite; row 1 holds 1e+39 (beyond float32's range) at [0]"),
    ],
    ids=["raw nan", "typed -inf", "float64 past float32"],
)
def test_a_predict_with_values_that_are_not_finite_is_refused_by_row_and_element(trained, stubs, features, message):
    """Training data must be finite (datasets.py), and so must features to predict on: a NaN or an
    infinity would come back as NaN probabilities."""
    _, _, final = trained
    with pytest.raises(grpc.RpcError) as err:
        stubs[2].Predict(models_pb2.PredictRequest(name=final.model, features=features), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == message
    finite = stubs[2].Predict(models_pb2.PredictRequest(name=final.model, features=raw_tensor(X30.astype(np.float32))), timeout=10)
    assert np.isfinite(np.frombuffer(finite.probabilities.raw_data, np.float32)).all()


def test_delete_model_then_predict_is_not_found(stubs, server):
    _, jobs, models = stubs
    X, y = iris(30)
    job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(inline_dataset=inline(X, y), network=mlp(3), training=config(epochs=1)), timeout=10)
    final = list(jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=60))[-1]
    assert final.state == State.SUCCEEDED, final.error
    models.Predict(models_pb2.PredictRequest(name=final.model, features=values_tensor(X)), timeout=10)
    model_id = final.model.split("/", 1)[1]
    assert model_id in server.state.sessions.model_stats_ids() and model_id in server.state.sessions.loaded()
    models.DeleteModel(models_pb2.DeleteModelRequest(name=final.model), timeout=10)
    # its session and its statistics go with it
    assert model_id not in server.state.sessions.model_stats_ids() and model_id not in server.state.sessions.loaded()
    with pytest.raises(grpc.RpcError) as err:
        models.Predict(models_pb2.PredictRequest(name=final.model, features=values_tensor(X)), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_job_is_picked_up_and_followed_without_waiting_for_the_poll(tmp_path):
    """The worker and Watch streams wake on the store's change counter, not on their poll: with a
    10 s poll a job is still claimed, trained and watched to its end in well under a second of
    waiting (before the counter: up to a poll interval to start, and another to see the end)."""
    import time

    from conftest import start

    running, pool = start(tmp_path / "data", poll_interval_s=10.0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            jobs = training_pb2_grpc.TrainingJobServiceStub(ch)
            X, y = iris()
            for attempt in range(2):  # the first waits for the worker process to start
                time.sleep(0.5)  # the idle worker is in its wait
                started = time.monotonic()
                job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
                    inline_dataset=inline(X, y), network=mlp(8, 3), training=config(epochs=1)))
                events = list(jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=30))
                took = time.monotonic() - started
                assert events[-1].state == State.SUCCEEDED, events[-1]
                done = jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name))
                queued = (done.start_time.ToNanoseconds() - done.create_time.ToNanoseconds()) / 1e9
                assert attempt == 0 or (queued < 1.0 and took < 5.0), (queued, took)
    finally:
        pool.stop(timeout=5)
        running.stop(grace=1)


@pytest.mark.parametrize("dtype", ["u1", "i1", "<u2", "<i2", "<f2"])
def test_compact_features_predict_as_float32(trained, stubs, dtype):
    """Features may come as uint8, int8, uint16, int16 or float16, raw or typed: every value of
    them is exact in float32, and the model answers them bit for bit as the same float32 rows."""
    _, _, final = trained
    models = stubs[2]
    X, _ = iris()
    X = np.round(X * 10)  # whole numbers 1-79: exact in every one of them
    plain = models.Predict(models_pb2.PredictRequest(name=final.model, features=raw_tensor(X)), timeout=10)
    compact = X.astype(dtype)
    wire = tensor_pb2.Tensor(shape=compact.shape, dtype=gw._tensors.DTYPES[compact.dtype], raw_data=compact.tobytes())
    assert len(wire.raw_data) == X.size * compact.itemsize  # 1/4 or 1/2 of float32's bytes
    by_raw = models.Predict(models_pb2.PredictRequest(name=final.model, features=wire), timeout=10)
    assert by_raw.probabilities.raw_data == plain.probabilities.raw_data
    typed = tensor_pb2.Tensor(shape=X.shape, dtype=wire.dtype)
    (typed.float_values if compact.dtype.kind == "f" else typed.int_values).extend(compact.ravel().tolist())
    by_values = models.Predict(models_pb2.PredictRequest(name=final.model, features=typed), timeout=10)
    np.testing.assert_array_equal(np.asarray(by_values.probabilities.float_values, np.float32),
                                  np.frombuffer(plain.probabilities.raw_data, "<f4"))


@pytest.mark.parametrize("tensor, text", [
    (tensor_pb2.Tensor(shape=[1, 4], dtype=tensor_pb2.DATA_TYPE_UINT8, int_values=[1, 2, 300, 4]),
     "features.int_values: 300 does not fit in DATA_TYPE_UINT8 (0 to 255)"),
    (tensor_pb2.Tensor(shape=[1, 4], dtype=tensor_pb2.DATA_TYPE_INT8, int_values=[1, -200, 3, 4]),
     "features.int_values: -200 does not fit in DATA_TYPE_INT8 (-128 to 127)"),
    (tensor_pb2.Tensor(shape=[1, 4], dtype=tensor_pb2.DATA_TYPE_INT32, int_values=[1, 2, 3, 3_000_000_000]),
     "features.int_values: 3000000000 does not fit in DATA_TYPE_INT32"),
    (tensor_pb2.Tensor(shape=[1, 4], dtype=tensor_pb2.DATA_TYPE_FLOAT16, float_values=[1, 2, 1e5, 4]),
     "features.float_values: 100000.0 does not fit in DATA_TYPE_FLOAT16 (largest 65504.0)"),
    (tensor_pb2.Tensor(shape=[1, 4], dtype=tensor_pb2.DATA_TYPE_UINT16, float_values=[1, 2, 3, 4]),
     "features.dtype: DATA_TYPE_UINT16 tensors carry int_values"),
    (tensor_pb2.Tensor(shape=[1, 4], dtype=tensor_pb2.DATA_TYPE_UINT8, raw_data=b"\0" * 5),
     "features.raw_data: shape [1, 4] x DATA_TYPE_UINT8 needs 4 bytes, got 5"),
])
def test_values_past_their_type_are_refused(trained, stubs, tensor, text):
    """A value its type cannot hold is named, not wrapped (300 as uint8 is 44) or made infinite."""
    _, _, final = trained
    with pytest.raises(grpc.RpcError) as err:
        stubs[2].Predict(models_pb2.PredictRequest(name=final.model, features=tensor), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(text), err.value.details()
