"""Limits that hold: each one refuses with RESOURCE_EXHAUSTED (or fails the job) and names its setting.

Servers here run without a worker unless a test needs one, so queued jobs stay queued.
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import gradwire as gw
from conftest import start, wait_for
from gradwire.v1 import datasets_pb2, datasets_pb2_grpc, training_pb2, training_pb2_grpc
from gradwire_server.config import Settings, parse_settings
from gradwire_server.server import create_server
from helpers import State, config, inline, iris, mlp, upload_requests


def bare_server(tmp_path, **overrides):
    """The RPC process alone (no worker): jobs stay QUEUED."""
    settings = Settings(host="127.0.0.1", port=0, data_dir=tmp_path / "data", poll_interval_s=0.05, grace_period_s=0.5, **overrides)
    return create_server(settings)


@pytest.fixture()
def limited(tmp_path):
    running = bare_server(
        tmp_path, max_queued_jobs=2, max_epochs=50, max_parameters=1000, max_upload_bytes=64 * 1024, data_quota_bytes=512 * 1024
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, training_pb2_grpc.TrainingJobServiceStub(channel), datasets_pb2_grpc.DatasetServiceStub(channel)
    channel.close()
    running.stop(0)


def create(jobs, rows: int | None = 30, **kw) -> training_pb2.TrainingJob:
    """A training job on ``rows`` of iris (None: all 150)."""
    X, y = iris(rows)
    kw.setdefault("network", mlp(4, 3))
    kw.setdefault("training", config(epochs=2))
    return jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(inline_dataset=inline(X, y), **kw), timeout=10)


def refused(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    out = []
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


def test_epochs_limit_names_field_and_setting(limited):
    _, jobs, _ = limited
    err = refused(lambda: create(jobs, training=config(epochs=51)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "GRADWIRE_MAX_EPOCHS" in err.details() and "51" in err.details()
    assert violations(err) == [("training.epochs", err.details().split(": ", 1)[1])]


def test_parameter_budget_is_counted_from_the_spec(limited):
    running, jobs, _ = limited
    create(jobs, network=mlp(4, 3))  # 4*4+4 + 4*3+3 = 35 parameters
    before = len(list((running.state.settings.data_dir / "datasets").iterdir()))
    err = refused(lambda: create(jobs, network=mlp(1000, 3)))  # 4*1000+1000 + 1000*3+3 = 8003 > 1000
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "8003 trainable parameters" in err.details() and "GRADWIRE_MAX_PARAMETERS" in err.details()
    assert violations(err)[0][0] == "network"
    # the refused job's inline dataset is not left behind
    assert len(list((running.state.settings.data_dir / "datasets").iterdir())) == before


def test_queue_limit_is_resource_exhausted(limited):
    _, jobs, _ = limited
    create(jobs)
    create(jobs)
    err = refused(lambda: create(jobs))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "GRADWIRE_MAX_QUEUED_JOBS=2" in err.details()
    # cancelling a queued job frees a slot
    queued = [j for j in jobs.ListTrainingJobs(training_pb2.ListTrainingJobsRequest(), timeout=5).training_jobs if j.state == State.QUEUED]
    jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=queued[0].name), timeout=5)
    assert create(jobs).state == State.QUEUED


def test_upload_size_and_data_quota(limited):
    running, _, datasets = limited
    big = np.zeros((2000, 8), np.float32)  # 64000 + 16000 bytes > 64 KiB
    err = refused(lambda: datasets.UploadDataset(upload_requests(big, np.zeros(2000, np.int64)), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "GRADWIRE_MAX_UPLOAD_BYTES" in err.details()
    X = np.random.default_rng(0).random((2000, 4), dtype=np.float32)
    y = np.arange(2000) % 2
    accepted = 0
    with pytest.raises(grpc.RpcError) as info:
        for _ in range(100):  # 48000 bytes each; the SQLite files count too
            datasets.UploadDataset(upload_requests(X, y), timeout=10)
            accepted += 1
    assert 0 < accepted < 11
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "GRADWIRE_DATA_QUOTA_BYTES" in info.value.details()
    assert str(running.state.settings.data_dir) not in info.value.details()


def test_an_upload_in_progress_holds_its_share_of_the_quota(tmp_path):
    """Two uploads that each fit the quota but not both: the second, started while the first is
    still streaming, is refused, since the first counts with its whole size from its header on.
    (Checked against the bytes on disk alone, both were accepted and the quota overshot.)"""
    from gradwire_server import files

    data_dir = tmp_path / "data"
    bare_server(tmp_path).stop(0)  # a fresh data directory: what its SQLite files weigh
    rng = np.random.default_rng(0)
    X, y = rng.random((12000, 10), dtype=np.float32), np.arange(12000) % 2  # 480,000 + 96,000 bytes
    size = X.nbytes + y.nbytes
    running = bare_server(tmp_path, max_upload_bytes=1 << 20, data_quota_bytes=files.usage_bytes(data_dir) + size * 3 // 2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
    go_on, outcome = threading.Event(), {}

    def held_open():
        requests = upload_requests(X, y, chunk=64 * 1024)
        yield next(requests)  # the header
        yield next(requests)  # and the first chunk; the rest once the other upload is answered
        go_on.wait(30)
        yield from requests

    def first():
        try:
            outcome["first"] = datasets.UploadDataset(held_open(), timeout=60)
        except grpc.RpcError as exc:
            outcome["first"] = exc

    thread = threading.Thread(target=first)
    try:
        thread.start()
        scratch = data_dir / files.TMP_DIR
        wait_for(lambda: any((d / "features.bin").exists() for d in scratch.glob("*")), timeout=10)
        err = refused(lambda: datasets.UploadDataset(upload_requests(X, y), timeout=30))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "GRADWIRE_DATA_QUOTA_BYTES" in err.details()
        assert f"dataset of {size} bytes" in err.details()
        go_on.set()
        thread.join(60)
        assert isinstance(outcome["first"], datasets_pb2.Dataset), outcome["first"]
        assert outcome["first"].size_bytes == size
        assert list(scratch.glob("*")) == []  # the refused upload reserved nothing that stays
        assert files.usage_bytes(data_dir) <= running.state.settings.data_quota_bytes
        # deleting the dataset gives its share back
        datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=outcome["first"].name), timeout=10)
        assert datasets.UploadDataset(upload_requests(X, y), timeout=30).size_bytes == size
    finally:
        go_on.set()
        thread.join(60)
        channel.close()
        running.stop(0)


def test_concurrent_rpc_limit(tmp_path):
    running = bare_server(tmp_path, max_concurrent_rpcs=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    jobs = training_pb2_grpc.TrainingJobServiceStub(channel)
    try:
        job = create(jobs)
        # two Watch streams of a job that never starts (no worker) hold both slots
        streams = [jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=30) for _ in range(2)]
        for s in streams:
            next(s)  # the QUEUED event: the stream is in flight
        err = refused(lambda: jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name), timeout=5))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for s in streams:
            s.cancel()
        wait_for(lambda: _ok(lambda: jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name), timeout=5)), timeout=10)
    finally:
        channel.close()
        running.stop(0)


def test_watch_streams_leave_threads_for_everything_else(tmp_path):
    """Each WatchTrainingJob stream holds an RPC thread for its job's whole run. Past
    GRADWIRE_MAX_WATCH_STREAMS a watch is refused, so with every slot taken health checks and other
    calls still answer, and the SDK's job.wait() follows its job by polling instead."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running, pool = start(tmp_path / "data", rpc_threads=4, max_watch_streams=2, workers=2)
    target = f"127.0.0.1:{running.port}"
    channel = grpc.insecure_channel(target)
    jobs = training_pb2_grpc.TrainingJobServiceStub(channel)
    try:
        X, y = iris()
        long_job = create(jobs, rows=None, network=mlp(32, 3), training=config(epochs=10_000, batch_size=1))
        watch = lambda: jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=long_job.name), timeout=120)  # noqa: E731
        streams = [watch() for _ in range(2)]
        for stream in streams:
            next(stream)  # the QUEUED event: both slots are held
        err = refused(lambda: next(watch()))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 WatchTrainingJob streams are already open" in err.details() and "GRADWIRE_MAX_WATCH_STREAMS" in err.details()
        # the threads left still answer: a health check, and a whole job followed by job.wait()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with gw.Client(target, timeout=10) as client:
            model = client.train([gw.Dense(8), gw.ReLU(), gw.Dense(3)], (X, y), optimizer=gw.Adam(0.05), epochs=3,
                                 batch_size=32, seed=0).wait(timeout=120, progress=True)  # refused a stream: it polls
            assert client.predict(model, X[:2]).shape == (2, 3)
        jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=long_job.name), timeout=10)
        for stream in streams:  # the watchers see the end, and give their slots back
            assert list(stream)[-1].state == State.CANCELLED
        assert wait_for(lambda: _ok(lambda: list(watch())), timeout=10)
    finally:
        channel.close()
        pool.stop(timeout=5)
        running.stop(0)


