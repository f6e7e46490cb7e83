"""The training worker: a separate process that takes queued jobs from the store and trains them.

It never serves RPCs (training beside predictions would steal the GIL from them)
and shares nothing with the RPC process but the data directory: jobs come from
the store, epochs and results go back into it, where Watch streams find them.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import logging
import os
import re
import signal
import sqlite3
import time

from google.rpc import status_pb2

from gradwire.v1 import evaluation_pb2, models_pb2, network_pb2, training_pb2

from . import datasets, errors, files
from .config import Settings
from .inference import model_path
from .store import Store, new_id, timestamp

log = logging.getLogger("gradwire.worker")
State = training_pb2.TrainingJob.State
MAX_ATTEMPTS = 3
MAX_ERROR_CHARS = 500
CANCEL_POLL_S = 0.02  # how often a running job looks for a cancel in the store (it is polled before every step)
_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.\-+~@]+){2,}[/\\]?")


def safe_message(exc: BaseException) -> str:
    """One line naming what went wrong, without file paths or a traceback (it reaches clients)."""
    text = " ".join(str(exc).split())
    text = _PATH_RE.sub("<path>", text)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return f"training failed: {type(exc).__name__}: {text}" if text else f"training failed: {type(exc).__name__}"


# What a job was doing when an allocation failed (`out_of_memory`): the part of the message after
# "{what} ran out of memory on {device} (...): ", and the field to change.
_OOM_PHASES = {
    "loading": ("loading the dataset", (
        "the job holds its features as float32 beside the stored ones; use a smaller dataset, or give the server more memory"),
        "dataset"),
    "validation": ("an epoch's validation", (
        "a pass scores about {eval_mib} MiB of activations beside what training holds; use a smaller network or "
        "validation split, or give the server more memory"), "network"),
    "evaluation": ("the final evaluation", (
        "a pass scores about {eval_mib} MiB of activations beside the training data; use a smaller network or dataset, "
        "or give the server more memory"), "network"),
    "export": ("exporting the trained network to ONNX", (
        "the export holds several copies of the weights (PyTorch's, the ONNX file's, and onnxruntime's for the parity "
        "check); use a smaller network, or give the server more memory"), "network"),
}


def out_of_memory(exc: BaseException, batching: network_pb2.Batching, device, phase: str = "training") -> errors.ResourceExhausted | None:
    """The job's error when ``exc`` is an allocation that failed (`errors.failed_allocation`: torch's
    CPU allocator, CUDA, onnxruntime's in the export's parity check, Python's MemoryError), naming the allocation and what to change: the batch size when it
    failed in a training step, else what that ``phase`` holds (`_OOM_PHASES`); None otherwise.
    The same failure, left as it was, read `INTERNAL: training failed: RuntimeError: [enforce fail
    at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: ...`."""
    import torch

    from .train import EVAL_BYTES

    cuda_oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    failed = errors.failed_allocation(exc)
    if failed is None:
        if not isinstance(exc, cuda_oom):
            return None
        failed = ""
    if phase in _OOM_PHASES:
        what, advice, field = _OOM_PHASES[phase]
        return errors.ResourceExhausted(f"{what} ran out of memory on {device}{failed}: {advice.format(eval_mib=EVAL_BYTES >> 20)}",
                                        field=field)
    kind = batching.WhichOneof("mode")
    steps = {"mini_batch": f"mini-batches of {batching.mini_batch.batch_size}", "full_batch": "the full batch (every example)",
             "online": "one example"}.get(kind, "its batches")
    return errors.ResourceExhausted(
        f"training ran out of memory on {device}{failed}: a step holds every "
        f"layer's activations for {steps}; use smaller batches (mini_batch.batch_size) or a smaller network",
        field="training.batching")


def die_with_parent(parent_pid: int | None, sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when the server process dies (even by kill -9).

    A parent that died before the request was made (while this process was still
    starting) sends no signal: then the parent is already gone, and we exit now,
    or an orphan would go on claiming jobs (or answering calls) beside the next server.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def pick_device(setting: str):
    import torch

    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"GRADWIRE_DEVICE={setting} but no CUDA device is available")
    return device


def epoch_proto(r) -> training_pb2.EpochMetrics:
    """train.EpochResult -> EpochMetrics (None stays unset)."""
    m = training_pb2.EpochMetrics(
        epoch=r.epoch,
        iterations=r.iterations,
        train_loss=r.train_loss,
        learning_rate=r.learning_rate,
        samples_per_second=r.samples_per_second,
        elapsed_seconds=r.elapsed_seconds,
    )
    if r.examples:
        m.examples = r.examples
    for name in ("validation_loss", "validation_accuracy", "train_accuracy", "max_gradient_norm"):
        value = getattr(r, name)
        if value is not None:
            setattr(m, name, value)
    return m


def evaluation_proto(e, class_names: list[str]) -> evaluation_pb2.Evaluation:
    """train.Evaluation -> Evaluation."""
    proto = evaluation_pb2.Evaluation(split=e.split, example_count=e.example_count, loss=e.loss)
    if e.accuracy is not None:
        names = list(class_names) or [str(i) for i in range(len(e.precision))]
        proto.classification.CopyFrom(evaluation_pb2.ClassificationMetrics(
            accuracy=e.accuracy, top_k=e.top_k, top_k_accuracy=e.top_k_accuracy,
            per_class=[evaluation_pb2.ClassMetrics(class_name=names[i] if i < len(names) else str(i),
                                                   precision=e.precision[i], recall=e.recall[i], f1=e.f1[i],
                                                   support=e.support[i]) for i in range(len(e.precision))],
            macro_f1=sum(e.f1) / len(e.f1) if e.f1 else 0.0,
            confusion_matrix=[] if e.confusion_matrix is None else e.confusion_matrix.ravel().tolist(),
        ))
    else:
        proto.regression.CopyFrom(evaluation_pb2.RegressionMetrics(mse=e.mse, mae=e.mae, r2=e.r2))
    return proto


def spec_sha256(network: network_pb2.NetworkSpec, training: network_pb2.TrainingConfig) -> str:
    h = hashlib.sha256(network.SerializeToString(deterministic=True))
    h.update(training.SerializeToString(deterministic=True))
    return h.hexdigest()


class Worker:
    def __init__(self, settings: Settings, name: str, parent_pid: int | None = None) -> None:
        self.settings = settings
        self.name = name
        self.store = Store(settings.database_path)
        self.stopping = StopFlag()  # set by SIGTERM / SIGINT
        self._parent = parent_pid if parent_pid is not None else os.getppid()

    def parent_gone(self) -> bool:
        return os.getppid() != self._parent

    def run(self) -> None:
        import torch

        device = pick_device(self.settings.device)
        # Pay the one-time imports (onnx, onnxscript, torch._dynamo, which the optimizers and the
        # seeding pull in lazily: ~2 s) now, not inside the first job, where they delayed its first step.
        import torch._dynamo  # noqa: F401

        from . import export, train  # noqa: F401

        freeze_startup_objects()
        log.info("worker %s ready on %s (torch %s)", self.name, device, torch.__version__)
        pause = 0.0  # after the store failed to claim (a full disk, say): a wait that doubles, up to 30 s
        while not self.stopping.is_set() and not self.parent_gone():
            stamp = self.store.change_stamp()  # before the claim's query: a job queued after it moves the stamp
            try:
                job = self.store.claim_next_job(self.name, str(device))
            except sqlite3.Error as exc:
                pause = min(2 * pause or 1.0, 30.0)
                log.warning("worker %s could not claim a job (%s): trying again in %.0f s%s", self.name, exc, pause,
                            "; the disk is full" if errors.disk_full(exc) else "")
                self.store.wait_for_change(stamp, pause, self.stopping.is_set)
                continue
            pause = 0.0
            if job is None:  # a new job is picked up within CHANGE_POLL_S
                self.store.wait_for_change(stamp, self.settings.poll_interval_s, self.stopping.is_set)
                continue
            self.run_job(job, device)

    def run_job(self, job: training_pb2.TrainingJob, device) -> None:
        from .export import export_onnx
        from .train import TrainingData, train

        job_id = job.name.split("/", 1)[1]
        log.info("job %s: training on %s", job.name, device)
        checkpoint = files.inside(self.settings.data_dir, "checkpoints", job_id, "checkpoint.pt")
        # Wall time counts every attempt: what earlier runs used (saved at each epoch) plus this one.
        budget = self.settings.max_job_seconds - self.store.run_seconds(job_id)
        started = accounted = time.monotonic()
        over_time = [False]

        def lap() -> float:
            """Seconds since the last lap: wall time not yet added to the job's."""
            nonlocal accounted
            now = time.monotonic()
            elapsed, accounted = now - accounted, now
            return elapsed

        def account() -> None:
            self.store.add_run_seconds(job_id, lap())

        def on_epoch(r) -> None:  # called on train's writer thread, in epoch order (never beside account())
            self.store.record_epoch(job_id, epoch_proto(r), run_seconds=lap())

        def fail(exc: BaseException, message: str) -> None:
            """The job ends FAILED with `exc`'s status code and `message`; its checkpoint goes (first: on a
            full disk, that makes room for the commit)."""
            status = status_pb2.Status(code=errors.code_of(exc), message=message)
            files.remove_tree(checkpoint.parent)
            self.store.finish_job(job_id, State.FAILED, message, error=status)

        next_look, cancelled = [0.0], [False]

        def should_stop() -> bool:
            """Polled before every training step. A cancel is looked for in the store (one indexed
            SQLite read, ~10 us) at most every CANCEL_POLL_S, so it takes effect within that."""
            if self.stopping.is_set() or self.parent_gone():
                return True
            now = time.monotonic()
            if now - started > budget:
                over_time[0] = True
                return True
            if now < next_look[0]:
                return False
            next_look[0] = now + CANCEL_POLL_S
            cancelled[0] = self.store.job_state(job_id) == State.CANCELLING
            return cancelled[0]

        phase = ["loading"]  # what the job is doing, for an allocation that fails (out_of_memory)
        try:
            dataset, features, labels = datasets.load_arrays(self.store, self.settings.data_dir, job.dataset.split("/", 1)[1])
            output_size = dataset.class_count or dataset.target_count
            data = TrainingData(features=features, labels=labels, label_kind=dataset.label_kind, output_size=output_size)
            test_data = None
            if job.test_dataset:  # scored once at the end, never trained on
                _, test_features, test_labels = datasets.load_arrays(
                    self.store, self.settings.data_dir, job.test_dataset.split("/", 1)[1], "test_dataset")
                test_data = TrainingData(features=test_features, labels=test_labels, label_kind=dataset.label_kind,
                                         output_size=output_size)
            result = train(
                job.network,
                job.training,
                data,
                seed=job.seed,
                device=device,
                on_epoch=on_epoch,
                should_stop=should_stop,
                checkpoint_path=checkpoint,
                performance=job.performance if job.HasField("performance") else None,  # issue 5
                test_data=test_data,
                reported_epochs=max((m.epoch for m in job.history), default=0),  # as claimed, with its history
                keep_saving=True,  # the last epoch's checkpoint is written while the export runs
                cancelled_for_good=lambda: cancelled[0] or over_time[0],  # its checkpoint goes: no save waited for
                checkpoint_budget=self.settings.checkpoint_budget,
                on_notice=lambda message: self.store.note(job_id, message),
                on_phase=lambda now: phase.__setitem__(0, now),
            )
            phase[0] = "export"
            model_id = new_id()
            path = model_path(self.settings.data_dir, model_id)
            try:
                exported = export_onnx(
                    result,
                    input_shape=list(dataset.feature_shape),
                    label_kind=dataset.label_kind,
                    class_names=list(dataset.class_names),
                    path=path,
                    metadata={"model": f"models/{model_id}", "training_job": job.name, "dataset": dataset.name},
                )
            except BaseException:
                result.saving.close(raise_error=False)
                raise
            result.saving.close()  # every epoch saved and reported before the job ends
            model = models_pb2.Model(
                name=f"models/{model_id}",
                display_name=job.display_name,
                training_job=job.name,
                dataset=dataset.name,
                input_shape=list(dataset.feature_shape),
                label_kind=dataset.label_kind,
                class_names=list(dataset.class_names),
                output_size=output_size,
                input_normalization=job.training.input_normalization
                if job.training.HasField("input_normalization")
                else network_pb2.INPUT_NORMALIZATION_NONE,
                network=job.network,
                parameter_count=result.parameter_count,
                final_metrics=epoch_proto(result.final_metrics),
                epochs_trained=result.epochs_trained,
                parity_max_abs_diff=exported.parity_max_abs_diff,
                spec_sha256=spec_sha256(job.network, job.training),
                dataset_sha256=dataset.sha256,
                onnx_sha256=exported.sha256,
                onnx_size_bytes=exported.size_bytes,
                opset_version=exported.opset_version,
                create_time=timestamp(time.time()),
                test_dataset=job.test_dataset,
            )
            for evaluation in result.evaluations:
                target = getattr(model, f"{evaluation.split}_evaluation")
                target.CopyFrom(evaluation_proto(evaluation, list(dataset.class_names)))
            summary = f"trained {result.epochs_trained} epochs (best epoch {result.best_epoch}); ONNX parity {exported.parity_max_abs_diff:.2e}"
            ended = self.store.finish_job(job_id, State.SUCCEEDED, summary, model=model)
            files.remove_tree(checkpoint.parent)
            if ended == State.CANCELLED:  # cancelled while it exported: its model goes
                files.remove_tree(path.parent)
                log.info("job %s: cancelled after its last epoch; its model was discarded", job.name)
            else:
                log.info("job %s: %s -> %s", job.name, summary, model.name)
        except errors.Cancelled:
            if self.stopping.is_set() or self.parent_gone():
                account()
                log.info("job %s: interrupted by shutdown; it resumes from its checkpoint at the next start", job.name)
                return
            if over_time[0]:
                account()
                limit = self.settings.max_job_seconds
                exc = errors.DeadlineExceeded(
                    f"the job ran past its wall-time limit of {limit:g} s (GRADWIRE_MAX_JOB_SECONDS) and was stopped"
                )
                fail(exc, exc.message)
                log.info("job %s: %s", job.name, exc.message)
                return
            self.store.finish_job(job_id, State.CANCELLED, "cancelled")
            files.remove_tree(checkpoint.parent)
            log.info("job %s: cancelled", job.name)
        except Exception as exc:  # a failure after acceptance is data: the job goes FAILED
            if isinstance(exc, errors.GradwireError):
                fail(exc, exc.message)
            elif (oom := out_of_memory(exc, job.training.batching, device, phase[0])) is not None:
                log.warning("job %s: %s (%s)", job.name, oom.message, safe_message(exc))
                fail(oom, oom.message)
            elif errors.disk_full(exc):
                full = errors.disk_full_error(self.settings.data_dir)
                log.warning("job %s: %s (%s)", job.name, full.message, safe_message(exc))
                fail(full, full.message)
            else:
                log.exception("job %s failed", job.name)
                fail(exc, safe_message(exc))
        finally:
            release_memory()


class StopFlag:
    """A flag a signal handler sets: `set()` takes no lock. threading.Event.set takes one, and a
    second signal that lands inside the first handler, while it holds that lock, runs the handler
    again in the same thread, which then waits for the lock for ever (tests/test_shutdown.py
    shows it). Read with `is_set()`, as an Event's."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def freeze_startup_objects() -> None:
    """Exempt what start-up created (modules, classes: with torch about 300,000 objects) from every
    later garbage collection. A full collection traversed them all: 0.15 s in a worker, after every
    job (release_memory) and whenever Python decided on one mid-training; 20 ms in an RPC process,
    a pause in whichever requests were in flight. Collections then walk only newer objects."""
    gc.collect()
    gc.freeze()


def release_memory() -> None:
    """After a job (finished, failed or cancelled): drop its tensors and hand cached memory back."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(settings: Settings, name: str, parent_pid: int | None = None) -> None:
    """Entry point of a worker process (started by the server with the spawn method)."""
    die_with_parent(parent_pid)
    if settings.worker_nice:
        os.nice(settings.worker_nice)  # training yields the CPU to the RPC process's predictions
    logging.basicConfig(level=settings.log_level.upper(), format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    worker = Worker(settings, name, parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stopping.set())
    worker.run()
