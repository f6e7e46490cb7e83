"""The serving cache: names answered from memory, and never stale. Two real `Store`s on one
SQLite file stand for the RPC process and a worker process (which publishes new versions)."""

from __future__ import annotations

import os
import pathlib
import threading
import time

import numpy as np
import pytest

from gradwire.v1 import datasets_pb2, models_pb2
from gradwire_server import errors
from gradwire_server.inference import BatchingPolicy, SessionCache
from gradwire_server.serving import ServingCache
from gradwire_server.store import Store
from helpers import on_threads


def _insert(store: Store, model_id: str, classes: int) -> None:
    model = models_pb2.Model(name=f"models/{model_id}", input_shape=[4], output_size=classes,
                             label_kind=datasets_pb2.LABEL_KIND_CLASSES, class_names=[str(i) for i in range(classes)])
    with store._tx() as db:  # what finish_job writes for a finished job's model
        db.execute("INSERT INTO models (id, proto) VALUES (?, ?)", (model_id, model.SerializeToString()))


@pytest.fixture()
def stores(tmp_path: pathlib.Path):
    rpc, worker = Store(tmp_path / "db.sqlite"), Store(tmp_path / "db.sqlite")
    yield rpc, worker
    rpc.close()
    worker.close()


def test_hits_and_every_kind_of_change(stores, tmp_path):
    rpc, worker = stores
    cache = ServingCache(rpc, SessionCache(tmp_path))
    loads: list[str] = []

    def get(name: str):
        def load():
            loads.append(name)
            return rpc.get_model(rpc.resolve_model(name))

        return cache.get(name, load)

    _insert(rpc, "m1", 3)
    rpc.publish_model("m1", "registeredModels/iris", ["production"])
    first = get("registeredModels/iris")
    assert (first.model_id, first.input_shape, first.class_names, first.regression) == ("m1", (4,), ("0", "1", "2"), False)
    assert get("registeredModels/iris") is first and loads == ["registeredModels/iris"]  # a hit: no queries

    # Another connection (a worker) publishes version 2: `latest` moves on the very next call.
    _insert(worker, "m2", 5)
    worker.publish_model("m2", "registeredModels/iris", [])
    assert get("registeredModels/iris").model_id == "m2"
    assert get("registeredModels/iris@production").model_id == "m1"

    # This process moves the alias.
    rpc.set_alias("registeredModels/iris", "production", 2)
    assert get("registeredModels/iris@production").model_id == "m2"

    # A per-model batching override is part of what is cached.
    assert get("models/m2").policy.max_batch_size == 64
    rpc.set_batching("m2", models_pb2.DynamicBatching(max_batch_size=8))
    assert get("models/m2").policy.max_batch_size == 8

    # Deleted: NotFound, not a cached answer. Errors are not cached either.
    rpc.set_alias("registeredModels/iris", "production", 1)
    worker.delete_model("m2")
    with pytest.raises(errors.NotFound):
        get("models/m2")
    assert get("registeredModels/iris").model_id == "m1"
    n = len(loads)
    with pytest.raises(errors.NotFound):
        get("models/m2")
    assert len(loads) == n + 1


def test_change_stamp_moves_on_any_commit(stores):
    rpc, worker = stores
    before = rpc.change_stamp()
    assert rpc.change_stamp() == before  # reading changes nothing
    _insert(worker, "w", 2)
    after_worker = rpc.change_stamp()
    assert after_worker != before
    _insert(rpc, "r", 2)
    assert rpc.change_stamp() != after_worker
    same = rpc.change_stamp()
    with worker._tx() as db:  # a transaction that changes no row (an idle worker's claim) wakes no one
        db.execute("UPDATE models SET proto = proto WHERE id = 'none'")
    assert rpc.change_stamp() == same


def _bump_many(path: str, commits: int, bumps: int) -> None:
    store = Store(pathlib.Path(path))
    for i in range(commits):
        _insert(store, f"p{os.getpid()}-{i}", 2)
    for _ in range(bumps):  # the counter alone, as fast as it goes: where an unlocked add loses counts
        store._changes.bump()
    store.close()


