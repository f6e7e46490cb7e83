"""Thin wrappers around the API's resources: each holds its proto (``.proto``) and
the client that fetched it, and offers the calls that concern it.

    >>> import gradwire as gw                                 # doctest: +SKIP
    >>> with gw.Client("localhost:50051") as client:          # doctest: +SKIP
    ...     job = client.get_job("trainingJobs/abc123")
    ...     job.state, job.history[-1].train_loss
    ('RUNNING', 0.41)
"""

from __future__ import annotations

import datetime
import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
import numpy as np

from gradwire._errors import (
    DeadlineExceededError,
    ResourceExhaustedError,
    TrainingCancelledError,
    TrainingFailedError,
    UnavailableError,
    status_code,
)
from gradwire._layers import INT64_MAX, Sequential, check_bool, check_int, check_timeout
from gradwire._summary import Evaluation
from gradwire.v1 import datasets_pb2, models_pb2, network_pb2, training_pb2

if TYPE_CHECKING:
    from os import PathLike

    from gradwire._client import Client

__all__ = ["Dataset", "TrainingJob", "Model", "JobState", "EpochMetrics", "TrainingEvent", "Prediction", "ModelStatistics"]

P = TypeVar("P")


class _Default:
    def __repr__(self) -> str:
        return "<client default>"


DEFAULT: Any = _Default()  # a ``timeout=`` that means "the client's default deadline" (None means none)
_LABEL_KINDS = {datasets_pb2.LABEL_KIND_CLASSES: "classes", datasets_pb2.LABEL_KIND_REGRESSION: "regression",
                datasets_pb2.LABEL_KIND_MULTI_LABEL: "multi_label"}
_NORMALIZATIONS = {
    network_pb2.INPUT_NORMALIZATION_NONE: "none",
    network_pb2.INPUT_NORMALIZATION_MIN_MAX: "min_max",
    network_pb2.INPUT_NORMALIZATION_STANDARDIZE: "standardize",
}
# Reconnecting a broken Watch stream: exponential backoff, give up after this many failures in a row.
_RECONNECT_ATTEMPTS = 10
_RECONNECT_MAX_DELAY_S = 4.0
_POLL_FIRST_DELAY_S = 0.2  # wait() polling GetTrainingJob when the server has no watch stream to spare
_POLL_MAX_DELAY_S = 2.0


class JobState(str, enum.Enum):
    """A training job's lifecycle state; compares equal to its name (``state == "RUNNING"``)."""

    STATE_UNSPECIFIED = "STATE_UNSPECIFIED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        return cls(training_pb2.TrainingJob.State.Name(value))

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class EpochMetrics:
    """Metrics of one finished epoch (``None`` where the proto leaves a metric unset)."""

    epoch: int
    iterations: int
    train_loss: float
    validation_loss: float | None
    validation_accuracy: float | None
    train_accuracy: float | None
    learning_rate: float
    samples_per_second: float
    elapsed_seconds: float
    max_gradient_norm: float | None = None  # with gradient clipping: the largest pre-clipping norm
    examples: int = 0  # examples that took part in steps (fewer with drop_last)

    @classmethod
    def from_proto(cls, m: training_pb2.EpochMetrics) -> EpochMetrics:
        def opt(name: str) -> float | None:
            return getattr(m, name) if m.HasField(name) else None

        return cls(
            epoch=m.epoch,
            iterations=m.iterations,
            train_loss=m.train_loss,
            validation_loss=opt("validation_loss"),
            validation_accuracy=opt("validation_accuracy"),
            train_accuracy=opt("train_accuracy"),
            learning_rate=m.learning_rate,
            samples_per_second=m.samples_per_second,
            elapsed_seconds=m.elapsed_seconds,
            max_gradient_norm=opt("max_gradient_norm"),
            examples=m.examples,
        )


