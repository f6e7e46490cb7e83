"""Predictions through onnxruntime: tuned sessions, an LRU bound on them, and dynamic batching.

Sessions: graph optimization level and intra-op threads from the settings; the
CUDA execution provider when onnxruntime-gpu and a GPU are present, the CPU
otherwise. At most `max_sessions` stay loaded (least recently used evicted). On the CPU
provider the intra-op workers spin at idle priority, and a long call runs off the CPUs
onnxruntime pinned them to (`_worker_threads`, `_Loaded.run_now`).

Dynamic batching (`Batcher`, one per loaded model): concurrent small requests to
one model are merged into one onnxruntime call of at most `max_batch_size` rows,
one call at a time per model (as one Triton model instance). A request that finds
the model idle runs at once (no added latency when there is no concurrency);
while a call is running, new requests queue, and the first of them (the leader)
runs the queue as one batch as soon as the running call finishes or the queue
holds `max_batch_size` rows. `max_delay` (Triton's max_queue_delay, 0 by
default) lets the leader also wait that long after its arrival for more requests
even when the model is free: larger batches for more latency. Every caller gets
exactly its own rows, bit-identical to running the request alone
(tests/test_batching.py checks it with concurrent clients). On the CPU provider
onnxruntime computes each row of these graphs independently of the others. On
the CUDA provider a row's answer depends on the number of rows it runs among
(cuBLAS and cuDNN pick their kernels by shape; on an H100, nearly every row of the
bench's CNN and MLP came out different inside a batch than alone), though not on
what the other rows hold. So there every execution of fewer than `max_batch_size`
rows, a request alone or a merged batch, is padded with zeros to `max_batch_size`
rows (tests/test_gpu.py checks it; bench/gpu_probe.py measures it).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import pathlib
import threading
import time
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort

from . import errors

log = logging.getLogger("gradwire.inference")
MODEL_FILE = "model.onnx"
# A call expected to take this long runs with its caller off the CPUs onnxruntime pinned its
# workers to (`_Loaded.run_now`); a shorter one is not worth the two system calls and the move.
MOVE_CALLER_NS = 200_000
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def model_path(data_dir: pathlib.Path, model_id: str) -> pathlib.Path:
    from .files import inside

    return inside(data_dir, "models", model_id, MODEL_FILE)


# The CUDA provider's options. TF32 off: onnxruntime turns it on by default, and its float32 matrix
# products then round to 10 bits of mantissa, far from the answers the export's parity check
# verified (1e-4) on the CPU. cuDNN's heuristic, not its exhaustive benchmark of every convolution
# algorithm: that runs again at every new batch size, and dynamic batching makes many.
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}


def providers(device: str = "auto") -> list:
    """CUDA when onnxruntime-gpu and a GPU are present (and `device` allows it), the CPU otherwise."""
    available = ort.get_available_providers()
    out: list = []
    if device != "cpu" and "CUDAExecutionProvider" in available:
        _load_cuda_libraries()
        device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        out.append(("CUDAExecutionProvider", {"device_id": device_id, **CUDA_OPTIONS}))
    out.append("CPUExecutionProvider")
    return out


@functools.cache
def _load_cuda_libraries() -> None:
    """onnxruntime-gpu's CUDA provider needs the CUDA runtime, cuBLAS and cuDNN loaded when a session
    starts. In the image they are the nvidia-* wheels PyTorch depends on, outside the loader's path:
    importing torch loads them, and onnxruntime then uses those (as its documentation advises)."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:  # the SDK-only install has no torch; onnxruntime then searches on its own
        log.info("CUDA libraries not preloaded (%s); onnxruntime looks for them on the loader's path", exc)


def _provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


_session_loads = itertools.count(1)


class _Workers:
    """What `_worker_threads` found: the session's intra-op workers (native thread ids), the CPUs
    onnxruntime pinned them to (empty: none pinned, or none found), and the CPUs the loading
    thread could run on."""

    def __init__(self) -> None:
        self.tids: tuple[int, ...] = ()
        self.cpus: frozenset[int] = frozenset()
        self.allowed: frozenset[int] = frozenset()
        self.pinning = False  # onnxruntime was expected to pin them (its default thread count)

    def read_cpus(self) -> frozenset[int]:
        """The CPUs the workers are pinned to now (kept in ``cpus``); empty while none is."""
        self.cpus = frozenset().union(*(cpus for cpus in map(_affinity, self.tids) if cpus is not None and cpus != self.allowed))
        return self.cpus

    def unsettled(self) -> bool:
        """Workers that onnxruntime should pin and had not pinned yet when they were looked at."""
        return self.pinning and bool(self.tids) and not self.cpus

    def caller_cpus(self) -> frozenset[int] | None:
        """Where a caller should run a long call: the allowed CPUs no worker is pinned to; None
        when there are none such (no worker pinned, or workers on every CPU)."""
        free = self.allowed - self.cpus
        return free if self.cpus and free else None


