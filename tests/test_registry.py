"""Registered models: jobs publish numbered versions, `latest` follows the newest, movable
aliases; predict by alias through the SDK; bad names and aliases; and a store written
before the registry existed keeps its data."""

from __future__ import annotations

import pathlib
import sqlite3
import threading
import time

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import gradwire as gw
from conftest import start
from gradwire.kserve import grpc_service_pb2 as kpb
from gradwire.kserve import grpc_service_pb2_grpc
from gradwire.v1 import models_pb2
from gradwire_server import errors
from gradwire_server import store as store_mod
from helpers import iris


@pytest.fixture(scope="module")
def client(target):
    with gw.Client(target) as c:
        yield c


def _train(client, seed, **kw):
    X, y = iris()
    return client.train([gw.Dense(8), gw.ReLU(), gw.Dense(3)], (X, y), optimizer=gw.Adam(0.05), epochs=3,
                        batch_size=32, seed=seed, **kw).wait()


def test_versions_latest_and_aliases(client):
    X, _ = iris()
    v1 = _train(client, 0, registered_model="reg-iris", aliases=["production"])
    assert (v1.registered_model, v1.version, v1.aliases) == ("registeredModels/reg-iris", 1, ["latest", "production"])
    v2 = _train(client, 1, registered_model="registeredModels/reg-iris", precision="bf16")  # bf16 trains on the CPU too
    assert v2.version == 2 and v2.aliases == ["latest"]
    assert client.get_model(v1.name).aliases == ["production"]  # latest moved, production stayed

    reg = client.get_registered_model("reg-iris")
    assert (reg.latest_version, reg.version_count, reg.aliases) == (2, 2, {"latest": 2, "production": 1})
    assert [m.version for m in reg.versions()] == [2, 1]

    by_prod, by_latest = client.predict("registeredModels/reg-iris@production", X[:4]), client.predict("registeredModels/reg-iris", X[:4])
    np.testing.assert_array_equal(by_prod, client.predict(v1, X[:4]))
    np.testing.assert_array_equal(by_latest, client.predict(v2, X[:4]))
    np.testing.assert_array_equal(client.predict("registeredModels/reg-iris@2", X[:4]), by_latest)

    reg.set_alias("production", 2)  # promote
    assert reg.aliases["production"] == 2
    np.testing.assert_array_equal(reg.predict(X[:4], alias="production"), by_latest)

    # A model trained without a name can be published afterwards.
    loose = _train(client, 2)
    assert loose.version == 0 and loose.registered_model == ""
    v3 = client.publish_model(loose, "reg-iris", aliases=["staging"])
    assert v3.version == 3 and v3.aliases == ["latest", "staging"]
    with pytest.raises(gw.APIError) as err:
        client.publish_model(loose, "other")
    assert err.value.code.name == "ALREADY_EXISTS"

    # Deleting a version an alias points at is refused; after moving the alias it works,
    # and `latest` falls back. Version numbers are never reused.
    with pytest.raises(gw.FailedPreconditionError, match="staging"):
        v3.delete()
    client.delete_alias("reg-iris", "staging")
    v3.delete()
    assert client.get_registered_model("reg-iris").aliases["latest"] == 2
    assert client.publish_model(_train(client, 3), "reg-iris").version == 4
    assert "registeredModels/reg-iris" in [r.name for r in client.list_registered_models()]