def test_change_stamp_counts_every_commit_of_concurrent_processes(tmp_path):
    # Three processes commit at once. Each bump is a read-and-add under an flock: without it two
    # would interleave and lose a count, and a late one could set the count back to a value a
    # reader already holds (which would hide a commit from its cache).
    import multiprocessing

    path = tmp_path / "db.sqlite"
    reader = Store(path)
    before = reader.change_stamp()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_many, args=(str(path), 300, 20_000)) for _ in range(3)]
    for p in procs:
        p.start()
    seen = [reader.change_stamp()]
    while any(p.is_alive() for p in procs):
        seen.append(reader.change_stamp())
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reader.change_stamp() - before == 3 * (300 + 20_000)
    assert seen == sorted(seen)  # never set back
    assert (tmp_path / "db.sqlite.changes").stat().st_size == 8
    reader.close()


def _tiny_onnx(path: pathlib.Path) -> np.ndarray:
    """A 4 -> 3 softmax classifier with input `features`; returns its weight matrix."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])], [numpy_helper.from_array(w, "w")])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w


def test_a_gpu_provider_that_does_not_load_falls_back_to_the_cpu_and_says_so(tmp_path, monkeypatch, caplog):
    """onnxruntime-gpu on a host whose CUDA libraries do not load: the session runs on the CPU, and
    the log says so instead of leaving the operator to guess. (This onnxruntime has only the CPU
    provider; it is made to claim CUDA, as onnxruntime-gpu does.)"""
    import logging

    import onnxruntime as ort

    from gradwire_server import inference

    w = _tiny_onnx(inference.model_path(tmp_path, "m1"))
    x = np.eye(4, dtype=np.float32)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    sessions = SessionCache(tmp_path, device="cuda:1")
    cuda = {"device_id": 1, "use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}  # TF32 off: see CUDA_OPTIONS
    assert sessions._providers == [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    assert sessions.placement("m1") == 1  # not loaded yet: where it is meant to run (KServe's instance_group)
    with caplog.at_level(logging.INFO, "gradwire.inference"), pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        probs = sessions.run("m1", x)  # onnxruntime's own warning, then ours
    assert "model m1: CUDAExecutionProvider did not load" in caplog.text and "serving it on CPUExecutionProvider" in caplog.text
    assert sessions.placement("m1") is None  # loaded: where it really runs
    e = np.exp(w - w.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-6)

    caplog.clear()
    cpu = SessionCache(tmp_path, device="cpu")  # asked for the CPU: no CUDA provider, nothing to warn about
    assert cpu._providers == ["CPUExecutionProvider"]
    with caplog.at_level(logging.INFO, "gradwire.inference"):
        cpu.run("m1", x)
    assert "model m1 loaded on CPUExecutionProvider" in caplog.text and "did not load" not in caplog.text


@pytest.mark.parametrize(("spin_us", "key", "value"), [(0, "session.intra_op.allow_spinning", "0"),
                                                       (100, "session.intra_op.spin_duration_us", "100")])
def test_the_inference_spin_setting_reaches_the_sessions_and_changes_no_result(tmp_path, spin_us, key, value):
    from gradwire_server import inference

    _tiny_onnx(inference.model_path(tmp_path, "m1"))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    tuned, default = SessionCache(tmp_path, spin_us=spin_us), SessionCache(tmp_path)
    assert tuned.get("m1").get_session_options().get_session_config_entry(key) == value
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's default
        default.get("m1").get_session_options().get_session_config_entry(key)
    assert np.array_equal(tuned.run("m1", x), default.run("m1", x))


def test_the_server_passes_its_inference_spin_setting_on_and_refuses_bad_ones(tmp_path):
    from gradwire_server import inference
    from gradwire_server.config import Settings, parse_settings
    from gradwire_server.server import create_server

    running = create_server(Settings(host="127.0.0.1", port=0, data_dir=tmp_path, inference_spin_us=0))
    try:
        _tiny_onnx(inference.model_path(tmp_path, "m1"))
        options = running.state.sessions.get("m1").get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    finally:
        running.stop(0)
    with pytest.raises(ValueError, match=r"inference_spin_us \(GRADWIRE_INFERENCE_SPIN_US\): got -2"):
        parse_settings([], {"GRADWIRE_INFERENCE_SPIN_US": "-2"})
    with pytest.raises(ValueError, match="GRADWIRE_INFERENCE_SPIN_US.*'fast' is not a valid int"):
        parse_settings([], {"GRADWIRE_INFERENCE_SPIN_US": "fast"})


def _threads() -> dict[int, tuple[str, int]]:
    """This process's threads: native id -> (name, scheduling policy)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                out[int(tid)] = (f.read().strip(), os.sched_getscheduler(int(tid)))
        except OSError:  # ended meanwhile
            pass
    return out