PIN_WAIT_S = 0.1  # how long a load waits for onnxruntime's workers to pin themselves (they do it as they start)
PIN_SETTLE_S = 5.0  # after that, how long a session's calls look again for workers pinned late (a busy machine)


@contextlib.contextmanager
def _worker_threads(idle: bool, pinning: bool) -> Iterator[_Workers]:
    """Finds the threads the block starts (onnxruntime's intra-op workers, which a session starts
    when it is created): which CPUs they are pinned to, and, with ``idle``, puts them in Linux's
    idle scheduling class, SCHED_IDLE.

    Pinned: with its default thread count (``pinning``), onnxruntime pins worker k to CPU k and
    leaves CPU 0 to the caller, as if one caller sat there. An RPC thread sits on any CPU; one that
    landed on a worker's CPU shared it with that worker while another CPU stood idle.
    `_Loaded.run_now` moves the caller of a long call off the workers' CPUs (measured there). A
    worker pins itself as it starts, which may come after the session is made: the load waits
    for it, PIN_WAIT_S at most.

    Idle: after each call those workers spin for more work (30-40 ms of a core after a burst of
    calls on this 2-core VM). At normal priority, a thread that needed their core (an RPC thread, a
    client, a training job) waited for the end of the spinner's time slice: 1.4-2.8% of
    back-to-back one-row Predicts took 3-4 ms instead of 0.6. A thread of the idle class gives way
    at once, and a core it spins on counts as free. It still computes at full speed when nothing
    else wants the core.

    The threads are told apart by their name, which a Linux thread inherits from the one that
    starts it: the block runs with a name of its own (restored after), and the threads of this
    process that carry it are the block's. Anything missing (not Linux, no /proc) leaves the
    threads as they are, and the `_Workers` empty."""
    found = _Workers()
    me = threading.get_native_id()
    try:
        allowed = frozenset(os.sched_getaffinity(0))
        with open(f"/proc/self/task/{me}/comm") as f:
            own = f.read().rstrip("\n")
        mark = f"gw-ort-{next(_session_loads) % 100_000}"  # at most 15 bytes, Linux's limit
        with open(f"/proc/self/task/{me}/comm", "w") as f:
            f.write(mark)
    except (OSError, AttributeError) as exc:  # not Linux, or no /proc
        log.debug("onnxruntime's threads stay as they start: %s", exc)
        yield found
        return
    try:
        yield found
    finally:
        try:
            with open(f"/proc/self/task/{me}/comm", "w") as f:
                f.write(own)
        except OSError as exc:  # not worth hiding the block's own error for
            log.debug("thread %s keeps the name %s: %s", me, mark, exc)
        tids = []
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    if f.read().rstrip("\n") != mark or int(tid) == me:
                        continue
                if idle:
                    os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
                tids.append(int(tid))
            except OSError as exc:  # a thread gone meanwhile
                log.debug("thread %s stays as it started: %s", tid, exc)
        found.tids, found.allowed, found.pinning = tuple(tids), allowed, pinning
        deadline = time.monotonic() + (PIN_WAIT_S if pinning and tids else 0)
        while not found.read_cpus() and time.monotonic() < deadline:
            time.sleep(0.001)


def _affinity(tid: int) -> set[int] | None:
    """A thread's CPUs; None once it is gone."""
    try:
        return os.sched_getaffinity(tid)
    except OSError:
        return None


@dataclasses.dataclass(frozen=True)
class BatchingPolicy:
    """How one model's requests are merged (the server's defaults, or the model's override)."""

    enabled: bool = True
    max_batch_size: int = 64
    max_delay_s: float = 0.0
    call_rows: int = 0  # the most rows one onnxruntime call runs (more run as several calls); 0: no bound
    row_bytes: int = 0  # about the activation memory one row of a call holds (the session's arena); 0: unknown


