"""The RPC process: `create_server(settings)` builds it, `serve(settings)` runs it with its workers."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pathlib
import select
import signal
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from gradwire.kserve import grpc_service_pb2, grpc_service_pb2_grpc
from gradwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import datasets, errors, files, reflection, shm, worker
from .config import Settings
from .inference import BatchingPolicy, SessionCache
from .interceptors import AuthInterceptor, ErrorInterceptor
from .servicers import wire
from .servicers.context import ServerState
from .servicers.datasets import DatasetServicer
from .servicers.kserve import KServeServicer, unserved_methods
from .servicers.models import ModelServicer
from .servicers.network import NetworkServicer
from .servicers.training import TrainingJobServicer
from .serving import ServingCache
from .shared_stats import SharedStats
from .shm import SharedMemoryRegions
from .store import Store

log = logging.getLogger("gradwire.server")

SERVICE_NAMES = (
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
    training_pb2.DESCRIPTOR.services_by_name["TrainingJobService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,  # KServe v2, same port
    network_pb2.DESCRIPTOR.services_by_name["NetworkService"].full_name,
)


def prepare_data_dir(settings: Settings, store: Store) -> None:
    """Start-up recovery: remove what interrupted writes left, requeue interrupted jobs."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    removed = files.clean_scratch(settings.data_dir) + datasets.remove_orphans(store, settings.data_dir)
    models_dir = settings.data_dir / "models"
    if models_dir.exists():
        known = store.model_ids()
        for d in models_dir.iterdir():
            if d.name not in known:
                files.remove_tree(d)
                removed += 1
    checkpoints_dir = settings.data_dir / "checkpoints"
    if checkpoints_dir.exists():  # a crash between a job's end and the removal of its checkpoint
        unfinished = store.unfinished_job_ids()
        for d in checkpoints_dir.iterdir():
            if d.name not in unfinished:
                files.remove_tree(d)
                removed += 1
    requeued = store.recover_interrupted()
    if removed or requeued:
        log.info("recovery: removed %d partial artifacts, requeued %d interrupted jobs", removed, len(requeued))


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """TLS from the PEM files; with tls_client_ca_file, clients must show a certificate it signed (mTLS)."""
    read = lambda path: pathlib.Path(path).read_bytes()  # noqa: E731
    client_ca = read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(read(settings.tls_key_file), read(settings.tls_cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class _Registration:
    """Stands in for the server while a generated add_*Servicer_to_server registers its method
    handlers, so that they can be changed before the real server gets them."""

    def __init__(self) -> None:
        self.service, self.handlers = "", {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, dict(handlers)


def _add_servicer(server: grpc.Server, add: Callable, servicer: Any, deserializers: dict[str, Callable[[bytes], Any]]) -> None:
    """``add(servicer, server)``, with the request deserializers of the methods named replaced."""
    registration = _Registration()
    add(servicer, registration)
    if not registration.service or not set(deserializers) <= set(registration.handlers):
        raise RuntimeError(f"the generated stubs registered {registration.service!r} with {sorted(registration.handlers)}")
    handlers = {name: handler._replace(request_deserializer=deserializers[name]) if name in deserializers else handler
                for name, handler in registration.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(registration.service, handlers),))
    server.add_registered_method_handlers(registration.service, handlers)


class Running:
    """A started server: the grpc.Server, its port, its state and health."""

    def __init__(self, server: grpc.Server, port: int, state: ServerState, health_servicer: health.HealthServicer,
                 kserve: KServeServicer) -> None:
        self.server, self.port, self.state, self.health = server, port, state, health_servicer
        self.kserve = kserve

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    def stop(self, grace: float | None) -> None:
        self.set_serving(False)
        self.server.stop(grace).wait()
        self.kserve.close()
        if self.state.shared_stats is not None:
            self.state.shared_stats.stop()
        if self.state.shm is not None:
            self.state.shm.close()
        self.state.serving.close()
        self.state.store.close()


def check_inference_device(settings: Settings) -> None:
    """A CUDA inference device asked for explicitly must be one onnxruntime can use: refused at
    start-up, not served on the CPU unnoticed. One inherited from the training device falls back to
    the CPU quietly: the plain onnxruntime package has no CUDA provider."""
    import onnxruntime as ort

    from .config import _env_name

    available = ort.get_available_providers()
    if settings.inference_device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        name = _env_name("inference_device")
        raise SystemExit(f"{name}={settings.inference_device}, but onnxruntime {ort.__version__} has no CUDA execution "
                         f"provider (it has {', '.join(available)}): install onnxruntime-gpu, or set {name}=cpu")


def check_data_dir(settings: Settings) -> None:
    """The data directory exists (made if need be) and this user can write in it, or the server
    does not start, saying so: not a traceback from deep in the store."""
    path = settings.data_dir
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(20, "it is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise SystemExit(f"gradwire serve: cannot use the data directory {str(path)!r} (GRADWIRE_DATA_DIR): "
                         f"{exc.strerror or exc}") from None


def open_store(settings: Settings, *, check: bool) -> Store:
    """The store, or the server does not start, saying so: a database that SQLite cannot read, or
    (with ``check``, before start-up recovery) one whose quick check finds damage. Recovery removes
    the datasets and models the database does not list, so it must not run on one that may have
    lost rows. (28 ms for a 39 MB database of 10,000 jobs.)"""
    path = settings.database_path
    try:
        store = Store(path)
        verdict = store.quick_check() if check else "ok"
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        first = " ".join(verdict.split())[:300]
        raise SystemExit(f"gradwire serve: the database {str(path)!r} is damaged (SQLite: {first}). The server does "
                         f"not start, and removes nothing: restore the database from a backup (with its -wal file, if "
                         f"any). The datasets, models and checkpoints under {str(settings.data_dir)!r} are as they were.")
    return store


def create_server(settings: Settings, *, recover: bool = True, serving: bool = True, slot: int = 0) -> Running:
    """Build and start the gRPC server (no workers); returns it with the bound port. ``recover``
    runs start-up recovery first: in the first RPC process only, since in a later one it would
    remove the uploads the others have in progress. ``serving``: health says SERVING at once
    (else the caller sets it)."""
    check_inference_device(settings)
    check_data_dir(settings)
    store = open_store(settings, check=recover)
    if recover:
        prepare_data_dir(settings, store)
    sessions = SessionCache(
        settings.data_dir,
        max_sessions=settings.max_sessions,
        max_bytes=settings.max_session_bytes,
        intra_op_threads=settings.session_threads(),
        spin_us=settings.inference_spin_us,
        idle_priority=settings.inference_idle_priority,
        move_callers=settings.rpc_processes == 1,
        optimization=settings.inference_optimization,
        device=settings.serving_device,
        batching=BatchingPolicy(settings.batching, settings.batch_max_size, settings.batch_max_delay_us / 1e6),
    )
    shared = SharedStats(settings.data_dir, slot, settings.rpc_processes, sessions) if settings.rpc_processes > 1 else None
    regions = SharedMemoryRegions(settings.data_dir) if settings.system_shared_memory and shm.available() else None
    state = ServerState(settings=settings, store=store, sessions=sessions, serving=ServingCache(store, sessions, follow=True),
                        shared_stats=shared, shm=regions)
    interceptors: list[grpc.ServerInterceptor] = [ErrorInterceptor(settings.data_dir)]
    if settings.auth_enabled:
        interceptors.insert(0, AuthInterceptor(settings.tokens()))  # outermost: refused before anything runs
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.rpc_threads, thread_name_prefix="rpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # RPC processes share the port; a single one holds it alone, so a second server started
            # on the same port fails at once instead of silently taking half the connections.
            ("grpc.so_reuseport", int(settings.rpc_processes > 1)),
        ],
    )
    _add_servicer(server, datasets_pb2_grpc.add_DatasetServiceServicer_to_server, DatasetServicer(state),
                  {"UploadDataset": wire.upload_request})  # chunks taken as they arrived
    training_pb2_grpc.add_TrainingJobServiceServicer_to_server(TrainingJobServicer(state), server)
    # Predict and ModelInfer read a large request's features where they arrived (servicers/wire.py)
    _add_servicer(server, models_pb2_grpc.add_ModelServiceServicer_to_server, ModelServicer(state),
                  {"Predict": wire.predict_request})
    kserve = KServeServicer(state)
    _add_servicer(server, grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, kserve,
                  {"ModelInfer": wire.model_infer_request, "ModelStreamInfer": wire.model_infer_request})
    server.add_generic_rpc_handlers((unserved_methods(),))  # Triton's methods gradwire does not serve, with why
    network_pb2_grpc.add_NetworkServiceServicer_to_server(NetworkServicer(state), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable((*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls_enabled:
            port = server.add_secure_port(address, server_credentials(settings))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        raise SystemExit(f"gradwire serve: could not listen on {address} (GRADWIRE_HOST, GRADWIRE_PORT): the port is "
                         f"in use, or the address is not one of this machine's")
    server.start()
    if shared is not None:
        shared.start()
    if settings.warm_aliases:
        state.serving.start_warming(settings.max_sessions)  # what aliases point at: a restart is no cold start
    running = Running(server, port, state, health_servicer, kserve)
    running.set_serving(serving)
    return running


def _clean_leftovers(settings: Settings, who: str, pid: int) -> None:
    """What a child process that died was writing: its uploads in progress (which also hold
    their share of the data quota) and its half-written checkpoint or export."""
    removed = files.clean_leftovers_of(settings.data_dir, pid)
    if removed:
        log.warning("removed %d unfinished file(s) or upload(s) of %s (pid %d)", removed, who, pid)


class _Children:
    """Spawned child processes, watched: one that dies is handed to ``_restart`` (on a monitor
    thread), and all are stopped together, SIGTERM first and SIGKILL past the timeout."""

    def __init__(self, monitor_name: str) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict = {}
        self._failing: set = set()  # children whose restart failed (said once)
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name=monitor_name, daemon=True)

    def _restart(self, key, proc: multiprocessing.Process) -> None:
        raise NotImplementedError

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for key, proc in list(self._procs.items()):
                if not proc.is_alive() and not self._stopping.is_set():
                    try:
                        self._restart(key, proc)
                    except Exception as exc:  # a full disk, say: the monitor goes on, and tries again at its next look
                        if key not in self._failing:  # said once, not every half second
                            self._failing.add(key)
                            log.warning("restarting %s failed (%s: %s); trying again every 0.5 s", key,
                                        type(exc).__name__, exc, exc_info=not errors.disk_full(exc))
                    else:
                        self._failing.discard(key)

    def terminate(self) -> None:
        """SIGTERM to each: it stops gracefully (within its grace period)."""
        self._stopping.set()
        for proc in list(self._procs.values()):
            if proc.is_alive():
                proc.terminate()

    def stop(self, timeout: float) -> None:
        self.terminate()
        for proc in list(self._procs.values()):
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()


RESTART_QUICK_S = 10.0  # a worker that dies sooner after its start is replaced after a growing delay
MAX_RESTART_DELAY_S = 30.0  # the longest a dead child (worker or RPC process) waits for its replacement


class WorkerPool(_Children):
    """Training worker processes, restarted if one dies (its job is requeued or, after retries,
    failed). On SIGTERM a worker stops at the next step; its job's checkpoint stays."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("worker-monitor")
        self.settings = settings
        self._store = Store(settings.database_path)
        self._generation = 0
        self._started: dict[str, float] = {}  # worker name -> when it was spawned (monotonic)
        self._dead_at: dict[str, float] = {}  # dead worker name -> when the monitor first saw it
        self._delay: dict[int, float] = {}  # slot -> how long its next replacement waits

    def _spawn(self, slot: int) -> None:
        self._generation += 1
        name = f"{socket.gethostname()}-{os.getpid()}-w{slot}.{self._generation}"
        proc = self._ctx.Process(target=worker.main, args=(self.settings, name, os.getpid()), name=name, daemon=False)
        proc.start()
        self._procs[name] = proc
        self._started[name] = time.monotonic()

    def start(self) -> None:
        for slot in range(self.settings.workers):
            self._spawn(slot)
        self._monitor.start()

    def _restart(self, name: str, proc: multiprocessing.Process) -> None:
        """Requeues (or fails) the dead worker's job, then starts another worker in its slot. One
        that died within RESTART_QUICK_S of its start (a full disk, say, where every start fails
        alike) is replaced after a delay that doubles, up to MAX_RESTART_DELAY_S. A requeue that fails is tried
        again at the monitor's next look (`_watch`), and the worker is replaced only after it."""
        slot, now = int(name.rsplit("-w", 1)[1].split(".")[0]), time.monotonic()
        if name not in self._dead_at:  # the first look at this death
            self._dead_at[name] = now
            lived = now - self._started.get(name, now)
            self._delay[slot] = min(2 * (self._delay.get(slot) or 0.5), MAX_RESTART_DELAY_S) if lived < RESTART_QUICK_S else 0.0
            log.error("worker %s exited with code %s after %.1f s; %s", name, proc.exitcode, lived,
                      f"restarting it in {self._delay[slot]:.0f} s" if self._delay[slot] else "restarting it")
            _clean_leftovers(self.settings, f"worker {name}", proc.pid)
        self._store.requeue_orphan(name, worker.MAX_ATTEMPTS, exit_description(proc.exitcode))  # a no-op once done
        if now < self._dead_at[name] + self._delay[slot]:
            return
        del self._procs[name], self._dead_at[name]
        self._started.pop(name, None)
        self._spawn(slot)

    def stop(self, timeout: float) -> None:
        super().stop(timeout)
        self._store.close()


def exit_description(code: int | None) -> str:
    """How a child process ended, for a job's error: its exit code or the signal that killed it.
    SIGKILL is what the kernel's out-of-memory killer sends: a job that needs more memory than the
    machine (or the container's limit) has ends this way when no allocation fails first."""
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return (f"killed by {name}, which the kernel's out-of-memory killer sends: the job may need more memory "
                "than the machine has; smaller batches (training.batching) or a smaller network need less")
    return f"killed by {name}"


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def rpc_process(settings: Settings, parent_pid: int, ready, slot: int) -> None:
    """One more RPC process on the same port (rpc_processes > 1). Stops gracefully on SIGTERM or
    SIGINT, and when the main process is gone (Linux sends SIGTERM then; elsewhere the loop below
    notices within 0.5 s). ``ready``: the write end of a pipe, written once listening; a pipe, not
    a shared lock, so a main process killed meanwhile cannot leave this one blocked."""
    _setup_logging(settings)
    stop = _StopSignals()  # before die_with_parent: its SIGTERM must find the handler
    worker.die_with_parent(parent_pid, signal.SIGTERM)
    running = create_server(settings, recover=False, slot=slot)
    worker.freeze_startup_objects()
    try:
        ready.send_bytes(b"listening")
        parent_alive = True
    except OSError:  # the main process is gone
        parent_alive = False
    ready.close()
    if parent_alive and stop.wait(0.5, lambda: os.getppid() == parent_pid) is None:
        log.warning("the main gradwire process is gone; this RPC process stops")
    # Whatever a handler thread is stuck in, this process is gone 10 s after its grace period:
    # an orphan would hold the port (and its share of connections) beside the next server.
    deadline = settings.grace_period_s + STOP_MARGIN_S
    watchdog = threading.Timer(deadline, _exit_stuck, args=(deadline,))
    watchdog.daemon = True
    watchdog.start()
    running.stop(settings.grace_period_s)


STOP_MARGIN_S = 10.0


class _StopSignals:
    """SIGTERM and SIGINT, waited for without a lock. The handlers only note the signal, and
    Python's wakeup fd wakes the wait. Handlers that set a threading.Event deadlocked: a second
    signal landing inside the first handler, while it held the Event's lock, ran the handler again
    in the same (main) thread, which then waited for that lock for ever (an RPC process hung so
    after its main process was killed; tests/test_shutdown.py shows it)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        signal.set_wakeup_fd(self._write)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.received.append(signum))

    def wait(self, poll_s: float | None = None, keep_going: Callable[[], bool] = lambda: True) -> int | None:
        """The first signal received, or None once ``keep_going()`` (asked every ``poll_s``) is False."""
        while not self.received:
            if not keep_going():
                return None
            select.select([self._read], [], [], poll_s)
            while select.select([self._read], [], [], 0)[0]:  # drain: the next wait blocks again
                os.read(self._read, 512)
        return self.received[0]


def _exit_stuck(after: float) -> None:
    log.error("this RPC process had not stopped %.0f s after it was asked to; exiting", after)
    logging.shutdown()
    os._exit(1)


class RpcPool(_Children):
    """The RPC processes beyond the first, serving the same port; one that dies is restarted
    (backing off, up to 30 s, while it dies before it listens)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("rpc-monitor")
        self.settings = settings
        self._ready: dict[int, Any] = {}  # slot -> the read end of its process's "listening" pipe
        self._listening: dict[int, bool] = {}
        self._delay: dict[int, float] = {}  # slot -> seconds before its next restart
        self._next_try: dict[int, float] = {}
        self._cleaned: dict[int, int] = {}  # slot -> the pid of its dead process whose leftovers are removed

    def _spawn(self, slot: int) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=rpc_process, args=(self.settings, os.getpid(), writer, slot), name=f"gradwire-rpc{slot}",
                                 daemon=False)
        proc.start()
        writer.close()  # the child's copy remains: its exit is EOF here
        self._procs[slot], self._ready[slot], self._listening[slot] = proc, reader, False

    def _is_listening(self, slot: int, wait: float = 0.0) -> bool:
        if not self._listening[slot] and self._ready[slot].poll(wait):
            try:
                self._listening[slot] = self._ready[slot].recv_bytes() == b"listening"
            except (EOFError, OSError):  # it exited before it listened
                pass
        return self._listening[slot]

    def start(self) -> None:
        """Starts them and waits until each is listening."""
        for slot in range(1, self.settings.rpc_processes):
            self._spawn(slot)
            self._delay[slot], self._next_try[slot] = 0.5, 0.0
        for slot, proc in self._procs.items():
            while not self._is_listening(slot, 0.1):
                if not proc.is_alive():
                    self.stop(0)
                    raise SystemExit(f"RPC process {slot} exited with code {proc.exitcode} while starting")
        self._monitor.start()

    def _restart(self, slot: int, proc: multiprocessing.Process) -> None:
        if self._cleaned.get(slot) != proc.pid:  # once per death, before its pid can be reused
            self._cleaned[slot] = proc.pid
            _clean_leftovers(self.settings, f"RPC process {slot}", proc.pid)
        if time.monotonic() < self._next_try[slot]:
            return
        self._delay[slot] = 0.5 if self._is_listening(slot) else min(2 * self._delay[slot], MAX_RESTART_DELAY_S)
        self._next_try[slot] = time.monotonic() + self._delay[slot]
        log.error("RPC process %d exited with code %s; restarting it", slot, proc.exitcode)
        self._spawn(slot)


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    _setup_logging(settings)
    running = create_server(settings, serving=False)
    worker.freeze_startup_objects()
    rpc = RpcPool(settings)
    try:
        rpc.start()  # after this process's recovery and schema migration
    except BaseException:
        running.stop(0)
        raise
    running.set_serving(True)  # health says SERVING once every RPC process listens
    pool = WorkerPool(settings)
    pool.start()
    log.info("gradwire listening on %s:%d, data in %s, %d RPC process(es), %d worker(s)", settings.host, running.port,
             settings.data_dir.resolve(), settings.rpc_processes, settings.workers)
    print(f"gradwire listening on port {running.port}", flush=True)

    stop = _StopSignals()
    signum = stop.wait()
    log.info("received %s; shutting down (grace %.1fs)", signal.Signals(signum).name, settings.grace_period_s)
    # Health turns NOT_SERVING at once (watchers and balancers see it), new RPCs are refused,
    # in-flight ones get the grace period; meanwhile the workers stop at their next step and
    # leave their job RUNNING with its last epoch checkpoint, to be requeued at the next start.
    running.set_serving(False)
    stopped = running.server.stop(settings.grace_period_s)
    rpc.terminate()  # the other RPC processes drain meanwhile
    pool.stop(timeout=settings.grace_period_s)
    rpc.stop(timeout=settings.grace_period_s + 5)
    stopped.wait()
    running.stop(0)
    log.info("stopped")


