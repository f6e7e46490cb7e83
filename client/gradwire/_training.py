"""How to train: optimizers, early stopping, and the ``TrainingConfig`` that
``Client.train`` builds from its keyword arguments.

    >>> import gradwire as gw
    >>> gw.Adam(learning_rate=1e-3, weight_decay=1e-4)
    Adam(learning_rate=0.001, weight_decay=0.0001, beta1=0.9, beta2=0.999)
    >>> cfg = training_config(optimizer=gw.SGD(0.1), loss="mse", epochs=5, batch_size=16)
    >>> cfg.batching.mini_batch.batch_size
    16
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Literal

from gradwire._layers import check_bool, check_float, check_int
from gradwire.v1 import network_pb2

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "EarlyStopping",
    "Loss", "CrossEntropy", "BinaryCrossEntropy", "MSE", "MAE", "Huber",
    "Schedule", "StepDecay", "ExponentialDecay", "CosineDecay", "ReduceOnPlateau",
    "training_config",
]

LossName = Literal["cross_entropy", "binary_cross_entropy", "mse", "mae", "huber"]
BatchingName = Literal["full", "online", "mini_batch"]
NormalizationName = Literal["none", "min_max", "standardize"]
MetricName = Literal["validation_loss", "validation_accuracy", "train_loss", "train_accuracy"]

BATCHING_MODES = ("full", "online", "mini_batch")
NORMALIZATIONS = {
    "none": network_pb2.INPUT_NORMALIZATION_NONE,
    "min_max": network_pb2.INPUT_NORMALIZATION_MIN_MAX,
    "standardize": network_pb2.INPUT_NORMALIZATION_STANDARDIZE,
}
METRICS = {
    "train_loss": network_pb2.METRIC_TRAIN_LOSS,
    "validation_loss": network_pb2.METRIC_VALIDATION_LOSS,
    "validation_accuracy": network_pb2.METRIC_VALIDATION_ACCURACY,
    "train_accuracy": network_pb2.METRIC_TRAIN_ACCURACY,
}
MODES = {"min": network_pb2.METRIC_MODE_MIN, "max": network_pb2.METRIC_MODE_MAX}


class Optimizer:
    """Base class of the optimizer builders; ``to_proto()`` gives ``gradwire.v1.Optimizer``."""

    def to_proto(self) -> network_pb2.Optimizer:
        raise NotImplementedError


@dataclass(frozen=True)
class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay.

    >>> SGD(0.1, momentum=0.9)
    SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.0)
    """

    learning_rate: float
    _: KW_ONLY
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        _set(self, "learning_rate", check_float("learning_rate", self.learning_rate, low=0.0, low_open=True))
        _set(self, "momentum", check_float("momentum", self.momentum, low=0.0, high=1.0, high_open=True))
        _set(self, "weight_decay", check_float("weight_decay", self.weight_decay, low=0.0))
        check_bool("nesterov", self.nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0.0")

    def __repr__(self) -> str:
        extra = ", nesterov=True" if self.nesterov else ""
        return (f"SGD(learning_rate={self.learning_rate}, momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}{extra})")

    def to_proto(self) -> network_pb2.Optimizer:
        return network_pb2.Optimizer(
            sgd=network_pb2.SGD(
                learning_rate=self.learning_rate, momentum=self.momentum, weight_decay=self.weight_decay,
                nesterov=self.nesterov,
            )
        )


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient."""

    learning_rate: float = 1e-3
    _: KW_ONLY
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999

    def __post_init__(self) -> None:
        _set(self, "learning_rate", check_float("learning_rate", self.learning_rate, low=0.0, low_open=True))
        _set(self, "weight_decay", check_float("weight_decay", self.weight_decay, low=0.0))
        _set(self, "beta1", check_float("beta1", self.beta1, low=0.0, high=1.0, high_open=True))
        _set(self, "beta2", check_float("beta2", self.beta2, low=0.0, high=1.0, high_open=True))

    def to_proto(self) -> network_pb2.Optimizer:
        return network_pb2.Optimizer(
            adam=network_pb2.Adam(
                learning_rate=self.learning_rate,
                weight_decay=self.weight_decay,
                beta1=self.beta1,
                beta2=self.beta2,
            )
        )


@dataclass(frozen=True)
class AdamW(Optimizer):
    """Adam with decoupled weight decay (weights shrink by lr * weight_decay per step).

    >>> AdamW(1e-3)
    AdamW(learning_rate=0.001, weight_decay=0.01, beta1=0.9, beta2=0.999)
    """

    learning_rate: float = 1e-3
    _: KW_ONLY
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999

    def __post_init__(self) -> None:
        _set(self, "learning_rate", check_float("learning_rate", self.learning_rate, low=0.0, low_open=True))
        _set(self, "weight_decay", check_float("weight_decay", self.weight_decay, low=0.0))
        _set(self, "beta1", check_float("beta1", self.beta1, low=0.0, high=1.0, high_open=True))
        _set(self, "beta2", check_float("beta2", self.beta2, low=0.0, high=1.0, high_open=True))

    def to_proto(self) -> network_pb2.Optimizer:
        return network_pb2.Optimizer(adamw=network_pb2.AdamW(
            learning_rate=self.learning_rate, weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2))


@dataclass(frozen=True)
class Adagrad(Optimizer):
    """Adagrad with optional learning-rate decay and L2 weight decay."""

    learning_rate: float = 1e-2
    _: KW_ONLY
    weight_decay: float = 0.0
    lr_decay: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "learning_rate", check_float("learning_rate", self.learning_rate, low=0.0, low_open=True))
        _set(self, "weight_decay", check_float("weight_decay", self.weight_decay, low=0.0))
        _set(self, "lr_decay", check_float("lr_decay", self.lr_decay, low=0.0))

    def to_proto(self) -> network_pb2.Optimizer:
        return network_pb2.Optimizer(adagrad=network_pb2.Adagrad(
            learning_rate=self.learning_rate, weight_decay=self.weight_decay, lr_decay=self.lr_decay))


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """RMSprop with smoothing constant ``alpha``, optional momentum and L2 weight decay."""

    learning_rate: float
    _: KW_ONLY
    momentum: float = 0.0
    weight_decay: float = 0.0
    alpha: float = 0.99

    def __post_init__(self) -> None:
        _set(self, "learning_rate", check_float("learning_rate", self.learning_rate, low=0.0, low_open=True))
        _set(self, "momentum", check_float("momentum", self.momentum, low=0.0, high=1.0, high_open=True))
        _set(self, "weight_decay", check_float("weight_decay", self.weight_decay, low=0.0))
        _set(self, "alpha", check_float("alpha", self.alpha, low=0.0, high=1.0, low_open=True))

    def to_proto(self) -> network_pb2.Optimizer:
        return network_pb2.Optimizer(
            rmsprop=network_pb2.RMSprop(
                learning_rate=self.learning_rate,
                weight_decay=self.weight_decay,
                momentum=self.momentum,
                alpha=self.alpha,
            )
        )


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``monitor=None`` lets the server choose: validation loss, or training loss
    when there is no validation split.

    >>> EarlyStopping(patience=5).to_proto().patience
    5
    """

    _: KW_ONLY
    patience: int
    monitor: MetricName | None = None
    min_delta: float = 0.0
    restore_best_weights: bool = True
    mode: Literal["min", "max"] | None = None  # None: the metric's natural direction

    def __post_init__(self) -> None:
        _set(self, "patience", check_int("patience", self.patience, minimum=1))
        _check_monitor(self.monitor)
        _set(self, "min_delta", check_float("min_delta", self.min_delta, low=0.0))
        check_bool("restore_best_weights", self.restore_best_weights)
        if self.mode is not None and (not isinstance(self.mode, str) or self.mode not in MODES):
            raise ValueError(f"mode must be 'min', 'max' or None, got {self.mode!r}")

    def __repr__(self) -> str:
        extra = f", mode={self.mode!r}" if self.mode else ""
        return (f"EarlyStopping(patience={self.patience}, monitor={self.monitor!r}, min_delta={self.min_delta}, "
                f"restore_best_weights={self.restore_best_weights}{extra})")

    def to_proto(self) -> network_pb2.EarlyStopping:
        proto = network_pb2.EarlyStopping(
            patience=self.patience, min_delta=self.min_delta, restore_best_weights=self.restore_best_weights
        )
        if self.monitor is not None:
            proto.monitor = METRICS[self.monitor]
        if self.mode is not None:
            proto.mode = MODES[self.mode]
        return proto


def _check_monitor(monitor: object) -> None:
    if monitor is not None and (not isinstance(monitor, str) or monitor not in METRICS):
        raise ValueError(f"monitor must be one of {sorted(METRICS)} or None, got {monitor!r}")


# --- losses ------------------------------------------------------------------------------


class Loss:
    """Base class of the loss builders; ``to_proto()`` gives ``gradwire.v1.Loss``."""

    def to_proto(self) -> network_pb2.Loss:
        raise NotImplementedError


@dataclass(frozen=True)
class CrossEntropy(Loss):
    """Cross-entropy on softmax outputs, with ``label_smoothing`` in [0, 1) and
    optional ``class_weights`` (one per class, each > 0).

    >>> CrossEntropy(label_smoothing=0.1, class_weights=[1, 3]).to_proto().cross_entropy.class_weights
    [1.0, 3.0]
    """

    _: KW_ONLY
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _set(self, "label_smoothing", check_float("label_smoothing", self.label_smoothing, low=0.0, high=1.0,
                                                  high_open=True))
        if self.class_weights is not None:
            if isinstance(self.class_weights, (str, bytes)) or not hasattr(self.class_weights, "__iter__"):
                raise TypeError(f"class_weights must be a list of numbers, got {self.class_weights!r}")
            weights = tuple(check_float(f"class_weights[{i}]", w, low=0.0, low_open=True)
                            for i, w in enumerate(self.class_weights))
            if not weights:
                raise ValueError("class_weights must name one weight per class, got an empty list")
            _set(self, "class_weights", weights)

    def to_proto(self) -> network_pb2.Loss:
        return network_pb2.Loss(cross_entropy=network_pb2.CrossEntropyLoss(
            label_smoothing=self.label_smoothing, class_weights=list(self.class_weights or ())))


@dataclass(frozen=True)
class BinaryCrossEntropy(Loss):
    """Binary cross-entropy for two classes (labels 0 / 1) on ONE output logit;
    predictions come back as [1 - p, p]. ``positive_weight`` > 0 weighs class 1."""

    _: KW_ONLY
    positive_weight: float | None = None

    def __post_init__(self) -> None:
        if self.positive_weight is not None:
            _set(self, "positive_weight", check_float("positive_weight", self.positive_weight, low=0.0, low_open=True))

    def to_proto(self) -> network_pb2.Loss:
        loss = network_pb2.BinaryCrossEntropyLoss()
        if self.positive_weight is not None:
            loss.positive_weight = self.positive_weight
        return network_pb2.Loss(binary_cross_entropy=loss)


@dataclass(frozen=True)
class MSE(Loss):
    """Mean squared error (regression)."""

    def to_proto(self) -> network_pb2.Loss:
        return network_pb2.Loss(mse=network_pb2.MeanSquaredErrorLoss())


@dataclass(frozen=True)
class MAE(Loss):
    """Mean absolute error (regression)."""

    def to_proto(self) -> network_pb2.Loss:
        return network_pb2.Loss(mae=network_pb2.MeanAbsoluteErrorLoss())


@dataclass(frozen=True)
class Huber(Loss):
    """Huber loss (regression): quadratic below ``delta`` (> 0), linear above."""

    delta: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "delta", check_float("delta", self.delta, low=0.0, low_open=True))

    def to_proto(self) -> network_pb2.Loss:
        return network_pb2.Loss(huber=network_pb2.HuberLoss(delta=self.delta))


