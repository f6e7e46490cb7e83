"""What every servicer shares: settings, the store, the session cache, the serving cache, and
with several RPC processes the other processes' model statistics."""

from __future__ import annotations

import dataclasses

from ..config import Settings
from ..inference import SessionCache
from ..serving import ServingCache
from ..shared_stats import SharedStats
from ..store import Store


@dataclasses.dataclass(frozen=True)
class ServerState:
    settings: Settings
    store: Store
    sessions: SessionCache
    serving: ServingCache
    shared_stats: SharedStats | None = None  # with several RPC processes: the others' statistics