@dataclass(frozen=True)
class TrainingEvent:
    """One event of a job's history, as ``watch()`` streams it."""

    sequence: int
    time: datetime.datetime | None
    state: JobState
    epoch: EpochMetrics | None  # set for epoch events
    message: str
    model: str | None  # `models/{id}`, for the SUCCEEDED event
    error_code: grpc.StatusCode | None  # for the FAILED event
    error_message: str | None
    proto: training_pb2.TrainingJobEvent = field(repr=False)

    @classmethod
    def from_proto(cls, e: training_pb2.TrainingJobEvent) -> TrainingEvent:
        failed = e.HasField("error") and e.error.code != 0
        return cls(
            sequence=e.sequence,
            time=_time(e, "event_time"),
            state=JobState.from_proto(e.state),
            epoch=EpochMetrics.from_proto(e.epoch) if e.HasField("epoch") else None,
            message=e.message,
            model=e.model or None,
            error_code=status_code(e.error.code) if failed else None,
            error_message=e.error.message if failed else None,
            proto=e,
        )


@dataclass(frozen=True)
class Prediction:
    """Everything Predict returns for a batch.

    Classifiers fill ``probabilities`` (n, classes; rows sum to 1), ``classes``
    (n,) int64 indices and ``class_names`` (n names, when the model has names);
    regression models fill ``values`` (n, targets). Multi-label models fill
    ``probabilities`` with one independent probability per label, ``classes`` with
    the most probable label, and ``label_sets`` / ``label_set_names``: per example,
    the labels above 0.5 (possibly none). Arrays are read-only views of the
    response bytes.
    """

    probabilities: np.ndarray | None
    classes: np.ndarray | None
    class_names: list[str]
    values: np.ndarray | None
    label_sets: list[list[int]] | None = None
    label_set_names: list[list[str]] | None = None


@dataclass(frozen=True)
class ModelStatistics:
    """What the server answered for one model version since it started (KServe's
    ModelStatistics, Triton's statistics extension), from ``client.statistics(model)``.

    ``requests`` and ``rows`` count successful calls and the examples in them; ``executions``
    counts onnxruntime calls, so ``rows / executions`` is the mean merged batch; ``batches``
    maps a batch size to how many calls had it. The ``*_us`` figures are means per successful
    request, in microseconds: ``latency_us`` from arrival until the response was built, made of
    ``input_us`` (decoding, checks), ``queue_us`` (waiting for the model's batcher), ``infer_us``
    (the call that computed it, its whole batch's) and ``output_us`` (building the response).
    """

    name: str
    version: str
    requests: int
    rows: int
    executions: int
    failures: int
    latency_us: float
    input_us: float
    queue_us: float
    infer_us: float
    output_us: float
    batches: dict[int, int]
    last_inference: datetime.datetime | None

    @classmethod
    def from_proto(cls, m: Any) -> ModelStatistics:
        s = m.inference_stats
        n = s.success.count

        def mean_us(d: Any) -> float:
            return d.ns / n / 1e3 if n else 0.0

        return cls(
            name=m.name, version=m.version, requests=n, rows=m.inference_count, executions=m.execution_count,
            failures=s.fail.count, latency_us=mean_us(s.success), input_us=mean_us(s.compute_input),
            queue_us=mean_us(s.queue), infer_us=mean_us(s.compute_infer), output_us=mean_us(s.compute_output),
            batches={b.batch_size: b.compute_infer.count for b in m.batch_stats},
            last_inference=datetime.datetime.fromtimestamp(m.last_inference / 1000, datetime.timezone.utc)
            if m.last_inference else None,
        )


def _quoted(display_name: str) -> str:
    return f" {display_name!r}" if display_name else ""


def _time(message: Any, name: str) -> datetime.datetime | None:
    if not message.HasField(name):
        return None
    return getattr(message, name).ToDatetime(tzinfo=datetime.timezone.utc)