LOSSES = {"cross_entropy": CrossEntropy, "binary_cross_entropy": BinaryCrossEntropy, "mse": MSE, "mae": MAE,
          "huber": Huber}


# --- learning-rate schedules ---------------------------------------------------------------


class Schedule:
    """Base class of the schedule builders; ``to_proto()`` gives ``gradwire.v1.LearningRateSchedule``."""

    def to_proto(self) -> network_pb2.LearningRateSchedule:
        raise NotImplementedError


@dataclass(frozen=True)
class StepDecay(Schedule):
    """Multiply the rate by ``gamma`` in (0, 1] every ``step_size`` epochs.

    >>> StepDecay(10, gamma=0.5).to_proto().step.step_size
    10
    """

    step_size: int
    _: KW_ONLY
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _set(self, "step_size", check_int("step_size", self.step_size, minimum=1))
        _set(self, "gamma", check_float("gamma", self.gamma, low=0.0, high=1.0, low_open=True))

    def to_proto(self) -> network_pb2.LearningRateSchedule:
        return network_pb2.LearningRateSchedule(step=network_pb2.StepDecay(step_size=self.step_size, gamma=self.gamma))


@dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """Multiply the rate by ``gamma`` in (0, 1] every epoch."""

    gamma: float

    def __post_init__(self) -> None:
        _set(self, "gamma", check_float("gamma", self.gamma, low=0.0, high=1.0, low_open=True))

    def to_proto(self) -> network_pb2.LearningRateSchedule:
        return network_pb2.LearningRateSchedule(exponential=network_pb2.ExponentialDecay(gamma=self.gamma))