linux_only = pytest.mark.skipif(not (os.path.isdir("/proc/self/task") and hasattr(os, "SCHED_IDLE")),
                                reason="SCHED_IDLE and /proc/self/task are Linux's")


@linux_only
@pytest.mark.parametrize("idle", [True, False])
def test_onnxruntime_worker_threads_spin_at_idle_priority(tmp_path, idle):
    """Two sessions loaded at once, from two threads: each one's two intra-op workers (3 threads,
    less the caller) are in the idle class, the loading threads keep their name and priority, and
    the answers are those of a session whose workers keep normal priority."""
    import threading

    from gradwire_server import inference

    for model_id in ("m1", "m2"):
        _tiny_onnx(inference.model_path(tmp_path, model_id))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    cache = SessionCache(tmp_path, intra_op_threads=3, idle_priority=idle)
    before = _threads()
    loaders: dict[str, tuple] = {}

    def load(model_id: str) -> None:
        name = f"loader-{model_id}"
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name)
        cache.get(model_id)
        loaders[model_id] = (name, _threads()[threading.get_native_id()])

    on_threads(lambda k: load(("m1", "m2")[k]), 2)
    for model_id, (name, now) in loaders.items():
        assert now == (name, os.SCHED_OTHER), model_id
    new = {tid: v for tid, v in _threads().items() if tid not in before}
    # (at least: a server another test left behind in this process may load a session meanwhile)
    marked = [policy for name, policy in new.values() if name.startswith("gw-ort-")]
    unmarked = [policy for name, policy in new.values() if not name.startswith("gw-ort-")]
    assert len(marked) >= 4 and set(marked) == {os.SCHED_IDLE if idle else os.SCHED_OTHER}, new
    assert os.SCHED_IDLE not in unmarked, new
    assert _threads()[threading.get_native_id()][1] == os.SCHED_OTHER
    plain = SessionCache(tmp_path, intra_op_threads=3, idle_priority=False)
    assert np.array_equal(cache.run("m1", x), plain.run("m1", x))


@linux_only
def test_the_server_passes_its_idle_priority_setting_on(tmp_path):
    from gradwire_server import inference
    from gradwire_server.config import Settings, parse_settings
    from gradwire_server.server import create_server

    for idle in (True, False):
        running = create_server(Settings(host="127.0.0.1", port=0, data_dir=tmp_path, inference_threads=2,
                                         inference_idle_priority=idle))
        try:
            _tiny_onnx(inference.model_path(tmp_path, "m1"))  # after start-up's clean-up of files without a row
            before = _threads()
            running.state.sessions.get("m1")
            new = [(name.startswith("gw-ort-"), policy) for tid, (name, policy) in _threads().items() if tid not in before]
            assert (new.count((True, os.SCHED_IDLE)) >= 1) is idle, new  # the session's one worker
            assert (False, os.SCHED_IDLE) not in new and (idle or (True, os.SCHED_OTHER) in new), new
        finally:
            running.stop(0)
    assert parse_settings([], {"GRADWIRE_INFERENCE_IDLE_PRIORITY": "false"}).inference_idle_priority is False
    assert parse_settings([], {}).inference_idle_priority is True