class _Resource(Generic[P]):
    """A resource proto plus the client that can act on it."""

    def __init__(self, client: Client, proto: P) -> None:
        self._client = client
        self.proto: P = proto

    @property
    def name(self) -> str:
        """Resource name, e.g. ``datasets/abc123``."""
        return self.proto.name  # type: ignore[attr-defined,no-any-return]

    @property
    def display_name(self) -> str:
        return self.proto.display_name  # type: ignore[attr-defined,no-any-return]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.proto == self.proto  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable: refresh() replaces the proto


class Dataset(_Resource[datasets_pb2.Dataset]):
    """An uploaded, immutable dataset (``datasets/{id}``)."""

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example's features, e.g. ``(1, 8, 8)``."""
        return tuple(self.proto.feature_shape)

    @property
    def example_count(self) -> int:
        return self.proto.example_count

    @property
    def label_kind(self) -> str | None:
        """``"classes"`` or ``"regression"``."""
        return _LABEL_KINDS.get(self.proto.label_kind)

    @property
    def class_names(self) -> list[str]:
        return list(self.proto.class_names)

    @property
    def class_count(self) -> int:
        return self.proto.class_count

    @property
    def target_count(self) -> int:
        return self.proto.target_count

    @property
    def sha256(self) -> str:
        return self.proto.sha256

    @property
    def size_bytes(self) -> int:
        return self.proto.size_bytes

    @property
    def create_time(self) -> datetime.datetime | None:
        return _time(self.proto, "create_time")

    def refresh(self) -> Dataset:
        self.proto = self._client.get_dataset(self.name).proto
        return self

    def delete(self) -> None:
        self._client.delete_dataset(self.name)

    def __repr__(self) -> str:
        kind = (f"classes={self.class_count}" if self.label_kind in ("classes", "multi_label")
                else f"targets={self.target_count}")
        return (
            f"<Dataset {self.name}{_quoted(self.display_name)}: {self.example_count} x "
            f"{list(self.feature_shape)}, {kind}>"
        )


class Model(_Resource[models_pb2.Model]):
    """A trained network, exported to ONNX and served by the server (``models/{id}``).

    >>> probs = model.predict(X[:5])        # doctest: +SKIP
    >>> model.download("digits.onnx")       # doctest: +SKIP
    """

    @property
    def training_job(self) -> str:
        return self.proto.training_job

    @property
    def dataset(self) -> str:
        return self.proto.dataset

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 8, 8)``; ``predict`` takes ``(n, *input_shape)``."""
        return tuple(self.proto.input_shape)

    @property
    def label_kind(self) -> str | None:
        """``"classes"`` or ``"regression"``."""
        return _LABEL_KINDS.get(self.proto.label_kind)

    @property
    def class_names(self) -> list[str]:
        return list(self.proto.class_names)

    @property
    def output_size(self) -> int:
        return self.proto.output_size

    @property
    def input_normalization(self) -> str | None:
        return _NORMALIZATIONS.get(self.proto.input_normalization)

    @property
    def network(self) -> Sequential:
        return Sequential.from_proto(self.proto.network)

    @property
    def parameter_count(self) -> int:
        return self.proto.parameter_count

    @property
    def final_metrics(self) -> EpochMetrics | None:
        """Metrics of the epoch whose weights the model holds."""
        return EpochMetrics.from_proto(self.proto.final_metrics) if self.proto.HasField("final_metrics") else None

    @property
    def train_evaluation(self) -> Evaluation | None:
        """Scores on the training split with the model's weights."""
        return Evaluation.from_proto(self.proto.train_evaluation)

    @property
    def validation_evaluation(self) -> Evaluation | None:
        """Scores on the validation split (None without one)."""
        return Evaluation.from_proto(self.proto.validation_evaluation)

    @property
    def test_evaluation(self) -> Evaluation | None:
        """Scores on the job's test data, evaluated once at the end (None without any)."""
        return Evaluation.from_proto(self.proto.test_evaluation)

    @property
    def epochs_trained(self) -> int:
        return self.proto.epochs_trained

    @property
    def parity_max_abs_diff(self) -> float:
        """Max |onnxruntime - PyTorch| on held-back examples (the server requires <= 1e-4)."""
        return self.proto.parity_max_abs_diff

    @property
    def onnx_sha256(self) -> str:
        return self.proto.onnx_sha256

    @property
    def onnx_size_bytes(self) -> int:
        return self.proto.onnx_size_bytes

    @property
    def create_time(self) -> datetime.datetime | None:
        return _time(self.proto, "create_time")

    @property
    def registered_model(self) -> str:
        """``registeredModels/{name}`` this is a version of ("" when never published)."""
        return self.proto.registered_model

    @property
    def version(self) -> int:
        """Its version number in ``registered_model`` (0 when never published)."""
        return self.proto.version

    @property
    def aliases(self) -> list[str]:
        """Aliases pointing at this version, ``latest`` included when it is the newest."""
        return list(self.proto.aliases)

    def predict(self, features: Any, *, timeout: float | None = DEFAULT) -> np.ndarray:
        """Same as ``client.predict(model, features)``."""
        return self._client.predict(self, features, timeout=timeout)

    def predict_full(self, features: Any, *, timeout: float | None = DEFAULT) -> Prediction:
        """Same as ``client.predict_full(model, features)``."""
        return self._client.predict_full(self, features, timeout=timeout)

    def download(self, path: str | PathLike[str]) -> Any:
        """Writes the ONNX file to ``path`` (atomically, checked against ``onnx_sha256``)."""
        return self._client.export_model(self, path)

    def refresh(self) -> Model:
        self.proto = self._client.get_model(self.name).proto
        return self

    def delete(self) -> None:
        self._client.delete_model(self.name)

    def __repr__(self) -> str:
        return (
            f"<Model {self.name}{_quoted(self.display_name)}: input {list(self.input_shape)} -> "
            f"{self.output_size} {self.label_kind or ''}, parity {self.parity_max_abs_diff:.1e}>"
        )


