"""Dynamic batching: concurrent one-row clients over real channels are merged into fewer
onnxruntime calls, and every caller gets exactly its own rows, bit-identical to unbatched."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from gradwire.kserve import grpc_service_pb2 as pb
from gradwire.kserve import grpc_service_pb2_grpc
from gradwire.v1 import models_pb2, models_pb2_grpc
from gradwire_server.inference import Batcher, BatchingPolicy, ModelStats
from helpers import mlp, on_threads, raw_tensor

from conftest import train_iris, wait_for


@pytest.fixture(scope="module")
def model(target):
    return train_iris(target, mlp(64, 64, 3))


def _predict(stub, name, rows):
    r = stub.Predict(models_pb2.PredictRequest(name=name, features=raw_tensor(rows)))
    return np.frombuffer(r.probabilities.raw_data, dtype="<f4").reshape(len(rows), -1)


def test_concurrent_clients_get_their_own_rows_bit_identical(server, target, model):
    rng = np.random.default_rng(0)
    X = rng.normal(5, 2, size=(32 * 12, 4)).astype(np.float32)
    with grpc.insecure_channel(target) as ch:
        stub = models_pb2_grpc.ModelServiceStub(ch)
        # Unbatched reference: the server's session alone, one request per row, nothing else running.
        model_id = model.split("/")[1]
        session = server.state.sessions.get(model_id)
        alone = np.concatenate([session.run(None, {"features": X[i:i + 1]})[0] for i in range(len(X))])
        before = server.state.sessions.stats(model_id)
        kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
        (stats_before,) = kserve.ModelStatistics(pb.ModelStatisticsRequest(name=model_id)).model_stats
        results: dict[int, np.ndarray] = {}
        start = threading.Barrier(32)

        def client(k: int) -> None:
            with grpc.insecure_channel(target) as own:  # 32 real clients, each with its own channel
                s = models_pb2_grpc.ModelServiceStub(own)
                start.wait()
                for i in range(k, len(X), 32):
                    rows = X[i:i + 1]
                    results[i] = _predict(s, model, rows)

        on_threads(client, 32)
        got = np.concatenate([results[i] for i in range(len(X))])
        assert got.tobytes() == alone.tobytes()  # bit-identical, every row where it belongs
        after = server.state.sessions.stats(model_id)
        requests, calls = after.requests - before.requests, after.calls - before.calls
        assert requests == len(X)
        assert calls < requests and after.max_requests > 1, (calls, requests, after)  # some were merged
        # The statistics extension sees the same: fewer executions than requests, and its batch
        # sizes account for every row.
        (stats,) = kserve.ModelStatistics(pb.ModelStatisticsRequest(name=model_id)).model_stats
        assert stats.execution_count - stats_before.execution_count == calls
        assert stats.inference_count - stats_before.inference_count == len(X)
        assert stats.inference_stats.success.count - stats_before.inference_stats.success.count == len(X)
        rows = sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats)
        assert rows - sum(b.batch_size * b.compute_infer.count for b in stats_before.batch_stats) == len(X)
        assert max(b.batch_size for b in stats.batch_stats) == after.max_rows > 1
        assert stats.inference_stats.queue.ns > stats_before.inference_stats.queue.ns  # merged requests waited
        # And a 2-row request through the API equals its rows run alone.
        np.testing.assert_array_equal(_predict(stub, model, X[:2]), alone[:2])


def _behind_a_running_call(call, first_arg, rest_args, running):
    """Starts call(first_arg) on a thread and, once `running()` says its onnxruntime call has begun
    (the test's run function then holds it at a gate), call(i) for each of rest_args on threads of
    their own, which queue behind it. Returns (the first thread, the others)."""
    first = threading.Thread(target=call, args=(first_arg,))
    first.start()
    wait_for(running)
    rest = [threading.Thread(target=call, args=(i,)) for i in rest_args]
    for t in rest:
        t.start()
    return first, rest


def test_batcher_merges_up_to_max_batch_and_spreads_errors():
    seen: list[int] = []
    gate = threading.Event()

    def run(x):
        seen.append(len(x))
        if len(seen) == 1:
            gate.wait(5)  # the first call keeps the model busy while the rest queue
        if (x == -1).any():
            raise ValueError("boom")
        return x * 2

    batcher = Batcher(run)
    policy = BatchingPolicy(enabled=True, max_batch_size=4, max_delay_s=5.0)
    out: dict[int, np.ndarray] = {}
    errs: dict[int, BaseException] = {}

    def call(i):
        try:
            out[i] = batcher(np.full((1, 2), i, dtype=np.float32), policy)
        except ValueError as exc:
            errs[i] = exc

    first, rest = _behind_a_running_call(call, 0, range(1, 9), lambda: seen)
    for t in rest:  # while the first call holds the model, the 8 others queue and run as two full batches
        t.join()
    gate.set()
    first.join()
    assert seen[0] == 1 and sorted(seen[1:]) == [4, 4]
    assert {i: o.tolist() for i, o in out.items()} == {i: [[2 * i, 2 * i]] for i in range(9)}
    assert batcher.stats.max_requests == 4

    call(-1)  # a failing run raises in its caller
    assert isinstance(errs[-1], ValueError)


def test_fixed_rows_pads_every_small_execution_to_max_batch_size():
    """The CUDA provider's answers depend on the number of rows run together: there the batcher runs
    every execution of fewer than max_batch_size rows, alone or merged, at max_batch_size rows
    (zeros after the real ones) and hands back only the real rows. Larger requests run as they are."""
    seen: list[tuple[int, int]] = []  # (rows run, nonzero rows)
    gate = threading.Event()

    def run(x):
        seen.append((len(x), int((x != 0).any(axis=1).sum())))
        if len(seen) == 1:
            gate.wait(5)
        return x * 2

    batcher = Batcher(run, fixed_rows=True)
    policy = BatchingPolicy(enabled=True, max_batch_size=8, max_delay_s=5.0)
    out: dict[int, np.ndarray] = {}

    def call(i, rows=1):
        out[i] = batcher(np.full((rows, 3), i, dtype=np.float32), policy)

    first, rest = _behind_a_running_call(call, 1, range(2, 5), lambda: seen)
    wait_for(lambda: batcher._queued_rows == 3)
    gate.set()
    for t in [first, *rest]:
        t.join()
    assert seen == [(8, 1), (8, 3)], seen  # alone, then the three merged: 8 rows each time
    assert {i: o.tolist() for i, o in out.items()} == {i: [[2 * i] * 3] for i in range(1, 5)}
    call(9, rows=12)  # more than max_batch_size: as it is
    call(10, rows=8)
    assert seen[2:] == [(12, 12), (8, 8)]
    assert out[9].shape == (12, 3) and out[10].shape == (8, 3)
    batcher(np.ones((2, 3), dtype=np.float32), BatchingPolicy(enabled=False, max_batch_size=8))
    assert seen[4] == (8, 2)  # with batching off too: the same answer as with it on
    assert batcher.stats.rows == 1 + 3 + 12 + 8 + 2  # the real rows, not the padding
    # A model whose call_rows (3) is under max_batch_size: its calls are never padded past it, and
    # every call runs at exactly that many rows, larger requests' last part included.
    del seen[:]
    bounded = BatchingPolicy(enabled=False, max_batch_size=8, call_rows=3)
    assert np.array_equal(batcher(np.ones((1, 3), dtype=np.float32), bounded), np.full((1, 3), 2.0))
    assert np.array_equal(batcher(np.arange(21, dtype=np.float32).reshape(7, 3) + 1, bounded),
                          (np.arange(21, dtype=np.float32).reshape(7, 3) + 1) * 2)
    assert seen == [(3, 1), (3, 3), (3, 3), (3, 1)]


def test_one_call_at_a_time_and_max_delay_gathers_when_idle():
    """While a call runs, a partial batch waits for it (never runs beside it, however long it
    takes); with max_delay, a request to an idle model waits that long for company."""
    running, most = [0], [0]
    lock = threading.Lock()
    seen: list[int] = []

    def run(x):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            seen.append(len(x))
        time.sleep(0.05)  # 25x the old 2 ms delay that used to start overlapping calls
        with lock:
            running[0] -= 1
        return x

    batcher = Batcher(run)
    policy = BatchingPolicy(enabled=True, max_batch_size=64, max_delay_s=0.0)
    calls = [threading.Thread(target=batcher, args=(np.full((1, 2), i, dtype=np.float32), policy)) for i in range(12)]
    for i, t in enumerate(calls):
        t.start()
        if i == 0:
            wait_for(lambda: seen)  # the first call holds the model
    for t in calls:
        t.join()
    assert most[0] == 1, most  # never two calls at once
    assert seen[0] == 1 and sum(seen) == 12 and len(seen) <= 3, seen  # the rest merged behind it

    seen.clear()
    gather = BatchingPolicy(enabled=True, max_batch_size=64, max_delay_s=0.3)
    t0 = time.monotonic()
    idle = [threading.Thread(target=batcher, args=(np.zeros((1, 2), dtype=np.float32), gather)) for _ in range(4)]
    for t in idle:
        t.start()
        time.sleep(0.02)
    for t in idle:
        t.join()
    assert seen == [4], seen  # the idle model waited for company: one call of 4
    assert time.monotonic() - t0 >= 0.3


def test_model_override_and_disabled_batching(channel, model):
    stub = models_pb2_grpc.ModelServiceStub(channel)
    updated = stub.UpdateModelBatching(models_pb2.UpdateModelBatchingRequest(
        name=model, dynamic_batching=models_pb2.DynamicBatching(enabled=False, max_batch_size=8)))
    assert updated.dynamic_batching.enabled is False and updated.dynamic_batching.max_batch_size == 8
    assert stub.GetModel(models_pb2.GetModelRequest(name=model)).dynamic_batching.max_batch_size == 8
    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateModelBatching(models_pb2.UpdateModelBatchingRequest(
            name=model, dynamic_batching=models_pb2.DynamicBatching(max_batch_size=-1)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dynamic_batching.max_batch_size" in err.value.details()
    cleared = stub.UpdateModelBatching(models_pb2.UpdateModelBatchingRequest(name=model))
    assert not cleared.HasField("dynamic_batching")


def test_a_call_runs_at_most_call_rows_rows_and_answers_as_one():
    """A request with more rows than the model's call_rows runs as several onnxruntime calls, one
    after another, joined in order: a large request to a model with large activations never holds
    them all at once."""
    seen: list[int] = []
    stats = ModelStats()
    batcher = Batcher(lambda x: seen.append(len(x)) or x * 2, stats)
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    assert np.array_equal(batcher(x, BatchingPolicy(call_rows=3)), x * 2)
    assert seen == [3, 3, 3, 1]
    # Each call is an execution in the statistics, with its own rows.
    assert stats.execution_count == 4 and {rows: b[0] for rows, b in stats.batches.items()} == {3: 3, 1: 1}
    assert (batcher.stats.calls, batcher.stats.rows, batcher.stats.requests, batcher.stats.max_rows) == (4, 10, 1, 3)
    seen.clear()
    assert np.array_equal(batcher(x, BatchingPolicy()), x * 2) and seen == [10]  # 0: no bound
    assert stats.execution_count == 5 and stats.batches[10][0] == 1

    # A merged batch past call_rows splits too: three 2-row requests queued behind a running
    # call run as one execution of 6 rows, in calls of 4 and 2.
    seen.clear()
    gate, running = threading.Event(), threading.Event()

    def held(x):
        if not running.is_set():
            running.set()
            gate.wait(10)
        seen.append(len(x))
        return x * 2

    stats = ModelStats()
    batcher = Batcher(held, stats)
    policy = BatchingPolicy(max_batch_size=64, call_rows=4)
    out: dict[int, np.ndarray] = {}

    def call(i):
        out[i] = batcher(np.full((2, 1), i, dtype=np.float32), policy)

    first, rest = _behind_a_running_call(call, 0, [1, 2, 3], running.is_set)
    wait_for(lambda: batcher._queued_rows == 6)
    gate.set()
    for t in [first, *rest]:
        t.join()
    assert seen == [2, 4, 2], seen
    assert {i: o.ravel().tolist() for i, o in out.items()} == {i: [2 * i] * 2 for i in range(4)}
    assert stats.execution_count == 3 and {rows: b[0] for rows, b in stats.batches.items()} == {2: 2, 4: 1}
    assert (batcher.stats.calls, batcher.stats.requests, batcher.stats.max_rows, batcher.stats.max_requests) == (3, 4, 4, 3)


def test_call_rows_follow_the_models_activations():
    from google.protobuf import text_format
    from gradwire.v1 import network_pb2
    from gradwire_server.serving import INFER_BYTES, call_rows

    def model(network: str, shape) -> models_pb2.Model:
        return models_pb2.Model(name=f"models/{network}{shape}", input_shape=shape,
                                network=text_format.Parse(network, network_pb2.NetworkSpec()))

    conv = "layers { conv2d { filters: 32 kernel_size: 3 padding_mode: PADDING_MODE_SAME } } layers { flatten {} } layers { dense { units: 2 } }"
    assert call_rows(model(conv, [3, 128, 128])) == INFER_BYTES // (16 * 32 * 128 * 128) == 32
    assert call_rows(model(conv, [1, 8, 8])) == INFER_BYTES // (16 * 32 * 8 * 8)
    assert call_rows(model("layers { dense { units: 0 } }", [4])) == 0  # a network this server cannot read: unbounded
