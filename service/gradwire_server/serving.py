"""What a prediction needs to know about a model, looked up once per name and kept until the
database changes.

Predict and ModelInfer name models by id, by registered name, version or alias. Resolving
a name and reading the model's row, its registry entry and its batching override costs
several SQLite queries (about 0.06 ms, a tenth of a one-row Predict). `ServingCache`
answers repeated names from memory and checks one counter per call
(`Store.change_stamp()`: the commits of every process, such as a worker publishing a new
version, counted in shared memory), so a moved alias, a new `latest` or a deleted model is
seen on the very next call.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable

from gradwire.v1 import datasets_pb2, models_pb2

from .inference import BatchingPolicy, SessionCache
from .store import Store

MAX_ENTRIES = 4096  # distinct names kept; past that the cache starts over


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
        return cls(
            model=model,
            model_id=model.name.split("/", 1)[1],
            input_shape=tuple(model.input_shape),
            class_names=tuple(model.class_names),
            regression=model.label_kind == datasets_pb2.LABEL_KIND_REGRESSION,
            multi_label=model.label_kind == datasets_pb2.LABEL_KIND_MULTI_LABEL,
            policy=sessions.policy(override),
        )


class ServingCache:
    """`Serving` by the key a client's name maps to; emptied whenever the database changes."""

    def __init__(self, store: Store, sessions: SessionCache) -> None:
        self._store = store
        self._sessions = sessions
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self._entries: dict[Hashable, Serving] = {}

    def get(self, key: Hashable, load: Callable[[], models_pb2.Model]) -> Serving:
        """The cached `Serving` for `key`, or `load()`'s model (its errors are raised, not cached)."""
        stamp = self._store.change_stamp()
        with self._lock:
            if stamp != self._stamp:
                self._entries.clear()
                self._stamp = stamp
            hit = self._entries.get(key)
        if hit is not None:
            return hit
        # Loaded after `stamp` was read: a change in between is newer than `stamp`, so the next
        # call sees another stamp and drops this entry.
        serving = Serving.of(load(), self._sessions)
        with self._lock:
            if self._stamp == stamp:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[key] = serving
        return serving

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