class RegisteredModel(_Resource[models_pb2.RegisteredModel]):
    """A named model with numbered versions and aliases (``registeredModels/{name}``).

    Predict by ``client.predict("registeredModels/digits@production", X)``, by version
    (``...@3``) or the latest (``registeredModels/digits``).
    """

    @property
    def latest_version(self) -> int:
        return self.proto.latest_version

    @property
    def version_count(self) -> int:
        return self.proto.version_count

    @property
    def aliases(self) -> dict[str, int]:
        """Alias -> version, ``latest`` included."""
        return dict(self.proto.aliases)

    @property
    def latest_model(self) -> str:
        return self.proto.latest_model

    def versions(self) -> list[Model]:
        return self._client.list_model_versions(self.name)

    def predict(self, features: Any, *, alias: str = "latest", timeout: float | None = DEFAULT) -> np.ndarray:
        """Runs the version ``alias`` points at (or a version number, as an int or a string)."""
        if isinstance(alias, bool) or not isinstance(alias, (str, int, np.integer)):
            raise TypeError(f"alias must be an alias (a str) or a version number (an int), got {alias!r}")
        if not isinstance(alias, str):
            alias = str(check_int("alias", alias, minimum=1, maximum=INT64_MAX))  # a version number
        return self._client.predict(f"{self.name}@{alias}", features, timeout=timeout)

    def set_alias(self, alias: str, version: int) -> RegisteredModel:
        self.proto = self._client.set_alias(self.name, alias, version).proto
        return self

    def delete(self, *, force: bool = False) -> None:
        """Deletes this registered model (``force=True``: with every version's model)."""
        self._client.delete_registered_model(self.name, force=force)

    def refresh(self) -> RegisteredModel:
        self.proto = self._client.get_registered_model(self.name).proto
        return self

    def __repr__(self) -> str:
        return f"<RegisteredModel {self.name}: {self.version_count} version(s), aliases {self.aliases}>"


