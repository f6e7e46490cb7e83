"""Server configuration: one frozen dataclass, read once from flags and GRADWIRE_* variables.

Every setting has a flag (`--port`) and an environment variable (`GRADWIRE_PORT`);
a flag wins over the variable, the variable over the default. Ill-typed or
out-of-range values stop start-up with a message naming the setting and value.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import pathlib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

ENV_PREFIX = "GRADWIRE_"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the server and its worker need to know at start-up."""

    host: str = "[::]"
    """Address to listen on ("[::]" is every interface, IPv4 and IPv6)."""
    port: int = 50051
    """TCP port; 0 picks a free one (tests)."""
    data_dir: pathlib.Path = pathlib.Path("./gradwire-data")
    """Holds the SQLite store and every artifact (datasets, checkpoints, ONNX files)."""
    device: str = "auto"
    """Training device: "auto" (CUDA when present, else CPU), "cpu", or "cuda" / "cuda:N"."""
    inference_device: str = ""
    """Where onnxruntime serves predictions: "" (as `device`: onnxruntime-gpu's CUDA provider when it
    and a GPU are present, else the CPU), "auto" (the same, whatever `device` says), "cpu", or
    "cuda" / "cuda:N" (refused at start-up when this onnxruntime has no CUDA provider). "cpu" with
    training on a GPU leaves the GPU to training: a small model's one-row call costs about the same
    on the CPU (the digits CNN: 0.17 ms against 0.14 ms on an H100)."""
    workers: int = 1
    """Training worker processes (each trains one job at a time)."""
    rpc_processes: int = 1
    """Processes serving RPCs on the one port (SO_REUSEPORT), each with its own threads, model
    sessions and batcher; the kernel spreads incoming connections (not calls) across them. More
    than one needs a fixed port. For many-core machines, where one Python process's RPC threads
    contend for its interpreter lock."""
    rpc_threads: int = 64
    """Threads serving RPCs. Each in-flight call holds one (a Watch stream for its whole life, a
    Predict while it waits for its batch), so this bounds the concurrent requests that can merge."""
    max_watch_streams: int = 0
    """WatchTrainingJob streams open at once (0: a quarter of rpc_threads). Each holds an RPC thread
    for its job's whole run; past the limit a watch is RESOURCE_EXHAUSTED (the SDK's job.wait() then
    polls), so watchers can never take every thread from predictions and health checks."""
    max_infer_streams: int = 0
    """ModelStreamInfer streams open at once (0: a quarter of rpc_threads). Each holds an RPC thread
    for its whole life; past the limit a new stream is RESOURCE_EXHAUSTED. With max_watch_streams
    it must leave RPC threads for unary calls and health checks."""
    infer_stream_in_flight: int = 32
    """Requests of one ModelStreamInfer stream in progress at once (and at most max_message_bytes
    of them; a larger one alone): enough for a stream of one-row requests to merge in the batcher,
    and for a stream of large ones to overlap transfer with compute. Past it the stream's next
    requests wait unread (the client's sends back up)."""
    grace_period_s: float = 10.0
    """On SIGTERM: how long in-flight RPCs get to finish."""
    max_upload_bytes: int = 2 * 1024**3
    """Largest dataset upload (features + labels)."""
    max_inline_examples: int = 100_000
    """Largest dataset carried inline in a CreateTrainingJob request."""
    max_message_bytes: int = 64 * 1024**2
    """Largest single gRPC message the server accepts (uploads stream in chunks)."""
    inference_threads: int = 0
    """onnxruntime intra-op threads per session (0: onnxruntime's default with one RPC process,
    which pins its workers to CPUs; with several, the process's CPUs shared out among them:
    `session_threads`)."""
    inference_spin_us: int = -1
    """How long onnxruntime's idle intra-op threads spin for more work before they sleep, in
    microseconds (-1: onnxruntime's default; 0: no spinning). Spinning saves a wake-up per call
    (without it a one-row Predict took 0.86 ms here, against 0.63) but keeps a core busy for tens
    of milliseconds after a call: see inference_idle_priority."""
    inference_idle_priority: bool = True
    """Run onnxruntime's intra-op worker threads (CPU provider) in Linux's idle scheduling class, so
    that while they spin between calls they give their core at once to any thread that wants it
    (RPC threads, clients, training). On the 2-core bench machine it cut the one-row p99 by half
    or more and left p50 as it was. No effect off Linux."""
    max_sessions: int = 32
    """onnxruntime sessions kept loaded (least recently used are evicted)."""
    max_session_bytes: int = 0
    """And at most about this many bytes of loaded sessions in each RPC process: their ONNX files', and
    what their arenas kept of their largest call, as estimated from the network (least recently
    used evicted when a session loads; one stays whatever its size). 0: no bound but max_sessions."""
    warm_aliases: bool = True
    """At start-up, each RPC process loads (and runs once) the models that aliases point at, up to
    max_sessions, while it serves: a restart is no cold start. False: each loads at its first
    request (less memory, on a GPU too, where many aliased models get no traffic)."""
    inference_optimization: str = "all"
    """onnxruntime graph optimization level: "disable", "basic", "extended" or "all"."""
    batching: bool = True
    """Dynamic batching: merge concurrent small predictions to one model into one onnxruntime call."""
    batch_max_size: int = 64
    """Dynamic batching: most rows in one merged call (a model's override wins)."""
    batch_max_delay_us: int = 0
    """Dynamic batching: how long a batch may also wait for company when the model is free, in
    microseconds (0: never; while the model is busy, requests always wait for it and merge)."""
    poll_interval_s: float = 0.2
    """How often an idle worker and a Watch stream query the store even when its change counter has
    not moved (they look at the counter every 20 ms, and query as soon as it moves)."""
    checkpoint_budget: float = 0.1
    """Largest share of a job's time its checkpoint saves may take: after a save of s seconds the
    next starts at least s * (1 - budget) / budget later, and the epochs ending meanwhile are
    reported when it covers them (1: every epoch, as soon as the last save is done)."""
    log_level: str = "INFO"
    """Python logging level."""

    # ---- limits (every one answers RESOURCE_EXHAUSTED, or fails the job, with the setting's name) ----
    data_quota_bytes: int = 100 * 1024**3
    """Total bytes the data directory may hold; an upload that would go past it is refused."""
    max_parameters: int = 100_000_000
    """Largest network, in trainable parameters (counted from the spec, before any weight exists)."""
    max_epochs: int = 10_000
    """Most epochs one job may ask for."""
    max_job_seconds: float = 24 * 3600.0
    """Wall time a job may train (summed over restarts); past it the job ends FAILED."""
    max_queued_jobs: int = 1000
    """Jobs that may wait in QUEUED; CreateTrainingJob beyond it is RESOURCE_EXHAUSTED."""
    max_concurrent_rpcs: int = 256
    """RPCs in flight at once (streams included); more are refused with RESOURCE_EXHAUSTED."""
    worker_nice: int = 0
    """Niceness added to worker processes (0-19): higher favours predictions over training when CPUs are scarce."""

    # ---- who gets in ----
    auth_tokens: str = dataclasses.field(default="", repr=False)
    """Comma-separated bearer tokens; any one of them is accepted. Auth is on when this or auth_tokens_file is set."""
    auth_tokens_file: str = ""
    """File of bearer tokens, one per line ('#' starts a comment)."""
    tls_cert_file: str = ""
    """PEM certificate chain of the server; with tls_key_file, the server speaks TLS only."""
    tls_key_file: str = ""
    """PEM private key of the server."""
    tls_client_ca_file: str = ""
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    reflection: bool = True
    """Serve gRPC server reflection (what `grpcurl list/describe` use)."""
    system_shared_memory: bool = True
    """Serve Triton's system shared memory extension on the KServe API: clients on the server's
    host pass tensors through POSIX shared memory objects they register, instead of the
    connection. Any client that can call the server can then read and write the shared memory
    objects the server's user can open: turn it off where untrusted clients can reach the port."""

    def session_threads(self) -> int:
        """The intra-op threads each onnxruntime session gets (0: onnxruntime's default).

        With several RPC processes and no thread count set, each process's sessions get its share
        of the CPUs: with its default, every process's onnxruntime pinned its workers to the same
        CPUs 1..k, where they and the processes' callers collided. On 2 cores with 2 processes,
        (c)'s 32 one-row clients of the 4096-wide MLP, batching on, got 1,250-1,258 requests/s
        (p99 44 ms) with one thread each against 888-1,018 (p99 155-162 ms) with the default."""
        if self.inference_threads or self.rpc_processes == 1:
            return self.inference_threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cpus // self.rpc_processes)

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "workers": self.workers >= 1,
            "rpc_processes": 1 <= self.rpc_processes <= 64,
            "rpc_threads": self.rpc_threads >= 1,
            "max_watch_streams": self.max_watch_streams == 0 or 1 <= self.max_watch_streams < self.rpc_threads,
            "max_infer_streams": self.max_infer_streams == 0 or 1 <= self.max_infer_streams < self.rpc_threads,
            "infer_stream_in_flight": 1 <= self.infer_stream_in_flight <= 1024,
            "grace_period_s": self.grace_period_s >= 0,
            "max_upload_bytes": self.max_upload_bytes > 0,
            "max_inline_examples": self.max_inline_examples > 0,
            "max_message_bytes": self.max_message_bytes >= 1024**2,
            "inference_threads": self.inference_threads >= 0,
            "inference_spin_us": self.inference_spin_us >= -1,
            "max_sessions": self.max_sessions >= 1,
            "max_session_bytes": self.max_session_bytes >= 0,
            "inference_optimization": self.inference_optimization in {"disable", "basic", "extended", "all"},
            "batch_max_size": self.batch_max_size >= 1,
            "batch_max_delay_us": self.batch_max_delay_us >= 0,
            "poll_interval_s": self.poll_interval_s > 0,
            "checkpoint_budget": 0 < self.checkpoint_budget <= 1,
            "log_level": self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"},
            "data_quota_bytes": self.data_quota_bytes > 0,
            "max_parameters": self.max_parameters >= 1,
            "max_epochs": self.max_epochs >= 1,
            "max_job_seconds": self.max_job_seconds > 0,
            "max_queued_jobs": self.max_queued_jobs >= 1,
            "max_concurrent_rpcs": self.max_concurrent_rpcs >= 1,
            "worker_nice": 0 <= self.worker_nice <= 19,
            "tls_key_file": bool(self.tls_cert_file) == bool(self.tls_key_file),
            "tls_client_ca_file": not self.tls_client_ca_file or bool(self.tls_cert_file),
            "device": _is_device(self.device),
            "inference_device": self.inference_device == "" or _is_device(self.inference_device),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid setting {name} ({_env_name(name)}): got {getattr(self, name)!r}")
        explicit = self.max_watch_streams or self.max_infer_streams  # the defaults bend to a tiny rpc_threads
        if explicit and self.watch_streams + self.infer_streams >= self.rpc_threads:
            raise ValueError(f"invalid settings max_watch_streams ({_env_name('max_watch_streams')}) and max_infer_streams "
                             f"({_env_name('max_infer_streams')}): {self.watch_streams} + {self.infer_streams} long-lived "
                             f"streams would take every one of the {self.rpc_threads} RPC threads ({_env_name('rpc_threads')})")
        if self.rpc_processes > 1 and self.port == 0:
            raise ValueError(f"invalid setting rpc_processes ({_env_name('rpc_processes')}): {self.rpc_processes} processes "
                             f"share one port, so they need a fixed one ({_env_name('port')}), not 0")
        for name in ("auth_tokens_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(self, name)
            if path and not pathlib.Path(path).is_file():
                raise ValueError(f"invalid setting {name} ({_env_name(name)}): {path!r} is not a readable file")
        if any(not t or any(c.isspace() for c in t) for t in self.tokens()) or (
            (self.auth_tokens or self.auth_tokens_file) and not self.tokens()
        ):
            # never echo a token: the message names the setting only
            raise ValueError("invalid setting auth_tokens / auth_tokens_file: tokens must be non-empty and without spaces")

    def tokens(self) -> tuple[str, ...]:
        """Every accepted bearer token (empty: authentication is off)."""
        tokens = [t.strip() for t in self.auth_tokens.split(",") if t.strip()]
        if self.auth_tokens_file:
            for line in pathlib.Path(self.auth_tokens_file).read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    tokens.append(line)
        return tuple(tokens)

    @property
    def serving_device(self) -> str:
        """Where predictions run: inference_device, or the training device when it is unset."""
        return self.inference_device or self.device

    @property
    def watch_streams(self) -> int:
        """WatchTrainingJob streams open at once (max_watch_streams, or its default)."""
        return self.max_watch_streams or max(1, self.rpc_threads // 4)

    @property
    def infer_streams(self) -> int:
        """ModelStreamInfer streams open at once (max_infer_streams, or its default)."""
        return self.max_infer_streams or max(1, self.rpc_threads // 4)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens or self.auth_tokens_file)

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def database_path(self) -> pathlib.Path:
        return self.data_dir / "gradwire.db"


def _is_device(value: str) -> bool:
    """"auto", "cpu", "cuda" or "cuda:N"."""
    return value in ("auto", "cpu") or value.startswith("cuda")


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _coerce(field: dataclasses.Field, raw: str) -> Any:
    kind = typing.get_type_hints(Settings)[field.name]
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError
            return lowered in {"1", "true", "yes"}
        return kind(raw)
    except ValueError:
        raise ValueError(f"invalid setting {field.name} ({_env_name(field.name)}): {raw!r} is not a valid {kind.__name__}") from None


def setting_docs() -> dict[str, str]:
    """Each Settings field's docstring (the string under it in this file), for `--help`; empty
    where the source cannot be read."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(Settings))
    except (OSError, TypeError):  # no source shipped
        return {}
    body = tree.body[0].body
    docs = {}
    for field, after in itertools.pairwise(body):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not one inside "e.g." or a number)."""
    for i, ch in enumerate(text):
        if ch == "." and (i + 1 == len(text) or text[i + 1] == " ") and not text[max(0, i - 3):i + 1].endswith(("e.g.", "i.e.")):
            return text[:i + 1]
    return text


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from command-line flags, then GRADWIRE_* variables, then defaults.

    Unknown GRADWIRE_* variables are refused, so a typo never passes silently.
    """
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    known_env = {_env_name(name) for name in fields}
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known_env)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known_env))}")

    parser = argparse.ArgumentParser(prog="gradwire serve", description="Run the gradwire server and its training worker.",
                                     epilog="Every setting's whole description: README.md, Configuration.")
    docs = setting_docs()
    for name, field in fields.items():
        default = field.default if field.default != "" else "unset"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"{first_sentence(docs.get(name, ''))} (env {_env_name(name)}, default {default!s})".lstrip().replace("%", "%%"),
        )
    args = parser.parse_args(list(argv) if argv is not None else [])

    values: dict[str, Any] = {}
    for name, field in fields.items():
        raw = getattr(args, name)
        if raw is None:
            raw = environ.get(_env_name(name))
        if raw is not None:
            values[name] = _coerce(field, raw)
    return Settings(**values)
