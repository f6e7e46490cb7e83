"""The serving cache: names answered from memory, and never stale. Two real `Store`s on one
SQLite file stand for the RPC process and a worker process (which publishes new versions)."""

from __future__ import annotations

import pathlib

import pytest

from gradwire.v1 import datasets_pb2, models_pb2
from gradwire_server import errors
from gradwire_server.inference import SessionCache
from gradwire_server.serving import ServingCache
from gradwire_server.store import Store


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

    # This process moves the alias (its own commits are not in PRAGMA data_version).
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
