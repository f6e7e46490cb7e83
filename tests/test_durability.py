"""`gradwire serve` (the container's exact command) as a real process: kill -9 it and nothing is lost."""

from __future__ import annotations

import collections
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradwire.v1 import datasets_pb2, datasets_pb2_grpc, models_pb2, models_pb2_grpc, training_pb2, training_pb2_grpc
from helpers import State, config, inline, iris, mlp, raw_tensor, upload_requests

GRADWIRE = shutil.which("gradwire", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(GRADWIRE is None, reason="the gradwire command is not installed (pip install -e '.[test]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(data_dir: pathlib.Path, port: int, device: str = "auto", **settings: str) -> dict[str, str]:
    """The environment of a test's `gradwire serve`: this one's without its GRADWIRE_* variables,
    then the test's. ``settings``: more GRADWIRE_* variables, e.g. GRADWIRE_RPC_PROCESSES="3"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_")}
    env.update(GRADWIRE_HOST="127.0.0.1", GRADWIRE_PORT=str(port), GRADWIRE_DATA_DIR=str(data_dir),
               GRADWIRE_POLL_INTERVAL_S="0.05", GRADWIRE_GRACE_PERIOD_S="2", GRADWIRE_DEVICE=device, **settings)
    return env


class ServeProcess:
    def __init__(self, data_dir: pathlib.Path, port: int, device: str = "auto", *, address_space: int | None = None,
                 **settings: str) -> None:
        """``address_space``: a limit on each of the server's processes' virtual memory, in bytes
        (RLIMIT_AS, which its children inherit): allocations past it fail as on a full machine. The
        server then runs with MALLOC_ARENA_MAX=2: glibc reserves 64 MB of address space for each
        thread's malloc arena (up to 8 a core), and under a 4 GB limit on a loaded machine those
        reservations, not a job, could take what a thread of gRPC's needed at start (it aborted,
        'epoll_wait error: Bad file descriptor', once in some six parallel runs of the suite)."""
        env = serve_env(data_dir, port, device, **settings)
        if address_space:
            env["MALLOC_ARENA_MAX"] = "2"
        self.log = open(data_dir.parent / f"serve-{port}-{time.time_ns()}.log", "w")

        def limit() -> None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

        self.proc = subprocess.Popen([GRADWIRE, "serve"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=limit if address_space else None)
        self.target = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.target)
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + 60
        try:
            while True:
                assert self.proc.poll() is None, pathlib.Path(self.log.name).read_text()
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "server did not become healthy"
                time.sleep(0.1)
        except BaseException:  # a server that did not start leaves no process, channel or open log behind
            self.proc.kill()
            self.proc.wait(timeout=60)
            self.channel.close()
            self.log.close()
            raise
        self.datasets = datasets_pb2_grpc.DatasetServiceStub(self.channel)
        self.jobs = training_pb2_grpc.TrainingJobServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)

    def stop(self, sig: int) -> int:
        self.channel.close()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


def onnx_weights(models, name: str) -> dict[str, np.ndarray]:
    """The initializers (weights, biases, baked normalization) of a model's exported ONNX graph."""
    import onnx
    from onnx import numpy_helper

    blob = b"".join(c.chunk_data for c in models.ExportModel(models_pb2.ExportModelRequest(name=name), timeout=30))
    return {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(blob).graph.initializer}


def watch_to_end(jobs, name: str) -> list:
    return list(jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=name), timeout=300))