@linux_only
def test_workers_pinned_after_the_load_are_found_by_the_calls(tmp_path, monkeypatch):
    """A load waits PIN_WAIT_S for onnxruntime's workers to pin themselves; on a busy machine they
    may start later (under a parallel test run, one load in some hundreds missed them, and its long
    calls then never moved off the workers' CPUs). The session's calls look again, for
    PIN_SETTLE_S after the load; then they stop looking."""
    from gradwire_server import inference

    _tiny_onnx(inference.model_path(tmp_path, "m1"))
    loaded = SessionCache(tmp_path)._get("m1")
    time.sleep(0.2)
    own = os.sched_getaffinity(0)
    pinned = set().union(*(os.sched_getaffinity(tid) for tid in loaded.workers.tids))
    if not pinned or pinned >= own:
        pytest.skip(f"onnxruntime pinned no worker off some CPU here ({len(own)} CPUs, workers on {sorted(pinned)})")

    def unpinned(tids) -> inference._Workers:
        """Workers as the load saw them before they pinned themselves."""
        workers = inference._Workers()
        workers.tids, workers.allowed, workers.pinning = tuple(tids), frozenset(own), True
        return workers

    again = inference._Loaded(loaded.session, inference.ModelStats(), unpinned(loaded.workers.tids))
    assert again.caller_cpus is None and again._pin_pending
    x = np.ones((3, 4), np.float32)
    assert np.array_equal(again.run_now(x), loaded.session.run(None, {"features": x})[0])
    assert again.caller_cpus == frozenset(own - pinned) and not again._pin_pending

    # threads that stay unpinned (here: this one) stop being looked at
    idle = inference._Loaded(loaded.session, inference.ModelStats(), unpinned([threading.get_native_id()]))
    idle.run_now(x)
    assert idle._pin_pending and idle.caller_cpus is None
    monkeypatch.setattr(idle, "_loaded_at", time.monotonic() - inference.PIN_SETTLE_S - 1)
    idle.run_now(x)
    assert not idle._pin_pending and idle.caller_cpus is None
    assert not inference._Loaded(loaded.session, inference.ModelStats(), unpinned(loaded.workers.tids),
                                 move_callers=False)._pin_pending


def test_a_long_call_runs_off_the_cpus_onnxruntime_pinned_its_workers_to(tmp_path, monkeypatch):
    """With its default thread count onnxruntime pins its intra-op workers to CPUs 1.. and leaves
    CPU 0 to the caller; an RPC thread may sit anywhere. A call foreseen to take MOVE_CALLER_NS or
    more (from the last call, in proportion to the rows) moves its caller to the CPUs no worker is
    pinned to, and back, unless another call is in progress; a shorter one stays where it is; the
    answers are the session's."""
    from gradwire_server import inference

    _tiny_onnx(inference.model_path(tmp_path, "m1"))
    loaded = SessionCache(tmp_path)._get("m1")  # onnxruntime's default thread count
    time.sleep(0.2)  # every worker pinned by now, whatever the load waited for
    own = os.sched_getaffinity(0)
    assert all(_threads()[tid][0].startswith("gw-ort-") for tid in loaded.workers.tids)
    pinned = set().union(*(os.sched_getaffinity(tid) for tid in loaded.workers.tids))
    if not pinned or pinned >= own:  # one CPU: no worker at all
        pytest.skip(f"onnxruntime pinned no worker off some CPU here ({len(own)} CPUs, workers on {sorted(pinned)})")
    if loaded.caller_cpus is None:  # pinned after the load stopped waiting (a busy machine): its first call looks again
        loaded.run_now(np.zeros((1, 4), np.float32))
        loaded._last = (0, 0)
    assert loaded.caller_cpus == frozenset(own - pinned)
    seen: list[set[int]] = []
    session = loaded.session

    class Recording:  # the session, noting where its caller runs
        def run(self, *args, **kwargs):
            seen.append(os.sched_getaffinity(0))
            return session.run(*args, **kwargs)

    loaded.session = Recording()
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    loaded.run_now(x)  # the session's first call: nothing to foresee from
    rows, ns = loaded._last
    assert rows == 1000 and ns > 0
    monkeypatch.setattr(inference, "MOVE_CALLER_NS", ns * 5)  # 5,000 rows would take that long; 4,000 not
    out = loaded.run_now(np.resize(x, (5_000, 4)))
    loaded._last = (rows, ns)
    loaded.run_now(np.resize(x, (4_000, 4)))
    loaded._last = (rows, ns)
    monkeypatch.setattr(inference, "_moving_calls", 1)  # another call in progress
    loaded.run_now(np.resize(x, (5_000, 4)))
    assert seen == [own, own - pinned, own, own] and os.sched_getaffinity(0) == own
    assert inference._moving_calls == 1  # counted in and out
    assert np.array_equal(out, session.run(None, {"features": np.resize(x, (5_000, 4))})[0])
    assert SessionCache(tmp_path, move_callers=False)._get("m1").caller_cpus is None
    assert SessionCache(tmp_path, intra_op_threads=2)._get("m1").caller_cpus is None  # an explicit count pins nothing
    from gradwire_server.config import Settings

    assert Settings(inference_threads=3, rpc_processes=2, port=1).session_threads() == 3  # a count set is kept
    assert Settings(rpc_processes=1).session_threads() == 0