@dataclass(frozen=True)
class CosineDecay(Schedule):
    """``warmup_epochs`` of linear warmup, then cosine annealing to ``min_learning_rate``."""

    _: KW_ONLY
    warmup_epochs: int = 0
    min_learning_rate: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "warmup_epochs", check_int("warmup_epochs", self.warmup_epochs, minimum=0))
        _set(self, "min_learning_rate", check_float("min_learning_rate", self.min_learning_rate, low=0.0))

    def to_proto(self) -> network_pb2.LearningRateSchedule:
        return network_pb2.LearningRateSchedule(cosine=network_pb2.CosineDecay(
            warmup_epochs=self.warmup_epochs, min_learning_rate=self.min_learning_rate))


@dataclass(frozen=True)
class ReduceOnPlateau(Schedule):
    """Multiply the rate by ``factor`` after ``patience`` epochs without an
    improvement of ``monitor`` by more than ``min_delta``."""

    _: KW_ONLY
    factor: float = 0.1
    patience: int = 5
    monitor: MetricName | None = None
    min_delta: float = 0.0
    min_learning_rate: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "factor", check_float("factor", self.factor, low=0.0, high=1.0, low_open=True, high_open=True))
        _set(self, "patience", check_int("patience", self.patience, minimum=1))
        _check_monitor(self.monitor)
        _set(self, "min_delta", check_float("min_delta", self.min_delta, low=0.0))
        _set(self, "min_learning_rate", check_float("min_learning_rate", self.min_learning_rate, low=0.0))

    def to_proto(self) -> network_pb2.LearningRateSchedule:
        proto = network_pb2.ReduceOnPlateau(factor=self.factor, patience=self.patience, min_delta=self.min_delta,
                                            min_learning_rate=self.min_learning_rate)
        if self.monitor is not None:
            proto.monitor = METRICS[self.monitor]
        return network_pb2.LearningRateSchedule(reduce_on_plateau=proto)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalizing a frozen dataclass's field in __post_init__


