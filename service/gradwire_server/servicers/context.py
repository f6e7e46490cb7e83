"""What every servicer shares: settings, the store, the session cache, the serving cache."""

from __future__ import annotations

import dataclasses

from ..config import Settings
from ..inference import SessionCache
from ..serving import ServingCache
from ..store import Store


@dataclasses.dataclass(frozen=True)
class ServerState:
    settings: Settings
    store: Store
    sessions: SessionCache
    serving: ServingCache
