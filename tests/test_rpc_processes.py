"""GRADWIRE_RPC_PROCESSES: several RPC processes of one real `gradwire serve` share its port.

The kernel hands each new connection to one of them (SO_REUSEPORT), so every process must see
the same store: a model published, an alias moved or a job trained through one connection is
seen through every other. Which process holds which connection is read from /proc: the sockets
each process has open on the port."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest

from gradwire.kserve import grpc_service_pb2 as kserve_pb
from gradwire.kserve import grpc_service_pb2_grpc
from gradwire.v1 import datasets_pb2_grpc, models_pb2, models_pb2_grpc, training_pb2, training_pb2_grpc
from helpers import ShmObject, State, config, inline, iris, mlp, raw_tensor, shm_request, upload_requests
from test_durability import GRADWIRE, ServeProcess, free_port, pytestmark, serve_env  # noqa: F401  (skip without the command)

PROCESSES = 3
CONNECTIONS = 40  # P(some process gets none of them) = 3 * (2/3)**40, about 3e-7

if not pathlib.Path("/proc/net/tcp").exists():
    pytestmark = pytest.mark.skip(reason="reads sockets from /proc (Linux)")


def _sockets_on_port(port: int) -> dict[str, str]:
    """inode -> TCP state ('0A' listening, '01' established) of every local socket on ``port``."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                found[fields[9]] = fields[3]
    return found


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (parents read from /proc/*/stat)."""
    parent_of = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            parent_of[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [child for child, parent in parent_of.items() if parent == p]
    return out


def serving_processes(root: int, port: int) -> dict[int, int]:
    """pid -> connections it holds on ``port``, for each process of the server that listens on it."""
    sockets = _sockets_on_port(port)
    held: dict[int, int] = {}
    for pid in _descendants(root):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        states = [sockets.get(link[8:-1]) for link in links if link.startswith("socket:[")]
        if "0A" in states:
            held[pid] = states.count("01")
    return held


def _wait(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return value


def test_rpc_processes_share_the_port_and_the_store(tmp_path):
    port = free_port()
    server = ServeProcess(tmp_path / "data", port, device="cpu", GRADWIRE_RPC_PROCESSES=str(PROCESSES))
    channels = []
    try:
        # /proc/net/tcp is read in pieces and can miss a socket while the table changes (the health
        # check's connection closing): a second look, not a second chance for the server.
        _wait(lambda: len(serving_processes(server.proc.pid, port)) == PROCESSES, 5)
        X, y = iris()
        jobs = server.jobs
        versions = []
        for epochs in (1, 3):  # two versions of one registered model, with different weights
            job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
                inline_dataset=inline(X, y), network=mlp(8, 3), training=config(epochs=epochs),
                registered_model="registeredModels/iris"), timeout=10)
            done = _wait(lambda job=job: (j := jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name),
                                                                   timeout=10)).state == State.SUCCEEDED and j, 60)
            versions.append(done.model)
        expected = [server.models.Predict(models_pb2.PredictRequest(name=m, features=raw_tensor(X)), timeout=10).probabilities.raw_data
                    for m in versions]
        assert expected[0] != expected[1]

        # Separate connections (a channel of its own subchannel pool each), spread by the kernel.
        channels = [grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(CONNECTIONS)]
        stubs = [models_pb2_grpc.ModelServiceStub(ch) for ch in channels]

        def by_alias() -> set[bytes]:
            return {s.Predict(models_pb2.PredictRequest(name="registeredModels/iris@prod", features=raw_tensor(X)),
                              timeout=10).probabilities.raw_data for s in stubs}

        server.models.SetModelAlias(models_pb2.SetModelAliasRequest(name="registeredModels/iris", alias="prod", version=1), timeout=10)
        assert by_alias() == {expected[0]}
        held = _wait(lambda: h if len(h := serving_processes(server.proc.pid, port)) == PROCESSES and all(h.values())
                     else None, 5)  # every process holds connections (read again as above)

        # Moved through one connection: every process serves the new version at its next call,
        # and has loaded it before that call: each follows the alias it served (serving.py).
        server.models.SetModelAlias(models_pb2.SetModelAliasRequest(name="registeredModels/iris", alias="prod", version=2), timeout=10)
        v2 = versions[1].split("/")[1]
        _wait(lambda: pathlib.Path(server.log.name).read_text().count(f"now means model {v2}") >= PROCESSES, 30)
        assert by_alias() == {expected[1]}

        # Triton's system shared memory regions, registered through one connection, serve every
        # process; unregistered or registered anew, every process sees it at its next call.
        kserve = [grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch) for ch in channels]
        rows = np.ascontiguousarray(X[:4])
        obj = ShmObject(4096)
        try:
            obj.write(rows.tobytes(), 0)
            kserve[0].SystemSharedMemoryRegister(kserve_pb.SystemSharedMemoryRegisterRequest(name="in", key=obj.key, byte_size=64))
            kserve[0].SystemSharedMemoryRegister(kserve_pb.SystemSharedMemoryRegisterRequest(name="out", key=obj.key, offset=64,
                                                                                               byte_size=48))
            request = shm_request(4, in_region="in", out_region="out")
            request.model_name, request.model_version = "iris", "prod"
            expected_rows = np.frombuffer(expected[1], "<f4").reshape(len(X), 3)[:4].tobytes()
            for stub in kserve:
                obj.write(b"\0" * 48, 64)
                stub.ModelInfer(request, timeout=10)
                assert obj.read(48, 64) == expected_rows
            kserve[-1].SystemSharedMemoryUnregister(kserve_pb.SystemSharedMemoryUnregisterRequest(name="in"))
            for stub in kserve:
                with pytest.raises(grpc.RpcError) as err:
                    stub.ModelInfer(request, timeout=10)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
            obj.write(rows[::-1].tobytes(), 128)  # the same name, now on other bytes
            kserve[1].SystemSharedMemoryRegister(kserve_pb.SystemSharedMemoryRegisterRequest(name="in", key=obj.key, offset=128,
                                                                                               byte_size=64))
            reversed_rows = np.frombuffer(expected_rows, "<f4").reshape(4, 3)[::-1].tobytes()
            for stub in kserve:
                stub.ModelInfer(request, timeout=10)
                assert obj.read(48, 64) == reversed_rows
            assert {len(s.SystemSharedMemoryStatus(kserve_pb.SystemSharedMemoryStatusRequest(), timeout=10).regions)
                    for s in kserve} == {2}
        finally:
            obj.remove()

        # A job created through one connection is watched to its end through each process.
        job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
            inline_dataset=inline(X, y), network=mlp(4, 3), training=config(epochs=3)), timeout=10)
        for ch in channels[:6]:
            events = list(training_pb2_grpc.TrainingJobServiceStub(ch).WatchTrainingJob(
                training_pb2.WatchTrainingJobRequest(name=job.name), timeout=60))
            assert events[-1].state == State.SUCCEEDED
            assert [e.epoch.epoch for e in events if e.HasField("epoch")] == [1, 2, 3]

        # An RPC process that dies is replaced; the port keeps its PROCESSES listeners.
        victim = next(pid for pid in held if pid != server.proc.pid)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(serving_processes(server.proc.pid, port)) == PROCESSES
              and victim not in serving_processes(server.proc.pid, port), 60)
        fresh = grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
        channels.append(fresh)
        got = models_pb2_grpc.ModelServiceStub(fresh).Predict(
            models_pb2.PredictRequest(name="registeredModels/iris@prod", features=raw_tensor(X)), timeout=10)
        assert got.probabilities.raw_data == expected[1]
    finally:
        for ch in channels:
            ch.close()
        pids = _descendants(server.proc.pid)
        code = server.stop(signal.SIGTERM)
    assert code == 0
    # SIGTERM stops every process of the server, not only the main one
    _wait(lambda: not [p for p in pids if pathlib.Path(f"/proc/{p}").exists()
                       and "zombie" not in pathlib.Path(f"/proc/{p}/status").read_text()], 30)


def test_the_rpc_processes_stop_with_a_killed_main_process(tmp_path):
    port = free_port()
    server = ServeProcess(tmp_path / "data", port, device="cpu", GRADWIRE_RPC_PROCESSES="2")
    others = [p for p in serving_processes(server.proc.pid, port) if p != server.proc.pid]
    assert len(others) == 1
    server.stop(signal.SIGKILL)
    gone = lambda: (not pathlib.Path(f"/proc/{others[0]}").exists()  # noqa: E731
                    or "zombie" in pathlib.Path(f"/proc/{others[0]}/status").read_text())
    try:
        _wait(gone, 30)
    except AssertionError:  # say where it is stuck: its state and its threads' names and wait channels
        proc = pathlib.Path(f"/proc/{others[0]}")
        threads = {t.name: ((t / "comm").read_text().strip(), (t / "wchan").read_text()) for t in proc.glob("task/*")}
        state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State"))
        raise AssertionError(f"RPC process {others[0]} still alive 30 s after its main process was killed: {state}; "
                             f"threads {threads}") from None
    assert not _sockets_on_port(port) or "0A" not in _sockets_on_port(port).values()


def test_several_rpc_processes_need_a_fixed_port():
    from gradwire_server.config import parse_settings

    with pytest.raises(ValueError, match=r"rpc_processes \(GRADWIRE_RPC_PROCESSES\): 2 processes share one port.*GRADWIRE_PORT"):
        parse_settings([], {"GRADWIRE_RPC_PROCESSES": "2", "GRADWIRE_PORT": "0"})
    with pytest.raises(ValueError, match=r"rpc_processes \(GRADWIRE_RPC_PROCESSES\): got 0"):
        parse_settings([], {"GRADWIRE_RPC_PROCESSES": "0"})


def test_one_rpc_process_holds_its_port_alone(tmp_path):
    """Without GRADWIRE_RPC_PROCESSES, a second server on a taken port fails at once rather than
    silently sharing it (gRPC's default SO_REUSEPORT would let it)."""
    port = free_port()
    first = ServeProcess(tmp_path / "one", port, device="cpu")
    try:
        second = subprocess.run([GRADWIRE, "serve"], env=serve_env(tmp_path / "two", port, "cpu"), capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 1
        assert f"gradwire serve: could not listen on 127.0.0.1:{port} (GRADWIRE_HOST, GRADWIRE_PORT): the port is in use" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert first.stop(signal.SIGTERM) == 0


def _processes_of(data_dir: pathlib.Path) -> list[int]:
    """Live processes whose environment names ``data_dir`` (a server's, orphaned or not)."""
    marker = f"GRADWIRE_DATA_DIR={data_dir}".encode()
    found = []
    for entry in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0") and "zombie" not in (entry / "status").read_text():
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_main_process_stopped_while_the_others_start_leaves_no_orphan(tmp_path, sig):
    """Killed (or terminated, before its handlers are set) while its RPC processes are still
    starting: they must not outlive it. (One once hung forever signalling readiness through a
    lock the dead main process held.)"""
    port, data_dir = free_port(), tmp_path / "data"
    main = subprocess.Popen([GRADWIRE, "serve"], env=serve_env(data_dir, port, "cpu", GRADWIRE_RPC_PROCESSES="3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: len(_processes_of(data_dir)) > 1, 60)  # an RPC process exists, and is starting
        main.send_signal(sig)
        main.wait(timeout=30)
        _wait(lambda: not _processes_of(data_dir), 30)
        assert "0A" not in _sockets_on_port(port).values()
    finally:
        for pid in _processes_of(data_dir):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_rpc_process_leaves_no_unfinished_upload(tmp_path):
    """An RPC process killed while it receives an upload: the client's call fails (it does not
    hang), and the upload's scratch files, which hold its share of the data quota, are removed
    when the process is replaced, not at the next start of the whole server."""
    port, data_dir = free_port(), tmp_path / "data"
    server = ServeProcess(data_dir, port, device="cpu", GRADWIRE_RPC_PROCESSES=str(PROCESSES))
    X, y = np.random.default_rng(0).random((4000, 10), dtype=np.float32), np.arange(4000) % 2
    go_on, uploads = threading.Event(), []
    scratch = data_dir / "tmp"

    def uploads_in_progress() -> set[pathlib.Path]:  # tmp/ also holds the processes' statistics files
        return {d for d in scratch.glob("*") if d.is_dir()} if scratch.exists() else set()

    def upload(channel, outcome: list):
        def held_open():
            requests = upload_requests(X, y, chunk=16 * 1024)
            yield next(requests)
            yield next(requests)
            go_on.wait(60)
            yield from requests

        try:
            outcome.append(datasets_pb2_grpc.DatasetServiceStub(channel).UploadDataset(held_open(), timeout=60))
        except grpc.RpcError as exc:
            outcome.append(exc)

    try:
        victim = None
        for _ in range(30):  # a new connection each time, until one lands on an RPC process other than the main one
            before = uploads_in_progress()
            channel = grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
            outcome: list = []
            thread = threading.Thread(target=upload, args=(channel, outcome))
            thread.start()
            uploads.append((channel, thread, outcome))
            (new,) = _wait(lambda before=before: uploads_in_progress() - before, 10)
            if int(new.name.split("-")[0]) != server.proc.pid:
                victim = int(new.name.split("-")[0])
                break
        assert victim in serving_processes(server.proc.pid, port)
        os.kill(victim, signal.SIGKILL)
        thread.join(30)
        assert not thread.is_alive() and isinstance(outcome[0], grpc.RpcError)
        assert outcome[0].code() == grpc.StatusCode.UNAVAILABLE, outcome[0]
        _wait(lambda: not new.exists(), 30)
        _wait(lambda: len(serving_processes(server.proc.pid, port)) == PROCESSES, 60)
        # the uploads held open on the other processes are untouched, and finish
        go_on.set()
        for channel, other, result in uploads[:-1]:
            other.join(60)
            assert result[0].example_count == len(X), result[0]
        assert uploads_in_progress() == set()
    finally:
        go_on.set()
        for channel, other, _ in uploads:
            other.join(60)
            channel.close()
        assert server.stop(signal.SIGTERM) == 0


def test_one_client_with_several_connections_reaches_several_processes(tmp_path):
    """gw.Client(connections=N): predictions go over N connections in turn, which the kernel
    spreads over the RPC processes; with one connection they all reach one process. The
    statistics extension, asked of any process, counts them all."""
    import gradwire as gw

    port = free_port()
    server = ServeProcess(tmp_path / "data", port, device="cpu", GRADWIRE_RPC_PROCESSES=str(PROCESSES))
    try:
        X, y = iris()
        with gw.Client(server.target, timeout=30) as one:
            model = one.train([gw.Dense(4), gw.ReLU(), gw.Dense(3)], (X, y), optimizer=gw.Adam(1e-2), batch_size=32, epochs=1, seed=0).wait(timeout=60)
            expected = one.predict(model, X[:5])
            before = serving_processes(server.proc.pid, port)
            with gw.Client(server.target, timeout=30, connections=12) as pooled:
                for _ in range(24):  # channels connect at their first call: 12 connections only if all are used
                    np.testing.assert_array_equal(pooled.predict(model, X[:5]), expected)
                during = serving_processes(server.proc.pid, port)
                gained = [pid for pid in during if during[pid] > before.get(pid, 0)]
                # P(all 12 on one of 3 processes) = 3 * (1/3)**12, about 6e-6
                assert len(gained) >= 2, (before, during)
                assert sum(during.values()) - sum(before.values()) == 12
            # Statistics cover the whole server: asked through any one connection, they count the
            # 25 predictions that several processes served (each writes its counts every 0.5 s).
            deadline = time.monotonic() + 15
            while (s := one.statistics(model)[0]).requests != 25:
                assert time.monotonic() < deadline, s
                time.sleep(0.2)
            assert (s.rows, s.executions) == (125, 25) and s.batches == {5: 25}
            (listed,) = [m for m in one.statistics() if m.name == model.name.split("/", 1)[1]]
            assert listed.requests == 25

        # A killed RPC process that served some of them: its replacement goes on from the counts
        # it last wrote (without that, it wrote its own empty ones over them within 0.5 s).
        victim = next(pid for pid in gained if pid != server.proc.pid)  # of two or more, one is not the main process
        time.sleep(1.0)  # every process has written its counts (what one serves in its last 0.5 s dies with it)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(serving_processes(server.proc.pid, port)) == PROCESSES and victim not in serving_processes(server.proc.pid, port), 60)
        time.sleep(1.5)  # three of the new process's flushes
        for _ in range(6):  # fresh connections, some to the new process
            with gw.Client(server.target, timeout=30, connections=1) as fresh:
                (s,) = fresh.statistics(model)
                assert (s.requests, s.rows, s.executions) == (25, 125, 25), s
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_connections_must_be_an_int_from_1_to_256():
    import gradwire as gw

    for bad, exc, text in ((0, ValueError, "connections must be >= 1, got 0"), (-1, ValueError, "connections must be >= 1, got -1"),
                           (257, ValueError, "connections must be <= 256, got 257"),  # 2**31 of them hung the client
                           (1.5, TypeError, "connections must be an int, got 1.5"), (True, TypeError, "connections must be an int, got True")):
        with pytest.raises(exc) as info:
            gw.Client("localhost:1", connections=bad)
        assert str(info.value) == text


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_text("not a directory"), "it is not a directory"),
    (lambda p: None, None),  # under a file: cannot be made
])
def test_a_data_dir_that_cannot_be_used_stops_the_start_with_a_message(tmp_path, make, why):
    target = tmp_path / "data"
    make(target)
    if why is None:
        (tmp_path / "file").write_text("x")
        target, why = tmp_path / "file" / "data", "Not a directory"
    run = subprocess.run([GRADWIRE, "serve"], env=serve_env(target, free_port(), "cpu"), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"gradwire serve: cannot use the data directory '{target}' (GRADWIRE_DATA_DIR): {why}" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