def loss_proto(loss: LossName | Loss | network_pb2.Loss) -> network_pb2.Loss:
    if isinstance(loss, network_pb2.Loss):
        return loss
    if isinstance(loss, Loss):
        return loss.to_proto()
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]().to_proto()
    raise ValueError(f"loss must be one of {list(LOSSES)} or a gw loss such as gw.CrossEntropy(...), got {loss!r}")


def batching_proto(batch_size: int | None, batching: BatchingName | None, drop_last: bool = False) -> network_pb2.Batching:
    """The Batching message: ``batch_size`` alone means mini-batch.

    >>> batching_proto(None, "full").WhichOneof("mode")
    'full_batch'
    """
    if batching is None:
        if batch_size is None:
            raise ValueError(
                "say how to batch: batch_size=N (mini-batch), batching='full' or batching='online'"
            )
        batching = "mini_batch"
    if batching not in BATCHING_MODES:
        raise ValueError(f"batching must be one of {list(BATCHING_MODES)} or None, got {batching!r}")
    check_bool("drop_last", drop_last)
    if drop_last and batching != "mini_batch":
        raise ValueError(f"drop_last=True applies to mini-batches only, got batching={batching!r}")
    if batching == "mini_batch":
        if batch_size is None:
            raise ValueError("batching='mini_batch' needs batch_size")
        size = check_int("batch_size", batch_size, minimum=1)
        mini = network_pb2.MiniBatch(batch_size=size)
        if drop_last:
            mini.drop_last = True
        return network_pb2.Batching(mini_batch=mini)
    if batch_size is not None:
        raise ValueError(f"batch_size={batch_size!r} contradicts batching={batching!r}; drop one of them")
    if batching == "full":
        return network_pb2.Batching(full_batch=network_pb2.FullBatch())
    return network_pb2.Batching(online=network_pb2.Online())