def test_with_several_rpc_processes_no_call_moves(tmp_path):
    """With its default thread count, every RPC process's onnxruntime would pin its workers to the
    same CPUs; moved, every process's long calls would crowd onto the same few others. So with
    several processes each gets its share of the CPUs as an explicit thread count (which pins
    nothing), unless a count is set, and the callers move with one RPC process only."""
    from gradwire_server import inference
    from gradwire_server.config import Settings
    from gradwire_server.server import create_server
    from test_durability import free_port

    for processes in (1, 2):
        running = create_server(Settings(host="127.0.0.1", port=free_port(), data_dir=tmp_path / str(processes),
                                         rpc_processes=processes))
        try:
            _tiny_onnx(inference.model_path(running.state.settings.data_dir, "m1"))
            loaded = running.state.sessions._get("m1")
            assert running.state.sessions._move_callers is (processes == 1)
            # several processes: each one's share of the CPUs, which pins nothing
            share = max(1, len(os.sched_getaffinity(0)) // processes) if processes > 1 else 0
            assert running.state.sessions._threads == share
            if processes > 1:
                assert loaded.caller_cpus is None
        finally:
            running.stop(0)


def test_a_name_that_moves_finds_its_new_model_loaded(server, target):
    """An alias moved through SetModelAlias: the new version is loaded (and run once) before the
    alias moves. A new latest version published by a worker: the RPC process loads it as soon as
    it sees the commit, without a request. Neither warm-up counts as an inference."""
    import grpc

    from conftest import wait_for
    from gradwire.v1 import models_pb2_grpc, training_pb2, training_pb2_grpc
    from helpers import State, config, inline, iris, mlp, raw_tensor

    X, y = iris()
    sessions = server.state.sessions
    with grpc.insecure_channel(target) as ch:
        jobs, models = training_pb2_grpc.TrainingJobServiceStub(ch), models_pb2_grpc.ModelServiceStub(ch)

        def publish(run: int) -> str:
            job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
                inline_dataset=inline(X, y), network=mlp(4, 3), training=config(epochs=1, lr=0.01 * (run + 1)),
                registered_model="registeredModels/follow"))
            done = wait_for(lambda: (j := jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name))).state
                            in (State.SUCCEEDED, State.FAILED) and j)
            assert done.state == State.SUCCEEDED, done.error
            return done.model.split("/")[1]

        def predict(name: str) -> None:
            models.Predict(models_pb2.PredictRequest(name=name, features=raw_tensor(X[:2])))

        v1, v2 = publish(0), publish(1)
        models.SetModelAlias(models_pb2.SetModelAliasRequest(name="registeredModels/follow", alias="live", version=1))
        predict("registeredModels/follow@live")
        assert v1 in sessions.loaded() and v2 not in sessions.loaded()

        models.SetModelAlias(models_pb2.SetModelAliasRequest(name="registeredModels/follow", alias="live", version=2))
        assert v2 in sessions.loaded()  # when the move returns, not at the first request
        assert sessions.model_stats(v2).inference_count == 0

        predict("registeredModels/follow")  # the latest version, now followed
        v3 = publish(2)
        wait_for(lambda: v3 in sessions.loaded(), timeout=10)
        assert sessions.model_stats(v3).inference_count == 0
        predict("registeredModels/follow")
        assert sessions.model_stats(v3).inference_count == 2