class TrainingJob(_Resource[training_pb2.TrainingJob]):
    """A training run (``trainingJobs/{id}``). ``wait()`` follows it to the end.

    >>> job = client.train(net, data, optimizer=gw.Adam(), epochs=5, batch_size=32)  # doctest: +SKIP
    >>> model = job.wait(progress=True)                                              # doctest: +SKIP
    """

    @property
    def state(self) -> JobState:
        """``JobState`` (a str): QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED or CANCELLED."""
        return JobState.from_proto(self.proto.state)

    @property
    def done(self) -> bool:
        return self.state.terminal

    @property
    def dataset(self) -> str:
        return self.proto.dataset

    @property
    def network(self) -> Sequential:
        return Sequential.from_proto(self.proto.network)

    @property
    def history(self) -> list[EpochMetrics]:
        """One ``EpochMetrics`` per finished epoch (as of the last refresh / event)."""
        return [EpochMetrics.from_proto(m) for m in self.proto.history]

    @property
    def model_name(self) -> str | None:
        """The trained model, ``models/{id}``, once SUCCEEDED."""
        return self.proto.model or None

    @property
    def error(self) -> tuple[grpc.StatusCode, str] | None:
        """``(code, message)`` of a FAILED job, else None."""
        if self.proto.HasField("error") and self.proto.error.code != 0:
            return status_code(self.proto.error.code), self.proto.error.message
        return None

    @property
    def seed(self) -> int:
        return self.proto.seed

    @property
    def device(self) -> str:
        return self.proto.device

    @property
    def parameter_count(self) -> int:
        return self.proto.parameter_count

    @property
    def create_time(self) -> datetime.datetime | None:
        return _time(self.proto, "create_time")

    @property
    def start_time(self) -> datetime.datetime | None:
        return _time(self.proto, "start_time")

    @property
    def end_time(self) -> datetime.datetime | None:
        return _time(self.proto, "end_time")

    def refresh(self) -> TrainingJob:
        self.proto = self._client.get_job(self.name).proto
        return self

    def cancel(self) -> TrainingJob:
        """Asks the server to cancel; the job goes CANCELLING, then CANCELLED."""
        self.proto = self._client.cancel_job(self.name).proto
        return self

    def watch(self) -> Iterator[TrainingEvent]:
        """The job's events: its history replayed, then live ones until it ends."""
        return self._client.watch_job(self.name)

    def wait(self, *, progress: bool = False, timeout: float | None = None) -> Model:
        """Follows the job to its end and returns the trained ``Model``.

        Follows ``WatchTrainingJob``; if the stream breaks (UNAVAILABLE, e.g. a
        server restart) it watches again and skips the events it has seen.

        Args:
            progress: show a tqdm bar over epochs with loss / val_loss / val_acc.
            timeout: seconds to wait in all; ``None`` waits for ever.

        Raises:
            TrainingFailedError: the job ended FAILED (``.code``, ``.message``).
            TrainingCancelledError: the job ended CANCELLED.
            DeadlineExceededError: ``timeout`` passed first (the job keeps running).
        """
        timeout = check_timeout(timeout, zero_ok=True)  # 0: look once, without waiting
        check_bool("progress", progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _ProgressBar(self) if progress else None
        try:
            self._follow(deadline, timeout, bar)
        finally:
            if bar is not None:
                bar.close()
        self.refresh()  # the full job: model name, error, complete history
        state = self.state
        if state == JobState.SUCCEEDED:
            return self._client.get_model(self.proto.model)
        if state == JobState.CANCELLED:
            raise TrainingCancelledError(self)
        code, message = self.error or (grpc.StatusCode.UNKNOWN, "the job failed without an error message")
        raise TrainingFailedError(self, code, message)

    def _follow(self, deadline: float | None, timeout: float | None, bar: _ProgressBar | None) -> None:
        """Consumes Watch events until the job is terminal, re-watching after a broken stream."""
        seen = 0  # the stream replays history: skip sequences already handled
        failures = 0
        while True:
            if self.state.terminal:  # a terminal state never changes: nothing left to watch
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if self.refresh().done:  # it may have finished while we were not looking
                    return
                raise DeadlineExceededError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.name} is still {self.state} after {timeout}s"
                )
            try:
                for event in self._client.watch_job(self.name, timeout=remaining):
                    failures = 0
                    if event.sequence <= seen:
                        continue
                    seen = event.sequence
                    self._apply(event)
                    if bar is not None:
                        bar.on_event(event)
                    if event.state.terminal:
                        return
            except ResourceExhaustedError:  # the server has no watch stream to spare: follow by polling
                self._poll(deadline, timeout, bar)
                return
            except UnavailableError:
                failures += 1
                if failures >= _RECONNECT_ATTEMPTS:
                    raise
                time.sleep(min(_RECONNECT_MAX_DELAY_S, 0.25 * 2 ** (failures - 1)))
                continue
            except DeadlineExceededError:
                if deadline is not None:  # the stream's deadline is what was left of ours
                    raise DeadlineExceededError(
                        grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.name} is still {self.state} after {timeout}s"
                    ) from None
                raise
            # The stream ended without a terminal event (e.g. the server shut it down): look, then re-watch.
            if self.refresh().done:
                return

    def _poll(self, deadline: float | None, timeout: float | None, bar: _ProgressBar | None) -> None:
        """Follows the job with GetTrainingJob until it is terminal: every 0.2 s at first, backing
        off to 2 s (what ``wait`` does when the server refuses another watch stream)."""
        delay = _POLL_FIRST_DELAY_S
        while not self.refresh().done:
            if bar is not None:
                bar.on_job(self)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.name} is still {self.state} after {timeout}s"
                )
            time.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(_POLL_MAX_DELAY_S, delay * 1.5)
        if bar is not None:
            bar.on_job(self)

    def _apply(self, event: TrainingEvent) -> None:
        """Keeps ``proto`` current between refreshes: state and history."""
        self.proto.state = event.proto.state
        if event.epoch is not None:
            last = self.proto.history[-1].epoch if self.proto.history else 0
            if event.epoch.epoch > last:
                self.proto.history.add().CopyFrom(event.proto.epoch)

    def __repr__(self) -> str:
        epochs = f"{len(self.proto.history)}/{self.proto.training.epochs} epochs"
        return f"<TrainingJob {self.name}{_quoted(self.display_name)}: {self.state}, {epochs}>"