@pytest.mark.parametrize(
    "call, field, text",
    [
        (lambda c: c.get_registered_model("no-such"), None, "not found"),
        (lambda c: c.predict("registeredModels/reg-iris@canary", np.zeros((1, 4), np.float32)), None, "canary"),
        (lambda c: c.predict("registeredModels/bad name", np.zeros((1, 4), np.float32)), "name", "bad name"),
        (lambda c: c.set_alias("reg-iris", "latest", 1), "alias", "managed by the server"),
        (lambda c: c.set_alias("reg-iris", "Prod!", 1), "alias", "Prod!"),
        (lambda c: c.set_alias("reg-iris", "prod", 99), "version", "version 99"),
        # past SQLite's integers, or digits that are not ASCII: no such version, not an internal error
        (lambda c: c.predict("registeredModels/reg-iris@99999999999999999999", np.zeros((1, 4), np.float32)), None,
         "version 99999999999999999999 of registered model 'registeredModels/reg-iris' not found"),
        (lambda c: c.get_model("registeredModels/reg-iris@\u00b2"), None, "alias '\u00b2' of registered model"),
        (lambda c: c.delete_alias("reg-iris", "latest"), "alias", "cannot be removed"),
        # an alias belongs to the registered model, not to a version of it: refused, as set_alias refuses it
        (lambda c: c.delete_alias("reg-iris@1", "production"), "name", "without '@1'"),
        (lambda c: c.set_alias("reg-iris@1", "production", 1), "name", "without '@1'"),
    ],
)
def test_bad_registry_requests(client, call, field, text):
    if "reg-iris" not in [r.name.split("/")[1] for r in client.list_registered_models()]:
        _train(client, 0, registered_model="reg-iris")
    with pytest.raises(gw.APIError) as err:
        call(client)
    assert text in str(err.value)
    if field:
        assert err.value.field == field


def test_bad_publish_options_are_refused_before_queueing(client):
    X, y = iris()
    with pytest.raises(gw.InvalidArgumentError) as err:
        client.train([gw.Dense(3)], (X, y), optimizer=gw.SGD(0.1), epochs=1, batch_size=8, registered_model="a@b")
    assert err.value.field == "registered_model"
    with pytest.raises(gw.InvalidArgumentError) as err:
        client.train([gw.Dense(3)], (X, y), optimizer=gw.SGD(0.1), epochs=1, batch_size=8, registered_model="a", aliases=["latest"])
    assert err.value.field == "aliases[0]"


def test_a_store_from_before_the_registry_keeps_its_models(tmp_path):
    path = tmp_path / "gradwire.db"
    old = sqlite3.connect(path)
    old.executescript(store_mod.SCHEMA)  # the schema as it was: no registry tables, user_version 0
    model = models_pb2.Model(name="models/abc123", display_name="old", input_shape=[4], output_size=3)
    old.execute("INSERT INTO models (id, proto) VALUES (?, ?)", ("abc123", model.SerializeToString()))
    old.commit()
    old.close()
    s = store_mod.Store(path)
    try:
        assert s._query("PRAGMA user_version")[0][0] == store_mod.SCHEMA_VERSION
        assert s.get_model("abc123").display_name == "old"
        published = s.publish_model("abc123", "registeredModels/legacy", ["production"])
        assert (published.version, list(published.aliases)) == (1, ["latest", "production"])
        assert s.resolve_model("registeredModels/legacy@production") == "abc123"
    finally:
        s.close()
    s = store_mod.Store(path)  # opening again migrates nothing twice and loses nothing
    try:
        assert s.get_registered_model("registeredModels/legacy").aliases == {"latest": 1, "production": 1}
    finally:
        s.close()


def test_alias_moved_to_another_input_shape_by_someone_else(client, target):
    """The SDK caches an alias's input shape; when another client moves the alias to a version
    with a different input shape, the next predict notices the server's shape error, looks the
    alias up again and answers right."""
    X, y = iris()
    first = _train(client, 0, registered_model="shape-switch", aliases=["production"])
    assert client.predict("registeredModels/shape-switch@production", X[0]).shape == (3,)  # caches (4,)
    wide = np.hstack([X, X[:, :2]])  # 6 features
    with gw.Client(target) as other:
        second = other.train([gw.Dense(8), gw.ReLU(), gw.Dense(3)], (wide, y), optimizer=gw.Adam(0.05), epochs=2,
                             batch_size=32, seed=0, registered_model="shape-switch").wait()
        other.set_alias("shape-switch", "production", second.version)
    single = client.predict("registeredModels/shape-switch@production", wide[0])
    assert single.shape == (3,)
    np.testing.assert_array_equal(single, client.predict(second, wide[:1])[0])
    batch = client.predict("registeredModels/shape-switch@production", wide[:5])
    np.testing.assert_array_equal(batch, client.predict(second, wide[:5]))
    assert first.input_shape == (4,) and second.input_shape == (6,)