@dataclasses.dataclass
class BatchStats:
    """What a Batcher did: onnxruntime calls, rows, requests, and the largest merged call."""

    calls: int = 0
    rows: int = 0
    requests: int = 0
    max_rows: int = 0
    max_requests: int = 0


class ModelStats:
    """What one model version served, as Triton's statistics extension reports it (KServe's
    ModelStatistics): requests and their rows, executions (onnxruntime calls: a merged batch, or
    each part of one that ran in several calls, `BatchingPolicy.call_rows`) by batch size, and
    the cumulative nanoseconds of each stage. Per request: compute_input from the call's
    arrival until it reaches the batcher (decoding, checks), queue until its execution starts,
    compute_infer the execution (its whole batch's), compute_output until its response is built."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_inference_ms = 0
        self.inference_count = 0  # rows of successful requests
        self.execution_count = 0
        # name -> [count, ns]
        self.requests = {k: [0, 0] for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")}
        self.batches: dict[int, list[int]] = {}  # rows -> [executions, input ns, infer ns, output ns]

    def executed(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        with self._lock:
            self.execution_count += 1
            b = self.batches.setdefault(rows, [0, 0, 0, 0])
            b[0] += 1
            b[1] += input_ns
            b[2] += infer_ns
            b[3] += output_ns

    def succeeded(self, t: Timing, now: int) -> None:
        stages = (("success", now - t.arrived), ("compute_input", t.enter - t.arrived), ("queue", t.start - t.enter),
                  ("compute_infer", t.end - t.start), ("compute_output", now - t.end))
        with self._lock:
            self.inference_count += t.rows
            self.last_inference_ms = time.time_ns() // 1_000_000
            for name, ns in stages:
                c = self.requests[name]
                c[0] += 1
                c[1] += ns

    def failed(self, ns: int) -> None:
        with self._lock:
            c = self.requests["fail"]
            c[0] += 1
            c[1] += ns

    def snapshot(self) -> ModelStats:
        """A copy, consistent at one moment."""
        copy = ModelStats()
        with self._lock:
            copy.last_inference_ms, copy.inference_count = self.last_inference_ms, self.inference_count
            copy.execution_count = self.execution_count
            copy.requests = {k: list(v) for k, v in self.requests.items()}
            copy.batches = {k: list(v) for k, v in self.batches.items()}
        return copy

    def add(self, other: ModelStats) -> None:
        """Adds another process's counts to these (a snapshot's: no lock is taken)."""
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        for name, (count, ns) in other.requests.items():
            self.requests[name][0] += count
            self.requests[name][1] += ns
        for rows, values in other.batches.items():
            mine = self.batches.setdefault(rows, [0, 0, 0, 0])
            for i, v in enumerate(values):
                mine[i] += v

    def to_json(self) -> dict:
        return {"last_inference_ms": self.last_inference_ms, "inference_count": self.inference_count,
                "execution_count": self.execution_count, "requests": self.requests,
                "batches": {str(rows): v for rows, v in self.batches.items()}}

    @classmethod
    def from_json(cls, d: dict) -> ModelStats:
        stats = cls()
        stats.last_inference_ms, stats.inference_count = d["last_inference_ms"], d["inference_count"]
        stats.execution_count = d["execution_count"]
        stats.requests = {k: list(v) for k, v in d["requests"].items()}
        stats.batches = {int(rows): list(v) for rows, v in d["batches"].items()}
        return stats


class Timing:
    """One request's moments (perf_counter_ns), filled in as it goes; as a context manager around
    the request's handling, it counts the request into its model's `ModelStats` at the end,
    as a success or, when an exception leaves the block, a failure."""

    __slots__ = ("stats", "arrived", "enter", "start", "end", "rows")

    def __init__(self, stats: ModelStats, arrived: int) -> None:
        self.stats, self.arrived = stats, arrived
        self.enter = self.start = self.end = arrived
        self.rows = 0

    def __enter__(self) -> Timing:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        now = time.perf_counter_ns()
        if kind is None:
            self.stats.succeeded(self, now)
        else:
            self.stats.failed(now - self.arrived)


class _Pending:
    __slots__ = ("features", "done", "output", "error", "lead", "timing")

    def __init__(self, features: np.ndarray, timing: Timing | None) -> None:
        self.features = features
        self.done = threading.Event()
        self.output: np.ndarray | None = None
        self.error: BaseException | None = None
        self.lead = False  # promoted to leader of the next batch
        self.timing = timing


def padded_rows(policy: BatchingPolicy) -> int:
    """The rows every smaller execution is padded to on the CUDA provider: max_batch_size, or the
    model's call_rows where that is fewer (padding must not take a call past its memory bound)."""
    return min(policy.max_batch_size, policy.call_rows) if policy.call_rows else policy.max_batch_size


