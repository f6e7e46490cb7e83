"""The metadata store: SQLite in WAL mode under the data directory.

Holds datasets, training jobs with their event history, and models. The RPC
process and every worker process open their own `Store` on the same file; the
worker takes jobs from here (never from an in-memory queue), so more workers can
share one store. Rows hold serialized protos for the immutable parts and plain
columns for what changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import pathlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from gradwire.v1 import datasets_pb2, models_pb2, training_pb2

from . import errors, registry

State = training_pb2.TrainingJob.State
TERMINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
ACTIVE_STATES = frozenset({State.QUEUED, State.RUNNING, State.CANCELLING})
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    proto BLOB NOT NULL,
    features_dtype INTEGER NOT NULL,
    labels_dtype INTEGER NOT NULL,
    labels_shape TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    spec BLOB NOT NULL,
    dataset_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    create_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    error BLOB,
    model TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    request_sha256 TEXT,
    run_seconds REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event_time REAL NOT NULL,
    state INTEGER NOT NULL,
    epoch BLOB,
    message TEXT NOT NULL,
    error BLOB,
    model TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS models (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    proto BLOB NOT NULL
);
"""

# Schema version 1 (PRAGMA user_version): the model registry. Purely additive: a
# store written before it keeps every row, its models stay `models/{id}`, and any
# of them can be published into a registered model afterwards.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS registered_models (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 1,
    create_time REAL NOT NULL,
    update_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    registered_model TEXT NOT NULL,
    version INTEGER NOT NULL,
    model_id TEXT UNIQUE NOT NULL,
    PRIMARY KEY (registered_model, version)
);
CREATE TABLE IF NOT EXISTS model_aliases (
    registered_model TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (registered_model, alias)
);
CREATE TABLE IF NOT EXISTS model_batching (
    model_id TEXT PRIMARY KEY,
    proto BLOB NOT NULL
);
"""
SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS retired_registered_models (
    name TEXT PRIMARY KEY,
    next_version INTEGER NOT NULL
);
"""
SCHEMA_VERSION = 2


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def every(list_page: Callable[[int, str], tuple[list, str]], page_size: int = 1000) -> Iterator:
    """Every item of a paged listing (``store.list_models``, say, or a lambda binding the other
    arguments of ``list_model_versions``), page after page."""
    page = ""
    while True:
        items, page = list_page(page_size, page)
        yield from items
        if not page:
            return


def resource_id(name: str, collection: str, field: str = "name") -> str:
    """`datasets/abc` -> `abc`, refusing anything that is not a well-formed name."""
    prefix = collection + "/"
    rid = name[len(prefix):] if name.startswith(prefix) else ""
    if not rid or len(rid) > 64 or not all(c.isalnum() or c in "-_" for c in rid):
        raise errors.InvalidArgument(f"expected '{collection}/{{id}}', got {name!r}", field=field)
    return rid


COUNTER_BYTES = 8
CHANGE_POLL_S = 0.02  # how often Store.wait_for_change's poller looks at the counter (0.3 us a look)