class _ProgressBar:
    """A tqdm bar over epochs, with the latest losses and accuracy as its postfix."""

    def __init__(self, job: TrainingJob) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=job.proto.training.epochs or None,
            initial=len(job.proto.history),
            unit="epoch",
            desc=job.display_name or job.name,
            dynamic_ncols=True,
        )
        self._postfix: dict[str, str] = {}

    def on_event(self, event: TrainingEvent) -> None:
        self._show(event.state, event.epoch)

    def on_job(self, job: TrainingJob) -> None:
        """The same from a polled job: its state and its latest epoch."""
        history = job.history
        self._show(job.state, history[-1] if history else None)

    def _show(self, state: JobState, m) -> None:
        # The postfix keeps the latest metrics; the state shows only when it is not RUNNING.
        if state == JobState.RUNNING:
            self._postfix.pop("state", None)
        else:
            self._postfix["state"] = str(state)
        if m is not None:
            self._postfix["loss"] = f"{m.train_loss:.4f}"
            if m.validation_loss is not None:
                self._postfix["val_loss"] = f"{m.validation_loss:.4f}"
            if m.validation_accuracy is not None:
                self._postfix["val_acc"] = f"{m.validation_accuracy:.3f}"
            elif m.train_accuracy is not None:
                self._postfix["acc"] = f"{m.train_accuracy:.3f}"
        self._bar.set_postfix(self._postfix, refresh=False)
        if m is not None:
            self._bar.update(max(0, m.epoch - self._bar.n))
        else:
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

