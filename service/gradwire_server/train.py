"""The training loop: one job's network, trained on one device.

Phases: split the data (seeded), fit input normalization on the training
split, build the network (seeded), then per epoch: shuffle, step through the
batches, evaluate on the validation split, report, early-stop, checkpoint.

Reproducibility: on the CPU the same seed gives the same weights, and a run
resumed from its checkpoint ends with exactly the weights of an uninterrupted
run. Every random draw comes from one of two places, both checkpointed:
  * ``generator``: a torch.Generator seeded with ``seed``; it first draws the
    validation split permutation, then one shuffle permutation per epoch.
  * torch's global RNG, seeded with ``seed`` just before the network is built:
    weight initialization, then dropout masks.

Losses: cross-entropy on logits (an explicit final softmax is skipped while
training) or MSE on (n, k) targets. The L1 penalty, l1_penalty * sum(|w|), is
added to the loss that is differentiated, over weights only (parameters with
dim > 1: dense and conv kernels, not biases or batch-norm scale/shift); the
reported train loss leaves it out.

The whole dataset lives on the device as tensors; a batch is an index slice,
so there is no DataLoader and no per-example collation.
"""

from __future__ import annotations

import math
import pathlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from gradwire.v1 import datasets_pb2, network_pb2

from . import errors, files, nets, spec

CHECKPOINT_VERSION = 1
EVAL_BATCH = 4096  # examples per forward pass when evaluating (bounds memory, not results)
HOLDOUT_EXAMPLES = 64  # raw examples kept for export's ONNX-vs-PyTorch parity check


@dataclass
class TrainingData:
    """A dataset in memory. features: float32 [n, *feature_shape]; labels: int64
    [n] class indices, or float32 [n] / [n, k] regression targets."""

    features: np.ndarray
    labels: np.ndarray
    label_kind: int  # datasets_pb2.LabelKind
    output_size: int  # class count, or regression target count


@dataclass
class Normalization:
    """x_norm = (x - offset) / scale per feature element, fitted on the
    training split. offset and scale have the feature shape (float32)."""

    offset: np.ndarray
    scale: np.ndarray
    kind: int  # network_pb2.InputNormalization

    def apply(self, features: np.ndarray) -> np.ndarray:
        if self.kind == network_pb2.INPUT_NORMALIZATION_NONE:
            return features
        return ((features - self.offset) / self.scale).astype(np.float32)


@dataclass
class EpochResult:
    """Metrics of one finished epoch (epochs count from 1)."""

    epoch: int
    iterations: int
    train_loss: float  # mean over the epoch's examples, while training; without the L1 term
    train_accuracy: float | None  # classifiers only, same running measurement
    validation_loss: float | None
    validation_accuracy: float | None  # classifiers with a validation split only
    learning_rate: float
    samples_per_second: float  # training examples per second of stepping
    elapsed_seconds: float  # since training started (across resumes)


@dataclass
class TrainResult:
    model: nn.Sequential  # on the CPU, in eval mode
    normalization: Normalization
    history: list[EpochResult]
    best_epoch: int  # the epoch whose weights `model` holds
    epochs_trained: int
    final_metrics: EpochResult  # the metrics of `model`'s weights
    parameter_count: int
    holdout_features: np.ndarray  # up to 64 raw examples (validation split, else training split)


# --------------------------------------------------------------------------
# Data preparation


