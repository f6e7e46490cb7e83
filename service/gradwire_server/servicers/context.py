"""What every servicer shares: settings, the store, the session cache, the serving cache, with
several RPC processes the other processes' model statistics, and the system shared memory
regions."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator

from .. import errors
from ..config import Settings
from ..inference import SessionCache
from ..serving import ServingCache
from ..shared_stats import SharedStats
from ..shm import SharedMemoryRegions
from ..store import Store


@dataclasses.dataclass(frozen=True)
class ServerState:
    settings: Settings
    store: Store
    sessions: SessionCache
    serving: ServingCache
    shared_stats: SharedStats | None = None  # with several RPC processes: the others' statistics
    shm: SharedMemoryRegions | None = None  # Triton's system shared memory extension, when it is on


class StreamSlots:
    """A bound on one kind of long-lived stream (WatchTrainingJob, ModelStreamInfer): each holds an
    RPC thread for its whole life, so past the limit a new one is refused rather than let such
    streams take every thread from unary calls and health checks."""

    def __init__(self, limit: int, method: str, setting: str, instead: str) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._refusal = f"{limit} {method} streams are already open, the server's limit ({setting}); {instead}"

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """One slot for the ``with`` block, or RESOURCE_EXHAUSTED when every one is taken."""
        if not self._slots.acquire(blocking=False):
            raise errors.ResourceExhausted(self._refusal)
        try:
            yield
        finally:
            self._slots.release()