def _ok(fn) -> bool:
    try:
        fn()
        return True
    except grpc.RpcError:
        return False


def test_message_size_limit_on_server_and_sdk(tmp_path):
    running = bare_server(tmp_path, max_message_bytes=1024**2)
    try:
        X = np.zeros((40_000, 8), np.float32)  # 1.28 MB inline: over the server's 1 MiB
        with gw.Client(f"127.0.0.1:{running.port}") as client:
            with pytest.raises(gw.ResourceExhaustedError):
                client.train([gw.Dense(2)], (X, np.arange(40_000) % 2), optimizer=gw.SGD(0.1), epochs=1, batch_size=8)
        with gw.Client(f"127.0.0.1:{running.port}", max_message_bytes=1024**2) as client:
            with pytest.raises(gw.ResourceExhaustedError):  # refused by the SDK before it is sent
                client.train([gw.Dense(2)], (X, np.arange(40_000) % 2), optimizer=gw.SGD(0.1), epochs=1, batch_size=8)
    finally:
        running.stop(0)


def test_idempotent_create(limited):
    running, jobs, _ = limited
    first = create(jobs, request_id="retry-me-1")
    again = create(jobs, request_id="retry-me-1")
    assert again == first and first.request_id == "retry-me-1"
    assert len(jobs.ListTrainingJobs(training_pb2.ListTrainingJobsRequest(), timeout=5).training_jobs) == 1
    datasets_before = len(list((running.state.settings.data_dir / "datasets").iterdir()))
    err = refused(lambda: create(jobs, request_id="retry-me-1", training=config(epochs=3)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.name in err.details() and violations(err)[0][0] == "request_id"
    assert len(list((running.state.settings.data_dir / "datasets").iterdir())) == datasets_before
    err = refused(lambda: create(jobs, request_id="bad id/../x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err)[0][0] == "request_id"


def test_idempotent_create_under_concurrency(limited):
    _, jobs, _ = limited
    results, lock = [], threading.Lock()

    def go():
        job = create(jobs, request_id="race-1")
        with lock:
            results.append(job.name)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1


def test_validate_only_stores_nothing(limited):
    running, jobs, _ = limited
    job = create(jobs, validate_only=True)
    assert job.name == "" and job.parameter_count == 35 and job.state == State.STATE_UNSPECIFIED
    assert not jobs.ListTrainingJobs(training_pb2.ListTrainingJobsRequest(), timeout=5).training_jobs
    assert not list((running.state.settings.data_dir / "datasets").glob("*"))
    err = refused(lambda: create(jobs, network=mlp(4, 5), validate_only=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err)[0][0].startswith("network.layers")


def test_sdk_exposes_field_violations(limited):
    running, _, _ = limited
    X, y = iris(30)
    with gw.Client(f"127.0.0.1:{running.port}") as client:
        with pytest.raises(gw.InvalidArgumentError) as info:
            client.train([gw.Dense(5)], (X, y), optimizer=gw.SGD(0.1), epochs=1, batch_size=8)  # 3 classes
    err = info.value
    field, description = err.message.split(": ", 1)
    assert field.startswith("network.layers[0]")
    assert err.field_violations == [gw.FieldViolation(field, description)] and err.field == field


def test_settings_refuse_bad_limits():
    with pytest.raises(ValueError, match="GRADWIRE_MAX_QUEUED_JOBS"):
        parse_settings([], {"GRADWIRE_MAX_QUEUED_JOBS": "0"})
    with pytest.raises(ValueError, match="GRADWIRE_MAX_WATCH_STREAMS"):  # watchers must leave threads for the rest
        parse_settings(["--rpc-threads", "8", "--max-watch-streams", "8"], {})
    with pytest.raises(ValueError, match="4 \\+ 4 long-lived streams would take every one of the 8 RPC threads"):
        parse_settings(["--rpc-threads", "8", "--max-watch-streams", "4", "--max-infer-streams", "4"], {})
    with pytest.raises(ValueError, match="GRADWIRE_INFER_STREAM_IN_FLIGHT"):
        parse_settings([], {"GRADWIRE_INFER_STREAM_IN_FLIGHT": "0"})
    with pytest.raises(ValueError, match="GRADWIRE_MAX_SESSION_BYTES"):
        parse_settings([], {"GRADWIRE_MAX_SESSION_BYTES": "-1"})
    assert parse_settings(["--max-session-bytes", "1000000"], {}).max_session_bytes == 1_000_000
    assert (parse_settings(["--rpc-threads", "8", "--max-infer-streams", "5"], {}).infer_streams,
            parse_settings(["--rpc-threads", "2"], {}).infer_streams) == (5, 1)  # the default bends to few threads
    with pytest.raises(ValueError, match="GRADWIRE_TLS_KEY_FILE"):
        parse_settings([], {"GRADWIRE_TLS_CERT_FILE": __file__})
    settings = parse_settings(["--max-job-seconds", "5"], {"GRADWIRE_AUTH_TOKENS": "abc,def"})
    assert settings.max_job_seconds == 5 and settings.tokens() == ("abc", "def")
    assert "abc" not in repr(settings)


def test_job_over_its_wall_time_fails_with_a_clear_reason(tmp_path):
    # A checkpoint budget that allows one save in the job's second: its history must still hold
    # every epoch it finished (a job that fails for good reports them without a save).
    running, pool = start(tmp_path / "data", max_job_seconds=1.0, checkpoint_budget=0.001)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        jobs = training_pb2_grpc.TrainingJobServiceStub(channel)
        job = create(jobs, rows=None, network=mlp(32, 3), training=config(epochs=10_000, batch_size=1))
        final = wait_for(lambda: (j := jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name), timeout=5)).state
                         in (State.FAILED, State.SUCCEEDED, State.CANCELLED) and j, timeout=60)
        assert final.state == State.FAILED
        assert final.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert "wall-time limit of 1 s (GRADWIRE_MAX_JOB_SECONDS)" in final.error.message
        assert not (tmp_path / "data" / "checkpoints" / job.name.split("/")[1]).exists()
        epochs = [m.epoch for m in final.history]
        assert epochs == list(range(1, len(epochs) + 1)) and final.history[-1].elapsed_seconds > 0.5, final.history
        channel.close()
    finally:
        pool.stop(timeout=5)
        running.stop(0)


def test_the_workers_honour_the_checkpoint_budget(tmp_path):
    """GRADWIRE_CHECKPOINT_BUDGET through a real server: with a budget so small that the next save
    waits many seconds after the first, epochs of about 0.1 s go on training, but none past the
    first is reported, since none is saved; a cancel then reports every finished epoch."""
    running, pool = start(tmp_path / "data", checkpoint_budget=1e-5)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        jobs = training_pb2_grpc.TrainingJobServiceStub(channel)
        job = create(jobs, rows=None, network=mlp(32, 3), training=config(epochs=10_000, batch_size=1))
        get = lambda: jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name), timeout=5)  # noqa: E731
        wait_for(lambda: len(get().history) >= 1, timeout=60)
        time.sleep(1.5)
        running_job = get()
        assert running_job.state == State.RUNNING and [m.epoch for m in running_job.history] == [1]
        jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=job.name), timeout=10)
        final = wait_for(lambda: (j := get()).state == State.CANCELLED and j, timeout=30)
        epochs = [m.epoch for m in final.history]
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > 2, epochs
        channel.close()
    finally:
        pool.stop(timeout=5)
        running.stop(0)