def split_indices(example_count: int, validation_split: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): the validation split is the last n_val entries of
    a seeded permutation. Each part is sorted, so shuffle=False trains in
    dataset order."""
    n_train, _ = spec.training_split_sizes(example_count, validation_split)
    perm = torch.randperm(example_count, generator=generator)
    return perm[:n_train].sort().values, perm[n_train:].sort().values


def fit_normalization(features: np.ndarray, kind: int) -> Normalization:
    """Fits per-element statistics on (training) features [n, *shape]. A zero
    range or standard deviation (a constant feature) gets scale 1."""
    x = features.astype(np.float64)
    if kind == network_pb2.INPUT_NORMALIZATION_MIN_MAX:
        offset, scale = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
    elif kind == network_pb2.INPUT_NORMALIZATION_STANDARDIZE:
        offset, scale = x.mean(axis=0), x.std(axis=0)
    else:
        offset, scale = np.zeros(x.shape[1:]), np.ones(x.shape[1:])
    scale = np.where(scale > 0, scale, 1.0)
    return Normalization(offset.astype(np.float32), scale.astype(np.float32), kind)


def _labels_tensor(data: TrainingData) -> torch.Tensor:
    if data.label_kind == datasets_pb2.LABEL_KIND_CLASSES:
        return torch.as_tensor(data.labels, dtype=torch.int64)
    return torch.as_tensor(data.labels, dtype=torch.float32).reshape(len(data.labels), -1)  # (n, k)


# --------------------------------------------------------------------------
# Optimizer, loss, penalty


def make_optimizer(config: network_pb2.Optimizer, params) -> torch.optim.Optimizer:
    kind = config.WhichOneof("kind")
    p = getattr(config, kind)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=p.learning_rate, momentum=p.momentum, weight_decay=p.weight_decay)
    if kind == "adam":
        betas = (p.beta1 if p.HasField("beta1") else 0.9, p.beta2 if p.HasField("beta2") else 0.999)
        return torch.optim.Adam(params, lr=p.learning_rate, betas=betas, weight_decay=p.weight_decay)
    if kind == "rmsprop":
        alpha = p.alpha if p.HasField("alpha") else 0.99
        return torch.optim.RMSprop(params, lr=p.learning_rate, alpha=alpha, momentum=p.momentum,
                                   weight_decay=p.weight_decay)
    raise errors.Internal(f"unknown optimizer kind {kind}")


def l1_weights(model: nn.Module) -> list[torch.Tensor]:
    """The parameters the L1 penalty applies to: weights of dense and conv
    layers (dim > 1), not biases or batch-norm scale/shift."""
    return [p for p in model.parameters() if p.dim() > 1]


@dataclass
class _EarlyStopping:
    """Tracks the monitored metric. best_state holds CPU copies of the best weights."""

    monitor: int  # network_pb2.Metric
    patience: int
    min_delta: float
    restore_best: bool
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict | None = None

    def metric(self, result: EpochResult) -> float:
        if self.monitor == network_pb2.METRIC_TRAIN_LOSS:
            return result.train_loss
        if self.monitor == network_pb2.METRIC_VALIDATION_ACCURACY:
            return result.validation_accuracy
        return result.validation_loss

    def update(self, result: EpochResult, model: nn.Module) -> bool:
        """Records an epoch; returns True when training should stop."""
        value = self.metric(result)
        if self.monitor == network_pb2.METRIC_VALIDATION_ACCURACY:  # higher is better
            improved = self.best is None or value > self.best + self.min_delta
        else:  # losses: lower is better
            improved = self.best is None or value < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, result.epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


def _early_stopping(training: network_pb2.TrainingConfig, has_validation: bool) -> _EarlyStopping | None:
    if not training.HasField("early_stopping"):
        return None
    es = training.early_stopping
    default = network_pb2.METRIC_VALIDATION_LOSS if has_validation else network_pb2.METRIC_TRAIN_LOSS
    return _EarlyStopping(
        monitor=es.monitor if es.HasField("monitor") else default,
        patience=es.patience,
        min_delta=es.min_delta,
        restore_best=es.restore_best_weights if es.HasField("restore_best_weights") else True,
    )


# --------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def _evaluate(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
              classifier: bool) -> tuple[float, float | None]:
    """Mean loss (and accuracy for classifiers) in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(x), EVAL_BATCH):
        out = model(x[start:start + EVAL_BATCH])  # (batch, output_size)
        target = y[start:start + EVAL_BATCH]
        loss_sum += loss_fn(out, target).double() * len(target)
        if classifier:
            correct += (out.argmax(dim=1) == target).sum()
    n = len(x)
    return loss_sum.item() / n, (correct.item() / n if classifier else None)


# --------------------------------------------------------------------------
# One epoch


def _train_epoch(forward: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor,
                 y: torch.Tensor, order: torch.Tensor, batch_size: int, *, l1: float, classifier: bool,
                 should_stop: Callable[[], bool]) -> tuple[float, float | None]:
    """One pass over the training split in ``order``: ceil(n / batch_size) steps.
    Returns the mean loss (without the L1 term) and accuracy, measured on the
    fly with the weights of each step, as Keras reports them."""
    weights = l1_weights(forward) if l1 > 0 else []
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)  # summed on the device: no sync per step
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(order), batch_size):
        if should_stop():
            raise errors.Cancelled("cancelled")
        batch = order[start:start + batch_size]
        xb, yb = x[batch], y[batch]  # (batch, *feature_shape), (batch,) or (batch, k)
        out = forward(xb)  # (batch, output_size)
        loss = loss_fn(out, yb)
        total = loss + l1 * sum(w.abs().sum() for w in weights) if l1 > 0 else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(batch)
        if classifier:
            correct += (out.detach().argmax(dim=1) == yb).sum()
    n = len(order)
    return loss_sum.item() / n, (correct.item() / n if classifier else None)  # one sync per epoch


