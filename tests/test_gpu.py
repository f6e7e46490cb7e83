"""GPU paths: training on CUDA through the service. Skipped (visibly) without a CUDA GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import gradwire as gw
from conftest import start

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


@pytest.fixture(scope="module")
def gpu_target(tmp_path_factory):
    running, pool = start(tmp_path_factory.mktemp("gpu-data"), device="cuda")
    yield f"127.0.0.1:{running.port}"
    pool.stop(timeout=5)
    running.stop(grace=1)


def test_trains_on_the_gpu_and_serves_the_same_answers(gpu_target):
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    net = gw.Sequential([gw.Conv2d(16, kernel_size=3, padding="same"), gw.BatchNorm(), gw.ReLU(), gw.MaxPool2d(2),
                         gw.Flatten(), gw.Dense(10)])
    with gw.Client(gpu_target, timeout=60) as client:
        job = client.train(net, (X[:600], y[:600]), optimizer=gw.Adam(learning_rate=1e-2), loss="cross_entropy",
                           batch_size=32, epochs=5, validation_split=0.2, seed=0)
        model = job.wait(timeout=300)
        job.refresh()
        assert job.proto.device.startswith("cuda"), job.proto.device
        assert model.parity_max_abs_diff <= 1e-4
        probs = client.predict(model, X[600:700])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert (probs.argmax(1) == y[600:700]).mean() > 0.8