def test_a_restart_warms_what_the_aliases_point_at(tmp_path):
    """A server started on a data directory whose registered models have aliases loads those
    models (explicit aliases and each latest) while it serves, before any request."""
    import grpc

    from conftest import start, wait_for
    from gradwire.v1 import models_pb2_grpc, training_pb2, training_pb2_grpc
    from helpers import State, config, inline, iris, mlp

    X, y = iris()
    running, pool = start(tmp_path)
    target = f"127.0.0.1:{running.port}"
    try:
        with grpc.insecure_channel(target) as ch:
            jobs, models = training_pb2_grpc.TrainingJobServiceStub(ch), models_pb2_grpc.ModelServiceStub(ch)
            ids = []
            for run in range(3):  # versions 1-3 of "warm"; 3 is the latest
                job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
                    inline_dataset=inline(X, y), network=mlp(4, 3), training=config(epochs=1, lr=0.01 * (run + 1)),
                    registered_model="registeredModels/warm"))
                done = wait_for(lambda job=job: (j := jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name))).state
                                in (State.SUCCEEDED, State.FAILED) and j)
                assert done.state == State.SUCCEEDED, done.error
                ids.append(done.model.split("/")[1])
            models.SetModelAlias(models_pb2.SetModelAliasRequest(name="registeredModels/warm", alias="production", version=1))
    finally:
        pool.stop(timeout=5)
        running.stop(grace=1)

    running, pool = start(tmp_path)
    try:
        sessions = running.state.sessions
        wait_for(lambda: {ids[0], ids[2]} <= set(sessions.loaded()), timeout=20)
        assert ids[1] not in sessions.loaded()  # no alias points at version 2
        assert all(sessions.model_stats(i).inference_count == 0 for i in ids)
        assert running.state.serving.warm_aliases(limit=1) == 1  # the bound: production's model, not latest's
    finally:
        pool.stop(timeout=5)
        running.stop(grace=1)

    running, pool = start(tmp_path, warm_aliases=False)  # GRADWIRE_WARM_ALIASES=false
    try:
        time.sleep(1.0)
        assert running.state.sessions.loaded() == []
    finally:
        pool.stop(timeout=5)
        running.stop(grace=1)


def test_warming_runs_the_shape_small_requests_will_run_at(tmp_path):
    """A warmed session has run once at the shape its first requests run at: one row on the CPU
    provider; on the CUDA provider, where small executions are padded to max_batch_size rows, the
    model's max_batch_size (cuDNN picks its algorithms per shape, 6-9 ms each on an H100)."""
    from gradwire_server.inference import BatchingPolicy, model_path

    _tiny_onnx(model_path(tmp_path, "m1"))
    sessions = SessionCache(tmp_path, batching=BatchingPolicy(max_batch_size=16))
    loaded = sessions._get("m1")
    shapes: list[tuple[int, ...]] = []
    loaded.run_now = lambda x: shapes.append(x.shape)
    sessions.warm("m1", (4,))
    loaded.on_cuda = True  # as on the CUDA provider
    sessions.warm("m1", (4,))
    sessions.warm("m1", (4,), BatchingPolicy(max_batch_size=8))  # the model's own setting
    assert shapes == [(1, 4), (16, 4), (8, 4)]