# --------------------------------------------------------------------------
# Checkpoints: plain types and tensors only, so torch.load(weights_only=True) reads them.


@dataclass
class _Progress:
    """Everything a checkpoint must carry to continue bit-for-bit: weights,
    optimizer moments, early-stopping state, history and both RNG streams."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the split / shuffle stream
    stopper: _EarlyStopping | None
    normalization: Normalization
    device: torch.device
    identity: dict  # seed and split sizes: a checkpoint of another job is refused
    history: list[EpochResult] = field(default_factory=list)
    stopped: bool = False  # early stopping fired

    def save(self, path: pathlib.Path) -> None:
        stopper = self.stopper
        state = {
            "version": CHECKPOINT_VERSION, **self.identity,
            "epoch": len(self.history), "stopped": self.stopped,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "history": [asdict(h) for h in self.history],
            "early_stopping": None if stopper is None else {
                "best": stopper.best, "best_epoch": stopper.best_epoch,
                "bad_epochs": stopper.bad_epochs, "best_state": stopper.best_state},
            "normalization": {"kind": self.normalization.kind,
                              "offset": torch.from_numpy(self.normalization.offset),
                              "scale": torch.from_numpy(self.normalization.scale)},
            "shuffle_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),  # dropout masks on the CPU
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)  # dropout masks on the GPU
        with files.atomic_writer(path) as f:
            torch.save(state, f)

    def restore(self, path: pathlib.Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        found = {key: state.get(key) for key in ("version", *self.identity)}
        expected = {"version": CHECKPOINT_VERSION, **self.identity}
        if found != expected:
            raise errors.Internal(f"checkpoint {path.name} does not belong to this job: {found} != {expected}")
        saved = state["normalization"]
        if not (np.array_equal(saved["offset"].numpy(), self.normalization.offset)
                and np.array_equal(saved["scale"].numpy(), self.normalization.scale)):
            raise errors.Internal(f"checkpoint {path.name} was trained on other data: its normalization differs")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = [EpochResult(**h) for h in state["history"]]
        self.stopped = state["stopped"]
        if self.stopper is not None:
            es = self.stopper
            saved = state["early_stopping"]
            es.best, es.best_epoch, es.bad_epochs = saved["best"], saved["best_epoch"], saved["bad_epochs"]
            es.best_state = saved["best_state"]
        self.generator.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


# --------------------------------------------------------------------------
# Performance options (issue 5): mixed precision and channels-last. They change
# rounding and memory layout, never the network: weights and optimizer state
# stay float32 and the exported ONNX graph is float32.


class _BF16Autocast(nn.Module):
    """Runs the wrapped network under bfloat16 autocast; returns float32 outputs."""

    def __init__(self, inner: nn.Module, device_type: str) -> None:
        super().__init__()
        self.inner, self.device_type = inner, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16):
            return self.inner(x).float()


def apply_performance(performance, model: nn.Module, forward: nn.Module, x_train: torch.Tensor,
                      x_val: torch.Tensor, device: torch.device):
    """-> (forward, x_train, x_val) set up for the job's TrainingPerformance (None: float32, as is)."""
    from gradwire.v1 import training_pb2

    Precision = training_pb2.TrainingPerformance.Precision
    precision = performance.precision if performance is not None else Precision.PRECISION_UNSPECIFIED
    if device.type == "cuda":  # TF32 is a process-wide switch: set it for every job, on or off
        tf32 = precision == Precision.PRECISION_TF32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if performance is not None and performance.channels_last and x_train.dim() == 4:  # (batch, C, H, W)
        model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
        x_val = x_val.contiguous(memory_format=torch.channels_last)
    if precision == Precision.PRECISION_BF16:
        forward = _BF16Autocast(forward, device.type)
    return forward, x_train, x_val


# --------------------------------------------------------------------------
# The loop