def test_kill_9_loses_nothing_and_resumes_the_running_job(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    X, y = iris()

    first = ServeProcess(data_dir, port)
    dataset = first.datasets.UploadDataset(upload_requests(X, y, chunk=512, names=["a", "b", "c"]), timeout=30)
    done = first.jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(dataset=dataset.name, network=mlp(8, 3), training=config(epochs=5)), timeout=10)
    assert watch_to_end(first.jobs, done.name)[-1].state == State.SUCCEEDED
    done = first.jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=done.name), timeout=10)
    before = np.frombuffer(first.models.Predict(models_pb2.PredictRequest(name=done.model, features=raw_tensor(X)), timeout=10).probabilities.raw_data, "<f4")

    long_job = first.jobs.CreateTrainingJob(
        training_pb2.CreateTrainingJobRequest(dataset=dataset.name, network=mlp(32, 32, 3), training=config(epochs=12, batch_size=2)), timeout=10)
    for event in first.jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=long_job.name), timeout=120):
        if event.HasField("epoch") and event.epoch.epoch >= 2:
            break
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = ServeProcess(data_dir, port)
    try:
        assert second.datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=dataset.name), timeout=10) == dataset
        again = second.jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=done.name), timeout=10)
        assert again == done  # state, history, model: all there
        after = np.frombuffer(second.models.Predict(models_pb2.PredictRequest(name=done.model, features=raw_tensor(X)), timeout=10).probabilities.raw_data, "<f4")
        np.testing.assert_array_equal(after, before)

        events = watch_to_end(second.jobs, long_job.name)
        assert events[-1].state == State.SUCCEEDED, events[-1]
        assert any("restart" in e.message for e in events)
        restart = max(i for i, e in enumerate(events) if "restart" in e.message)
        rerun = [e.epoch.epoch for e in events[restart:] if e.HasField("epoch")]
        assert rerun[0] > 1 and rerun == list(range(rerun[0], 13)), rerun  # it went on from its checkpoint
        resumed = second.jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=long_job.name), timeout=10)
        assert [m.epoch for m in resumed.history] == list(range(1, 13))
        # Bit-exact resume: the same job run once without interruption ends with the same weights.
        reference = second.jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
            dataset=dataset.name, network=mlp(32, 32, 3), training=config(epochs=12, batch_size=2)), timeout=10)
        assert watch_to_end(second.jobs, reference.name)[-1].state == State.SUCCEEDED
        reference = second.jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=reference.name), timeout=10)
        resumed_weights, reference_weights = onnx_weights(second.models, resumed.model), onnx_weights(second.models, reference.model)
        assert resumed_weights.keys() == reference_weights.keys() and resumed_weights
        max_diff = max(float(np.max(np.abs(resumed_weights[k] - reference_weights[k]))) for k in resumed_weights)
        print(f"resume weight difference (max abs over {len(resumed_weights)} initializers): {max_diff}")
        for k in resumed_weights:
            assert resumed_weights[k].tobytes() == reference_weights[k].tobytes(), k
        predict = lambda m: second.models.Predict(models_pb2.PredictRequest(name=m, features=raw_tensor(X)), timeout=10).probabilities.raw_data  # noqa: E731
        assert predict(resumed.model) == predict(reference.model)
        assert [m.train_loss for m in resumed.history] == [m.train_loss for m in reference.history]

        stuck = [j.name for j in second.jobs.ListTrainingJobs(training_pb2.ListTrainingJobsRequest(), timeout=10).training_jobs
                 if j.state in (State.QUEUED, State.RUNNING, State.CANCELLING)]
        assert not stuck
        # the container's healthcheck command, run natively
        health = subprocess.run([GRADWIRE, "health", "--target", second.target], capture_output=True, text=True, timeout=30)
        assert health.returncode == 0 and "SERVING" in health.stdout, health
    finally:
        code = second.stop(signal.SIGTERM)
    assert code == 0  # SIGTERM is a clean shutdown
    health = subprocess.run([GRADWIRE, "health", "--target", second.target, "--timeout", "2"], capture_output=True, text=True, timeout=30)
    assert health.returncode == 1


def spawned_children(pid: int) -> list[int]:
    """The processes `pid` started through multiprocessing (its workers and RPC processes, not
    its resource tracker)."""
    found = []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="finds the worker process in /proc (Linux)")
def test_a_killed_worker_is_replaced_its_job_resumed_and_its_leftovers_removed(tmp_path):
    """The server lives on while its worker process is killed (the OOM killer, say): the server
    starts another worker, which resumes the job from its checkpoint, and what the dead one was
    writing (a temp file named after it) is removed, not left until the next start."""
    data_dir, port = tmp_path / "data", free_port()
    X, y = iris()
    server = ServeProcess(data_dir, port, device="cpu")
    try:
        job = server.jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
            inline_dataset=inline(X, y), network=mlp(32, 32, 3), training=config(epochs=12, batch_size=2)), timeout=10)
        for event in server.jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=120):
            if event.HasField("epoch") and event.epoch.epoch >= 2:
                break
        (victim,) = spawned_children(server.proc.pid)
        checkpoint_dir = data_dir / "checkpoints" / job.name.split("/", 1)[1]
        assert (checkpoint_dir / "checkpoint.pt").exists()
        # what a save cut short by the kill leaves behind: its temp file, named as the writer names it
        leftover = checkpoint_dir / f".checkpoint.pt.{victim}-0123456789abcdef.tmp"
        leftover.write_bytes(b"half a checkpoint")
        bystander = checkpoint_dir / f".checkpoint.pt.{victim + 1}-0123456789abcdef.tmp"  # another process's
        bystander.write_bytes(b"not the dead worker's")
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (replacement := [p for p in spawned_children(server.proc.pid) if p != victim]):
            assert time.monotonic() < deadline, "no worker replaced the killed one"
            time.sleep(0.05)
        assert len(replacement) == 1
        # removed before the replacement started, while the job waits for it (its checkpoint stays)
        assert not leftover.exists() and bystander.exists() and (checkpoint_dir / "checkpoint.pt").exists()

        events = watch_to_end(server.jobs, job.name)
        assert events[-1].state == State.SUCCEEDED, events[-1]
        requeued = [i for i, e in enumerate(events) if e.message.startswith("requeued: the worker process died (killed by "
                                                                              "SIGKILL, which the kernel's out-of-memory killer sends")]
        assert requeued, [e.message for e in events]
        rerun = [e.epoch.epoch for e in events[requeued[-1]:] if e.HasField("epoch")]
        assert rerun[0] > 1 and rerun == list(range(rerun[0], 13)), rerun  # from its checkpoint, not from epoch 1
        done = server.jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name), timeout=10)
        assert [m.epoch for m in done.history] == list(range(1, 13))
        assert spawned_children(server.proc.pid) == replacement
        assert server.models.Predict(models_pb2.PredictRequest(name=done.model, features=raw_tensor(X[:3])),
                                     timeout=10).predicted_classes
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0


