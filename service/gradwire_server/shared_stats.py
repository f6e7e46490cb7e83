"""Model statistics across RPC processes (GRADWIRE_RPC_PROCESSES above 1).

Each process counts what it serves (`inference.ModelStats`). Here each one also writes its
counts to data_dir/tmp/stats-{slot}.json, at most every FLUSH_S and only when they changed, and
ModelStatistics adds the other processes' latest files to its own live counts: the figures then
cover the whole server, the other processes' up to FLUSH_S late. The server's start removes the
files (they live under tmp/): the counts are the server's since it started, as Triton's are.

An RPC process that died is restarted in its slot; the new one takes the counts its predecessor
last wrote and goes on from them (what the dead one served in its last FLUSH_S is lost).
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
        self._inherited = self._read(slot)  # this slot's dead predecessor's, in this run of the server

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
            mine = _summed(self._sessions.all_model_stats(), self._inherited)
            counts = {model_id: stats.to_json() for model_id, stats in mine.items()}
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

    def _read(self, slot: int) -> dict[str, ModelStats]:
        try:
            counts = json.loads(self._path(slot).read_text())
        except (OSError, ValueError):  # not written yet
            return {}
        return {model_id: ModelStats.from_json(d) for model_id, d in counts.items()}

    def others(self) -> dict[str, ModelStats]:
        """What this process's live counts leave out, summed per model id: the other processes'
        latest counts, and this slot's predecessor's."""
        return _summed(*(self._read(slot) if slot != self._slot else self._inherited for slot in range(self._processes)))


def _summed(*groups: dict[str, ModelStats]) -> dict[str, ModelStats]:
    """Per model id, the sum of its counts in every group (new ModelStats: the groups are not changed)."""
    total: dict[str, ModelStats] = {}
    for group in groups:
        for model_id, stats in group.items():
            total.setdefault(model_id, ModelStats()).add(stats)
    return total
