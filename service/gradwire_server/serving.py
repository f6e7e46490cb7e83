"""What a prediction needs to know about a model, looked up once per name and kept until the
database changes.

Predict and ModelInfer name models by id, by registered name, version or alias. Resolving
a name and reading the model's row, its registry entry and its batching override costs
several SQLite queries (about 0.06 ms, a tenth of a one-row Predict). `ServingCache`
answers repeated names from memory and checks one counter per call
(`Store.change_stamp()`: the commits of every process, such as a worker publishing a new
version, counted in shared memory), so a moved alias, a new `latest` or a deleted model is
seen on the very next call.

A name that moves is followed: when the database changes, a thread resolves again the names
this process served most recently (FOLLOWED of them) and, where one now means another model (a
new version became the latest, or another process moved an alias), loads that model's session
at once and runs it once. Loading a 76 MB model took 166 ms here, which its first request paid:
in a rollout, every request that arrived meanwhile. (SetModelAlias and PublishModel warm the
model in the process that answers them before they commit.) The same pass puts the names back
in the cache, so requests after a change (a job's epoch is a commit) find them resolved. At
start-up, each RPC process warms what the aliases point at (`warm_aliases`), so a restart is no
cold start either.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from gradwire.v1 import datasets_pb2, models_pb2

from . import errors, spec
from .inference import BatchingPolicy, SessionCache
from .store import Store, every

T = TypeVar("T")
log = logging.getLogger("gradwire.serving")
MAX_ENTRIES = 4096  # distinct names kept; past that the cache starts over
FOLLOWED = 64  # the names most recently served, resolved again after each change
FOLLOW_PAUSE_S = 0.2  # at least this long between two passes (a training job commits every epoch)
INFER_BYTES = 256 << 20  # about the most activation memory one onnxruntime call holds (call_rows)


@dataclasses.dataclass(frozen=True)
class Serving:
    """One model as inference sees it (the proto must be treated as read-only: it is shared)."""

    model: models_pb2.Model
    model_id: str
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    regression: bool
    multi_label: bool
    policy: BatchingPolicy

    @classmethod
    def of(cls, model: models_pb2.Model, sessions: SessionCache) -> Serving:
        override = model.dynamic_batching if model.HasField("dynamic_batching") else None
        model_id = model.name.split("/", 1)[1]
        sessions.expect(model_id, model.onnx_sha256)  # its session's load checks the file against it
        return cls(
            model=model,
            model_id=model_id,
            input_shape=tuple(model.input_shape),
            class_names=tuple(model.class_names),
            regression=model.label_kind == datasets_pb2.LABEL_KIND_REGRESSION,
            multi_label=model.label_kind == datasets_pb2.LABEL_KIND_MULTI_LABEL,
            policy=dataclasses.replace(sessions.policy(override), call_rows=call_rows(model), row_bytes=row_bytes(model)),
        )


def call_rows(model: models_pb2.Model) -> int:
    """The most rows one onnxruntime call of ``model`` runs: about INFER_BYTES of activations
    (`row_bytes`); 0 (no bound) where its network cannot be read. The digits CNN: 16,384 rows;
    (3, 128, 128) images through 32 filters: 32."""
    per_row = row_bytes(model)
    return max(1, INFER_BYTES // per_row) if per_row else 0


def row_bytes(model: models_pb2.Model) -> int:
    """About the activation memory one row of a call of ``model`` holds (spec.activation_bytes, from
    the network it was trained from); 0 where its network cannot be read. Kept by model name (a
    model's network never changes): the shape inference takes 40-70 us, and a name is resolved
    again after every commit, a training job's epochs included."""
    per_row = _row_bytes.get(model.name)
    if per_row is None:
        try:
            summary = spec.infer_network(model.network, tuple(model.input_shape))
            per_row = spec.activation_bytes(summary, model.network)
        except (errors.GradwireError, ValueError) as exc:  # not a network this server can read: unbounded
            log.debug("model %s: no bound on the rows of a call (%s)", model.name, exc)
            per_row = 0
        if len(_row_bytes) >= MAX_ENTRIES:
            _row_bytes.clear()
        _row_bytes[model.name] = per_row
    return per_row


_row_bytes: dict[str, int] = {}  # row_bytes by model name


class ServingCache:
    """`Serving` by the key a client's name maps to; emptied whenever the database changes."""

    def __init__(self, store: Store, sessions: SessionCache, *, follow: bool = False) -> None:
        self._store = store
        self._sessions = sessions
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self._entries: dict[Hashable, Serving] = {}
        # name -> (how to resolve it, the model id it meant when last resolved), least recent first
        self._followed: collections.OrderedDict[Hashable, tuple[Callable[[], models_pb2.Model], str]] = collections.OrderedDict()
        self._follow = follow
        self._follower: threading.Thread | None = None
        self._warmer: threading.Thread | None = None
        self._stopping = threading.Event()

    def get(self, key: Hashable, load: Callable[[], models_pb2.Model]) -> Serving:
        """The cached `Serving` for `key`, or `load()`'s model (its errors are raised, not cached)."""
        stamp = self._store.change_stamp()
        with self._lock:
            if stamp != self._stamp:
                self._entries.clear()
                self._stamp = stamp
            hit = self._entries.get(key)
            if hit is not None:
                if key in self._followed:
                    self._followed.move_to_end(key)
                return hit
        # Loaded after `stamp` was read: a change in between is newer than `stamp`, so the next
        # call sees another stamp and drops this entry.
        serving = Serving.of(load(), self._sessions)
        with self._lock:
            if self._stamp == stamp:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[key] = serving
            self._followed[key] = (load, serving.model_id)
            self._followed.move_to_end(key)
            while len(self._followed) > FOLLOWED:
                self._followed.popitem(last=False)
            if self._follow and self._follower is None and not self._stopping.is_set():
                self._follower = threading.Thread(target=self._run_follower, args=(stamp,), name="serving-follower",
                                                  daemon=True)
                self._follower.start()
        return serving

    def follow_changes(self) -> None:
        """One pass of the follower: resolve the followed names again, and load the session of any
        model a name now means that it did not before."""
        with self._lock:
            followed = list(self._followed.items())  # least recent first: get() keeps that order
        for key, (load, before) in followed:
            if self._stopping.is_set():
                return
            try:
                serving = self.get(key, load)
                if serving.model_id != before:
                    self._sessions.warm(serving.model_id, serving.input_shape, serving.policy)
                    log.info("%s now means model %s: its session is loaded", key, serving.model_id)
            except errors.GradwireError as exc:  # deleted, not ready: its next request says so
                log.debug("following %s: %s", key, exc)
            except Exception:  # never the end of the follower
                if self._closing():
                    return
                log.exception("following %s", key)

    def _run_follower(self, stamp: int) -> None:
        """Until close(), or the store's: a pass after each change from ``stamp`` on (that of the
        first name followed), at most every FOLLOW_PAUSE_S."""
        while not self._stopping.is_set() and not self._store.closed:
            try:
                self._store.wait_for_change(stamp, 1.0, self._stopping.is_set)
                now = self._store.change_stamp()
                if now == stamp or self._stopping.is_set():
                    continue
                stamp = now
                self.follow_changes()
            except Exception:  # the store closing under it, say: never a busy loop
                if not self._closing():
                    log.exception("the serving follower")
                self._stopping.wait(1.0)
                continue
            self._stopping.wait(FOLLOW_PAUSE_S)

    def start_warming(self, limit: int) -> None:
        """`warm_aliases` on a thread of its own: requests are served meanwhile."""
        self._warmer = threading.Thread(target=self.warm_aliases, args=(limit,), name="warm-aliases", daemon=True)
        self._warmer.start()

    def warm_aliases(self, limit: int) -> int:
        """Loads and runs once the models every registered model's aliases point at: the explicit
        ones (``production``...) first, then each ``latest``, at most ``limit`` models (the
        session cache's bound); the names are then followed. Returns how many were warmed."""
        started = time.perf_counter()
        try:
            names = [f"{r.name}@{alias}" for r in every(self._store.list_registered_models) for alias in sorted(r.aliases)]
        except Exception:  # the server stopping at once, say
            if not self._closing():
                log.exception("listing the aliases to warm")
            return 0
        names.sort(key=lambda name: name.endswith("@latest"))  # explicit aliases first, stable
        warmed: set[str] = set()
        for name in names:
            if len(warmed) >= limit or self._stopping.is_set():
                break
            try:
                serving = self.get(name, lambda name=name: self._store.get_model_by_name(name))
                if serving.model_id not in warmed:
                    self._sessions.warm(serving.model_id, serving.input_shape, serving.policy)
                    warmed.add(serving.model_id)
            except errors.GradwireError as exc:  # not ready, gone meanwhile
                log.debug("warming %s: %s", name, exc)
            except Exception:  # never the end of start-up
                if self._closing():
                    break
                log.exception("warming %s", name)
        if warmed:
            log.info("warmed %d model(s) that aliases point at, in %.1f s", len(warmed), time.perf_counter() - started)
        return len(warmed)

    def _closing(self) -> bool:
        """Whether an error may just be the cache or the store closing (not worth a traceback)."""
        return self._stopping.is_set() or self._store.closed

    def close(self) -> None:
        self._stopping.set()
        for thread in (self._follower, self._warmer):
            if thread is not None:
                thread.join(5)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def retry_if_gone(attempt: Callable[[], T]) -> T:
    """``attempt()`` (which resolves a model's name, then reads or runs the model), once more when
    the model it resolved was deleted meanwhile (errors.ModelGone: its row gone after the name was
    read, or its file before its session loaded): by then the deletion has moved the store's
    change stamp, so the name is resolved afresh (`latest` one version back, say), as it would have
    been for a request that arrived a moment later. A second deletion in between is answered NOT_FOUND."""
    try:
        return attempt()
    except errors.ModelGone:
        return attempt()