def test_jobs_stored_before_the_test_set_column_still_protect_their_test_set(tmp_path):
    """A data directory written before jobs recorded their test set's id: opening it fills the
    column in from each job's spec, so a queued job's test set still cannot be deleted."""
    import sqlite3

    from gradwire.v1 import network_pb2
    from gradwire_server import errors
    from gradwire_server import store as store_mod

    path = tmp_path / "gradwire.db"
    s = store_mod.Store(path)
    for name in ("train", "test"):
        with s._tx() as db:
            db.execute("INSERT INTO datasets (id, proto, features_dtype, labels_dtype, labels_shape) VALUES (?, ?, 0, 0, '')",
                       (name, datasets_pb2.Dataset(name=f"datasets/{name}").SerializeToString()))
    s.insert_job(training_pb2.TrainingJob(name="trainingJobs/j1", dataset="datasets/train", test_dataset="datasets/test",
                                          network=network_pb2.NetworkSpec()))
    s.close()
    old = sqlite3.connect(path)
    old.execute("ALTER TABLE jobs DROP COLUMN test_dataset_id")  # as an older version left it
    old.commit()
    old.close()
    s = store_mod.Store(path)
    try:
        with pytest.raises(errors.FailedPrecondition, match="unfinished job 'trainingJobs/j1' as its test set"):
            s.delete_dataset("test")
        with pytest.raises(errors.FailedPrecondition, match="unfinished job 'trainingJobs/j1'$"):
            s.delete_dataset("train")
    finally:
        s.close()


@pytest.mark.parametrize("deleted", ["train", "test"])
def test_a_job_whose_dataset_was_deleted_after_validation_is_refused_not_queued(tmp_path, deleted):
    """CreateTrainingJob validates the dataset, then inserts the job; a DeleteDataset that commits
    in between (no unfinished job used the dataset yet) must not leave a queued job without its
    data: the insert looks again in its own transaction and refuses, naming the field."""
    from gradwire.v1 import network_pb2
    from gradwire_server import errors
    from gradwire_server import store as store_mod

    s = store_mod.Store(tmp_path / "gradwire.db")
    try:
        for name in ("train", "test"):
            with s._tx() as db:
                db.execute("INSERT INTO datasets (id, proto, features_dtype, labels_dtype, labels_shape) VALUES (?, ?, 0, 0, '')",
                           (name, datasets_pb2.Dataset(name=f"datasets/{name}").SerializeToString()))
        s.delete_dataset(deleted)  # after the request was validated, before its job is inserted
        job = training_pb2.TrainingJob(name="trainingJobs/j1", dataset="datasets/train", test_dataset="datasets/test",
                                       network=network_pb2.NetworkSpec())
        field = "dataset" if deleted == "train" else "test_dataset"
        with pytest.raises(errors.NotFound) as err:
            s.insert_job(job)
        assert err.value.message == f"{field}: dataset 'datasets/{deleted}' not found: it was deleted"
        assert s._query("SELECT COUNT(*) FROM jobs")[0][0] == 0
    finally:
        s.close()