def training_config(
    *,
    optimizer: Optimizer,
    loss: LossName | Loss | network_pb2.Loss = "cross_entropy",
    epochs: int,
    batch_size: int | None = None,
    batching: BatchingName | None = None,
    drop_last: bool = False,
    schedule: Schedule | None = None,
    gradient_clip_norm: float | None = None,
    top_k: int | None = None,
    validation_split: float = 0.0,
    early_stopping: EarlyStopping | None = None,
    seed: int | None = None,
    shuffle: bool = True,
    l1_penalty: float = 0.0,
    input_normalization: NormalizationName | None = None,
) -> network_pb2.TrainingConfig:
    """Builds a ``gradwire.v1.TrainingConfig`` from ``Client.train``'s keywords, checking each."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be gw.SGD, gw.Adam, gw.AdamW, gw.RMSprop or gw.Adagrad, got {optimizer!r}")
    config = network_pb2.TrainingConfig(
        loss=loss_proto(loss),
        optimizer=optimizer.to_proto(),
        batching=batching_proto(batch_size, batching, drop_last),
        epochs=check_int("epochs", epochs, minimum=1),
        shuffle=check_bool("shuffle", shuffle),
        validation_split=check_float("validation_split", validation_split, low=0.0, high=1.0, high_open=True),
        l1_penalty=check_float("l1_penalty", l1_penalty, low=0.0),
    )
    if seed is not None:
        config.seed = check_int("seed", seed, minimum=0, maximum=2**64 - 1)  # a uint64 field
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be gw.EarlyStopping(...), got {early_stopping!r}")
        config.early_stopping.CopyFrom(early_stopping.to_proto())
    if input_normalization is not None:
        if not isinstance(input_normalization, str) or input_normalization not in NORMALIZATIONS:
            raise ValueError(
                f"input_normalization must be one of {list(NORMALIZATIONS)} or None, got {input_normalization!r}"
            )
        config.input_normalization = NORMALIZATIONS[input_normalization]
    if schedule is not None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be gw.StepDecay, gw.ExponentialDecay, gw.CosineDecay or "
                            f"gw.ReduceOnPlateau, got {schedule!r}")
        if isinstance(schedule, CosineDecay) and schedule.warmup_epochs >= config.epochs:
            raise ValueError(f"CosineDecay warmup_epochs must be < epochs ({config.epochs}), "
                             f"got {schedule.warmup_epochs}")
        config.schedule.CopyFrom(schedule.to_proto())
    if gradient_clip_norm is not None:
        config.gradient_clip_norm = check_float("gradient_clip_norm", gradient_clip_norm, low=0.0, low_open=True)
    if top_k is not None:
        config.top_k = check_int("top_k", top_k, minimum=1)
    return config