def test_readme_documents_every_setting():
    import dataclasses
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        assert f"| `GRADWIRE_{field.name.upper()}` | `{flag}` |" in readme, field.name


def test_failure_messages_carry_no_paths_or_tracebacks():
    from gradwire_server.worker import safe_message

    msg = safe_message(FileNotFoundError(2, "No such file or directory", "/srv/gradwire-data/datasets/ab12/features.bin"))
    assert "/srv" not in msg and "features.bin" not in msg and msg.startswith("training failed: FileNotFoundError")
    msg = safe_message(RuntimeError("line one\nTraceback (most recent call last):\n  File \"/x/y.py\", line 3" + "z" * 900))
    assert "\n" not in msg and "/x/y.py" not in msg and len(msg) < 600


def test_a_job_that_runs_out_of_memory_fails_naming_its_batching(tmp_path):
    """An allocation that fails (here a 4 GiB convolution output, past the server's 4 GB address
    space) ends the job RESOURCE_EXHAUSTED naming training.batching, the allocation and the batch
    size; it read INTERNAL and torch's `[enforce fail at alloc_cpu.cpp:127] err == 0.
    DefaultCPUAllocator: ...` before. The server lives on."""
    import resource

    from test_durability import ServeProcess, free_port

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY and hard < 4_000_000_000:
        pytest.skip(f"this process's address space is limited to {hard} bytes already")
    server = ServeProcess(tmp_path / "data", free_port(), device="cpu", address_space=4_000_000_000)
    try:
        rng = np.random.default_rng(0)
        X, y = rng.normal(size=(8, 1, 512, 512)).astype(np.float32), np.arange(8) % 2
        net = [gw.Conv2d(512, 3, padding="same"), gw.GlobalAvgPool(), gw.Dense(2)]  # (512, 512, 512) a row: 512 MiB
        with gw.Client(server.target, timeout=60) as client:
            job = client.train(net, (X, y), optimizer=gw.SGD(0.01), epochs=1, batch_size=8)
            with pytest.raises(gw.TrainingFailedError) as info:
                job.wait(timeout=120)
            assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert str(info.value).endswith(
                "training.batching: training ran out of memory on cpu (an allocation of 4.00 GiB failed): a step holds "
                "every layer's activations for mini-batches of 8; use smaller batches (mini_batch.batch_size) or a "
                "smaller network")
            model = client.train([gw.Flatten(), gw.Dense(2)], (X[:, :, :8, :8], y), optimizer=gw.SGD(0.01), epochs=1,
                                 batch_size=8).wait(timeout=120)  # the worker trains on
            assert client.predict(model, X[:2, :, :8, :8]).shape == (2, 2)
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_out_of_memory_errors_are_told_from_others():
    import torch
    from gradwire.v1 import network_pb2
    from gradwire_server.server import exit_description
    from gradwire_server.worker import out_of_memory

    mini = network_pb2.Batching(mini_batch=network_pb2.MiniBatch(batch_size=64))
    cuda = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    got = out_of_memory(cuda("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB"),
                        mini, "cuda:0")
    assert got.message == ("training.batching: training ran out of memory on cuda:0 (an allocation of 20.00 GiB failed): "
                           "a step holds every layer's activations for mini-batches of 64; use smaller batches "
                           "(mini_batch.batch_size) or a smaller network")
    full = network_pb2.Batching(full_batch=network_pb2.FullBatch())
    assert "(every example)" in out_of_memory(MemoryError(), full, "cpu").message
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), mini, "cpu") is None
    assert out_of_memory(ValueError("can't allocate memory"), mini, "cpu") is None
    # Outside a training step, the message names what ran out and the field to change, not the batch size.
    alloc = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 3145728000 bytes. Error code 12 (Cannot allocate memory)")
    got = {phase: out_of_memory(alloc, mini, "cpu", phase).message
           for phase in ("loading", "training", "validation", "evaluation", "export")}
    assert got["export"] == (
        "network: exporting the trained network to ONNX ran out of memory on cpu (an allocation of 2.93 GiB failed): "
        "the export holds several copies of the weights (PyTorch's, the ONNX file's, and onnxruntime's for the parity "
        "check); use a smaller network, or give the server more memory")
    assert got["evaluation"] == (
        "network: the final evaluation ran out of memory on cpu (an allocation of 2.93 GiB failed): a pass scores about "
        "256 MiB of activations beside the training data; use a smaller network or dataset, or give the server more memory")
    assert got["validation"].startswith("network: an epoch's validation ran out of memory on cpu (an allocation of 2.93 GiB")
    assert got["loading"].startswith("dataset: loading the dataset ran out of memory on cpu (an allocation of 2.93 GiB")
    assert got["training"].startswith("training.batching: training ran out of memory on cpu")
    assert all("mini_batch" not in m for phase, m in got.items() if phase != "training")
    assert exit_description(-signal.SIGKILL).startswith("killed by SIGKILL, which the kernel's out-of-memory killer sends")
    assert exit_description(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert exit_description(3) == "exit code 3"


def test_a_job_whose_step_cannot_fit_is_refused_at_once(tmp_path):
    """A job whose training step needs more than the worker can have (here a 4 GB address space)
    ends RESOURCE_EXHAUSTED before it allocates anything, naming the bound, the limit and the
    batch size; without the check it ran until an allocation failed, or on a machine without
    such a limit until the kernel's out-of-memory killer ended its worker, three times."""
    import resource

    from test_durability import ServeProcess, free_port

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY and hard < 4_000_000_000:
        pytest.skip(f"this process's address space is limited to {hard} bytes already")
    server = ServeProcess(tmp_path / "data", free_port(), device="cpu", address_space=4_000_000_000)
    try:
        X = np.random.default_rng(0).normal(size=(256, 1, 128, 128)).astype(np.float32)
        y = np.arange(256) % 2
        net = [gw.Conv2d(64, 3, padding="same"), gw.ReLU()] * 6 + [gw.GlobalAvgPool(), gw.Dense(2)]  # 5.0 GiB kept at 256
        with gw.Client(server.target, timeout=60) as client:
            started = time.monotonic()
            job = client.train(net, (X, y), optimizer=gw.SGD(0.01), epochs=1, batch_size=256)
            with pytest.raises(gw.TrainingFailedError) as info:
                job.wait(timeout=120)
            assert time.monotonic() - started < 30  # refused, not trained until something gave way
            assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "training.batching: a training step of 256 examples needs at least 5.03 GiB on cpu" in str(info.value)
            assert "more than this process's address-space limit (RLIMIT_AS), less what it maps already" in str(info.value)
            assert not list((tmp_path / "data" / "checkpoints").glob("*/*"))  # nothing left behind
            model = client.train([gw.Flatten(), gw.Dense(2)], (X[:, :, :8, :8], y), optimizer=gw.SGD(0.01), epochs=1,
                                 batch_size=8).wait(timeout=120)  # the worker trains on
            assert client.predict(model, X[:2, :, :8, :8]).shape == (2, 2)
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_the_session_byte_budget_reaches_the_servers_session_cache(tmp_path):
    """GRADWIRE_MAX_SESSION_BYTES is the running server's: under a budget smaller than any model,
    predicting with two models keeps one session loaded (without it, both stay)."""
    X, y = iris()
    for budget, kept in ((1, 1), (0, 2)):
        running, pool = start(tmp_path / f"data-{budget}", max_session_bytes=budget)
        try:
            with gw.Client(f"127.0.0.1:{running.port}") as client:
                models = [client.train([gw.Dense(4), gw.Dense(3)], (X, y), optimizer=gw.SGD(0.1), epochs=1, batch_size=30,
                                       seed=seed).wait(timeout=120) for seed in (1, 2)]
                for model in models + models:
                    assert client.predict(model, X[:2]).shape == (2, 3)
            assert len(running.state.sessions.loaded()) == kept
        finally:
            pool.stop(timeout=5)
            running.stop(grace=1)


def test_serve_help_describes_every_setting():
    """`gradwire serve --help`, as a user runs it: each flag with the first sentence of its
    setting's description, its variable and its default."""
    import dataclasses
    import pathlib
    import shutil
    import subprocess
    import sys

    from gradwire_server.config import first_sentence, setting_docs

    docs = setting_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(Settings)}  # every setting has its description
    exe = shutil.which("gradwire", path=str(pathlib.Path(sys.executable).parent)) or "gradwire"
    out = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    text = " ".join(out.split())  # argparse wraps the lines
    for field in dataclasses.fields(Settings):
        sentence = first_sentence(docs[field.name])
        assert sentence.endswith(".") and len(sentence) > 10, (field.name, sentence)
        assert f"--{field.name.replace('_', '-')}" in text and f"{sentence} (env GRADWIRE_{field.name.upper()}, default" in text, field.name
    assert first_sentence("Largest upload, e.g. 2 GB. More after.") == "Largest upload, e.g. 2 GB."
    assert first_sentence("no full stop") == "no full stop"