def test_cancels_racing_the_end_of_jobs_leave_every_job_whole(tmp_path):
    """Short jobs cancelled at every moment of their lives, from just started to just finished: a
    cancel is either refused as too late (FAILED_PRECONDITION: the job SUCCEEDED, and its model
    predicts) or accepted, and then the job ends CANCELLED, even when the cancel came while its
    model was exported: no model registered, no file of it or of its checkpoint left, none
    left RUNNING or CANCELLING. (An accepted cancel used to end SUCCEEDED when it came after the
    job's last check for one.)"""
    from conftest import start, wait_for

    running, pool = start(tmp_path / "data")
    try:
        X, y = iris(60)
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            jobs, models = training_pb2_grpc.TrainingJobServiceStub(ch), models_pb2_grpc.ModelServiceStub(ch)
            names, answers = [], {}

            def create() -> str:
                job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
                    inline_dataset=inline(X, y), network=mlp(4, 3), training=config(epochs=3)), timeout=10)
                wait_for(lambda: state(job.name) != State.QUEUED, timeout=30, interval=0.002)
                return job.name

            def state(name: str) -> int:
                return jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=name), timeout=10).state

            for _ in range(2):  # how long a job runs here, now (a loaded machine: longer), the worker warm
                first = create()
                started = time.perf_counter()
                wait_for(lambda first=first: state(first) == State.SUCCEEDED, timeout=30, interval=0.002)
                runs = time.perf_counter() - started
            for k in range(16):  # one at a time, each cancelled at k/12 of a job's run after it started
                name = create()
                names.append(name)
                time.sleep(runs * k / 12)
                try:
                    answers[name] = jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=name), timeout=10).state
                except grpc.RpcError as err:
                    answers[name] = err.code()
            finished = {State.SUCCEEDED, State.CANCELLED, State.FAILED}
            ends = {n: wait_for(lambda n=n: (j := jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=n), timeout=10)).state
                                in finished and j, timeout=60) for n in names}
            seen = collections.Counter()
            for name, job in ends.items():
                answer = answers[name]
                seen[(State.Name(job.state), answer.name if isinstance(answer, grpc.StatusCode) else State.Name(answer))] += 1
                assert job.state in (State.SUCCEEDED, State.CANCELLED), (name, job.state, job.error)
                checkpoint = tmp_path / "data" / "checkpoints" / name.split("/", 1)[1]
                assert not checkpoint.exists(), f"{name} left its checkpoint"
                if answer == grpc.StatusCode.FAILED_PRECONDITION:
                    assert job.state == State.SUCCEEDED  # refused only once it had finished
                else:
                    assert answer in (State.CANCELLING, State.CANCELLED) and job.state == State.CANCELLED, (answer, job.state)
                if job.state == State.SUCCEEDED:
                    got = models.Predict(models_pb2.PredictRequest(name=job.model, features=raw_tensor(X[:3])), timeout=10)
                    assert len(got.predicted_classes) == 3
                else:
                    assert not job.model
            warm_models = {m.name.split("/", 1)[1] for m in models.ListModels(models_pb2.ListModelsRequest(), timeout=10).models} - {
                j.model.split("/", 1)[1] for j in ends.values() if j.model}
            print(f"cancel race: a job runs {runs * 1e3:.0f} ms; {dict(seen)}")
            kept = {p.name for p in (tmp_path / "data" / "models").iterdir()} - warm_models
            assert kept == {j.model.split("/", 1)[1] for j in ends.values() if j.state == State.SUCCEEDED}
            assert seen[("CANCELLED", "CANCELLING")] >= 1, seen
    finally:
        pool.stop(timeout=5)
        running.stop(grace=1)