def test_inference_device_apart_from_the_training_device(tmp_path, monkeypatch):
    """GRADWIRE_INFERENCE_DEVICE: predictions on the CPU while training uses the GPU; unset, they
    follow the training device; "cuda" asked for without onnxruntime's CUDA provider is refused at
    start-up, naming the setting (this machine's onnxruntime has none)."""
    import onnxruntime as ort

    from gradwire_server.config import Settings
    from gradwire_server.server import create_server

    def sessions_of(**settings):
        running = create_server(Settings(host="127.0.0.1", port=0, data_dir=tmp_path / "d", **settings))
        try:
            return running.state.sessions._providers
        finally:
            running.stop(0)

    cpu = ["CPUExecutionProvider"]
    assert sessions_of(device="cuda") == cpu  # no CUDA provider here: the training device's choice falls back
    with pytest.raises(SystemExit, match=r"GRADWIRE_INFERENCE_DEVICE=cuda:1, but onnxruntime .* has no CUDA "
                                         r"execution provider .*install onnxruntime-gpu, or set GRADWIRE_INFERENCE_DEVICE=cpu"):
        sessions_of(inference_device="cuda:1")
    with pytest.raises(ValueError, match=r"inference_device \(GRADWIRE_INFERENCE_DEVICE\): got 'tpu'"):
        Settings(inference_device="tpu")

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert sessions_of(device="cuda", inference_device="cpu") == cpu
    assert sessions_of(device="cpu", inference_device="cuda:1")[0][0] == "CUDAExecutionProvider"
    assert sessions_of(device="cpu", inference_device="cuda:1")[0][1]["device_id"] == 1
    assert sessions_of(device="cuda")[0][0] == "CUDAExecutionProvider"  # unset: as the training device
    assert sessions_of(device="cpu") == cpu


