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

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "EarlyStopping", "training_config"]

LossName = Literal["cross_entropy", "mse"]
BatchingName = Literal["full", "online", "mini_batch"]
NormalizationName = Literal["none", "min_max", "standardize"]
MetricName = Literal["validation_loss", "validation_accuracy", "train_loss"]

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
}


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

    def __post_init__(self) -> None:
        _set(self, "learning_rate", check_float("learning_rate", self.learning_rate, low=0.0, low_open=True))
        _set(self, "momentum", check_float("momentum", self.momentum, low=0.0, high=1.0, high_open=True))
        _set(self, "weight_decay", check_float("weight_decay", self.weight_decay, low=0.0))

    def to_proto(self) -> network_pb2.Optimizer:
        return network_pb2.Optimizer(
            sgd=network_pb2.SGD(
                learning_rate=self.learning_rate, momentum=self.momentum, weight_decay=self.weight_decay
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

    def __post_init__(self) -> None:
        _set(self, "patience", check_int("patience", self.patience, minimum=1))
        if self.monitor is not None and self.monitor not in METRICS:
            raise ValueError(f"monitor must be one of {sorted(METRICS)} or None, got {self.monitor!r}")
        _set(self, "min_delta", check_float("min_delta", self.min_delta, low=0.0))
        check_bool("restore_best_weights", self.restore_best_weights)

    def to_proto(self) -> network_pb2.EarlyStopping:
        proto = network_pb2.EarlyStopping(
            patience=self.patience, min_delta=self.min_delta, restore_best_weights=self.restore_best_weights
        )
        if self.monitor is not None:
            proto.monitor = METRICS[self.monitor]
        return proto


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalizing a frozen dataclass's field in __post_init__


def loss_proto(loss: LossName | network_pb2.Loss) -> network_pb2.Loss:
    if isinstance(loss, network_pb2.Loss):
        return loss
    if loss == "cross_entropy":
        return network_pb2.Loss(cross_entropy=network_pb2.CrossEntropyLoss())
    if loss == "mse":
        return network_pb2.Loss(mse=network_pb2.MeanSquaredErrorLoss())
    raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")


def batching_proto(batch_size: int | None, batching: BatchingName | None) -> network_pb2.Batching:
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
    if batching == "mini_batch":
        if batch_size is None:
            raise ValueError("batching='mini_batch' needs batch_size")
        size = check_int("batch_size", batch_size, minimum=1)
        return network_pb2.Batching(mini_batch=network_pb2.MiniBatch(batch_size=size))
    if batch_size is not None:
        raise ValueError(f"batch_size={batch_size!r} contradicts batching={batching!r}; drop one of them")
    if batching == "full":
        return network_pb2.Batching(full_batch=network_pb2.FullBatch())
    return network_pb2.Batching(online=network_pb2.Online())


def training_config(
    *,
    optimizer: Optimizer,
    loss: LossName | network_pb2.Loss = "cross_entropy",
    epochs: int,
    batch_size: int | None = None,
    batching: BatchingName | None = None,
    validation_split: float = 0.0,
    early_stopping: EarlyStopping | None = None,
    seed: int | None = None,
    shuffle: bool = True,
    l1_penalty: float = 0.0,
    input_normalization: NormalizationName | None = None,
) -> network_pb2.TrainingConfig:
    """Builds a ``gradwire.v1.TrainingConfig`` from ``Client.train``'s keywords, checking each."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be gw.SGD, gw.Adam or gw.RMSprop, got {optimizer!r}")
    config = network_pb2.TrainingConfig(
        loss=loss_proto(loss),
        optimizer=optimizer.to_proto(),
        batching=batching_proto(batch_size, batching),
        epochs=check_int("epochs", epochs, minimum=1),
        shuffle=check_bool("shuffle", shuffle),
        validation_split=check_float("validation_split", validation_split, low=0.0, high=1.0, high_open=True),
        l1_penalty=check_float("l1_penalty", l1_penalty, low=0.0),
    )
    if seed is not None:
        seed = check_int("seed", seed, minimum=0)
        if seed >= 2**64:
            raise ValueError(f"seed must be < 2**64, got {seed}")
        config.seed = seed
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be gw.EarlyStopping(...), got {early_stopping!r}")
        config.early_stopping.CopyFrom(early_stopping.to_proto())
    if input_normalization is not None:
        if input_normalization not in NORMALIZATIONS:
            raise ValueError(
                f"input_normalization must be one of {list(NORMALIZATIONS)} or None, got {input_normalization!r}"
            )
        config.input_normalization = NORMALIZATIONS[input_normalization]
    return config