@pytest.mark.parametrize("damage", ["not a database", "a damaged table page"])
def test_a_damaged_database_stops_start_up_and_removes_nothing(tmp_path, damage):
    """Start-up recovery removes the models and datasets the database does not list: on a database
    that lost rows it would delete them. A database SQLite cannot open, or whose quick check finds
    damage, stops `gradwire serve` with a message saying what to do, and every file stays (it was
    a traceback, or a server that started and recovered on it)."""
    import sqlite3

    from gradwire_server.store import Store

    data_dir = tmp_path / "data"
    store = Store(data_dir / "gradwire.db")
    store.close()
    db = sqlite3.connect(data_dir / "gradwire.db", isolation_level=None)  # a table spanning pages, to damage one
    db.execute("CREATE TABLE filler (x TEXT)")
    db.executemany("INSERT INTO filler VALUES (?)", [("x" * 200,) for _ in range(200)])
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'filler'").fetchone()[0]
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
    db.close()
    model = data_dir / "models" / "0123456789abcdef" / "model.onnx"  # listed nowhere: recovery would remove it
    model.parent.mkdir(parents=True)
    model.write_bytes(b"onnx")
    with open(data_dir / "gradwire.db", "r+b") as f:
        if damage == "not a database":
            f.write(b"garbage" * 10)
        else:  # the table's root page: its type byte (SQLite still opens the file)
            f.seek((root - 1) * 4096)
            f.write(b"\x00")
    run = subprocess.run([GRADWIRE, "serve"], env=serve_env(data_dir, free_port()), capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert f"gradwire serve: the database '{data_dir / 'gradwire.db'}' is damaged (SQLite: " in run.stderr
    assert "The server does not start, and removes nothing: restore the database from a backup" in run.stderr
    assert "Traceback" not in run.stderr
    assert model.read_bytes() == b"onnx"


def test_a_worker_that_dies_at_once_is_replaced_after_a_growing_delay_and_a_failed_requeue_is_retried(tmp_path, monkeypatch):
    """A worker that dies right after its start (as every start does on a full disk) is replaced
    after 1, 2, 4 ... s (up to 30), not at once in a loop; one that lived is replaced at once. A
    requeue of the dead worker's job that fails (the database's disk full) is tried again at the
    monitor's next look, and the worker is replaced only after it, where the exception used to end
    the monitor thread and with it every later restart. Real processes, exiting at once."""
    import itertools
    import multiprocessing
    import sqlite3

    from gradwire_server import server as srv
    from gradwire_server.config import Settings

    pool = srv.WorkerPool(Settings(data_dir=tmp_path / "data", workers=1))
    spawned: list[float] = []

    def spawn(slot: int) -> None:  # a real child that exits at once, named as the pool names its workers
        pool._generation += 1
        name = f"host-1-w{slot}.{pool._generation}"
        proc = multiprocessing.get_context("spawn").Process(target=sys.exit, args=(3,))
        proc.start()
        proc.join()
        pool._procs[name], pool._started[name] = proc, time.monotonic()
        spawned.append(time.monotonic())

    monkeypatch.setattr(pool, "_spawn", spawn)
    spawn(0)
    fails = [2]  # the first two requeues fail as on a full disk

    def requeue(name, attempts, how):
        if fails[0]:
            fails[0] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return []

    monkeypatch.setattr(pool._store, "requeue_orphan", requeue)
    pool._monitor.start()
    try:
        wait_for_spawns = time.monotonic() + 20
        while len(spawned) < 4 and time.monotonic() < wait_for_spawns:
            time.sleep(0.05)
    finally:
        pool._stopping.set()
        pool._monitor.join(5)
    assert len(spawned) >= 4, spawned
    gaps = [b - a for a, b in itertools.pairwise(spawned)]
    assert 1.0 <= gaps[0] < 2.5 and 2.0 <= gaps[1] < 3.5 and 4.0 <= gaps[2] < 5.5, gaps  # 1, 2, 4 s (+ the 0.5 s looks)
    assert fails == [0] and pool._monitor.is_alive() is False  # both failed requeues retried; stopped as asked
    # One that lived past RESTART_QUICK_S is replaced at once, and the delay starts over.
    name = next(iter(pool._procs))
    pool._started[name] -= srv.RESTART_QUICK_S
    before = len(spawned)
    pool._restart(name, pool._procs[name])
    assert len(spawned) == before + 1 and pool._delay[0] == 0.0
    pool._store.close()


def test_a_worker_whose_claim_fails_waits_longer_each_time_and_goes_on(tmp_path, monkeypatch, caplog):
    """The store failing to claim a job (a full disk, a locked database) used to end the worker
    process; it now waits 1, 2, 4 ... s (up to 30, or until the store changes) and claims again."""
    import logging
    import sqlite3

    from gradwire_server import worker as worker_module
    from gradwire_server.config import Settings

    monkeypatch.setattr(worker_module, "freeze_startup_objects", lambda: None)  # not in the test's own process
    w = worker_module.Worker(Settings(data_dir=tmp_path / "data", device="cpu"), "host-1-w0.1", os.getppid())
    failures, waits = [3], []

    def claim(name, device):
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        w.stopping.set()
        return None

    monkeypatch.setattr(w.store, "claim_next_job", claim)
    monkeypatch.setattr(w.store, "wait_for_change", lambda stamp, timeout, stopped=None: waits.append(timeout))
    with caplog.at_level(logging.WARNING, logger="gradwire.worker"):
        w.run()
    assert waits[:3] == [1.0, 2.0, 4.0], waits
    assert "could not claim a job (database or disk is full): trying again in 1 s; the disk is full" in caplog.text
    w.store.close()