def test_delete_registered_model(client, server):
    X, _ = iris()
    v1 = _train(client, 0, registered_model="doomed", aliases=["production"])
    v2 = _train(client, 1, registered_model="doomed")
    onnx_dirs = [server.state.settings.data_dir / "models" / m.name.split("/", 1)[1] for m in (v1, v2)]
    assert all(d.is_dir() for d in onnx_dirs)

    with pytest.raises(gw.FailedPreconditionError, match=r"still has 2 version\(s\) \(1, 2\)"):
        client.delete_registered_model("doomed")
    assert client.get_registered_model("doomed").version_count == 2  # refused: nothing went
    assert client.predict("registeredModels/doomed@production", X[:2]).shape == (2, 3)
    with pytest.raises(gw.InvalidArgumentError) as err:
        client.delete_registered_model("registeredModels/doomed@1")
    assert err.value.field == "name"
    with pytest.raises(gw.NotFoundError):
        client.delete_registered_model("never-registered")
    with pytest.raises(TypeError):
        client.delete_registered_model("doomed", force="yes")

    client.delete_registered_model("doomed", force=True)  # its versions' models and files go too
    for gone in (lambda: client.get_registered_model("doomed"), lambda: client.get_model(v1.name),
                 lambda: client.get_model(v2.name), lambda: client.predict("registeredModels/doomed@production", X[:2])):
        with pytest.raises(gw.NotFoundError):
            gone()
    assert not any(d.exists() for d in onnx_dirs)
    assert "registeredModels/doomed" not in [r.name for r in client.list_registered_models()]

    v3 = _train(client, 2, registered_model="doomed")  # the name again: numbering goes on, `doomed@1` never returns
    assert (v3.version, client.get_registered_model("doomed").aliases) == (3, {"latest": 3})
    client.delete_model(v3)  # with no versions left, no force is needed
    client.get_registered_model("doomed").delete()
    with pytest.raises(gw.NotFoundError):
        client.get_registered_model("doomed")


def test_a_store_from_before_deletion_gains_the_retired_names_table(tmp_path):
    path = tmp_path / "gradwire.db"
    store_mod.Store(path).close()
    old = sqlite3.connect(path)
    old.execute("DROP TABLE retired_registered_models")  # as schema version 1 left it
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    s = store_mod.Store(path)
    try:
        assert s._query("PRAGMA user_version")[0][0] == store_mod.SCHEMA_VERSION == 2
        with s._tx() as db:
            db.execute("INSERT INTO models (id, proto) VALUES ('m1', ?)", (models_pb2.Model(name="models/m1").SerializeToString(),))
        assert s.publish_model("m1", "registeredModels/kept", []).version == 1
        assert s.delete_registered_model("registeredModels/kept", force=True) == ["m1"]
        with s._tx() as db:
            db.execute("INSERT INTO models (id, proto) VALUES ('m2', ?)", (models_pb2.Model(name="models/m2").SerializeToString(),))
        assert s.publish_model("m2", "registeredModels/kept", []).version == 2
    finally:
        s.close()


