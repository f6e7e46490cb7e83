"""Shared fixtures: a real gradwire server on a real port, with a real worker process."""

from __future__ import annotations

import pathlib
import time

import grpc
import pytest

from gradwire_server.config import Settings
from gradwire_server.server import WorkerPool, create_server


def start(data_dir: pathlib.Path, **overrides):
    settings = Settings(host="127.0.0.1", port=0, data_dir=data_dir, **{"poll_interval_s": 0.05, "grace_period_s": 1.0, **overrides})
    running = create_server(settings)
    pool = WorkerPool(settings)
    pool.start()
    return running, pool


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server + worker for the session; yields the Running server (`.port`, `.state`)."""
    running, pool = start(tmp_path_factory.mktemp("gradwire-data"))
    yield running
    pool.stop(timeout=5)
    running.stop(grace=1)


@pytest.fixture(scope="session")
def target(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture()
def channel(target):
    with grpc.insecure_channel(target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05):
    """Poll until predicate() is truthy; return its value or fail with the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    assert value, f"condition not met within {timeout}s"
    return value


def train_iris(target: str, network, epochs: int = 2) -> str:
    """Trains ``network`` on inline iris through the server at ``target``; the model's name."""
    from gradwire.v1 import training_pb2, training_pb2_grpc
    from helpers import State, config, inline, iris

    X, y = iris()
    with grpc.insecure_channel(target) as ch:
        jobs = training_pb2_grpc.TrainingJobServiceStub(ch)
        job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(
            inline_dataset=inline(X, y), network=network, training=config(epochs=epochs)))
        done = wait_for(lambda: (j := jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=job.name))).state
                        in (State.SUCCEEDED, State.FAILED) and j)
        assert done.state == State.SUCCEEDED, done.error
        return done.model