class Batcher:
    """Merges concurrent requests to one session into one run (see the module docstring)."""

    def __init__(self, run, model_stats: ModelStats | None = None, *, fixed_rows: bool = False) -> None:
        self._run = run  # features [batch, ...] -> output [batch, ...]
        self._fixed_rows = fixed_rows  # pad executions of fewer rows to padded_rows (module docstring)
        self._model_stats = model_stats if model_stats is not None else ModelStats()
        self._cv = threading.Condition()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._running = 0
        self._has_leader = False
        self.stats = BatchStats()

    def __call__(self, features: np.ndarray, policy: BatchingPolicy, timing: Timing | None = None) -> np.ndarray:
        """`timing`, when given, gets the moments this request reached the batcher, and its
        execution started and ended."""
        if timing is not None:
            timing.enter = time.perf_counter_ns()
            timing.rows = len(features)
        if not policy.enabled or len(features) >= policy.max_batch_size:
            return self._direct(features, policy, timing)
        with self._cv:
            if not self._running and not self._has_leader and not policy.max_delay_s:
                self._running += 1  # the model is idle: run at once, with no batch to form
                me = None
            else:
                me = _Pending(features, timing)
                self._queue.append(me)
                self._queued_rows += len(features)
                if self._has_leader:
                    self._cv.notify_all()  # the leader re-checks whether the batch is full
                    lead = False
                else:
                    self._has_leader = lead = True
        if me is None:
            return self._direct(features, policy, timing, counted=True)
        if not lead:
            me.done.wait()
            if not me.lead:
                return self._result(me)
        return self._lead(me, policy)

    def _execute(self, features: np.ndarray, policy: BatchingPolicy, calls: list[tuple[int, int]]) -> np.ndarray:
        """One onnxruntime call; with `fixed_rows`, at padded_rows(policy) rows when it has fewer. More
        rows than `policy.call_rows` run as several calls, one after another, so that a large
        request to a model with large activations never holds them all at once (onnxruntime's
        arena keeps what a call took: a 64 MB request of (3, 256, 256) images through a 128-filter
        convolution would take 2.8 GB a tensor). Each call's rows (the real ones, not the padding)
        and nanoseconds are appended to ``calls``: each is an execution in the statistics."""
        rows, step = len(features), policy.call_rows
        if step and rows > step:
            return np.concatenate([self._execute(features[i:i + step], policy, calls) for i in range(0, rows, step)])
        fixed = padded_rows(policy)
        start = time.perf_counter_ns()
        try:
            if not self._fixed_rows or rows >= fixed:
                out = self._run(features)
            else:
                padded = np.zeros((fixed, *features.shape[1:]), dtype=features.dtype)
                padded[:rows] = features
                out = self._run(padded)[:rows]
        except Exception as exc:
            if (failed := errors.failed_allocation(exc)) is None:
                raise
            raise errors.ResourceExhausted(
                f"the model ran out of memory on a call of {max(rows, fixed) if self._fixed_rows else rows} rows{failed}: send "
                "fewer rows a request, or give the server more memory") from exc
        calls.append((rows, time.perf_counter_ns() - start))
        return out

    def _count(self, calls: list[tuple[int, int]], requests: int, input_ns: int = 0, output_ns: int = 0) -> None:
        """One execution's calls into the model's statistics (the merge's and the split's
        nanoseconds go to its first and last call) and the batcher's; the caller holds ``_cv``."""
        s, last = self.stats, len(calls) - 1
        for i, (rows, ns) in enumerate(calls):
            self._model_stats.executed(rows, input_ns if i == 0 else 0, ns, output_ns if i == last else 0)
            s.rows += rows
            s.max_rows = max(s.max_rows, rows)
        s.calls += len(calls)
        s.requests += requests
        s.max_requests = max(s.max_requests, requests)

    def _direct(self, features: np.ndarray, policy: BatchingPolicy, timing: Timing | None,
                counted: bool = False) -> np.ndarray:
        """A call of its own (`counted`: `_running` already counts it)."""
        if not counted:
            with self._cv:
                self._running += 1
        calls: list[tuple[int, int]] = []
        start = time.perf_counter_ns()
        try:
            out = self._execute(features, policy, calls)
            if timing is not None:
                timing.start, timing.end = start, time.perf_counter_ns()
        finally:
            with self._cv:
                self._running -= 1
                self._count(calls, 1)
                self._cv.notify_all()
        return out

    def _lead(self, me: _Pending, policy: BatchingPolicy) -> np.ndarray:
        deadline = time.monotonic() + policy.max_delay_s
        with self._cv:
            # Wait for company while the model is busy (it frees up for this batch), and for at
            # most max_delay after arriving when it is not; a full batch goes at once.
            while self._queued_rows < policy.max_batch_size:
                remaining = deadline - time.monotonic()
                if not self._running and remaining <= 0:
                    break
                self._cv.wait(remaining if remaining > 0 else None)
            batch, rows = [], 0
            while self._queue and (not batch or rows + len(self._queue[0].features) <= policy.max_batch_size):
                p = self._queue.popleft()
                batch.append(p)
                rows += len(p.features)
            self._queued_rows -= rows
            if self._queue:  # hand the rest to a new leader
                nxt = self._queue[0]
                nxt.lead = True
                nxt.done.set()
            else:
                self._has_leader = False
            self._running += 1
        assert batch[0] is me
        calls: list[tuple[int, int]] = []
        input_ns = output_ns = 0
        try:
            started = time.perf_counter_ns()
            merged = batch[0].features if len(batch) == 1 else np.concatenate([p.features for p in batch])
            ran = time.perf_counter_ns()
            out = self._execute(merged, policy, calls)
            ended = time.perf_counter_ns()
        except BaseException as exc:  # every caller of the batch sees the failure
            for p in batch:
                p.error = exc
        else:
            start = 0
            for p in batch:
                p.output = out[start:start + len(p.features)]
                start += len(p.features)
                if p.timing is not None:
                    p.timing.start, p.timing.end = started, ended
            input_ns, output_ns = ran - started, time.perf_counter_ns() - ended
        finally:
            with self._cv:
                self._running -= 1
                self._count(calls, len(batch), input_ns, output_ns)
                self._cv.notify_all()
        for p in batch[1:]:
            p.lead = False
            p.done.set()
        return self._result(me)

    @staticmethod
    def _result(p: _Pending) -> np.ndarray:
        if p.error is not None:
            raise p.error
        assert p.output is not None
        return p.output


