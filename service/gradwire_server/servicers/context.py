"""What every servicer shares: settings, the store, the session cache."""

from __future__ import annotations

import dataclasses

from ..config import Settings
from ..inference import SessionCache
from ..store import Store


@dataclasses.dataclass(frozen=True)
class ServerState:
    settings: Settings
    store: Store
    sessions: SessionCache