ORT_OUT_OF_MEMORY = '''
import resource, sys, pathlib, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
from gradwire_server import inference, errors
from gradwire_server.inference import SessionCache, BatchingPolicy
tmp = pathlib.Path(sys.argv[1])
def model(name, k, n):  # features [b, k] @ ones [k, n]
    w = numpy_helper.from_array(np.ones((k, n), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["features", "w"], ["out"])], "g",
                          [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["b", k])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", n])], [w])
    path = inference.model_path(tmp, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
model("small", 4, 4096)
model("big", 4096, 4096)  # 64 MiB of weights
cache = SessionCache(tmp)
assert cache.run("small", np.ones((2, 4), np.float32)).shape == (2, 4096)
mapped = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + (48 << 20), mapped + (48 << 20)))  # 48 MiB more, no further
for call in (lambda: cache.run("small", np.ones((200_000, 4), np.float32), BatchingPolicy(enabled=False)),  # 3.05 GiB out
             lambda: cache.get("big")):
    try:
        call()
        print("no error")
    except errors.ResourceExhausted as exc:
        print(exc.message)
print(cache.run("small", np.ones((1, 4), np.float32)).sum())  # and it serves on
'''


def test_onnxruntime_out_of_memory_is_resource_exhausted(tmp_path):
    """An onnxruntime call or session load that cannot get its memory (a process with 48 MiB of
    address space to spare) fails RESOURCE_EXHAUSTED, saying what to change; it was an INTERNAL
    error (onnxruntime's `Fail: ... std::bad_alloc`, or its arena's `Failed to allocate memory for
    requested buffer of size ...`). The session cache serves on after both."""
    import subprocess
    import sys

    script = tmp_path / "ort_oom.py"
    script.write_text(ORT_OUT_OF_MEMORY)
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    ran_out = ("the model ran out of memory on a call of 200000 rows (an allocation of 3.05 GiB failed): send fewer rows a "
               "request, or give the server more memory")
    load = ("loading model 'models/big' (64.0 MiB of ONNX) ran out of memory: keep fewer sessions loaded "
            "(GRADWIRE_MAX_SESSIONS, GRADWIRE_MAX_SESSION_BYTES), or give the server more memory")
    assert run.stdout.splitlines() == [ran_out, load, "16384.0"]