class _Loaded:
    """One loaded model: its session, its input name and its batcher (which pads small executions
    to a fixed number of rows on the CUDA provider: see the module docstring)."""

    def __init__(self, session: ort.InferenceSession, model_stats: ModelStats, workers: _Workers | None = None, *,
                 move_callers: bool = True, file_bytes: int = 0) -> None:
        self.session = session
        self.workers = workers or _Workers()
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"  # what it got, not what it asked
        # where a long call runs: off the workers' CPUs (_worker_threads); None: where it is
        self.caller_cpus = self.workers.caller_cpus() if move_callers else None
        # Workers not pinned yet when the load stopped waiting for them (PIN_WAIT_S: on a busy
        # machine they start late): the calls look again, for PIN_SETTLE_S (`_settle_pinning`).
        self._pin_pending = move_callers and self.workers.unsettled()
        self._loaded_at = time.monotonic()
        self._last = (0, 0)  # the last call's rows and nanoseconds
        self.file_bytes = file_bytes  # its ONNX file's size (SessionCache's max_bytes)
        self.policy = BatchingPolicy()  # the one its last request ran with (SessionCache.run): for held_bytes
        self.batcher = Batcher(self.run_now, model_stats, fixed_rows=self.on_cuda)

    def held_bytes(self) -> int:
        """About what the session holds: its ONNX file's bytes (the weights, prepacked), and what its
        arena kept of its largest call, that call's rows times the policy's row_bytes (onnxruntime's
        arena keeps its peak: after a 1,024-row call of the 4096-wide MLP, 64 MB; after calls of
        call_rows rows, about INFER_BYTES, 256 MiB). On the CUDA provider a call runs at least
        padded_rows rows."""
        rows = self.batcher.stats.max_rows
        if rows and self.on_cuda:
            rows = max(rows, padded_rows(self.policy))
        return self.file_bytes + rows * self.policy.row_bytes

    def run_now(self, features: np.ndarray) -> np.ndarray:
        """One onnxruntime call. A long one runs with its caller moved off the CPUs onnxruntime
        pinned the workers to, where it shared a CPU with a worker whenever it had landed there
        (`_worker_threads`), and back after. Long: MOVE_CALLER_NS or more, foreseen from the
        session's last call in proportion to the rows. It moves only while no other long call is
        in progress: long calls at once (batching off, several models) share the same workers,
        and moved they would crowd onto the same CPUs. A short call takes no lock.

        Measured on 2 cores, two servers in alternation, 1,024-row Predicts of the digits CNN: p50
        1.99-2.38 ms against 2.55-3.07, onnxruntime's part 1.26-1.46 ms against 1.52-1.70. A one-row
        call of that CNN takes 17-60 us and stays where it is."""
        if self.caller_cpus is None:
            if self._pin_pending:
                self._settle_pinning()
            if self.caller_cpus is None:
                (output,) = self.session.run([self.output_name], {self.input_name: features})
                return output
        rows, (last_rows, last_ns) = len(features), self._last
        if not last_rows or last_ns * rows < MOVE_CALLER_NS * last_rows:  # short: where it is, nothing counted
            return self._timed_run(features)
        with _long_call() as alone, on_cpus(self.caller_cpus if alone else None):
            return self._timed_run(features)

    def _settle_pinning(self) -> None:
        """Looks again for the workers' CPUs, until they are pinned or PIN_SETTLE_S has passed since
        the load (then they stay as they are, and every call runs where its caller is). Racing
        callers set the same values."""
        if self.workers.read_cpus():
            self.caller_cpus = self.workers.caller_cpus()
            self._pin_pending = False
        elif time.monotonic() - self._loaded_at > PIN_SETTLE_S:
            self._pin_pending = False

    def _timed_run(self, features: np.ndarray) -> np.ndarray:
        """One call, its rows and nanoseconds kept to foresee the next one's."""
        start = time.perf_counter_ns()
        (output,) = self.session.run([self.output_name], {self.input_name: features})
        self._last = (len(features), time.perf_counter_ns() - start)
        return output


