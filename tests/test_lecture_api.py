"""Issue 3 through the service: the summary RPC (SDK table, INVALID_ARGUMENT with
field paths), a ViT and a residual CNN trained end to end with a schedule and a
test dataset, the learning rate of each epoch in the watch stream, evaluations
kept with the model, and binary cross-entropy predictions."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

import gradwire as gw
from gradwire.v1 import network_pb2, network_pb2_grpc

VIT = gw.Sequential([
    gw.PatchEmbedding(2, embedding_dim=16), gw.ClassToken(), gw.PositionEmbedding(),
    gw.TransformerEncoder(depth=1, heads=2, mlp_ratio=2.0), gw.TokenPooling("class_token"), gw.Dense(10),
])


@pytest.fixture(scope="module")
def client(target):
    with gw.Client(target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.reshape(-1, 1, 8, 8).astype(np.float32) / 16, y


def test_summary_prints_a_table_without_training(client):
    summary = client.summary(VIT, (1, 8, 8))
    assert [r.kind for r in summary.layers] == ["patch_embedding", "class_token", "position_embedding",
                                                "transformer_encoder", "token_pooling", "dense"]
    assert [r.output_shape for r in summary.layers] == [(16, 16), (17, 16), (17, 16), (17, 16), (16,), (10,)]
    d, n, h = 16, 17, 32
    encoder = 2 * 2 * d + 3 * d * d + 3 * d + d * d + d + d * h + h + h * d + d + 2 * d
    assert summary.parameter_count == (4 * d + d) + d + n * d + encoder + (d * 10 + 10)
    assert summary.flops > 2 * summary.parameter_count  # the encoder's FLOPs scale with the tokens
    table = str(summary)
    assert "transformer_encoder" in table and f"{summary.parameter_count:,}" in table and "(17, 16)" in table
    nested = client.summary([gw.ResidualBlock([gw.Dense(8, activation="relu"), gw.Dense(4)]), gw.Dense(2)], (4,))
    assert [(r.depth, r.kind) for r in nested.layers] == [(0, "residual_block"), (1, "dense"), (1, "dense"), (0, "dense")]
    assert nested.layers[0].parameter_count == (4 * 8 + 8) + (8 * 4 + 4)  # same shape: identity skip


def test_summary_refuses_with_the_field_path(client, target):
    with pytest.raises(gw.InvalidArgumentError, match=r"network.layers\[3\].transformer_encoder.heads: 3 heads do not divide"):
        client.summary(gw.Sequential([*VIT[:3], gw.TransformerEncoder(depth=1, heads=3)]), (1, 8, 8))
    with grpc.insecure_channel(target) as channel:  # what a grpcurl user sends: no input shape
        stub = network_pb2_grpc.NetworkServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.SummarizeNetwork(network_pb2.SummarizeNetworkRequest(network=VIT.to_proto()))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "input_shape" in info.value.details()


def test_vit_trains_with_a_schedule_and_a_test_dataset(client, digits):
    X, y = digits
    data = client.upload_dataset(X[:400], y[:400], name="digits-train")
    job = client.train(VIT, data, optimizer=gw.AdamW(3e-3), loss=gw.CrossEntropy(label_smoothing=0.05),
                       batch_size=32, drop_last=True, epochs=3, schedule=gw.CosineDecay(warmup_epochs=1),
                       gradient_clip_norm=1.0, top_k=3, validation_split=0.2, seed=0,
                       test_data=(X[400:500], y[400:500]))
    events = [e for e in job.watch() if e.epoch is not None]
    model = job.wait(timeout=120)
    rates = [e.epoch.learning_rate for e in events]
    assert rates == pytest.approx([3e-3 / 2, 3e-3, 3e-3 / 2], rel=1e-5)  # warmup, then cosine (t = 0, 1/2)
    assert [e.epoch.iterations for e in events] == [10] * 3 and all(e.epoch.examples == 320 for e in events)
    assert all(e.epoch.max_gradient_norm is not None for e in events)
    test = model.test_evaluation
    assert test.split == "test" and test.example_count == 100 and test.top_k == 3
    assert test.confusion_matrix.shape == (10, 10) and test.confusion_matrix.sum() == 100
    assert test.accuracy == pytest.approx(np.trace(test.confusion_matrix) / 100)
    assert len(test.per_class) == 10 and model.validation_evaluation.example_count == 80
    assert model.train_evaluation.example_count == 320 and "precision" in str(test)
    probs = client.predict(model, X[400:500])  # the exported graph agrees with the evaluation
    assert (probs.argmax(1) == y[400:500]).mean() == pytest.approx(test.accuracy)


def test_test_dataset_must_match_the_training_data(client, digits):
    X, y = digits
    with pytest.raises(gw.InvalidArgumentError, match=r"inline_test_dataset: feature shape \[64\] differs"):
        client.train(VIT, (X[:50], y[:50]), optimizer=gw.Adam(), batch_size=10, epochs=1,
                     test_data=(X[:10].reshape(10, 64), y[:10]))


def test_binary_cross_entropy_predicts_two_probabilities(client):
    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    job = client.train([gw.Dense(16, activation="relu"), gw.Dense(1)], (X, y), loss="binary_cross_entropy",
                       optimizer=gw.Adam(1e-2), batch_size=64, epochs=5, input_normalization="standardize",
                       seed=0, test_data=(X[:50], y[:50]))
    model = job.wait(timeout=120)
    probs = client.predict(model, X[:50])
    assert probs.shape == (50, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y[:50]).mean() == pytest.approx(model.test_evaluation.accuracy)
    assert model.test_evaluation.accuracy > 0.85


def test_regression_evaluation_reports_r2(client):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=200)).astype(np.float32)
    job = client.train([gw.Dense(16, activation="tanh"), gw.Dense(1)], (X, y), loss=gw.Huber(delta=1.0),
                       optimizer=gw.SGD(0.05, momentum=0.9, nesterov=True), batch_size=20, epochs=20,
                       validation_split=0.2, schedule=gw.StepDecay(10, gamma=0.5), seed=0)
    model = job.wait(timeout=120)
    e = model.validation_evaluation
    assert e.accuracy is None and e.r2 > 0.9 and e.mse > 0 and e.mae > 0
    assert [m.learning_rate for m in job.history] == pytest.approx([0.05] * 10 + [0.025] * 10)


def test_multi_label_dataset_trains_with_binary_cross_entropy(client):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.5, X[:, 2] + X[:, 3] > 0], 1).astype(np.int64)
    data = client.upload_dataset(X, Y, name="tags", class_names=["a", "b", "c"])
    assert data.label_kind == "multi_label" and data.class_count == 3
    with pytest.raises(gw.InvalidArgumentError, match="cross_entropy loss needs LABEL_KIND_CLASSES"):
        client.train([gw.Dense(3)], data, optimizer=gw.Adam(), batch_size=16, epochs=1)
    with pytest.raises(ValueError, match="must all be 0 or 1"):
        client.upload_dataset(X, Y * 2, label_kind="multi_label")
    model = client.train([gw.Dense(16, activation="relu"), gw.Dense(3)], data, loss="binary_cross_entropy",
                         optimizer=gw.Adam(3e-2), batch_size=16, epochs=30, seed=0, test_data=(X[:40], Y[:40])).wait()
    probs = client.predict(model, X[:40])
    assert probs.shape == (40, 3) and not np.allclose(probs.sum(1), 1)  # independent sigmoids, not a softmax
    assert ((probs > 0.5) == Y[:40]).all(1).mean() == pytest.approx(model.test_evaluation.accuracy)
    full = client.predict_full(model, X[:40])  # the label set of each example, as the evaluation counts it
    assert full.label_sets == [np.flatnonzero(p > 0.5).tolist() for p in probs]
    assert full.label_set_names == [[["a", "b", "c"][i] for i in s] for s in full.label_sets]
    assert any(len(s) > 1 for s in full.label_sets) and full.classes.tolist() == probs.argmax(1).tolist()
    assert model.test_evaluation.accuracy > 0.7 and [m["class_name"] for m in model.test_evaluation.per_class] == ["a", "b", "c"]