def train(
    network: network_pb2.NetworkSpec,
    training: network_pb2.TrainingConfig,
    data: TrainingData,
    *,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None],
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_path: pathlib.Path | None = None,
    performance=None,  # training_pb2.TrainingPerformance | None (issue 5)
) -> TrainResult:
    """Trains ``network`` on ``data`` as ``training`` says. Assumes
    ``spec.validate_job`` accepted the job. Calls ``on_epoch`` after each epoch
    finished in this call; polls ``should_stop`` before every step and raises
    errors.Cancelled when it returns True. With ``checkpoint_path``, saves a
    checkpoint after every epoch and resumes from one found at start."""
    classifier = data.label_kind == datasets_pb2.LABEL_KIND_CLASSES
    n = len(data.features)
    feature_shape = tuple(data.features.shape[1:])
    if len(data.labels) != n:
        raise errors.Internal(f"{n} feature rows but {len(data.labels)} labels")

    # --- split (seeded permutation) and normalization (training split only)
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = split_indices(n, training.validation_split, generator)
    n_train, n_val = len(train_idx), len(val_idx)
    norm_kind = (training.input_normalization if training.HasField("input_normalization")
                 else network_pb2.INPUT_NORMALIZATION_NONE)
    normalization = fit_normalization(data.features[train_idx.numpy()], norm_kind)
    holdout_idx = (val_idx if n_val else train_idx)[:HOLDOUT_EXAMPLES].numpy()

    features = torch.from_numpy(normalization.apply(data.features))
    labels = _labels_tensor(data)
    x_train, y_train = features[train_idx].to(device), labels[train_idx].to(device)
    x_val, y_val = features[val_idx].to(device), labels[val_idx].to(device)

    # --- network, optimizer, loss
    torch.manual_seed(seed)
    model = nets.build_network(network, feature_shape).to(device)
    # Cross-entropy wants logits: an explicit final softmax is skipped while training.
    forward = nets.logits_network(model) if classifier else model
    forward, x_train, x_val = apply_performance(performance, model, forward, x_train, x_val, device)  # issue 5
    optimizer = make_optimizer(training.optimizer, model.parameters())
    loss_fn = nn.CrossEntropyLoss() if classifier else nn.MSELoss()

    batch_size = spec.batch_size_of(training.batching, n_train)
    iterations = math.ceil(n_train / batch_size)
    shuffle = training.shuffle if training.HasField("shuffle") else True
    stopper = _early_stopping(training, has_validation=n_val > 0)

    progress = _Progress(model, optimizer, generator, stopper, normalization, device,
                         identity={"seed": seed, "n_train": n_train, "n_val": n_val})
    if checkpoint_path is not None and checkpoint_path.exists():
        progress.restore(checkpoint_path)  # finished epochs are not reported again
    history = progress.history

    # --- epochs
    started = time.perf_counter()
    elapsed_before = history[-1].elapsed_seconds if history else 0.0
    for epoch in range(len(history) + 1, training.epochs + 1):
        if progress.stopped:
            break
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(n_train, generator=generator) if shuffle else torch.arange(n_train)
        order = order.to(device)
        train_loss, train_acc = _train_epoch(forward, optimizer, loss_fn, x_train, y_train, order, batch_size,
                                             l1=training.l1_penalty, classifier=classifier, should_stop=should_stop)
        step_seconds = time.perf_counter() - epoch_start
        if not math.isfinite(train_loss):
            raise errors.InvalidArgument(
                f"training diverged: the train loss is {train_loss} at epoch {epoch}; try a smaller learning rate",
                field="training.optimizer",
            )

        val_loss = val_acc = None
        if n_val:
            val_loss, val_acc = _evaluate(forward, loss_fn, x_val, y_val, classifier)
        result = EpochResult(
            epoch=epoch,
            iterations=iterations,
            train_loss=train_loss,
            train_accuracy=train_acc,
            validation_loss=val_loss,
            validation_accuracy=val_acc,
            learning_rate=optimizer.param_groups[0]["lr"],
            samples_per_second=n_train / step_seconds if step_seconds > 0 else float("inf"),
            elapsed_seconds=elapsed_before + time.perf_counter() - started,
        )
        history.append(result)
        if stopper is not None:
            progress.stopped = stopper.update(result, model)
        # Checkpoint before reporting: a crash in between loses the report of this
        # epoch rather than training it twice.
        if checkpoint_path is not None:
            progress.save(checkpoint_path)
        on_epoch(result)

    # --- keep the best weights
    best_epoch = history[-1].epoch
    if stopper is not None and stopper.restore_best and stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
        best_epoch = stopper.best_epoch
    model = model.to("cpu").eval()
    return TrainResult(
        model=model,
        normalization=normalization,
        history=history,
        best_epoch=best_epoch,
        epochs_trained=len(history),
        final_metrics=history[best_epoch - 1],
        parameter_count=nets.count_parameters(model),
        holdout_features=np.ascontiguousarray(data.features[holdout_idx]),
    )
