"""What every servicer shares: settings, the store, the session cache, the serving cache, with
several RPC processes the other processes' model statistics, and the system shared memory
regions."""

from __future__ import annotations

import dataclasses

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
