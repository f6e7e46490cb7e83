"""Server configuration: one frozen dataclass, read once from flags and GRADWIRE_* variables.

Every setting has a flag (`--port`) and an environment variable (`GRADWIRE_PORT`);
a flag wins over the variable, the variable over the default. Ill-typed or
out-of-range values stop start-up with a message naming the setting and value.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    workers: int = 1
    """Training worker processes (each trains one job at a time)."""
    rpc_threads: int = 16
    """Threads serving RPCs."""
    grace_period_s: float = 10.0
    """On SIGTERM: how long in-flight RPCs get to finish."""
    max_upload_bytes: int = 2 * 1024**3
    """Largest dataset upload (features + labels)."""
    max_inline_examples: int = 100_000
    """Largest dataset carried inline in a CreateTrainingJob request."""
    max_message_bytes: int = 64 * 1024**2
    """Largest single gRPC message the server accepts (uploads stream in chunks)."""
    inference_threads: int = 0
    """onnxruntime intra-op threads per session (0: onnxruntime's default)."""
    max_sessions: int = 32
    """onnxruntime sessions kept loaded (least recently used are evicted)."""
    inference_optimization: str = "all"
    """onnxruntime graph optimization level: "disable", "basic", "extended" or "all"."""
    batching: bool = True
    """Dynamic batching: merge concurrent small predictions to one model into one onnxruntime call."""
    batch_max_size: int = 64
    """Dynamic batching: most rows in one merged call (a model's override wins)."""
    batch_max_delay_us: int = 2000
    """Dynamic batching: longest a request waits for others while the model is busy, in microseconds."""
    poll_interval_s: float = 0.2
    """How often the worker and Watch streams look at the store for news."""
    log_level: str = "INFO"
    """Python logging level."""

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "workers": self.workers >= 1,
            "rpc_threads": self.rpc_threads >= 1,
            "grace_period_s": self.grace_period_s >= 0,
            "max_upload_bytes": self.max_upload_bytes > 0,
            "max_inline_examples": self.max_inline_examples > 0,
            "max_message_bytes": self.max_message_bytes >= 1024**2,
            "inference_threads": self.inference_threads >= 0,
            "max_sessions": self.max_sessions >= 1,
            "inference_optimization": self.inference_optimization in {"disable", "basic", "extended", "all"},
            "batch_max_size": self.batch_max_size >= 1,
            "batch_max_delay_us": self.batch_max_delay_us >= 0,
            "poll_interval_s": self.poll_interval_s > 0,
            "log_level": self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"},
            "device": self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid setting {name} ({_env_name(name)}): got {getattr(self, name)!r}")

    @property
    def database_path(self) -> pathlib.Path:
        return self.data_dir / "gradwire.db"


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

    parser = argparse.ArgumentParser(prog="gradwire serve", description="Run the gradwire server and its training worker.")
    for name, field in fields.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"(env {_env_name(name)}, default {field.default!s})",
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