def test_a_file_onnxruntime_cannot_read_is_data_loss_without_the_servers_path(tmp_path):
    """With no sha256 to check it against (a session cache used alone), a file onnxruntime refuses
    is DATA_LOSS in words, not INTERNAL."""
    from gradwire_server import inference

    path = inference.model_path(tmp_path, "m1")
    _tiny_onnx(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(errors.DataLoss) as info:
        SessionCache(tmp_path).run("m1", np.ones((1, 4), np.float32))
    message = info.value.message
    assert message.startswith(f"model 'models/m1' cannot load: onnxruntime {inference.ort.__version__} cannot read its "
                              f"ONNX file ({len(whole) // 2} bytes), which passed the parity check when it was exported")
    assert "INVALID_PROTOBUF" in message and str(tmp_path) not in message


def test_loaded_sessions_are_bounded_by_their_files_bytes(tmp_path):
    """With max_bytes, the least recently used sessions go while the loaded ONNX files take more
    than that; the most recent one stays whatever its size."""
    from gradwire_server import inference

    for name in ("m1", "m2", "m3"):
        _tiny_onnx(inference.model_path(tmp_path, name))
    size = inference.model_path(tmp_path, "m1").stat().st_size
    cache = SessionCache(tmp_path, max_bytes=2 * size)
    x = np.ones((2, 4), np.float32)
    for name in ("m1", "m2"):
        cache.run(name, x)
    assert cache.loaded() == ["m1", "m2"]
    cache.run("m1", x)  # now the most recent
    cache.run("m3", x)
    assert cache.loaded() == ["m1", "m3"]  # m2, the least recently used, went
    tiny = SessionCache(tmp_path, max_bytes=1)  # smaller than any file: one session stays
    tiny.run("m1", x)
    tiny.run("m2", x)
    assert tiny.loaded() == ["m2"]
    unbounded = SessionCache(tmp_path)  # max_bytes 0: no bound but max_sessions
    for name in ("m1", "m2", "m3"):
        unbounded.run(name, x)
    assert unbounded.loaded() == ["m1", "m2", "m3"]
    # What a session's arena kept of its largest call counts too: rows times the policy's row_bytes.
    arenas = SessionCache(tmp_path, max_bytes=3 * size)
    small, large = BatchingPolicy(row_bytes=size // 4), np.ones((8, 4), np.float32)
    arenas.run("m1", x, small)  # 2 rows: half a file's bytes
    arenas.run("m2", x, small)
    assert arenas._loaded["m1"].held_bytes() == size + 2 * (size // 4)  # (read without touching its place)
    arenas.run("m3", x, small)  # 3 files and 3 half-files: m1, the least recent, goes
    assert arenas.loaded() == ["m2", "m3"]
    arenas.run("m2", large, small)  # m2's arena now holds 8 rows, two files' worth
    arenas.run("m1", x, small)  # m3 goes, then m2 too: alone it holds three files' worth
    assert arenas.loaded() == ["m1"]
    # On the CUDA provider every call runs at least padded_rows rows (max_batch_size, or call_rows
    # where fewer), and its arena holds them.
    m1 = arenas._loaded["m1"]
    m1.on_cuda, m1.policy = True, BatchingPolicy(max_batch_size=16, call_rows=12, row_bytes=100)
    assert m1.held_bytes() == size + 12 * 100  # 2 real rows, padded to 12


def test_a_damaged_onnx_file_is_data_loss_and_a_restored_one_serves(server, target, tmp_path):
    """A model whose ONNX file was damaged on disk (cut in half, or one byte flipped) answers
    DATA_LOSS, saying what happened and what to do, without the server's paths: its session's
    load hashes the file against its export's sha256. Cut, it was INTERNAL (onnxruntime's
    `INVALID_PROTOBUF` in the log); flipped, it loaded and served other answers. The file
    restored, the model serves again."""
    import hashlib

    import gradwire as gw
    import grpc
    from conftest import train_iris
    from gradwire.kserve import grpc_service_pb2 as pb
    from gradwire.kserve import grpc_service_pb2_grpc
    from gradwire.v1 import models_pb2_grpc
    from gradwire_server.inference import model_path
    from helpers import iris, mlp, raw_tensor

    name = train_iris(target, mlp(4, 3))
    model_id = name.split("/")[1]
    path = model_path(server.state.settings.data_dir, model_id)
    whole = path.read_bytes()
    server.state.sessions.evict(model_id)  # loaded afresh from the file below
    path.write_bytes(whole[: len(whole) // 2])
    X, _ = iris()
    request = models_pb2.PredictRequest(name=name, features=raw_tensor(X[:2]))
    with grpc.insecure_channel(target) as ch:
        stub = models_pb2_grpc.ModelServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request)
        assert err.value.code() == grpc.StatusCode.DATA_LOSS, err.value.details()
        details = err.value.details()
        assert details.startswith(f"model '{name}' cannot load: its ONNX file ({len(whole) // 2} bytes) has sha256 ")
        assert details.endswith(f"where its export wrote {hashlib.sha256(whole).hexdigest()}: it was damaged since. "
                                "Train the model again, or restore the file")
        assert str(server.state.settings.data_dir) not in details
        # KServe's readiness and repository index say so too, from the file's size alone.
        kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
        assert kserve.ModelReady(pb.ModelReadyRequest(name=model_id)).ready is False
        (entry,) = [m for m in kserve.RepositoryIndex(pb.RepositoryIndexRequest()).models if m.name == model_id]
        reason = f"its ONNX file holds {len(whole) // 2} bytes, where its export wrote {len(whole)}: it was damaged since"
        assert (entry.state, entry.reason) == ("UNAVAILABLE", reason)
    # Its download ends DATA_LOSS too (the bytes' sha256 is not the export's), and leaves no file,
    # even to a client that asks by name and cannot check the bytes itself.
    out = tmp_path / "damaged.onnx"
    with gw.Client(target, timeout=30) as client:
        with pytest.raises(gw.GradwireError) as info:
            client.export_model(name, out)
        assert info.value.code is grpc.StatusCode.DATA_LOSS
        assert f"its ONNX file was damaged on disk since its export ({len(whole) // 2} bytes with sha256" in str(info.value)
        assert not out.exists() and not list(tmp_path.glob(".damaged.onnx.*"))
        # One byte flipped among the weights, the size unchanged: onnxruntime would load it and serve
        # other answers than the export verified. The load's hash refuses it.
        server.state.sessions.evict(model_id)
        flipped = bytearray(whole)
        flipped[-20] ^= 0x40
        path.write_bytes(bytes(flipped))
        with pytest.raises(gw.GradwireError) as info:
            client.predict(name, X[:2])
        assert info.value.code is grpc.StatusCode.DATA_LOSS and "has sha256" in str(info.value)
        path.write_bytes(whole)
        assert client.predict(name, X[:2]).shape == (2, 3)
        with grpc.insecure_channel(target) as ch:
            kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
            assert kserve.ModelReady(pb.ModelReadyRequest(name=model_id)).ready is True
        assert client.export_model(name, out).read_bytes() == whole