def test_failed_allocations_are_told_from_other_errors():
    from gradwire_server.errors import failed_allocation
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    assert failed_allocation(MemoryError()) == ""
    assert failed_allocation(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes")) == \
        " (an allocation of 1.00 GiB failed)"
    assert failed_allocation(RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB.")) == " (an allocation of 20.00 GiB failed)"
    assert failed_allocation(Fail("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:std::bad_alloc")) == ""
    assert failed_allocation(Fail("Failed to allocate memory for requested buffer of size 327680000")) == \
        " (an allocation of 0.31 GiB failed)"
    assert failed_allocation(InvalidArgument("Got invalid dimensions for input: features")) is None
    assert failed_allocation(ValueError("out of memory")) is None  # not an allocator's exception type
    assert failed_allocation(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_a_dataset_damaged_on_disk_fails_its_job_with_data_loss(server, target):
    """A dataset file cut short (or removed) since its upload: the job fails DATA_LOSS naming the
    dataset, the file and the sizes; it was `INTERNAL: training failed: ValueError: cannot
    reshape array of size ...`. The worker trains on."""
    from gradwire_server import files
    from gradwire_server.datasets import FEATURES_FILE, LABELS_FILE

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    with gw.Client(target, timeout=60) as client:
        data = client.upload_dataset(X, y, name="to-damage")
        root = files.inside(server.state.settings.data_dir, "datasets", data.name.split("/", 1)[1])
        features = root / FEATURES_FILE
        whole = features.read_bytes()
        features.write_bytes(whole[:100])
        job = client.train([gw.Dense(2)], data, optimizer=gw.SGD(0.1), epochs=1, batch_size=8)
        with pytest.raises(gw.TrainingFailedError) as info:
            job.wait(timeout=60)
        assert info.value.code is grpc.StatusCode.DATA_LOSS
        assert str(info.value).endswith(
            f"dataset: dataset '{data.name}': its features file holds 100 bytes, where its upload wrote 640 ([40, 4] float32); "
            "it was damaged since: upload the dataset again")
        (root / LABELS_FILE).unlink()
        features.write_bytes(whole)
        with pytest.raises(gw.TrainingFailedError) as info:
            client.train([gw.Dense(2)], data, optimizer=gw.SGD(0.1), epochs=1, batch_size=8).wait(timeout=60)
        assert "its labels file is missing, where its upload wrote" in str(info.value)
        assert client.train([gw.Dense(2)], (X, y), optimizer=gw.SGD(0.1), epochs=1, batch_size=8).wait(timeout=60)


@pytest.fixture()
def small_disk(tmp_path):
    """A 24 MiB file system (tmpfs) for a data directory; skipped where this process may not mount."""
    import shutil
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(mount)], capture_output=True, text=True,
                          check=False) if shutil.which("mount") else None
    if made is None or made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip() if made else 'no mount command'}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def test_a_full_disk_is_resource_exhausted_and_nothing_is_left_half_written(small_disk):
    """On a data directory whose file system fills up: an upload larger than the free space is
    refused before a byte is written; a job whose checkpoint does not fit fails RESOURCE_EXHAUSTED
    and its checkpoint goes; calls whose database commit fails say the disk is full. They were
    INTERNAL (`OSError: [Errno 28]`, SQLite's `database or disk is full`, torch's `unexpected pos
    ...` while saving). Space freed, the same server trains and serves."""
    import shutil

    from test_durability import ServeProcess, free_port

    server = ServeProcess(small_disk / "data", free_port(), device="cpu")
    full = "the server's disk is full ("
    try:
        rng = np.random.default_rng(0)
        X, y = rng.normal(size=(8000, 1000)).astype(np.float32), np.arange(8000) % 2
        with gw.Client(server.target, timeout=60) as client:
            with pytest.raises(gw.ResourceExhaustedError) as info:
                client.upload_dataset(X, y, name="too-big")  # 30.6 MiB
            assert "the dataset takes 30.6 MiB (32064000 bytes), and the server's disk has" in str(info.value)
            data = client.upload_dataset(X[:2000], y[:2000], name="fits")  # 7.6 MiB
            # 2M parameters with Adam's two moments: a 24 MB checkpoint, more than is left
            job = client.train([gw.Dense(2000), gw.ReLU(), gw.Dense(2)], data, optimizer=gw.Adam(1e-3), epochs=2, batch_size=256)
            with pytest.raises(gw.TrainingFailedError) as info:
                job.wait(timeout=120)
            assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and full in str(info.value), str(info.value)
            leftover = small_disk / "data" / "checkpoints" / job.name.split("/")[1]
            assert not leftover.exists() and not list((small_disk / "data").rglob("*.pt*")), "the failed job's checkpoint stayed"
            filler = small_disk / "filler"
            with open(filler, "wb") as f:
                f.write(b"\0" * (shutil.disk_usage(small_disk).free - 4096))
            with pytest.raises(gw.ResourceExhaustedError) as info:
                client.train([gw.Dense(2)], data, optimizer=gw.SGD(0.1), epochs=1, batch_size=64)  # its row's commit
            assert full in str(info.value)
            filler.unlink()
            model = client.train([gw.Dense(2)], data, optimizer=gw.SGD(0.1), epochs=1, batch_size=64).wait(timeout=120)
            assert client.predict(model, X[:2]).shape == (2, 2)
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_a_full_disk_is_told_from_other_errors():
    import errno
    import sqlite3

    from gradwire_server.errors import disk_full

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full(sqlite3.OperationalError("database or disk is full"))
    try:  # torch's zip writer: a RuntimeError raised while handling the OSError
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8027136 vs 8027028") from None
    except RuntimeError as exc:
        assert exc.__context__ is not None and disk_full(exc)
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(sqlite3.OperationalError("database is locked"))
    assert not disk_full(RuntimeError("unexpected pos 1 vs 2"))
    assert not disk_full(None)