def test_predictions_racing_alias_moves_deletions_and_evictions(tmp_path):
    """Six threads predict by alias, by `latest` and through KServe (and one gets `latest`'s model) while the alias moves, batching
    changes, and the latest version is deleted three times over, on a server that holds one
    session at a time (every switch evicts one and loads another). Every answer is, bit for bit,
    one of the versions' own probabilities: a request that resolved its name to a version being
    deleted resolves it again (no NOT_FOUND, since both names always point somewhere), and
    nothing answers INTERNAL. Before that, 1 run in 4 of a shorter version of this test failed."""
    running, pool = start(tmp_path / "data", max_sessions=1)
    try:
        target = f"127.0.0.1:{running.port}"
        X, _ = iris()
        rows = np.ascontiguousarray(X[:5])
        with gw.Client(target) as client, grpc.insecure_channel(target) as ch:
            versions = [_train(client, seed, registered_model="racing") for seed in range(6)]
            client.set_alias("racing", "live", 1)
            expected = {v.version: client.predict(v, rows).tobytes() for v in versions}
            kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
            infer = kpb.ModelInferRequest(model_name="racing", inputs=[kpb.ModelInferRequest.InferInputTensor(
                name="features", datatype="FP32", shape=[5, 4])], raw_input_contents=[rows.tobytes()])
            answers, problems, stop = [], [], threading.Event()
            calls = [lambda: client.predict("registeredModels/racing@live", rows).tobytes(),
                     lambda: kserve.ModelInfer(infer, timeout=10).raw_output_contents[0],
                     lambda: expected[client.get_model("registeredModels/racing").version],  # a version's own row
                     *[lambda: client.predict("registeredModels/racing", rows).tobytes()] * 4]

            def predictor(k: int) -> None:
                while not stop.is_set():
                    try:
                        got = calls[k]()
                        answers.append(got)
                        if got not in expected.values():
                            problems.append(f"caller {k}: probabilities of no version")
                    except Exception as exc:  # noqa: BLE001 (reported below)
                        problems.append(f"caller {k}: {type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=predictor, args=(k,)) for k in range(len(calls))]
            for t in threads:
                t.start()
            try:
                for i in range(30):
                    client.set_alias("racing", "live", 1 + i % 3)
                    client.set_batching(versions[i % 6], enabled=i % 2 == 0)
                    time.sleep(0.01)
                client.set_alias("racing", "live", 1)
                for doomed in reversed(versions[3:]):  # the latest each time: `latest` falls back one version
                    client.delete_model(doomed)
                    time.sleep(0.15)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=30)
            assert not problems, problems[:5]
            assert len(answers) > 100, len(answers)
            assert client.predict("registeredModels/racing", rows).tobytes() == expected[3]  # `latest`, now version 3
            assert client.predict("registeredModels/racing@live", rows).tobytes() == expected[1]
    finally:
        pool.stop(timeout=5)
        running.stop(grace=1)


# ---- the registry against a model of it: any sequence of operations ------------------------------

POOL = [f"m{i}" for i in range(10)]
REG_NAMES = ["a", "b"]
ALIASES = ["prod", "stage", "latest"]


