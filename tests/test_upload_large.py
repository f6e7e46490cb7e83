"""A 200 MB dataset streams through the SDK without raising any gRPC message limit."""

from __future__ import annotations

import hashlib

import numpy as np

import gradwire as gw


def test_200_mb_upload_streams_and_hashes(target, server):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50_000, 1024), dtype=np.float32)  # 204.8 MB
    y = rng.integers(0, 10, size=50_000)
    assert X.nbytes > 200e6
    with gw.Client(target, timeout=120) as client:
        ds = client.upload_dataset(X, y, name="big")
        assert ds.example_count == 50_000 and list(ds.feature_shape) == [1024]
        expected = hashlib.sha256(X.tobytes())
        expected.update(y.astype("<i8").tobytes())
        assert ds.proto.sha256 == expected.hexdigest()
        assert ds.proto.size_bytes == X.nbytes + y.size * 8
        client.delete_dataset(ds)
    # the server's message limit is far below the dataset: only a stream of chunks gets it there
    assert server.state.settings.max_message_bytes < X.nbytes / 3