def test_a_network_too_big_for_one_onnx_file_is_refused_before_it_trains(tmp_path):
    """With GRADWIRE_MAX_PARAMETERS raised past it, a network whose float32 weights pass protobuf's
    2 GiB (what one ONNX file holds) is refused when the job is created: it would have trained, for
    as long as that takes, and then failed its export. Its parameters are counted from the
    shapes; nothing is allocated."""
    running = bare_server(tmp_path, max_parameters=10**10)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs = training_pb2_grpc.TrainingJobServiceStub(channel)
            X = np.zeros((2, 25_000), np.float32)
            error = refused(lambda: jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
                inline_dataset=inline(X, np.array([0, 1]), ("a", "b")), network=mlp(24_000, 2), training=config(epochs=1, batch_size=2)), timeout=30))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.details() == (
                "network: has 600072002 trainable parameters, 2.24 GiB of float32 weights: more than one ONNX file can hold "
                "(1.94 GiB, protobuf's limit), so its trained model could not be exported; use a smaller network")
            assert jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(  # a big one that fits is taken
                inline_dataset=inline(X, np.array([0, 1]), ("a", "b")), network=mlp(16_000, 2), training=config(epochs=1, batch_size=2)), timeout=30).name
    finally:
        running.stop(0)


def test_display_and_class_names_are_bounded_and_name_their_field(tmp_path):
    """Display names (1,024 characters) and class names (256) are bounded: they come back in every
    Get and List answer, and a page of 1 MB names passed a message's size. Each refusal names the
    field, and a class name its index, without echoing a whole list of 100,000 names."""
    running = bare_server(tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs, data = training_pb2_grpc.TrainingJobServiceStub(channel), datasets_pb2_grpc.DatasetServiceStub(channel)
            X, y = iris(30)

            def upload(**header):
                requests = list(upload_requests(X, y, names=header.pop("names", ("a", "b", "c"))))
                for key, value in header.items():
                    setattr(requests[0].header, key, value)
                return data.UploadDataset(iter(requests), timeout=30)

            cases = [
                (lambda: upload(display_name="x" * 1025), "header.display_name: at most 1024 characters, got 1025: "),
                (lambda: upload(names=("a", "b" * 257, "c")), "header.class_names[1]: class names are at most 256 characters, got 257"),
                (lambda: upload(names=("a", "b", "a")), "header.class_names[2]: class names must be unique, got 'a' again"),
                (lambda: upload(names=("a", "", "c")), "header.class_names[1]: class names must be non-empty, got ''"),
                (lambda: create(jobs, display_name="x" * 1025), "display_name: at most 1024 characters, got 1025"),
            ]
            inline_named = inline(X, y)
            inline_named.display_name = "y" * 1025
            cases.append((lambda: jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
                inline_dataset=inline_named, network=mlp(4, 3), training=config(epochs=1)), timeout=10),
                "inline_dataset.display_name: at most 1024 characters, got 1025"))
            for call, text in cases:
                error = refused(call)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(text), error.details()
                assert len(error.details()) < 200
            assert upload(display_name="x" * 1024, names=("a" * 256, "b", "c")).display_name == "x" * 1024
            X_test, y_test = iris(6)
            job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(  # its test set's name stays in bounds
                display_name="z" * 1024, inline_dataset=inline(X, y), inline_test_dataset=inline(X_test, y_test),
                network=mlp(4, 3), training=config(epochs=1)), timeout=10)
            assert job.display_name == "z" * 1024
        with gw.Client(f"127.0.0.1:{running.port}", timeout=30) as client:  # the SDK's derived test-set name fits too
            sdk_job = client.train([gw.Dense(3)], (X, y), optimizer=gw.SGD(0.1), epochs=1, batch_size=8, name="s" * 1024,
                                   test_data=(X_test, y_test))
            assert client.get_dataset(sdk_job.proto.test_dataset).display_name == "s" * 1017 + " (test)"
    finally:
        running.stop(0)
