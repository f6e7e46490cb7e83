"""The training loop: one job's network, trained on one device.

Phases: split the data (seeded), fit input normalization on the training
split, build the network (seeded), then per epoch: shuffle, step through the
batches, evaluate on the validation split, early-stop, then checkpoint and
report (on a writer thread, while the next epoch trains).

Reproducibility: on the CPU the same seed gives the same weights, and a run
resumed from its checkpoint ends with exactly the weights of an uninterrupted
run. Every random draw comes from one of two places, both checkpointed:
  * ``generator``: a torch.Generator seeded with ``seed``; it first draws the
    validation split permutation, then one shuffle permutation per epoch.
  * torch's global RNG, seeded with ``seed`` just before the network is built:
    weight initialization, then dropout masks.

Losses: cross-entropy on logits (an explicit final softmax is skipped while
training; optional label smoothing and class weights), binary cross-entropy on
one logit (two classes, labels 0/1), or MSE / MAE / Huber on (n, k) targets. The L1 penalty, l1_penalty * sum(|w|), is
added to the loss that is differentiated, over weights only (parameters with
dim > 1: dense and conv kernels, not biases or batch-norm scale/shift); the
reported train loss leaves it out.

The whole dataset lives on the device as tensors; a batch is an index slice,
so there is no DataLoader and no per-example collation.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import pathlib
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from gradwire.v1 import datasets_pb2, network_pb2

from . import errors, files, nets, spec

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
EVAL_BATCH = 4096  # at most this many examples per forward pass when evaluating (bounds memory, not results)
EVAL_BYTES = 256 << 20  # and at most about this much memory for one evaluation pass's activations (eval_rows)
HOLDOUT_EXAMPLES = 64  # raw examples kept for export's ONNX-vs-PyTorch parity check
DATA_ON_DEVICE_FRACTION = 0.5  # the training data moves to the GPU when it takes at most this share of its free memory


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
    max_gradient_norm: float | None = None  # largest pre-clipping global gradient norm (with clipping only)
    examples: int = 0  # examples that took part in steps (fewer with drop_last)


@dataclass
class Evaluation:
    """Scores of the final weights on one split (see evaluation.proto)."""

    split: str
    example_count: int
    loss: float
    # classifiers
    accuracy: float | None = None
    top_k: int = 0
    top_k_accuracy: float | None = None
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    f1: list[float] = field(default_factory=list)
    support: list[int] = field(default_factory=list)
    confusion_matrix: np.ndarray | None = None  # (classes, classes): true class i predicted as j
    # regression
    mse: float | None = None
    mae: float | None = None
    r2: float | None = None


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
    binary: bool = False  # one sigmoid logit (binary cross-entropy): export emits [1 - p, p]
    multi_label: bool = False  # one sigmoid per label: export emits sigmoid(logits)
    evaluations: list[Evaluation] = field(default_factory=list)  # train, validation, test (those present)
    saving: _EpochWriter | None = None  # train(keep_saving=True): close() it before ending the job


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


class _Tidy:
    """A proto message whose float fields read back as typed: proto floats are
    float32, so 0.01 arrives as 0.009999999776; 7 significant digits restore
    0.01, and the optimizer steps exactly like torch.optim given 0.01."""

    def __init__(self, message) -> None:
        self._m = message

    def HasField(self, name: str) -> bool:  # noqa: N802 - the protobuf spelling
        return self._m.HasField(name)

    def __getattr__(self, name: str):
        value = getattr(self._m, name)
        return float(f"{value:.7g}") if isinstance(value, float) else value


ADAMW_WEIGHT_DECAY = 0.01  # AdamW's default decoupled decay, as torch.optim.AdamW


def base_learning_rate(config: network_pb2.Optimizer) -> float:
    return _Tidy(getattr(config, config.WhichOneof("kind"))).learning_rate


# On the CPU, a network this big (4 MB of float32 weights) or bigger steps with the fused optimizers:
# its step is parallel already, and the fused pass saves more than its parallel region costs
# (1.3M parameters, one-row steps: 4.0-4.2 ms against 4.5-6.9, beside four CPU-bound processes 22-26
# against 44-50). See make_optimizer.
FUSED_CPU_MIN_PARAMETERS = 1 << 20


def make_optimizer(config: network_pb2.Optimizer, params) -> torch.optim.Optimizer:
    """The torch optimizer for ``config``. SGD, Adam and AdamW (and Adagrad on the CPU) take
    torch's fused implementation, which steps every parameter at once: on a GPU one kernel launch
    per step instead of several per group (a small network's step is bound by launches there); on
    the CPU one pass over the memory instead of one per operation, for networks of
    FUSED_CPU_MIN_PARAMETERS or more. On this 2-core machine Adam's step for an 18.9M-parameter MLP
    took 11.5 ms instead of 51.7 (the whole training step 124 ms instead of 165). On the CPU the
    fused step is a parallel region of its own: in a small network's step, where nothing else is
    worth threads, it made a one-row step wait on idle threads whenever the cores were busy (an
    epoch of 150 one-row steps of a 4-32-3 MLP took 0.16-5 s beside four CPU-bound processes,
    against 0.14-0.16 s), so small networks keep the default implementation. A fused step equals
    torch.optim's default implementation to float32 rounding, not to the bit (test_options.py).
    Parameters not all contiguous (channels-last convolutions) take the default implementation."""
    kind = config.WhichOneof("kind")
    p = _Tidy(getattr(config, kind))
    params = list(params)
    devices = {t.device.type for t in params}
    big = sum(t.numel() for t in params) >= FUSED_CPU_MIN_PARAMETERS
    fusable = devices == {"cuda"} or (devices == {"cpu"} and big)
    fused = {"fused": True} if fusable and all(t.is_contiguous() for t in params) else {}
    if kind == "sgd":
        nesterov = p.nesterov if p.HasField("nesterov") else False
        return torch.optim.SGD(params, lr=p.learning_rate, momentum=p.momentum, weight_decay=p.weight_decay,
                               nesterov=nesterov, **fused)
    if kind in ("adam", "adamw"):
        betas = (p.beta1 if p.HasField("beta1") else 0.9, p.beta2 if p.HasField("beta2") else 0.999)
        if kind == "adamw":  # decoupled: w -= lr * weight_decay * w, outside the adaptive step
            decay = p.weight_decay if p.HasField("weight_decay") else ADAMW_WEIGHT_DECAY
            return torch.optim.AdamW(params, lr=p.learning_rate, betas=betas, weight_decay=decay, **fused)
        return torch.optim.Adam(params, lr=p.learning_rate, betas=betas, weight_decay=p.weight_decay, **fused)
    if kind == "adagrad":  # torch fuses Adagrad on the CPU only (its step for that MLP: 6.9 ms, not 59)
        return torch.optim.Adagrad(params, lr=p.learning_rate, lr_decay=p.lr_decay, weight_decay=p.weight_decay,
                                   **(fused if devices == {"cpu"} else {}))
    if kind == "rmsprop":
        alpha = p.alpha if p.HasField("alpha") else 0.99
        return torch.optim.RMSprop(params, lr=p.learning_rate, alpha=alpha, momentum=p.momentum,
                                   weight_decay=p.weight_decay)
    raise errors.Internal(f"unknown optimizer kind {kind}")


class _BinaryCrossEntropy(nn.Module):
    """BCE on one logit per example: out (batch, 1), labels (batch,) of 0 / 1."""

    def __init__(self, positive_weight: float | None) -> None:
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss(pos_weight=None if positive_weight is None
                                         else torch.tensor(positive_weight))

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 2:  # multi-label: (batch, labels) of 0 / 1, one logit per label
            return self.loss(out, target)
        return self.loss(out[:, 0], target.to(out.dtype))


def make_loss(config: network_pb2.Loss, output_size: int) -> nn.Module:
    kind = config.WhichOneof("kind")
    p = getattr(config, kind)
    if kind == "cross_entropy":
        weight = torch.tensor(list(p.class_weights), dtype=torch.float32) if len(p.class_weights) else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=float(f"{p.label_smoothing:.7g}"))
    if kind == "binary_cross_entropy":
        return _BinaryCrossEntropy(p.positive_weight if p.HasField("positive_weight") else None)
    if kind == "mse":
        return nn.MSELoss()
    if kind == "mae":
        return nn.L1Loss()
    if kind == "huber":
        return nn.HuberLoss(delta=p.delta if p.HasField("delta") else 1.0)
    raise errors.Internal(f"unknown loss kind {kind}")


def predicted_classes(out: torch.Tensor) -> torch.Tensor:
    """Class indices from logits: argmax, or logit > 0 for one binary logit."""
    return (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(dim=1)


def _correct(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Examples classified right: the predicted class, or (multi-label, a
    (batch, labels) target) every label's sigmoid decision (exact match)."""
    if target.dim() == 2:
        return ((out > 0) == (target > 0.5)).all(dim=1).sum()
    return (predicted_classes(out) == target).sum()


def class_probabilities(out: torch.Tensor) -> torch.Tensor:
    """(batch, classes) probabilities: softmax, or [1 - p, p] for one binary logit."""
    if out.shape[1] == 1:
        p = torch.sigmoid(out)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(out, dim=1)


# --------------------------------------------------------------------------
# Learning-rate schedules (per epoch; epochs count from 1)


def scheduled_learning_rate(training: network_pb2.TrainingConfig, epoch: int) -> float | None:
    """The rate of ``epoch`` for step / exponential / cosine schedules (pure
    functions of the epoch, so a resumed run needs no extra state); None for
    no schedule or reduce-on-plateau (stateful, see _Plateau)."""
    base = base_learning_rate(training.optimizer)
    if not training.HasField("schedule"):
        return None
    kind = training.schedule.WhichOneof("kind")
    p = _Tidy(getattr(training.schedule, kind))
    if kind == "step":
        return base * p.gamma ** ((epoch - 1) // p.step_size)
    if kind == "exponential":
        return base * p.gamma ** (epoch - 1)
    if kind == "cosine":
        warmup = p.warmup_epochs
        if epoch <= warmup:
            return base * epoch / (warmup + 1)
        t = (epoch - 1 - warmup) / (training.epochs - warmup)
        return p.min_learning_rate + (base - p.min_learning_rate) * (1 + math.cos(math.pi * t)) / 2
    return None


@dataclass
class _Plateau:
    """Reduce-on-plateau: multiply the rate by factor after `patience` epochs
    without an improvement of more than min_delta."""

    monitor: int
    factor: float
    patience: int
    min_delta: float
    min_lr: float
    lr: float
    best: float | None = None
    bad_epochs: int = 0

    def update(self, result: EpochResult) -> float:
        """Records an epoch; returns the rate of the next one."""
        value = _metric_value(self.monitor, result)
        higher = self.monitor in _HIGHER_IS_BETTER
        improved = self.best is None or (value > self.best + self.min_delta if higher
                                         else value < self.best - self.min_delta)
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.lr, self.bad_epochs = max(self.lr * self.factor, self.min_lr), 0
        return self.lr


def _plateau(training: network_pb2.TrainingConfig, has_validation: bool) -> _Plateau | None:
    if not (training.HasField("schedule") and training.schedule.WhichOneof("kind") == "reduce_on_plateau"):
        return None
    p = _Tidy(training.schedule.reduce_on_plateau)
    return _Plateau(monitor=p.monitor if p.HasField("monitor") else _default_monitor(has_validation),
                    factor=p.factor, patience=p.patience, min_delta=p.min_delta, min_lr=p.min_learning_rate,
                    lr=base_learning_rate(training.optimizer))


_HIGHER_IS_BETTER = {network_pb2.METRIC_VALIDATION_ACCURACY, network_pb2.METRIC_TRAIN_ACCURACY}


def _default_monitor(has_validation: bool) -> int:
    return network_pb2.METRIC_VALIDATION_LOSS if has_validation else network_pb2.METRIC_TRAIN_LOSS


def _metric_value(monitor: int, result: EpochResult) -> float:
    return {
        network_pb2.METRIC_TRAIN_LOSS: result.train_loss,
        network_pb2.METRIC_VALIDATION_LOSS: result.validation_loss,
        network_pb2.METRIC_VALIDATION_ACCURACY: result.validation_accuracy,
        network_pb2.METRIC_TRAIN_ACCURACY: result.train_accuracy,
    }[monitor]


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
    higher_is_better: bool = False
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict | None = None

    def update(self, result: EpochResult, model: nn.Module) -> bool:
        """Records an epoch; returns True when training should stop."""
        value = _metric_value(self.monitor, result)
        if self.higher_is_better:
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
    monitor = es.monitor if es.HasField("monitor") else _default_monitor(has_validation)
    higher = (es.mode == network_pb2.METRIC_MODE_MAX if es.HasField("mode") else monitor in _HIGHER_IS_BETTER)
    return _EarlyStopping(
        monitor=monitor,
        patience=es.patience,
        min_delta=es.min_delta,
        restore_best=es.restore_best_weights if es.HasField("restore_best_weights") else True,
        higher_is_better=higher,
    )


# --------------------------------------------------------------------------
# Evaluation


def data_device(nbytes: int, device: torch.device) -> torch.device:
    """Where a job's training data lives: on the GPU when it takes at most DATA_ON_DEVICE_FRACTION
    of the GPU's free memory (batches are then index slices, no copies), else in host memory,
    pinned, and copied to the GPU a batch at a time."""
    if device.type != "cuda":
        return device
    free, _total = torch.cuda.mem_get_info(device)
    return device if nbytes <= DATA_ON_DEVICE_FRACTION * free else torch.device("cpu")


def _place(t: torch.Tensor, home: torch.device, device: torch.device) -> torch.Tensor:
    """Move to `home`; host-resident data for a GPU run is pinned so batch copies can overlap."""
    if home.type == "cpu" and device.type == "cuda":
        return t.contiguous().pin_memory()
    return t.to(home)


def eval_rows(summary: spec.NetworkSummary, network: network_pb2.NetworkSpec) -> int:
    """Examples per evaluation pass: EVAL_BATCH, or fewer where EVAL_BYTES holds fewer (a network
    on large images: a fixed 4,096 (128, 256, 256) activations would take 137 GB)."""
    return max(1, min(EVAL_BATCH, EVAL_BYTES // spec.activation_bytes(summary, network)))


def memory_budget(device: torch.device) -> tuple[int, str]:
    """The most memory a job on ``device`` can have, and what sets it: a GPU's memory; on the CPU
    the smallest of the machine's memory, the container's limit (cgroup v2 or v1) and this
    process's address-space limit (RLIMIT_AS) less what it maps already."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{device}'s memory"
    limits = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the machine's memory")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = pathlib.Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max", or v1's "unlimited" (a huge number)
            limits.append((int(text), "the container's memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            mapped = 0
        limits.append((soft - mapped, "this process's address-space limit (RLIMIT_AS), less what it maps already"))
    return min(limits)


def check_memory(summary: spec.NetworkSummary, network: network_pb2.NetworkSpec, training: network_pb2.TrainingConfig,
                 performance, n_train: int, feature_shape: tuple[int, ...], device: torch.device) -> None:
    """Refuses, before anything is allocated, a job whose training step cannot fit the device: its
    lower bound (spec.step_bytes, and on the CPU the training split's float32 copy) past
    memory_budget. Left to run, such a job was killed by the kernel's out-of-memory killer (three
    times, then failed), which may pick another process first, or failed after minutes."""
    from gradwire.v1 import training_pb2

    batch = min(spec.batch_size_of(training.batching, n_train), n_train)
    bf16 = performance is not None and performance.precision == training_pb2.TrainingPerformance.PRECISION_BF16
    need = spec.step_bytes(summary, batch, 2 if bf16 else 4)
    if device.type != "cuda":  # on a GPU the data may stay in host memory
        need += n_train * math.prod(feature_shape) * 4
    budget, what = memory_budget(device)
    if need > budget:
        raise errors.ResourceExhausted(
            f"a training step of {batch} examples needs at least {need / 2**30:.2f} GiB on {device} (the inputs its "
            f"layers keep for the backward pass, the weights and their gradients"
            f"{'' if device.type == 'cuda' else ', the training data'}), more than {what}: {budget / 2**30:.2f} GiB; "
            "use smaller batches (mini_batch.batch_size) or a smaller network", field="training.batching")


@torch.no_grad()
def _evaluate(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
              classifier: bool, device: torch.device | None = None, rows: int = EVAL_BATCH) -> tuple[float, float | None]:
    """Mean loss (and accuracy for classifiers) in eval mode, computed on ``device``
    (default: where ``x`` lives; data kept in host memory is copied a batch at a time), ``rows``
    examples at a time."""
    model.eval()
    device = device or x.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, len(x), rows):
        out = model(x[start:start + rows].to(device))  # (batch, output_size)
        target = y[start:start + rows].to(device)
        loss_sum += loss_fn(out, target).double() * len(target)
        if classifier:
            correct += _correct(out, target)
    n = len(x)
    return loss_sum.item() / n, (correct.item() / n if classifier else None)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, *, split: str,
             classifier: bool, classes: int = 0, top_k: int = 1, device: torch.device | None = None,
             rows: int = EVAL_BATCH) -> Evaluation:
    """Scores ``model`` (logits out) on (x, y) in eval mode: loss, and accuracy,
    top-k accuracy, per-class precision / recall / F1 and the confusion matrix
    for classifiers, or MSE, MAE and R² (mean over targets) for regression."""
    model.eval()
    device = device or x.device
    outs = [model(x[s:s + rows].to(device)) for s in range(0, len(x), rows)]
    out = torch.cat(outs) if outs else torch.zeros((0, 1))
    y = y.to(out.device)
    n = len(x)
    loss = float(loss_fn(out, y)) if n else float("nan")
    if not classifier:
        pred, target = out.double().cpu().numpy(), y.double().cpu().numpy().reshape(out.shape)
        ss_res = ((target - pred) ** 2).sum(axis=0)
        ss_tot = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
        return Evaluation(split=split, example_count=n, loss=loss, mse=float(((target - pred) ** 2).mean()),
                          mae=float(np.abs(target - pred).mean()), r2=float(r2.mean()))
    if y.dim() == 2:  # multi-label: per-label scores of the sigmoid decisions, exact-match accuracy
        pred, target = (out > 0).cpu().numpy(), (y > 0.5).cpu().numpy()
        tp = (pred & target).sum(axis=0).astype(np.float64)
        predicted, actual = pred.sum(axis=0), target.sum(axis=0)
        precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros(len(tp)), where=actual > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(tp)),
                       where=precision + recall > 0)
        return Evaluation(split=split, example_count=n, loss=loss, accuracy=float((pred == target).all(1).mean()),
                          precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
                          support=actual.tolist())
    probs = class_probabilities(out).cpu()
    pred, target = predicted_classes(out).cpu().numpy(), y.cpu().numpy()
    top = torch.topk(probs, min(top_k, probs.shape[1]), dim=1).indices.numpy()
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (target, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(classes), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(classes), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(classes), where=precision + recall > 0)
    return Evaluation(split=split, example_count=n, loss=loss, accuracy=float((pred == target).mean()),
                      top_k=top_k, top_k_accuracy=float((top == target[:, None]).any(axis=1).mean()),
                      precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
                      support=actual.tolist(), confusion_matrix=confusion)


# --------------------------------------------------------------------------
# One epoch


def _train_epoch(forward: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor,
                 y: torch.Tensor, order: torch.Tensor, batch_size: int, *, l1: float, classifier: bool,
                 should_stop: Callable[[], bool], clip_norm: float | None = None,
                 device: torch.device | None = None) -> tuple[float, float | None, float | None]:
    """One pass over the training split in ``order``: ceil(n / batch_size) steps
    (the caller trims ``order`` for drop_last). Returns the mean loss (without
    the L1 term) and accuracy, measured on the fly with the weights of each
    step, as Keras reports them, and the largest pre-clipping gradient norm.
    ``device`` is where the network runs; data kept in host memory (too big for
    the GPU) is copied there a batch at a time, otherwise batches are slices."""
    device = device or x.device
    weights = l1_weights(forward) if l1 > 0 else []
    params = [p for p in forward.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)  # summed on the device: no sync per step
    correct = torch.zeros((), device=device, dtype=torch.int64)
    max_norm = torch.zeros((), device=device)
    for start in range(0, len(order), batch_size):
        if should_stop():
            raise errors.Cancelled("cancelled")
        batch = order[start:start + batch_size]
        xb = x[batch].to(device, non_blocking=True)  # (batch, *feature_shape)
        yb = y[batch].to(device, non_blocking=True)  # (batch,) or (batch, k)
        out = forward(xb)  # (batch, output_size)
        loss = loss_fn(out, yb)
        total = loss + l1 * sum(w.abs().sum() for w in weights) if l1 > 0 else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip_norm is not None:  # rescale all gradients together so their global L2 norm is <= clip_norm
            max_norm = torch.maximum(max_norm, nn.utils.clip_grad_norm_(params, clip_norm).detach())
        optimizer.step()
        loss_sum.add_(loss.detach(), alpha=len(batch))  # in float64, one kernel
        if classifier:
            correct += _correct(out.detach(), yb)
    n = len(order)
    return (loss_sum.item() / n, (correct.item() / n if classifier else None),  # one sync per epoch
            max_norm.item() if clip_norm is not None else None)


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
    plateau: _Plateau | None
    normalization: Normalization
    device: torch.device
    identity: dict  # seed and split sizes: a checkpoint of another job is refused
    history: list[EpochResult] = field(default_factory=list)
    stopped: bool = False  # early stopping fired

    def snapshot(self, buffers: _HostBuffers) -> tuple[dict, list[torch.Tensor]]:
        """The checkpoint's contents as of now, every tensor copied to host memory (into
        ``buffers``: the copies are returned too, for the writer to give back once saved):
        training can go on changing the weights while a writer thread saves this."""
        stopper = self.stopper
        state = {
            "version": CHECKPOINT_VERSION, **self.identity,
            "epoch": len(self.history), "stopped": self.stopped,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "history": [asdict(h) for h in self.history],
            "early_stopping": None if stopper is None else {
                "best": stopper.best, "best_epoch": stopper.best_epoch,
                "bad_epochs": stopper.bad_epochs},
            # Step / exponential / cosine rates are functions of the epoch; reduce-on-plateau has state.
            "plateau": None if self.plateau is None else {
                "lr": self.plateau.lr, "best": self.plateau.best, "bad_epochs": self.plateau.bad_epochs},
            "normalization": {"kind": self.normalization.kind,
                              "offset": torch.from_numpy(self.normalization.offset),
                              "scale": torch.from_numpy(self.normalization.scale)},
            "shuffle_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),  # dropout masks on the CPU
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)  # dropout masks on the GPU
        copies: list[torch.Tensor] = []
        state = _host_copy(state, buffers, copies)
        if stopper is not None:  # host copies already, replaced (never changed in place) when the metric improves
            state["early_stopping"]["best_state"] = stopper.best_state
        return state, copies

    def restore_state(self, state: dict, path: pathlib.Path) -> None:
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
        if self.plateau is not None and state.get("plateau") is not None:
            pl, saved = self.plateau, state["plateau"]
            pl.lr, pl.best, pl.bad_epochs = saved["lr"], saved["best"], saved["bad_epochs"]
        self.generator.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


class _HostBuffers:
    """Host tensors reused from one checkpoint snapshot to the next. Allocating a 227 MB state afresh
    each epoch cost 0.07-0.3 s (the pages are new every time); copying it into buffers freed by
    an earlier snapshot, 0.01-0.02 s. For a CUDA run the buffers are pinned, so the copies from the
    GPU are DMA transfers."""

    def __init__(self, pinned: bool) -> None:
        self._pinned = pinned
        self._free: dict[tuple, list[torch.Tensor]] = collections.defaultdict(list)
        self._lock = threading.Lock()

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        key = (tuple(tensor.shape), tensor.dtype)
        with self._lock:
            free = self._free.get(key)
            buffer = free.pop() if free else None
        if buffer is None:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self._pinned)
        return buffer.copy_(tensor.detach())

    def give_back(self, buffers: list[torch.Tensor]) -> None:
        """Buffers whose snapshot is saved or dropped: nothing reads them any more."""
        with self._lock:
            for buffer in buffers:
                self._free[(tuple(buffer.shape), buffer.dtype)].append(buffer)


def _host_copy(obj, buffers: _HostBuffers, copies: list[torch.Tensor]):
    """``obj`` with every tensor in it (dicts, lists and tuples walked) copied to host memory."""
    if isinstance(obj, torch.Tensor):
        copies.append(buffers.copy(obj))
        return copies[-1]
    if isinstance(obj, dict):
        return {key: _host_copy(value, buffers, copies) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(value, buffers, copies) for value in obj)
    return obj


class CheckpointUnreadable(Exception):
    """A checkpoint file that torch cannot load (damaged on disk: its writes are atomic)."""


def read_checkpoint(path: pathlib.Path) -> dict:
    """A checkpoint's state, or CheckpointUnreadable saying why not."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a damaged record, a pickle weights_only refuses
        raise CheckpointUnreadable(f"{type(exc).__name__}: {exc}".strip()) from exc


def save_checkpoint(state: dict, path: pathlib.Path) -> None:
    # torch.load does not check the zip records' CRC-32s (a flipped byte loads silently), so they
    # only cost: for a 227 MB checkpoint about 50 ms of CPU an epoch, taken from the next epoch's
    # steps on a small machine. (What guards a checkpoint is the atomic write.)
    if hasattr(torch.serialization, "set_crc32_options"):  # torch >= 2.6
        torch.serialization.set_crc32_options(False)
    with files.atomic_writer(path) as f:  # temp file, fsync, rename
        torch.save(state, f)


class _EpochWriter:
    """Saves the checkpoints and reports the epochs on its own thread, so the next epoch trains
    while a checkpoint is written and fsynced and a report is committed (for an 18.9M-parameter
    MLP with Adam, a 227 MB checkpoint: 0.3-0.4 s an epoch that the training thread used to wait).

    An epoch is reported only once a checkpoint holding it is on disk, so a crash in between
    leaves epochs checkpointed but not reported (``reported_epochs`` covers that), never one
    reported but lost. The training thread never waits for the disk: when an epoch ends while
    a save is still running, its snapshot waits, and a newer epoch's snapshot replaces it (that
    save then covers both epochs' reports). So a job whose saves take longer than its epochs
    trains at full speed and checkpoints as often as the disk allows, and at most two snapshots
    (one being written, one waiting) are held. ``finish`` and ``close`` save the snapshot
    waiting; the last epoch always has one, so a run that ends is saved whole. After a failed
    save or report nothing more is written; the error is raised to the training thread at its
    next ``submit`` or at ``close``.

    ``budget`` bounds the share of the job's time spent saving: after a save that took s seconds
    the next one starts no sooner than s * (1 - budget) / budget seconds later (1: as soon as the
    last is done), and the snapshots of epochs ending meanwhile replace each other as above (the
    training thread takes none it knows will be replaced: ``wants_snapshot``). On a
    machine with few cores a save takes CPU from training even on its own thread: for an
    18.9M-parameter MLP whose 227 MB checkpoint takes 0.3 s and whose epochs take 0.8 s, saving
    every epoch slowed its steps by 10-25%."""

    def __init__(self, checkpoint_path: pathlib.Path | None, on_epoch: Callable[[EpochResult], None],
                 device: torch.device, budget: float = 1.0) -> None:
        if not 0 < budget <= 1:
            raise ValueError(f"checkpoint budget must be in (0, 1], got {budget!r}")
        self._path, self._on_epoch = checkpoint_path, on_epoch
        self._pause = (1 - budget) / budget  # seconds of waiting per second of saving
        self._not_before = 0.0  # time.monotonic() before which no save starts, unless closing
        self._saving = False  # a save under way
        self.buffers = _HostBuffers(pinned=device.type == "cuda")
        self._cv = threading.Condition()
        self._snapshot: tuple[dict, list[torch.Tensor]] | None = None  # the newest finished epoch's, not yet being written
        self._unreported: collections.deque[EpochResult] = collections.deque()
        self._closing = False
        self._unsaved_ok = False  # close(save_pending=False): report what no save will cover
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def _reports_go_unsaved(self) -> bool:
        """Whether reports may go without a save covering them: with no checkpoint path (every
        epoch otherwise comes with a snapshot), or after close(save_pending=False)."""
        return self._path is None or self._unsaved_ok

    def _wait(self) -> bool:
        """Under the lock: waits until there is a snapshot to save (and the budget allows it, or
        the writer is closing) or reports that may go unsaved; False when closing with nothing left."""
        while True:
            if self._snapshot is not None:
                wait = 0.0 if self._closing else self._not_before - time.monotonic()
                if wait <= 0:
                    return True
                self._cv.wait(wait)
            elif self._unreported and self._reports_go_unsaved():
                return True
            elif self._closing:
                return False
            else:
                self._cv.wait()

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._wait():
                    return  # closing, with everything written
                snapshot, self._snapshot = self._snapshot, None
                self._saving = snapshot is not None
                pending = list(self._unreported)
            state = None
            try:
                if snapshot is not None:
                    state, copies = snapshot
                    began = time.monotonic()
                    save_checkpoint(state, self._path)
                    done = time.monotonic()
                    with self._cv:
                        self._saving = False
                        self._not_before = done + (done - began) * self._pause
                    self.buffers.give_back(copies)
                covered = state["epoch"] if state is not None else pending[-1].epoch
                for result in pending:
                    if result.epoch > covered:
                        break
                    self._on_epoch(result)
                    with self._cv:
                        self._unreported.popleft()
            except Exception as exc:  # handed to the training thread
                with self._cv:
                    self._error = exc
                return

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, snapshot: tuple[dict, list[torch.Tensor]] | None, result: EpochResult) -> None:
        """Hands over a finished epoch: its result, and its snapshot (``_Progress.snapshot``) unless
        there is no checkpoint path."""
        with self._cv:
            self._raise()
            self._unreported.append(result)
            if snapshot is not None:
                if self._snapshot is not None:  # replaced while still waiting: this save covers both
                    self.buffers.give_back(self._snapshot[1])
                self._snapshot = snapshot
            self._cv.notify()

    def wants_snapshot(self, epoch_seconds: float) -> bool:
        """Whether a snapshot handed over now could be saved before the next epoch's, ``epoch_seconds``
        from now, replaces it: False while the budget keeps the next save from starting before then
        (a snapshot costs the training thread a copy of the whole state: for 227 MB, 10-16 ms here)."""
        with self._cv:
            return self._saving or time.monotonic() + epoch_seconds >= self._not_before

    def finish(self) -> None:
        """No epoch will follow: the snapshot waiting is saved at once, whatever the budget (no
        training is left for the save to slow down; the caller's export overlaps it)."""
        with self._cv:
            self._closing = True
            self._cv.notify()

    def close(self, *, raise_error: bool = True, save_pending: bool = True) -> None:
        """Waits until every submitted epoch is saved and reported; raises a failure too, unless the
        caller is already propagating its own. ``save_pending=False`` (a job cancelled for good,
        whose checkpoint is about to go): a snapshot still waiting is dropped, not saved, and the
        epochs it would have covered are reported all the same; a save under way is finished."""
        with self._cv:
            self._closing = True
            if not save_pending:
                self._unsaved_ok = True
                if self._snapshot is not None:
                    self.buffers.give_back(self._snapshot[1])
                    self._snapshot = None
            self._cv.notify()
        self._thread.join()
        if raise_error:
            self._raise()
        elif self._error is not None:  # the training thread's own error is the one that propagates
            log.warning("saving or reporting an epoch failed too: %r", self._error)


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
    test_data: TrainingData | None = None,
    reported_epochs: int | None = None,
    keep_saving: bool = False,
    cancelled_for_good: Callable[[], bool] = lambda: False,
    checkpoint_budget: float = 1.0,
    on_notice: Callable[[str], None] = lambda message: None,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> TrainResult:
    """Trains ``network`` on ``data`` as ``training`` says. Assumes
    ``spec.validate_job`` accepted the job. Calls ``on_epoch`` after each epoch
    finished in this call; polls ``should_stop`` before every step and raises
    errors.Cancelled when it returns True. With ``checkpoint_path``, saves a
    checkpoint after epochs (every one the ``checkpoint_budget`` allows: the
    share of the time saves may take, see ``_EpochWriter``; 1 saves every epoch
    the disk allows) and resumes from one found at start; epochs
    it holds are not reported again, except those past ``reported_epochs``
    (the last epoch the caller recorded: a crash can land between saving an
    epoch's checkpoint and reporting it). At the end the kept weights are
    evaluated on the training and validation splits and, once, on
    ``test_data``. Checkpoints are saved and epochs reported on a writer
    thread; with ``keep_saving`` the last of them may still be in flight on
    return, so the caller's export overlaps it, and the caller must call
    ``result.saving.close()`` (which waits, and raises a failure of theirs)
    before it ends the job. ``cancelled_for_good`` is asked when
    ``should_stop`` stopped the run: True for a cancel (no resume to come), so
    a checkpoint snapshot still waiting is not saved and every finished epoch
    is reported; False for a shutdown (epochs no save covers stay unreported).
    Any other exception ends the job for good too. A checkpoint that cannot be read (damaged on
    disk) is removed and the run starts over from its first epoch, saying so to ``on_notice``.
    ``on_phase`` hears what the run goes on to do: "training" (each epoch's steps), "validation"
    (each epoch's) and "evaluation" (the final scores)."""
    classifier = data.label_kind != datasets_pb2.LABEL_KIND_REGRESSION  # classes or multi-label
    multi_label = data.label_kind == datasets_pb2.LABEL_KIND_MULTI_LABEL
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
    summary = spec.infer_network(network, feature_shape)
    rows = eval_rows(summary, network)  # per evaluation pass
    check_memory(summary, network, training, performance, n_train, feature_shape, device)
    holdout_idx = (val_idx if n_val else train_idx)[:min(HOLDOUT_EXAMPLES, max(2, rows))].numpy()

    features = torch.from_numpy(normalization.apply(data.features))
    labels = _labels_tensor(data)
    home = data_device(features.nbytes + labels.nbytes, device)  # the GPU when the data fits there
    x_train, y_train = _place(features[train_idx], home, device), _place(labels[train_idx], home, device)
    x_val, y_val = _place(features[val_idx], home, device), _place(labels[val_idx], home, device)

    # --- network, optimizer, loss
    torch.manual_seed(seed)
    model = nets.build_network(network, feature_shape).to(device)
    # Cross-entropy wants logits: an explicit final softmax is skipped while training.
    forward = nets.logits_network(model) if classifier else model
    forward, x_train, x_val = apply_performance(performance, model, forward, x_train, x_val, device)  # issue 5
    optimizer = make_optimizer(training.optimizer, model.parameters())
    loss_fn = make_loss(training.loss, data.output_size).to(device)

    batch_size = spec.batch_size_of(training.batching, n_train)
    iterations = spec.iterations_per_epoch(training.batching, n_train)
    stepped = iterations * batch_size if spec.drop_last_of(training.batching) else n_train
    shuffle = training.shuffle if training.HasField("shuffle") else True
    stopper = _early_stopping(training, has_validation=n_val > 0)
    plateau = _plateau(training, has_validation=n_val > 0)
    clip_norm = training.gradient_clip_norm if training.HasField("gradient_clip_norm") else None

    progress = _Progress(model, optimizer, generator, stopper, plateau, normalization, device,
                         identity={"seed": seed, "n_train": n_train, "n_val": n_val})
    if checkpoint_path is not None and checkpoint_path.exists():
        try:
            state = read_checkpoint(checkpoint_path)  # read whole before anything is restored from it
        except CheckpointUnreadable as exc:  # the job is not lost: it trains again from its first epoch
            log.warning("checkpoint %s cannot be read (%s): training starts over", checkpoint_path, exc)
            on_notice(f"its checkpoint could not be read ({exc}); training starts over from epoch 1")
            checkpoint_path.unlink(missing_ok=True)
        else:
            progress.restore_state(state, checkpoint_path)  # finished epochs are not reported again...
            for result in progress.history:  # ...unless the crash came after the checkpoint, before the report
                if reported_epochs is not None and result.epoch > reported_epochs:
                    on_epoch(result)
    history = progress.history

    # --- epochs
    started = time.perf_counter()
    elapsed_before = history[-1].elapsed_seconds if history else 0.0
    writer = _EpochWriter(checkpoint_path, on_epoch, device, checkpoint_budget)
    try:
        for epoch in range(len(history) + 1, training.epochs + 1):
            if progress.stopped:
                break
            epoch_start = time.perf_counter()
            lr = scheduled_learning_rate(training, epoch)
            if plateau is not None:
                lr = plateau.lr
            if lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            model.train()
            on_phase("training")
            order = torch.randperm(n_train, generator=generator) if shuffle else torch.arange(n_train)
            order = order[:stepped].to(x_train.device)  # drop_last: the examples of full batches only
            train_loss, train_acc, grad_norm = _train_epoch(
                forward, optimizer, loss_fn, x_train, y_train, order, batch_size, l1=training.l1_penalty,
                classifier=classifier, should_stop=should_stop, clip_norm=clip_norm, device=device)
            step_seconds = time.perf_counter() - epoch_start
            if not math.isfinite(train_loss):
                raise errors.InvalidArgument(
                    f"training diverged: the train loss is {train_loss} at epoch {epoch}; try a smaller learning rate",
                    field="training.optimizer",
                )

            val_loss = val_acc = None
            if n_val:
                on_phase("validation")
                val_loss, val_acc = _evaluate(forward, loss_fn, x_val, y_val, classifier, device, rows)
            result = EpochResult(
                epoch=epoch,
                iterations=iterations,
                train_loss=train_loss,
                train_accuracy=train_acc,
                validation_loss=val_loss,
                validation_accuracy=val_acc,
                learning_rate=optimizer.param_groups[0]["lr"],
                samples_per_second=stepped / step_seconds if step_seconds > 0 else float("inf"),
                elapsed_seconds=elapsed_before + time.perf_counter() - started,
                max_gradient_norm=grad_norm,
                examples=stepped,
            )
            history.append(result)
            if stopper is not None:
                progress.stopped = stopper.update(result, model)
            if plateau is not None:
                plateau.update(result)
            # Saved, then reported, on the writer's thread while the next epoch trains. No snapshot when
            # the budget lets no save start before the next epoch's snapshot would replace it: the
            # epoch is then reported once a later save covers it.
            last = progress.stopped or epoch == training.epochs
            wanted = checkpoint_path is not None and (last or writer.wants_snapshot(time.perf_counter() - epoch_start))
            writer.submit(progress.snapshot(writer.buffers) if wanted else None, result)

        writer.finish()  # the last snapshot is saved now, whatever the budget

        # --- keep the best weights
        best_epoch = history[-1].epoch
        if stopper is not None and stopper.restore_best and stopper.best_state is not None:
            model.load_state_dict(stopper.best_state)
            best_epoch = stopper.best_epoch
        binary = training.loss.WhichOneof("kind") == "binary_cross_entropy"
        top_k = spec.top_k_of(training, data.output_size) if classifier and not multi_label else 0
        score = dict(classifier=classifier, classes=data.output_size, top_k=top_k, device=device, rows=rows)
        on_phase("evaluation")
        evaluations = [evaluate(forward, loss_fn, x_train, y_train, split="train", **score)]
        if n_val:
            evaluations.append(evaluate(forward, loss_fn, x_val, y_val, split="validation", **score))
        if test_data is not None and len(test_data.features):
            x_test = torch.from_numpy(normalization.apply(test_data.features)).to(device)
            evaluations.append(evaluate(forward, loss_fn, x_test, _labels_tensor(test_data).to(device), split="test",
                                        **score))
    except BaseException as exc:
        # A job that ends for good (cancelled, or failed: the caller deletes its checkpoint) reports
        # every finished epoch and waits for no more saves. One that stops to resume later (a
        # shutdown) saves the snapshot waiting; epochs no save covers stay unreported, and are
        # trained again on resume.
        for_good = cancelled_for_good() if isinstance(exc, errors.Cancelled) else isinstance(exc, Exception)
        writer.close(raise_error=False, save_pending=not for_good)
        raise
    if not keep_saving:
        writer.close()
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
        binary=binary and not multi_label,
        multi_label=multi_label,
        evaluations=evaluations,
        saving=writer,
    )
