"""SIGTERM is graceful (real `gradwire serve`), and cancel stops a running job at the next step."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import wait_for
from gradwire.v1 import datasets_pb2, training_pb2, training_pb2_grpc
from helpers import State, config, inline, iris, mlp, upload_requests
from test_durability import ServeProcess, free_port, pytestmark, watch_to_end  # noqa: F401  (skip without the command)


def slow_upload(X, y, delay: float):
    for i, request in enumerate(upload_requests(X, y, chunk=256, names=["a", "b", "c"])):
        if i:
            time.sleep(delay)
        yield request


def test_sigterm_drains_calls_and_the_job_resumes(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    X, y = iris()
    first = ServeProcess(data_dir, port)
    job = first.jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
        inline_dataset=inline(X, y), network=mlp(64, 3), training=config(epochs=8, batch_size=1)), timeout=10)
    for event in first.jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=120):
        if event.HasField("epoch"):
            break

    health_events: list[tuple[float, int]] = []
    watch = health_pb2_grpc.HealthStub(first.channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)

    def follow_health():
        try:
            for response in watch:
                health_events.append((time.monotonic(), response.status))
        except grpc.RpcError:
            pass

    threading.Thread(target=follow_health, daemon=True).start()
    wait_for(lambda: health_events, timeout=10)
    upload_result: list = []
    # ~19 chunks, 0.05 s apart: still streaming when SIGTERM arrives, done well inside the 2 s grace
    uploader = threading.Thread(target=lambda: upload_result.append(first.datasets.UploadDataset(slow_upload(X, y, 0.05), timeout=30)))
    uploader.start()
    time.sleep(0.3)
    sent = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: any(s == health_pb2.HealthCheckResponse.NOT_SERVING for _, s in health_events), timeout=5, interval=0.01)
    went_down = next(t for t, s in health_events if s == health_pb2.HealthCheckResponse.NOT_SERVING)
    assert went_down - sent < 0.5, went_down - sent
    uploader.join(30)
    assert upload_result and upload_result[0].example_count == 150  # the in-flight call finished
    assert first.proc.wait(timeout=30) == 0
    first.log.close()
    first.channel.close()

    second = ServeProcess(data_dir, port)
    try:
        assert second.datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=upload_result[0].name), timeout=10) == upload_result[0]
        events = watch_to_end(second.jobs, job.name)
        assert events[-1].state == State.SUCCEEDED
        resumed = second.jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name), timeout=10)
        assert [m.epoch for m in resumed.history] == list(range(1, 9))
    finally:
        assert second.stop(signal.SIGTERM) == 0


def test_cancel_stops_a_running_job_at_the_next_step(channel):
    jobs = training_pb2_grpc.TrainingJobServiceStub(channel)
    rng = np.random.default_rng(0)
    X = rng.random((1500, 4), dtype=np.float32)  # 1500 steps per epoch: an epoch lasts far longer than a step
    y = (X[:, 0] > 0.5).astype(np.int64)
    job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
        inline_dataset=inline(X, y, names=("lo", "hi")), network=mlp(16, 2), training=config(epochs=500, batch_size=1)), timeout=10)
    get = lambda: jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name), timeout=5)  # noqa: E731
    for event in jobs.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(name=job.name), timeout=60):
        if event.HasField("epoch"):
            break
    time.sleep(0.2)  # inside the second epoch
    asked = time.monotonic()
    jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=job.name), timeout=5)
    final = wait_for(lambda: (j := get()).state == State.CANCELLED and j, timeout=10, interval=0.1)
    latency = time.monotonic() - asked
    assert latency < 0.5, latency  # the worker looks before every step (plus one 0.1 s poll here)
    assert len(final.history) == 1
    # the worker process is free again at once: the next job runs to the end
    Xs, ys = iris(60)
    nxt = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
        inline_dataset=inline(Xs, ys), network=mlp(4, 3), training=config(epochs=1)), timeout=10)
    assert watch_to_end(jobs, nxt.name)[-1].state == State.SUCCEEDED


STOP_SIGNALS_SCRIPT = """
import sys, time
from gradwire_server.server import _StopSignals

stop = _StopSignals()
print("ready", flush=True)
started = time.monotonic()
print(stop.wait(0.0005, lambda: True), round(time.monotonic() - started, 1), flush=True)
sys.stdin.readline()  # the signals go on landing, in the handler too, until the test says done
"""

PELT_SCRIPT = """
import os, signal, sys
for _ in range(20000):
    try:
        os.kill(int(sys.argv[1]), signal.SIGTERM)
    except ProcessLookupError:  # it stopped meanwhile
        break
"""


def test_a_stop_signal_is_waited_for_without_a_lock():
    """The main and RPC processes wait for SIGTERM / SIGINT through Python's wakeup fd, with
    handlers that only note the signal. Their handlers used to set a threading.Event: a second
    signal landing inside the first handler, while it held the Event's lock, ran the handler
    again in the same thread, which then waited for that lock for ever (an RPC process hung so
    after its main process was killed). Here another process sends 20,000 SIGTERMs as fast as it
    can: the wait ends at the first, and the process stays responsive through all of them."""
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-c", STOP_SIGNALS_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as waiter:
        try:
            assert waiter.stdout.readline().strip() == "ready"
            subprocess.run([sys.executable, "-c", PELT_SCRIPT, str(waiter.pid)], timeout=60, check=True)
            waiter.stdin.write("done\n")
            waiter.stdin.flush()
            assert waiter.wait(timeout=20) == 0, waiter.stderr.read()
            got, seconds = waiter.stdout.readline().split()
            assert int(got) == signal.SIGTERM and float(seconds) < 20, (got, seconds)
        finally:
            waiter.kill()


def test_the_rpc_processes_wait_ends_when_the_main_process_is_gone():
    from gradwire_server.server import _StopSignals

    stop = _StopSignals()
    try:
        assert stop.wait(0.01, lambda: False) is None  # keep_going said no: no signal to report
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_worker_pelted_with_sigterms_stops(tmp_path):
    """A worker's SIGTERM handler sets a lock-free flag (it set a threading.Event, which its idle
    loop waited on: the same deadlock). 20,000 SIGTERMs: the worker stops within seconds, and the
    server, which restarts it, still stops cleanly."""
    import pathlib
    import subprocess
    import sys

    port = free_port()
    server = ServeProcess(tmp_path / "data", port, device="cpu")
    wait_for(lambda: "ready on" in pathlib.Path(server.log.name).read_text(), timeout=60)

    from test_rpc_processes import _descendants

    (worker,) = [pid for pid in _descendants(server.proc.pid)
                 if pid != server.proc.pid and b"spawn_main" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()]
    try:
        subprocess.run([sys.executable, "-c", PELT_SCRIPT, str(worker)], timeout=60, check=True)
        wait_for(lambda: not pathlib.Path(f"/proc/{worker}").exists()
                 or "zombie" in pathlib.Path(f"/proc/{worker}/status").read_text(), timeout=15)
    except BaseException:
        server.stop(signal.SIGKILL)  # and the workers with it (their parent-death signal)
        raise
    assert server.stop(signal.SIGTERM) == 0