class ChangeCounter:
    """A count of changes made by any process of the server (RPC processes, workers), in an 8-byte
    file that each maps into memory: reading it costs about 0.3 us and no system call. The
    Store counts the commits that changed rows of its database with one beside it (where
    `PRAGMA data_version` took 17-20 us in a serving process); shm.py counts registrations.

    A change bumps it after it is made, so whoever sees the new count also sees the change (a
    commit: after the COMMIT). The bump holds an flock: two writers' read-and-add would
    otherwise interleave, and a late one could set the count back to a value that a reader
    already holds, hiding a change from it.
    The count is read and written as one native 8-byte word (a memoryview of format "Q" copies
    it in one aligned load or store), never byte by byte as `struct`'s "<Q" does: a reader
    could then see half of a bump."""

    def __init__(self, path: pathlib.Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < COUNTER_BYTES:
            os.ftruncate(self._fd, COUNTER_BYTES)  # zeros; a no-op where another process got there first
        self._map = mmap.mmap(self._fd, COUNTER_BYTES)
        self._word = memoryview(self._map).cast("Q")

    def value(self) -> int:
        return self._word[0]

    def bump(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._word[0] = (self._word[0] + 1) % 2**64
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._word.release()
        self._map.close()
        os.close(self._fd)


class Store:
    """Thread-safe access to the SQLite file (one connection per Store, guarded by a lock).

    Every write goes through a Store (`_tx`): that is what `change_stamp` counts."""

    def __init__(self, path: pathlib.Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._changes = ChangeCounter(path.with_name(path.name + ".changes"))
        self._change_cv = threading.Condition()  # wait_for_change's waiters and poller
        self._waiting = 0
        self._poller: threading.Thread | None = None
        self._closed = False
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a data directory made by an older version up to this schema, keeping all its data
        (tables and columns are only added)."""
        with self._lock:
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version < 1:
                self._db.executescript(SCHEMA_V1)
            if version < 2:  # a deleted registered model's next version number, kept for its name's return
                self._db.executescript(SCHEMA_V2)
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with self._tx() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, kind in (("request_id", "TEXT"), ("request_sha256", "TEXT"), ("run_seconds", "REAL NOT NULL DEFAULT 0"),
                                 ("test_dataset_id", "TEXT")):
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            if "test_dataset_id" not in have:  # jobs stored before the column: read it from their spec
                for job_id, blob in db.execute("SELECT id, spec FROM jobs").fetchall():
                    test = training_pb2.TrainingJob.FromString(blob).test_dataset
                    if test:
                        db.execute("UPDATE jobs SET test_dataset_id = ? WHERE id = ?", (test.split("/", 1)[1], job_id))
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._change_cv:
            self._closed = True
            self._change_cv.notify_all()
        if self._poller is not None:
            self._poller.join(1)
        with self._lock:
            self._db.close()
            self._changes.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken immediately so concurrent writers queue up."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._db.total_changes
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            if self._db.total_changes != rows:  # a claim that found no job changes nothing: no one is woken
                self._changes.bump()

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def change_stamp(self) -> int:
        """Changes whenever a commit changed rows since the last call saw it: by this process or by
        any other Store on the file (a worker publishing a model, another RPC process). Cheap (a
        read of shared memory): what caches of the database's contents are checked against."""
        return self._changes.value()

    def wait_for_change(self, stamp: int, timeout: float, stopped: Callable[[], bool] | None = None) -> None:
        """Returns once `change_stamp()` is no longer `stamp`, `timeout` seconds passed or `stopped()`
        says so (asked every 0.1 s): what an idle worker and a Watch stream wait on. One thread per
        Store looks at the counter every CHANGE_POLL_S while anyone waits, and wakes them all when
        it moves: however many streams are open, a process pays for one look (a wake-up every
        CHANGE_POLL_S costs this VM 0.5% of a core)."""
        deadline = time.monotonic() + timeout
        with self._change_cv:
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll_changes, name="store-changes", daemon=True)
                self._poller.start()
            self._waiting += 1
            self._change_cv.notify_all()  # the poller may be asleep for want of waiters
            try:
                while self._changes.value() == stamp and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0 or (stopped is not None and stopped()):
                        return
                    self._change_cv.wait(left if stopped is None else min(left, 0.1))
            finally:
                self._waiting -= 1

    def _poll_changes(self) -> None:
        seen = self._changes.value()
        while True:
            with self._change_cv:
                while not self._waiting and not self._closed:
                    self._change_cv.wait()
                if self._closed:
                    return
            time.sleep(CHANGE_POLL_S)
            with self._change_cv:
                if self._closed:
                    return
                now = self._changes.value()
                if now != seen:
                    seen = now
                    self._change_cv.notify_all()

    def integrity_check(self) -> str:
        return self._query("PRAGMA integrity_check")[0][0]

    def quick_check(self) -> str:
        """SQLite's quick check of every table and page: "ok", or the first problems it found."""
        return "; ".join(row[0] for row in self._query("PRAGMA quick_check(5)"))

    # ---- paging ---------------------------------------------------------

    @staticmethod
    def _page(page_size: int, page_token: str) -> tuple[int, int]:
        if page_size < 0:
            raise errors.InvalidArgument(f"must be >= 0, got {page_size}", field="page_size")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if not page_token:
            return size, 2**62
        before = int(page_token) if page_token.isascii() and page_token.isdigit() else -1
        if not 0 <= before <= 2**62:
            raise errors.InvalidArgument(f"not a token from a previous response: {page_token!r}", field="page_token")
        return size, before

    def _list(self, table: str, column: str, page_size: int, page_token: str) -> tuple[list[tuple], str]:
        size, before = self._page(page_size, page_token)
        rows = self._query(f"SELECT seq, {column} FROM {table} WHERE seq < ? ORDER BY seq DESC LIMIT ?", (before, size + 1))
        token = str(rows[size - 1][0]) if len(rows) > size else ""
        return rows[:size], token

    # ---- datasets -------------------------------------------------------

    def insert_dataset(self, dataset: datasets_pb2.Dataset, *, features_dtype: int, labels_dtype: int, labels_shape: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO datasets (id, proto, features_dtype, labels_dtype, labels_shape) VALUES (?, ?, ?, ?, ?)",
                (dataset.name.split("/", 1)[1], dataset.SerializeToString(), features_dtype, labels_dtype, labels_shape),
            )

    def get_dataset(self, dataset_id: str) -> datasets_pb2.Dataset:
        rows = self._query("SELECT proto FROM datasets WHERE id = ?", (dataset_id,))
        if not rows:
            raise errors.NotFound(f"dataset 'datasets/{dataset_id}' not found")
        return datasets_pb2.Dataset.FromString(rows[0][0])

    def dataset_storage(self, dataset_id: str) -> tuple[datasets_pb2.Dataset, int, int, str]:
        rows = self._query("SELECT proto, features_dtype, labels_dtype, labels_shape FROM datasets WHERE id = ?", (dataset_id,))
        if not rows:
            raise errors.NotFound(f"dataset 'datasets/{dataset_id}' not found")
        proto, fdt, ldt, lshape = rows[0]
        return datasets_pb2.Dataset.FromString(proto), fdt, ldt, lshape

    def list_datasets(self, page_size: int, page_token: str) -> tuple[list[datasets_pb2.Dataset], str]:
        rows, token = self._list("datasets", "proto", page_size, page_token)
        return [datasets_pb2.Dataset.FromString(r[1]) for r in rows], token

    def dataset_ids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT id FROM datasets")}

    def delete_dataset(self, dataset_id: str) -> None:
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM datasets WHERE id = ?", (dataset_id,)).fetchall():
                raise errors.NotFound(f"dataset 'datasets/{dataset_id}' not found")
            active = db.execute(
                f"SELECT id, dataset_id = ? FROM jobs WHERE (dataset_id = ? OR test_dataset_id = ?) "
                f"AND state IN ({','.join('?' * len(ACTIVE_STATES))}) ORDER BY seq LIMIT 1",
                (dataset_id, dataset_id, dataset_id, *ACTIVE_STATES),
            ).fetchall()
            if active:
                job_id, as_training = active[0]
                raise errors.FailedPrecondition(
                    f"dataset 'datasets/{dataset_id}' is used by unfinished job 'trainingJobs/{job_id}'"
                    + ("" if as_training else " as its test set")
                )
            db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))

    # ---- training jobs --------------------------------------------------

    def insert_job(
        self, job: training_pb2.TrainingJob, *, max_queued: int | None = None, request_sha256: str | None = None
    ) -> tuple[training_pb2.TrainingJob, bool]:
        """Store a new job in QUEUED with its first event; return (the job as stored, created).

        With `job.request_id` set, a job already created under that id is returned
        instead (created False) when `request_sha256` matches, and refused
        otherwise. The queue limit is checked in the same transaction.
        """
        job_id = job.name.split("/", 1)[1]
        now = time.time()
        spec = training_pb2.TrainingJob()
        spec.CopyFrom(job)
        for field in ("state", "create_time", "start_time", "end_time", "history", "error", "model", "device"):
            spec.ClearField(field)
        with self._tx() as db:
            existing = self._job_for_request(db, job.request_id, request_sha256) if job.request_id else None
            if existing is None:
                # Checked again here: a DeleteDataset that committed after the request was validated
                # would leave a queued job without its data (DeleteDataset refuses while an
                # unfinished job uses the dataset, in its own transaction: one of the two wins).
                for field, name in (("dataset", job.dataset), ("test_dataset", job.test_dataset)):
                    if name and not db.execute("SELECT 1 FROM datasets WHERE id = ?", (name.split("/", 1)[1],)).fetchall():
                        raise errors.NotFound(f"dataset '{name}' not found: it was deleted", field=field)
                if max_queued is not None:
                    (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (State.QUEUED,)).fetchone()
                    if queued >= max_queued:
                        raise errors.ResourceExhausted(
                            f"{queued} jobs are already queued, the server's limit (GRADWIRE_MAX_QUEUED_JOBS={max_queued}); "
                            "retry when some have started"
                        )
                db.execute(
                    "INSERT INTO jobs (id, spec, dataset_id, test_dataset_id, state, create_time, request_id, request_sha256) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, spec.SerializeToString(), job.dataset.split("/", 1)[1],
                     job.test_dataset.split("/", 1)[1] if job.test_dataset else None, State.QUEUED, now,
                     job.request_id or None, request_sha256),
                )
                self._event(db, job_id, State.QUEUED, "queued", now=now)
        return self.get_job(existing or job_id), existing is None

    @staticmethod
    def _job_for_request(db: sqlite3.Connection, request_id: str, request_sha256: str | None) -> str | None:
        """The id of the job created under `request_id` (refused if its request differed), or None."""
        row = db.execute("SELECT id, request_sha256 FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        if row[1] != request_sha256:
            raise errors.AlreadyExists(
                f"{request_id!r} was already used to create 'trainingJobs/{row[0]}' with different parameters; "
                "use a new request_id for a new job",
                field="request_id",
            )
        return row[0]

    def job_by_request(self, request_id: str, request_sha256: str) -> training_pb2.TrainingJob | None:
        """The job created under `request_id` (refused if its request differed), or None."""
        with self._lock:
            job_id = self._job_for_request(self._db, request_id, request_sha256)
        return self.get_job(job_id) if job_id is not None else None

    def run_seconds(self, job_id: str) -> float:
        return self._query("SELECT run_seconds FROM jobs WHERE id = ?", (job_id,))[0][0]

    def add_run_seconds(self, job_id: str, seconds: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET run_seconds = run_seconds + ? WHERE id = ?", (seconds, job_id))

    def unfinished_job_ids(self) -> set[str]:
        return {r[0] for r in self._query(
            f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(ACTIVE_STATES))})", tuple(ACTIVE_STATES))}

    def _event(
        self,
        db: sqlite3.Connection,
        job_id: str,
        state: int,
        message: str,
        *,
        epoch: training_pb2.EpochMetrics | None = None,
        error: status_pb2.Status | None = None,
        model: str = "",
        now: float | None = None,
    ) -> None:
        (last,) = db.execute("SELECT COALESCE(MAX(sequence), 0) FROM events WHERE job_id = ?", (job_id,)).fetchone()
        db.execute(
            "INSERT INTO events (job_id, sequence, event_time, state, epoch, message, error, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                last + 1,
                now or time.time(),
                state,
                epoch.SerializeToString() if epoch is not None else None,
                message,
                error.SerializeToString() if error is not None else None,
                model,
            ),
        )

    def _job_from_row(self, row: tuple, with_history: bool) -> training_pb2.TrainingJob:
        job_id, spec, state, create_time, start_time, end_time, error, model, device = row
        job = training_pb2.TrainingJob.FromString(spec)
        job.state = state
        job.create_time.CopyFrom(timestamp(create_time))
        if start_time is not None:
            job.start_time.CopyFrom(timestamp(start_time))
        if end_time is not None:
            job.end_time.CopyFrom(timestamp(end_time))
        if error is not None:
            job.error.ParseFromString(error)
        job.model = model
        job.device = device
        if model:
            rows = self._query("SELECT version FROM model_versions WHERE model_id = ?", (model.split("/", 1)[1],))
            job.model_version = rows[0][0] if rows else 0
        if with_history:
            # A job resumed from a checkpoint re-runs the epochs after it: the latest record of an epoch wins.
            by_epoch: dict[int, training_pb2.EpochMetrics] = {}
            for (blob,) in self._query(
                "SELECT epoch FROM events WHERE job_id = ? AND epoch IS NOT NULL ORDER BY sequence", (job_id,)
            ):
                metrics = training_pb2.EpochMetrics.FromString(blob)
                by_epoch[metrics.epoch] = metrics
            job.history.extend(by_epoch[e] for e in sorted(by_epoch))
        return job

    _JOB_COLUMNS = "id, spec, state, create_time, start_time, end_time, error, model, device"

    def get_job(self, job_id: str, *, with_history: bool = True) -> training_pb2.TrainingJob:
        rows = self._query(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise errors.NotFound(f"training job 'trainingJobs/{job_id}' not found")
        return self._job_from_row(rows[0], with_history)

    def list_jobs(self, page_size: int, page_token: str) -> tuple[list[training_pb2.TrainingJob], str]:
        size, before = self._page(page_size, page_token)
        rows = self._query(
            f"SELECT seq, {self._JOB_COLUMNS} FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?", (before, size + 1)
        )
        token = str(rows[size - 1][0]) if len(rows) > size else ""
        return [self._job_from_row(r[1:], with_history=False) for r in rows[:size]], token

    def job_state(self, job_id: str) -> int:
        rows = self._query("SELECT state FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise errors.NotFound(f"training job 'trainingJobs/{job_id}' not found")
        return rows[0][0]

    def events_after(self, job_id: str, sequence: int) -> list[training_pb2.TrainingJobEvent]:
        rows = self._query(
            "SELECT sequence, event_time, state, epoch, message, error, model FROM events "
            "WHERE job_id = ? AND sequence > ? ORDER BY sequence",
            (job_id, sequence),
        )
        out = []
        for seq, when, state, epoch, message, error, model in rows:
            event = training_pb2.TrainingJobEvent(sequence=seq, event_time=timestamp(when), state=state, message=message, model=model)
            if epoch is not None:
                event.epoch.ParseFromString(epoch)
            if error is not None:
                event.error.ParseFromString(error)
            out.append(event)
        return out

    def claim_next_job(self, worker: str, device: str) -> training_pb2.TrainingJob | None:
        """Atomically move the oldest QUEUED job to RUNNING for `worker`."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = ? ORDER BY seq LIMIT 1", (State.QUEUED,)).fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute(
                "UPDATE jobs SET state = ?, start_time = COALESCE(start_time, ?), worker = ?, device = ?, attempts = attempts + 1 WHERE id = ?",
                (State.RUNNING, now, worker, device, row[0]),
            )
            self._event(db, row[0], State.RUNNING, f"running on {device}", now=now)
        return self.get_job(row[0])

    def job_attempts(self, job_id: str) -> int:
        return self._query("SELECT attempts FROM jobs WHERE id = ?", (job_id,))[0][0]

    def note(self, job_id: str, message: str) -> None:
        """An event in the job's stream that changes nothing (its state as it is), e.g. why it
        trains again from its first epoch."""
        with self._tx() as db:
            (state,) = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            self._event(db, job_id, state, message)

    def record_epoch(self, job_id: str, epoch: training_pb2.EpochMetrics, run_seconds: float = 0.0) -> None:
        """Appends an epoch to the job's history and adds ``run_seconds`` to its wall time, in one
        transaction (one fsync an epoch)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET run_seconds = run_seconds + ? WHERE id = ?", (run_seconds, job_id))
            (state,) = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            self._event(db, job_id, state, f"epoch {epoch.epoch} done", epoch=epoch)

    def finish_job(
        self,
        job_id: str,
        state: int,
        message: str,
        *,
        error: status_pb2.Status | None = None,
        model: models_pb2.Model | None = None,
    ) -> int:
        """Move a job to a terminal state (registering its model, if any) in one transaction; returns
        the state it ended in. A job whose cancel was accepted (CANCELLING) while its last steps ran
        ends CANCELLED, not SUCCEEDED: its model is neither registered nor published (a `latest`
        the client tried to stop would otherwise move to it), and the caller removes its files."""
        assert state in TERMINAL_STATES, state
        now = time.time()
        with self._tx() as db:
            (current,) = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if current == State.CANCELLING and state == State.SUCCEEDED:
                state, message, model = State.CANCELLED, "cancelled (after its last epoch: its model was discarded)", None
            if model is not None:
                db.execute("INSERT INTO models (id, proto) VALUES (?, ?)", (model.name.split("/", 1)[1], model.SerializeToString()))
                (spec,) = db.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
                job = training_pb2.TrainingJob.FromString(spec)
                if job.registered_model:  # publish as the next version, atomically with the job's success
                    registry.publish(db, model.name.split("/", 1)[1], job.registered_model, list(job.aliases), now)
            db.execute(
                "UPDATE jobs SET state = ?, end_time = ?, error = ?, model = ?, worker = '' WHERE id = ?",
                (state, now, error.SerializeToString() if error is not None else None, model.name if model else "", job_id),
            )
            self._event(db, job_id, state, message, error=error, model=model.name if model else "", now=now)
        return state

    def request_cancel(self, job_id: str) -> training_pb2.TrainingJob:
        """QUEUED -> CANCELLED at once; RUNNING -> CANCELLING (the worker finishes it)."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise errors.NotFound(f"training job 'trainingJobs/{job_id}' not found")
            state = row[0]
            if state in TERMINAL_STATES:
                raise errors.FailedPrecondition(
                    f"training job 'trainingJobs/{job_id}' already finished in state {State.Name(state)}; only QUEUED or RUNNING jobs can be cancelled"
                )
            now = time.time()
            if state == State.QUEUED:
                db.execute("UPDATE jobs SET state = ?, end_time = ? WHERE id = ?", (State.CANCELLED, now, job_id))
                self._event(db, job_id, State.CANCELLED, "cancelled before it started", now=now)
            elif state == State.RUNNING:
                db.execute("UPDATE jobs SET state = ? WHERE id = ?", (State.CANCELLING, job_id))
                self._event(db, job_id, State.CANCELLING, "cancel requested", now=now)
        return self.get_job(job_id)

    def recover_interrupted(self, message: str = "requeued after a restart") -> list[str]:
        """At start-up, before any worker runs: requeue RUNNING jobs, finish CANCELLING ones."""
        with self._tx() as db:
            running = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = ?", (State.RUNNING,))]
            for job_id in running:
                db.execute("UPDATE jobs SET state = ?, worker = '' WHERE id = ?", (State.QUEUED, job_id))
                self._event(db, job_id, State.QUEUED, message)
            now = time.time()
            for (job_id,) in db.execute("SELECT id FROM jobs WHERE state = ?", (State.CANCELLING,)).fetchall():
                db.execute("UPDATE jobs SET state = ?, end_time = ?, worker = '' WHERE id = ?", (State.CANCELLED, now, job_id))
                self._event(db, job_id, State.CANCELLED, "cancelled (the server restarted while stopping)", now=now)
        return running

    def requeue_orphan(self, worker: str, max_attempts: int, how: str = "") -> list[str]:
        """A worker process died (``how``: e.g. "killed by SIGKILL"): requeue its running job, or
        fail it after `max_attempts` tries."""
        why = f" ({how})" if how else ""
        rows = self._query("SELECT id, state, attempts FROM jobs WHERE worker = ? AND state IN (?, ?)", (worker, State.RUNNING, State.CANCELLING))
        out = []
        for job_id, state, attempts in rows:
            if state == State.CANCELLING:
                self.finish_job(job_id, State.CANCELLED, "cancelled")
            elif attempts >= max_attempts:
                err = status_pb2.Status(code=13, message=f"the worker process died {attempts} times while training this job{why}")
                self.finish_job(job_id, State.FAILED, err.message, error=err)
            else:
                with self._tx() as db:
                    db.execute("UPDATE jobs SET state = ?, worker = '' WHERE id = ?", (State.QUEUED, job_id))
                    self._event(db, job_id, State.QUEUED, f"requeued: the worker process died{why}")
            out.append(job_id)
        return out

    # ---- models ---------------------------------------------------------

    def get_model(self, model_id: str) -> models_pb2.Model:
        with self._lock:  # the row and its registry fields at one moment: not a version being deleted meanwhile
            rows = self._query("SELECT proto FROM models WHERE id = ?", (model_id,))
            if not rows:
                raise errors.NotFound(f"model 'models/{model_id}' not found")
            return self._decorate(models_pb2.Model.FromString(rows[0][0]))

    def get_model_by_name(self, name: str, field: str = "name") -> models_pb2.Model:
        """The model any name means (`resolve_model`, then `get_model`). A registry name whose
        model was deleted between the two reads is ModelGone: the request resolves it afresh."""
        model_id = self.resolve_model(name, field)
        try:
            return self.get_model(model_id)
        except errors.NotFound:
            if name.startswith("models/"):  # asked for by id: it is simply not there
                raise
            raise errors.ModelGone(f"model 'models/{model_id}' was deleted") from None

    def list_models(self, page_size: int, page_token: str) -> tuple[list[models_pb2.Model], str]:
        rows, token = self._list("models", "proto", page_size, page_token)
        return [self._decorate(models_pb2.Model.FromString(r[1])) for r in rows], token

    def _decorate(self, model: models_pb2.Model) -> models_pb2.Model:
        """Adds what changes after registration: registered model, version, aliases, batching."""
        with self._lock:
            registry.decorate(self._db, model)
        return model

    # ---- the model registry (registry.py holds the SQL) -----------------

    def resolve_model(self, name: str, field: str = "name") -> str:
        """Any model name (`models/{id}`, `registeredModels/{n}[@version|@alias]`) -> model id."""
        if name.startswith("models/"):
            return resource_id(name, "models", field)
        with self._lock:
            return registry.resolve(self._db, name, field)

    def publish_model(self, model_id: str, registered_model: str, aliases: list[str]) -> models_pb2.Model:
        with self._tx() as db:
            self._require_model(db, model_id)
            registry.publish(db, model_id, registered_model, aliases, time.time())
        return self.get_model(model_id)

    def get_registered_model(self, name: str) -> models_pb2.RegisteredModel:
        with self._lock:
            return registry.get(self._db, name)

    def list_registered_models(self, page_size: int, page_token: str) -> tuple[list[models_pb2.RegisteredModel], str]:
        rows, token = self._list("registered_models", "name", page_size, page_token)
        with self._lock:
            return [registry.get(self._db, "registeredModels/" + r[1]) for r in rows], token

    def list_model_versions(self, parent: str, page_size: int, page_token: str) -> tuple[list[models_pb2.Model], str]:
        size, before = self._page(page_size, page_token)
        with self._lock:
            short = registry.get(self._db, parent, field="parent").name.split("/", 1)[1]
        rows = self._query(
            "SELECT version, model_id FROM model_versions WHERE registered_model = ? AND version < ? ORDER BY version DESC LIMIT ?",
            (short, before, size + 1),
        )
        token = str(rows[size - 1][0]) if len(rows) > size else ""
        return [self.get_model(r[1]) for r in rows[:size]], token

    def set_alias(self, name: str, alias: str, version: int) -> models_pb2.RegisteredModel:
        with self._tx() as db:
            registry.set_alias(db, name, alias, version, time.time())
        return self.get_registered_model(name)

    def delete_alias(self, name: str, alias: str) -> models_pb2.RegisteredModel:
        with self._tx() as db:
            registry.delete_alias(db, name, alias, time.time())
        return self.get_registered_model(name)

    def delete_registered_model(self, name: str, force: bool) -> list[str]:
        """Deletes a registered model (with ``force``, its versions' models too, in the same
        transaction); returns those models' ids, whose files the caller removes."""
        with self._tx() as db:
            model_ids = registry.delete(db, name, force)
            for model_id in model_ids:
                self._drop_model_rows(db, model_id)
        return model_ids

    @staticmethod
    def _require_model(db: sqlite3.Connection, model_id: str) -> None:
        if not db.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchall():
            raise errors.NotFound(f"model 'models/{model_id}' not found")

    @staticmethod
    def _drop_model_rows(db: sqlite3.Connection, model_id: str) -> None:
        """A model's row and its batching override (its registry rows are the caller's)."""
        db.execute("DELETE FROM model_batching WHERE model_id = ?", (model_id,))
        db.execute("DELETE FROM models WHERE id = ?", (model_id,))

    def set_batching(self, model_id: str, batching: models_pb2.DynamicBatching | None) -> models_pb2.Model:
        with self._tx() as db:
            self._require_model(db, model_id)
            db.execute("DELETE FROM model_batching WHERE model_id = ?", (model_id,))
            if batching is not None:
                db.execute("INSERT INTO model_batching (model_id, proto) VALUES (?, ?)", (model_id, batching.SerializeToString()))
        return self.get_model(model_id)

    def model_ids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT id FROM models")}

    def delete_model(self, model_id: str) -> None:
        with self._tx() as db:
            self._require_model(db, model_id)
            registry.unpublish(db, model_id, time.time())  # refuses while a movable alias points at it
            self._drop_model_rows(db, model_id)
