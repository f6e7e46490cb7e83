"""The SDK against a real server (the session fixture in conftest.py): the quick start's path, small."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw
from helpers import iris


@pytest.fixture(scope="module")
def client(target):
    with gw.Client(target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def trained(client):
    X, y = iris()
    data = client.upload_dataset(X, y, name="iris", class_names=["setosa", "versicolor", "virginica"], chunk_bytes=512)
    job = client.train(
        gw.Sequential([gw.Dense(16), gw.ReLU(), gw.Dense(3)]), data,
        optimizer=gw.Adam(learning_rate=1e-2), batch_size=16, epochs=3, validation_split=0.2, seed=0, name="sdk",
    )
    return X, y, data, job, job.wait(timeout=120)


def test_upload_returns_the_dataset(client, trained):
    X, _, data, _, _ = trained
    assert data.name.startswith("datasets/") and data.example_count == len(X) and data.feature_shape == (4,)
    assert data.label_kind == "classes" and data.class_count == 3
    assert client.get_dataset(data.name).sha256 == data.sha256
    assert data.name in {d.name for d in client.list_datasets()}


def test_train_and_predict(client, trained):
    X, _, data, job, model = trained
    assert job.state == "SUCCEEDED" and [m.epoch for m in job.history] == [1, 2, 3]
    assert model.class_names == ["setosa", "versicolor", "virginica"] and model.input_shape == (4,)
    assert model.parity_max_abs_diff <= 1e-4 and model.final_metrics is not None
    probs = client.predict(model, X[:5])
    assert probs.shape == (5, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    full = model.predict_full(X[:5])
    np.testing.assert_array_equal(full.classes, probs.argmax(axis=1))
    assert full.class_names == [model.class_names[i] for i in full.classes]
    assert full.label_sets is None and full.label_set_names is None  # one class each: no label sets
    assert client.predict(model.name, X[0]).shape == (3,)  # one example without the batch axis


def test_download_is_the_onnx_file(trained, tmp_path):
    *_, model = trained
    path = model.download(tmp_path / "iris.onnx")
    assert path.stat().st_size == model.onnx_size_bytes and path.read_bytes()[:2] != b""
    assert not list(tmp_path.glob(".*.part"))


def test_inline_dataset_and_full_batch(client):
    X, y = iris(30)
    model = client.train([gw.Dense(3)], (X, y), optimizer=gw.SGD(0.1), batching="full", epochs=2).wait(timeout=120)
    assert client.predict(model, X).shape == (30, 3)


def test_errors_are_typed(client, trained):
    X, y, data, _, _ = trained
    with pytest.raises(gw.InvalidArgumentError) as info:
        client.train([gw.Dense(5)], data, optimizer=gw.SGD(0.1), epochs=1, batch_size=8)
    assert info.value.field is not None and info.value.field.startswith("network.layers")
    assert info.value.__cause__ is None
    with pytest.raises(gw.NotFoundError):
        client.get_model("models/does-not-exist")


def test_cancel(client):
    X, y = iris()
    job = client.train([gw.Dense(3)], (X, y), optimizer=gw.SGD(0.01), batching="online", epochs=10_000)
    job.cancel()
    with pytest.raises(gw.TrainingCancelledError):
        job.wait(timeout=60)
    with pytest.raises(gw.FailedPreconditionError):
        job.cancel()


def test_statistics_of_a_model(client, trained):
    X, _, _, _, model = trained
    (before,) = client.statistics(model)
    for rows in (1, 4, 4):
        client.predict(model, X[:rows])
    with pytest.raises(gw.InvalidArgumentError):
        client.predict(model, X[:2, :3])  # the wrong shape: a failure, once the model is found
    (after,) = client.statistics(model)
    assert (after.name, after.version) == (model.name.split("/", 1)[1], "")
    assert (after.requests - before.requests, after.rows - before.rows) == (3, 9)
    assert after.executions - before.executions == 3 and after.failures - before.failures == 1
    assert after.batches.get(4, 0) - before.batches.get(4, 0) == 2
    assert 0 < after.infer_us < after.latency_us
    assert abs(after.input_us + after.queue_us + after.infer_us + after.output_us - after.latency_us) < 1e-6 * after.latency_us
    assert after.last_inference is not None
    assert model.name.split("/", 1)[1] in {s.name for s in client.statistics()}  # every model served
    with pytest.raises(gw.NotFoundError):
        client.statistics("registeredModels/no-such-model")
    with pytest.raises(ValueError, match="got 'datasets/x'"):
        client.statistics("datasets/x")


def test_several_connections_predict_alike(target, trained):
    X, _, _, _, model = trained
    with gw.Client(target, timeout=30, connections=3) as pooled:
        pooled.wait_for_ready(timeout=10)  # every connection
        first = pooled.predict(model, X[:4])
        for _ in range(5):  # over each connection in turn
            np.testing.assert_array_equal(pooled.predict(model, X[:4]), first)
        assert pooled.get_model(model.name).name == model.name  # other calls take the first connection


def test_a_large_batch_predicts_as_its_parts(client, trained):
    X, _, _, _, model = trained
    big = np.resize(X, (20_000, 4)).astype(np.float32)  # 320 KB: serialized by the SDK itself
    assert big.nbytes >= gw._client.LARGE_REQUEST_BYTES
    parts = np.concatenate([client.predict(model, big[i:i + 2000]) for i in range(0, 20_000, 2000)])
    np.testing.assert_array_equal(client.predict(model, big), parts)
    np.testing.assert_array_equal(client.predict_full(model, big).probabilities, parts)
    with pytest.raises(gw.InvalidArgumentError) as err:  # the server's message, as for a small batch
        client.predict(model.name, np.zeros((20_000, 5), np.float32))
    assert err.value.field == "features.shape"


def test_features_that_are_not_finite_are_refused_by_their_row_in_the_whole_batch(target, client, trained):
    """The server refuses a NaN or an infinity by row and element; a batch the SDK sends as several
    requests is checked before it goes, so that the row counts in the whole batch."""
    X, _, _, _, model = trained
    bad = X.astype(np.float32)
    bad[1, 3] = np.inf
    with pytest.raises(gw.InvalidArgumentError) as err:  # one request: the server's check
        client.predict(model, bad)
    assert err.value.field == "features" and str(err.value).endswith("must be finite; row 1 holds inf at [3]")
    bad[1, 3], bad[140, 0] = X[1, 3], np.nan
    (before,) = client.statistics(model)
    # 73 rows a request: row 140 would go in the second
    with gw.Client(target, timeout=30, max_message_bytes=4096) as small, pytest.raises(gw.InvalidArgumentError) as err:
        small.predict(model, bad)
    assert err.value.field == "features" and str(err.value).endswith("must be finite; row 140 holds nan at [0]")
    (after,) = client.statistics(model)
    assert (after.requests, after.failures) == (before.requests, before.failures)  # refused before any request went


def test_a_batch_past_the_message_limit_goes_as_several_requests(target, client, trained):
    """predict splits a batch whose request or answer would pass half the client's message limit
    into requests that fit, two in flight, and joins their answers in order."""
    X, _, _, _, model = trained
    whole = client.predict_full(model, X)
    (before,) = client.statistics(model)
    with gw.Client(target, timeout=30, max_message_bytes=4096) as small:  # 2 KB a request and answer
        probs = small.predict(model, X)  # 28 bytes an answer row: 73 rows a request, 3 requests
        full = small.predict_full(model, X)  # with the class index and name: 16 rows a request, 10 requests
    (after,) = client.statistics(model)
    assert (after.requests - before.requests, after.rows - before.rows) == (3 + 10, 2 * 150)
    np.testing.assert_array_equal(probs, whole.probabilities)
    np.testing.assert_array_equal(full.probabilities, whole.probabilities)
    np.testing.assert_array_equal(full.classes, whole.classes)
    assert full.class_names == whole.class_names and len(full.class_names) == 150

    # Past the server's own limit (64 MiB): 69 MiB of features, 4 requests of 32 MiB at most.
    big = np.resize(X, (4_500_000, 4)).astype(np.float32)
    assert big.nbytes > gw._client.DEFAULT_MAX_MESSAGE_BYTES
    out = client.predict(model, big)
    assert out.shape == (4_500_000, 3)
    np.testing.assert_array_equal(out[::997], client.predict(model, big[::997]))


def test_compact_features_travel_as_they_are(client, trained):
    """uint8, int8, uint16, int16 and float16 features go as they are (a quarter or half of
    float32's bytes: image pixels as bytes), and answer as the same float32 rows do."""
    X, _, _, _, model = trained
    X = np.round(X * 10)  # whole numbers 1-79: exact in each
    expected = client.predict(model, X.astype(np.float32))
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.float16):
        assert gw._tensors.feature_array(X.astype(dtype)).dtype == dtype  # not widened before it is sent
        np.testing.assert_array_equal(client.predict(model, X.astype(dtype)), expected)
        np.testing.assert_array_equal(client.predict_full(model, X.astype(dtype)).probabilities, expected)
    assert gw._tensors.feature_array(X.astype(np.int32)).dtype == np.float32  # others as float32, as before
    assert gw._tensors.feature_array(X.tolist()).dtype == np.float32