class RegistryMachine(RuleBasedStateMachine):
    """Publishes, alias moves and removals, model and registered-model deletions in any order,
    each checked against a plain model of what the registry must hold: version numbers never
    reused (not even after a registered model is deleted and its name registered again),
    `latest` the newest version, an alias's version undeletable, and every refusal the right one."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.store = store_mod.Store(pathlib.Path(self.dir.name) / "gradwire.db")
        with self.store._tx() as db:
            for model_id in POOL:
                db.execute("INSERT INTO models (id, proto) VALUES (?, ?)",
                           (model_id, models_pb2.Model(name=f"models/{model_id}").SerializeToString()))
        self.models = set(POOL)
        self.regs: dict[str, dict] = {}  # name -> {"next": n, "versions": {v: model_id}, "aliases": {alias: v}}
        self.retired: dict[str, int] = {}  # name -> the next version it goes on from

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    def expect(self, error, call) -> None:
        if error is None:
            call()
            return
        try:
            call()
        except errors.GradwireError as exc:
            assert isinstance(exc, error), (type(exc).__name__, exc.message, error.__name__)
        else:
            raise AssertionError(f"expected {error.__name__}")

    @rule(model=st.sampled_from(POOL), name=st.sampled_from(REG_NAMES), aliases=st.lists(st.sampled_from(ALIASES), max_size=2))
    def publish(self, model, name, aliases):
        published = any(model in r["versions"].values() for r in self.regs.values())
        error = (errors.NotFound if model not in self.models else errors.InvalidArgument if "latest" in aliases
                 else errors.AlreadyExists if published else None)
        self.expect(error, lambda: self.store.publish_model(model, f"registeredModels/{name}", aliases))
        if error is None:
            reg = self.regs.setdefault(name, {"next": self.retired.pop(name, 1), "versions": {}, "aliases": {}})
            version = reg["next"]
            reg["next"] += 1
            reg["versions"][version] = model
            reg["aliases"].update({a: version for a in aliases})

    @rule(name=st.sampled_from(REG_NAMES), alias=st.sampled_from(ALIASES), version=st.integers(0, 8))
    def set_alias(self, name, alias, version):
        reg = self.regs.get(name)
        error = (errors.InvalidArgument if alias == "latest" else errors.NotFound if reg is None or version not in reg["versions"]
                 else None)
        self.expect(error, lambda: self.store.set_alias(f"registeredModels/{name}", alias, version))
        if error is None:
            reg["aliases"][alias] = version

    @rule(name=st.sampled_from(REG_NAMES), alias=st.sampled_from(ALIASES))
    def delete_alias(self, name, alias):
        reg = self.regs.get(name)
        error = (errors.InvalidArgument if alias == "latest" else errors.NotFound if reg is None or alias not in reg["aliases"]
                 else None)
        self.expect(error, lambda: self.store.delete_alias(f"registeredModels/{name}", alias))
        if error is None:
            del reg["aliases"][alias]

    @rule(model=st.sampled_from(POOL))
    def delete_model(self, model):
        owner = next(((n, v) for n, r in self.regs.items() for v, m in r["versions"].items() if m == model), None)
        pinned = owner is not None and owner[1] in self.regs[owner[0]]["aliases"].values()
        error = errors.NotFound if model not in self.models else errors.FailedPrecondition if pinned else None
        self.expect(error, lambda: self.store.delete_model(model))
        if error is None:
            self.models.discard(model)
            if owner is not None:
                del self.regs[owner[0]]["versions"][owner[1]]

    @rule(name=st.sampled_from(REG_NAMES), force=st.booleans())
    def delete_registered_model(self, name, force):
        reg = self.regs.get(name)
        error = errors.NotFound if reg is None else errors.FailedPrecondition if reg["versions"] and not force else None
        self.expect(error, lambda: self.store.delete_registered_model(f"registeredModels/{name}", force))
        if error is None:
            self.models -= set(reg["versions"].values())
            self.retired[name] = reg["next"]
            del self.regs[name]

    @invariant()
    def the_registry_is_the_model(self):
        for name in REG_NAMES:
            reg = self.regs.get(name)
            full = f"registeredModels/{name}"
            if reg is None:
                self.expect(errors.NotFound, lambda full=full: self.store.get_registered_model(full))
                self.expect(errors.NotFound, lambda full=full: self.store.resolve_model(full))
                continue
            got = self.store.get_registered_model(full)
            versions = reg["versions"]
            latest = max(versions, default=0)
            assert got.version_count == len(versions) and got.latest_version == latest
            assert dict(got.aliases) == {**reg["aliases"], **({"latest": latest} if versions else {})}
            for version, model in versions.items():
                assert self.store.resolve_model(f"{full}@{version}") == model
                m = self.store.get_model(model)
                assert (m.registered_model, m.version) == (full, version)
            for alias, version in reg["aliases"].items():
                assert self.store.resolve_model(f"{full}@{alias}") == versions[version]
            if versions:
                assert self.store.resolve_model(full) == versions[latest] == self.store.resolve_model(f"{full}@latest")
            else:
                self.expect(errors.NotFound, lambda full=full: self.store.resolve_model(full))
            never = f"{full}@{reg['next']}"  # never yet a version
            self.expect(errors.NotFound, lambda never=never: self.store.resolve_model(never))
        assert self.store.model_ids() == self.models


RegistryMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None, database=None,
                                             derandomize=True, suppress_health_check=[HealthCheck.too_slow])
test_the_registry_against_a_model_of_it = RegistryMachine.TestCase