@contextlib.contextmanager
def on_cpus(cpus: frozenset[int] | None) -> Iterator[None]:
    """Runs the block with the calling thread on those of ``cpus`` it may run on, and moves it
    back after; where it is when ``cpus`` is None or leaves it nowhere else to go."""
    own = os.sched_getaffinity(0) if cpus else None
    there = own & cpus if own is not None else None
    if not there or there == own:
        yield
        return
    os.sched_setaffinity(0, there)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


@contextlib.contextmanager
def _long_call() -> Iterator[bool]:
    """Counts a long call in progress for the block; yields whether it is the only one."""
    global _moving_calls
    with _moving_lock:
        _moving_calls += 1
        alone = _moving_calls == 1
    try:
        yield alone
    finally:
        with _moving_lock:
            _moving_calls -= 1


# Long calls in progress, of the sessions whose calls may move (`_Loaded.run_now`)
_moving_lock = threading.Lock()
_moving_calls = 0


class SessionCache:
    """Loaded onnxruntime sessions keyed by model id; at most `max_sessions` stay loaded, and with
    `max_bytes` at most about that many bytes (`_Loaded.held_bytes`: their ONNX files' and, as
    estimated, their arenas'), the most recent one whatever its size. The bound is applied when a
    session loads, so a request to a loaded model pays nothing for it."""

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        max_sessions: int = 32,
        max_bytes: int = 0,
        intra_op_threads: int = 0,
        spin_us: int = -1,
        idle_priority: bool = True,
        move_callers: bool = True,
        optimization: str = "all",
        device: str = "auto",
        batching: BatchingPolicy = BatchingPolicy(),
    ) -> None:
        self._data_dir = data_dir
        self._max = max_sessions
        self._max_bytes = max_bytes  # 0: no bound
        self._threads = intra_op_threads
        self._spin_us = spin_us  # -1: onnxruntime's default; 0: no spinning
        self._idle_priority = idle_priority  # onnxruntime's CPU threads in the idle class (_worker_threads)
        # Long calls' callers off the CPUs onnxruntime pins its workers to (_Loaded.run_now). Not with
        # several RPC processes: every process's workers are pinned to the same CPUs, and every
        # process's callers would then crowd onto the same few others.
        self._move_callers = move_callers
        self._optimization = OPTIMIZATION_LEVELS[optimization]
        self._providers = providers(device)
        self.default_policy = batching
        self._loaded: collections.OrderedDict[str, _Loaded] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._model_stats: dict[str, ModelStats] = {}  # kept across evictions, as long as this process runs
        self._sha256: dict[str, str] = {}  # model id -> its ONNX file's sha256, as its export wrote it (`expect`)

    def expect(self, model_id: str, sha256: str) -> None:
        """The sha256 the model's ONNX file had when its export wrote it: its session's load hashes
        the file first (a 76 MB MLP loaded in 221-224 ms with it, 175-206 ms without) and refuses other
        bytes, DATA_LOSS. A flipped byte among the weights would otherwise load, and serve other
        answers than the ones the export verified."""
        if sha256:
            self._sha256[model_id] = sha256

    def _load(self, model_id: str) -> _Loaded:
        path = model_path(self._data_dir, model_id)
        gone = f"model 'models/{model_id}' is gone: its ONNX file was deleted"
        try:
            file_bytes = path.stat().st_size
            expected = self._sha256.get(model_id)
            if expected:
                digest = hashlib.sha256()
                with open(path, "rb") as f:  # (hashlib.file_digest is Python 3.11's; this package runs on 3.10)
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                found = digest.hexdigest()
                if found != expected:
                    raise errors.DataLoss(
                        f"model 'models/{model_id}' cannot load: its ONNX file ({file_bytes} bytes) has sha256 {found}, "
                        f"where its export wrote {expected}: it was damaged since. Train the model again, or restore the file")
        except FileNotFoundError:  # a model's file is written before its row: only a deletion takes it away
            raise errors.ModelGone(gone) from None
        options = ort.SessionOptions()
        options.graph_optimization_level = self._optimization
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a Sequential network: nothing to run in parallel
        if self._threads:
            options.intra_op_num_threads = self._threads
        if self._spin_us == 0:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif self._spin_us > 0:  # onnxruntime >= 1.26
            options.add_session_config_entry("session.intra_op.spin_duration_us", str(self._spin_us))
        asked = _provider_name(self._providers[0])
        # On the CUDA provider the workers hardly run, and the block would catch CUDA's own threads.
        on_cpu = asked == "CPUExecutionProvider"
        pinning = not self._threads  # onnxruntime pins its workers only with its default thread count
        try:
            with _worker_threads(self._idle_priority, pinning) if on_cpu else contextlib.nullcontext(_Workers()) as workers:
                session = ort.InferenceSession(str(path), sess_options=options, providers=self._providers)
        except Exception as exc:
            if not path.exists():  # deleted while it loaded
                raise errors.ModelGone(gone) from None
            if (failed := errors.failed_allocation(exc)) is not None:
                raise errors.ResourceExhausted(
                    f"loading model 'models/{model_id}' ({file_bytes / 2**20:.1f} MiB of ONNX) ran out of memory{failed}: "
                    "keep fewer sessions loaded (GRADWIRE_MAX_SESSIONS, GRADWIRE_MAX_SESSION_BYTES), or give the server "
                    "more memory") from exc
            # onnxruntime refused the file (not this code, nor its execution provider): say so, not INTERNAL
            if type(exc).__module__.startswith("onnxruntime") and type(exc).__name__ != "EPFail":
                said = " ".join(str(exc).replace(str(path), "<its file>").split())
                raise errors.DataLoss(
                    f"model 'models/{model_id}' cannot load: onnxruntime {ort.__version__} cannot read its ONNX file "
                    f"({file_bytes} bytes), which passed the parity check when it was exported; it was damaged since, or "
                    f"this onnxruntime cannot run it. Train the model again, or restore the file: {said}") from exc
            raise
        got = session.get_providers()[0]
        if got != asked:  # onnxruntime falls back to the CPU when a provider does not load: say so
            log.warning("model %s: %s did not load (onnxruntime's own message says why); serving it on %s",
                        model_id, asked, got)
        else:
            log.info("model %s loaded on %s", model_id, got)
        return _Loaded(session, self.model_stats(model_id), workers, move_callers=self._move_callers, file_bytes=file_bytes)

    def _get(self, model_id: str) -> _Loaded:
        with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is not None:
                self._loaded.move_to_end(model_id)
                return loaded
            loading = self._loading[model_id]
        try:
            with loading:  # one load per model, outside the cache lock: loading can take a while
                with self._lock:
                    loaded = self._loaded.get(model_id)
                if loaded is None:
                    loaded = self._load(model_id)
                    with self._lock:
                        self._loaded[model_id] = loaded
                        while len(self._loaded) > self._max or (
                                self._max_bytes and len(self._loaded) > 1
                                and sum(s.held_bytes() for s in self._loaded.values()) > self._max_bytes):
                            self._loaded.popitem(last=False)
        except errors.ModelGone:
            self.evict(model_id)  # the statistics a request just started for it go, as a deletion's did
            raise
        finally:
            with self._lock:
                self._loading.pop(model_id, None)
        return loaded

    def get(self, model_id: str) -> ort.InferenceSession:
        return self._get(model_id).session

    def warm(self, model_id: str, input_shape: tuple[int, ...], policy: BatchingPolicy | None = None) -> None:
        """Loads the model's session now and runs it once on zeros (its first run sets up
        onnxruntime's buffers: 10 ms against 3 for a 76 MB MLP; on the CUDA provider cuDNN picks its
        algorithms for the shape, 6-9 ms), so that its first request finds it ready. One row, or on
        the CUDA provider padded_rows (max_batch_size, or call_rows where fewer), the shape its small
        requests run at. The
        run is not counted in the model's statistics."""
        loaded = self._get(model_id)
        rows = padded_rows(policy or self.default_policy) if loaded.on_cuda else 1
        loaded.run_now(np.zeros((rows, *input_shape), dtype=np.float32))

    def placement(self, model_id: str) -> int | None:
        """Where the model runs: the CUDA device's index, or None for the CPU. A loaded model says
        where its session is (the CPU when CUDA did not load); one not loaded yet, where it would be."""
        with self._lock:
            loaded = self._loaded.get(model_id)
        on_cuda = loaded.on_cuda if loaded is not None else _provider_name(self._providers[0]) == "CUDAExecutionProvider"
        return self._providers[0][1]["device_id"] if on_cuda else None

    def io_names(self, model_id: str) -> tuple[str, str]:
        """The graph's input and output names, read once when the session loaded."""
        loaded = self._get(model_id)
        return loaded.input_name, loaded.output_name

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def model_stats(self, model_id: str) -> ModelStats:
        """The model's statistics (created at its first use)."""
        with self._lock:
            stats = self._model_stats.get(model_id)
            if stats is None:
                stats = self._model_stats[model_id] = ModelStats()
            return stats

    def model_stats_ids(self) -> list[str]:
        """The models this process has statistics of."""
        with self._lock:
            return list(self._model_stats)

    def all_model_stats(self) -> dict[str, ModelStats]:
        """A snapshot of every model's statistics in this process."""
        with self._lock:
            items = list(self._model_stats.items())
        return {model_id: stats.snapshot() for model_id, stats in items}

    def timing(self, model_id: str, arrived: int) -> Timing:
        """A request's `Timing`, to use as ``with sessions.timing(...) as t:`` around its handling."""
        return Timing(self.model_stats(model_id), arrived)

    def stats(self, model_id: str) -> BatchStats:
        return dataclasses.replace(self._get(model_id).batcher.stats)

    def evict(self, model_id: str) -> None:
        """A deleted model: its session and its statistics go."""
        with self._lock:
            self._loaded.pop(model_id, None)
            self._model_stats.pop(model_id, None)

    def policy(self, override=None) -> BatchingPolicy:
        """The server's defaults with a model's DynamicBatching override (zero / unset fields keep the default)."""
        p = self.default_policy
        if override is None:
            return p
        return BatchingPolicy(
            enabled=override.enabled if override.HasField("enabled") else p.enabled,
            max_batch_size=override.max_batch_size or p.max_batch_size,
            max_delay_s=override.max_delay_micros / 1e6 if override.max_delay_micros else p.max_delay_s,
        )

    def run(self, model_id: str, features: np.ndarray, policy: BatchingPolicy | None = None,
            timing: Timing | None = None) -> np.ndarray:
        """features: float32 [batch, ...input_shape] -> the graph's single output [batch, outputs]."""
        loaded = self._get(model_id)
        policy = policy or self.default_policy
        loaded.policy = policy
        return loaded.batcher(features, policy, timing)
