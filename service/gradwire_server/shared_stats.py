"""Model statistics across RPC processes (GRADWIRE_RPC_PROCESSES above 1).

Each process counts what it serves (`inference.ModelStats`). Here each one also writes its
counts to data_dir/tmp/stats-{slot}.json, at most every FLUSH_S and only when they changed, and
ModelStatistics adds the other processes' latest files to its own live counts: the figures then
cover the whole server, the other processes' up to FLUSH_S late. The server's start removes the
files (they live under tmp/); a restarted RPC process starts its counts afresh.
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading

from . import files
from .inference import ModelStats, SessionCache

log = logging.getLogger("gradwire.stats")
FLUSH_S = 0.5


class SharedStats:
    def __init__(self, data_dir: pathlib.Path, slot: int, processes: int, sessions: SessionCache) -> None:
        self._dir = data_dir / files.TMP_DIR
        self._slot, self._processes, self._sessions = slot, processes, sessions
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-writer", daemon=True)

    def _path(self, slot: int) -> pathlib.Path:
        return self._dir / f"stats-{slot}.json"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _run(self) -> None:
        written = None
        while not self._stopping.wait(FLUSH_S):
            counts = {model_id: stats.to_json() for model_id, stats in self._sessions.all_model_stats().items()}
            if counts == written:
                continue
            try:
                self._write(counts)
                written = counts
            except OSError as exc:  # the figures of this process then lag; serving goes on
                log.warning("could not write this RPC process's statistics: %s", exc)

    def _write(self, counts: dict) -> None:
        # not durable: the figures are this run's, not kept across a crash
        with files.atomic_writer(self._path(self._slot), durable=False) as f:
            f.write(json.dumps(counts).encode())

    def others(self) -> dict[str, ModelStats]:
        """The other processes' latest counts, summed per model id."""
        total: dict[str, ModelStats] = {}
        for slot in range(self._processes):
            if slot == self._slot:
                continue
            try:
                counts = json.loads(self._path(slot).read_text())
            except (OSError, ValueError):  # not written yet
                continue
            for model_id, d in counts.items():
                stats = ModelStats.from_json(d)
                if model_id in total:
                    total[model_id].add(stats)
                else:
                    total[model_id] = stats
        return total
