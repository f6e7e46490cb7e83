"""Validation and shape inference for a network spec and its training config.

Pure Python, no torch: the RPC process calls ``validate_job`` before it queues a
job, so a bad request is answered INVALID_ARGUMENT with a field path
(``network.layers[3].conv2d.kernel_size: must be >= 1, got 0``) instead of
failing later on a worker. ``nets.py`` builds torch modules from the shapes
inferred here, and the tests check these shapes and parameter counts against
what torch actually builds.

Shapes are per example, without the batch axis: ``(features,)`` for vectors,
``(channels, height, width)`` for images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from gradwire.v1 import datasets_pb2, network_pb2

from .errors import InvalidArgument, field_path

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LayerSummary:
    """One layer after shape inference."""

    index: int
    kind: str
    output_shape: Shape
    parameter_count: int


@dataclass(frozen=True)
class NetworkSummary:
    """A whole network after shape inference."""

    layers: tuple[LayerSummary, ...]
    output_shape: Shape
    parameter_count: int


# --------------------------------------------------------------------------
# Small helpers


def _fmt(value: float | int) -> str:
    """Format a number for an error message. Proto floats are float32, so 0.1
    arrives as 0.10000000149011612; 7 significant digits print it as typed."""
    if isinstance(value, float):
        return f"{value:.7g}"
    return str(value)


def _shape(shape: Shape) -> str:
    """(64,) / (1, 8, 8): Python's tuple notation."""
    return str(tuple(shape))


def _require(ok: bool, message: str, field: str) -> None:
    if not ok:
        raise InvalidArgument(message, field=field)


def _at_least(value: int, minimum: int, field: str) -> None:
    _require(value >= minimum, f"must be >= {minimum}, got {_fmt(value)}", field)


def _finite(value: float, field: str) -> None:
    _require(math.isfinite(value), f"must be a finite number, got {_fmt(value)}", field)


def _in_unit_interval(value: float, field: str, *, low_open: bool = False, high_open: bool = True) -> None:
    """Require value in [0, 1) by default; (0, 1] with low_open=True, high_open=False."""
    _finite(value, field)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    _require(low_ok and high_ok, f"must be in {lo}0, 1{hi}, got {_fmt(value)}", field)


def _enum_name(enum_type, value: int) -> str:
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


def _check_enum(enum_type, value: int, field: str) -> None:
    """Reject the *_UNSPECIFIED zero value and values this server does not know
    (proto3 enums are open, so an unknown number survives parsing)."""
    name = _enum_name(enum_type, value)
    if value == 0:
        raise InvalidArgument(f"{name} is not allowed; choose a value or leave the field unset", field=field)
    if name == str(value):
        raise InvalidArgument(f"unknown value {value}", field=field)


def training_split_sizes(example_count: int, validation_split: float) -> tuple[int, int]:
    """Returns (n_train, n_val) with n_val = floor(example_count * validation_split).

    The split arrives as a float32 (0.7 is 0.699999988), so it is read back at
    float32 precision (7 significant digits) and multiplied exactly: 10 examples
    at 0.7 hold out 7, not 6. train.py uses this function too, so validation
    and training always agree on the sizes.
    """
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    n_val = int(Decimal(f"{validation_split:.7g}") * example_count)  # int() floors a positive Decimal
    return example_count - n_val, n_val


# --------------------------------------------------------------------------
# Per-layer shape inference: (layer params, input shape, field) -> (output shape, parameter count)


def _require_image(kind: str, in_shape: Shape, field: str) -> None:
    _require(
        len(in_shape) == 3,
        f"{kind} needs (channels, height, width) input, got shape {_shape(in_shape)}",
        field,
    )


def _infer_dense(p: network_pb2.Dense, in_shape: Shape, field: str) -> tuple[Shape, int]:
    _require(
        len(in_shape) == 1,
        f"dense needs a 1-D (features,) input, got shape {_shape(in_shape)}; add a flatten layer before it",
        field,
    )
    _at_least(p.units, 1, f"{field}.units")
    use_bias = p.use_bias if p.HasField("use_bias") else True
    return (p.units,), in_shape[0] * p.units + (p.units if use_bias else 0)


def conv2d_padding(p: network_pb2.Conv2d) -> int | str:
    """The padding a Conv2d asks for: a pixel count, or "same"."""
    which = p.WhichOneof("padding")
    if which == "padding_size":
        return p.padding_size
    if which == "padding_mode" and p.padding_mode == network_pb2.PADDING_MODE_SAME:
        return "same"
    return 0  # unset or VALID


def _infer_conv2d(p: network_pb2.Conv2d, in_shape: Shape, field: str) -> tuple[Shape, int]:
    _require_image("conv2d", in_shape, field)
    _at_least(p.filters, 1, f"{field}.filters")
    _at_least(p.kernel_size, 1, f"{field}.kernel_size")
    stride = p.stride if p.HasField("stride") else 1
    _at_least(stride, 1, f"{field}.stride")
    if p.WhichOneof("padding") == "padding_mode":
        _check_enum(network_pb2.PaddingMode, p.padding_mode, f"{field}.padding_mode")
    if p.WhichOneof("padding") == "padding_size":
        _at_least(p.padding_size, 0, f"{field}.padding_size")

    channels, height, width = in_shape
    k = p.kernel_size
    padding = conv2d_padding(p)
    if padding == "same":
        _require(stride == 1, f"SAME padding needs stride 1, got {stride}", f"{field}.stride")
        out_hw = (height, width)
    else:
        ph, pw = height + 2 * padding, width + 2 * padding
        _require(
            k <= ph and k <= pw,
            f"kernel {k} is larger than the padded input {ph}x{pw} "
            f"(input shape {_shape(in_shape)}, padding {padding})",
            f"{field}.kernel_size",
        )
        out_hw = ((ph - k) // stride + 1, (pw - k) // stride + 1)
    use_bias = p.use_bias if p.HasField("use_bias") else True
    params = p.filters * channels * k * k + (p.filters if use_bias else 0)
    return (p.filters, *out_hw), params


def _infer_pool(kind: str) -> Callable:
    def infer(p, in_shape: Shape, field: str) -> tuple[Shape, int]:
        _require_image(kind, in_shape, field)
        _at_least(p.kernel_size, 1, f"{field}.kernel_size")
        stride = p.stride if p.HasField("stride") else p.kernel_size
        _at_least(stride, 1, f"{field}.stride")
        channels, height, width = in_shape
        k = p.kernel_size
        _require(
            k <= height and k <= width,
            f"kernel {k} is larger than the input {height}x{width} (input shape {_shape(in_shape)})",
            f"{field}.kernel_size",
        )
        return (channels, (height - k) // stride + 1, (width - k) // stride + 1), 0

    return infer


def _infer_flatten(p, in_shape: Shape, field: str) -> tuple[Shape, int]:
    return (math.prod(in_shape),), 0


def _infer_dropout(p: network_pb2.Dropout, in_shape: Shape, field: str) -> tuple[Shape, int]:
    _in_unit_interval(p.rate, f"{field}.rate")
    return in_shape, 0


def _infer_batch_norm(p: network_pb2.BatchNorm, in_shape: Shape, field: str) -> tuple[Shape, int]:
    _require(
        len(in_shape) in (1, 3),
        f"batch_norm needs (features,) or (channels, height, width) input, got shape {_shape(in_shape)}",
        field,
    )
    if p.HasField("momentum"):
        _in_unit_interval(p.momentum, f"{field}.momentum", low_open=True, high_open=False)
    if p.HasField("epsilon"):
        _finite(p.epsilon, f"{field}.epsilon")
        _require(p.epsilon > 0, f"must be > 0, got {_fmt(p.epsilon)}", f"{field}.epsilon")
    return in_shape, 2 * in_shape[0]  # learned scale and shift per channel / feature


def _infer_same_shape(p, in_shape: Shape, field: str) -> tuple[Shape, int]:
    return in_shape, 0


def _infer_leaky_relu(p: network_pb2.LeakyReLU, in_shape: Shape, field: str) -> tuple[Shape, int]:
    if p.HasField("negative_slope"):
        _finite(p.negative_slope, f"{field}.negative_slope")
    return in_shape, 0


def _infer_elu(p: network_pb2.ELU, in_shape: Shape, field: str) -> tuple[Shape, int]:
    if p.HasField("alpha"):
        _finite(p.alpha, f"{field}.alpha")
    return in_shape, 0


# One entry per field of the Layer.kind oneof; a test checks none is missing.
SHAPE_RULES: dict[str, Callable] = {
    "dense": _infer_dense,
    "conv2d": _infer_conv2d,
    "max_pool2d": _infer_pool("max_pool2d"),
    "avg_pool2d": _infer_pool("avg_pool2d"),
    "flatten": _infer_flatten,
    "dropout": _infer_dropout,
    "batch_norm": _infer_batch_norm,
    "relu": _infer_same_shape,
    "leaky_relu": _infer_leaky_relu,
    "sigmoid": _infer_same_shape,
    "tanh": _infer_same_shape,
    "elu": _infer_elu,
    "softmax": _infer_same_shape,
}

# Layers that keep their input's shape; the others decide the network's width.
_SHAPE_PRESERVING = {"dropout", "batch_norm", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "softmax"}


def infer_network(network: network_pb2.NetworkSpec, feature_shape: Shape) -> NetworkSummary:
    """Validates each layer against its input and infers shapes and parameter
    counts. Does not check the final width (see ``validate_job``)."""
    feature_shape = tuple(int(d) for d in feature_shape)
    if not feature_shape or any(d < 1 for d in feature_shape):
        raise InvalidArgument(f"each example needs a shape of sizes >= 1, got {_shape(feature_shape)}",
                              field="feature_shape")
    _require(len(network.layers) > 0, "needs at least one layer", "network.layers")
    last = len(network.layers) - 1
    shape, layers = feature_shape, []
    for i, layer in enumerate(network.layers):
        field = field_path("network", "layers", i)
        kind = layer.WhichOneof("kind")
        _require(kind is not None, "layer kind is not set", field)
        _require(kind in SHAPE_RULES, f"layer kind {kind} is not supported by this server", field)
        _require(
            kind != "softmax" or i == last,
            f"softmax is allowed only as the last layer, found at layer {i} of {last + 1}",
            field,
        )
        shape, params = SHAPE_RULES[kind](getattr(layer, kind), shape, field_path(field, kind))
        layers.append(LayerSummary(index=i, kind=kind, output_shape=shape, parameter_count=params))
    return NetworkSummary(layers=tuple(layers), output_shape=shape,
                          parameter_count=sum(s.parameter_count for s in layers))


# --------------------------------------------------------------------------
# The whole job


def validate_job(
    network: network_pb2.NetworkSpec,
    training: network_pb2.TrainingConfig,
    *,
    feature_shape: Shape,
    label_kind: int,
    output_size: int,
    example_count: int,
) -> NetworkSummary:
    """Checks that ``network`` and ``training`` can train on a dataset of
    ``example_count`` examples of ``feature_shape`` with ``label_kind`` labels
    (``output_size`` classes or regression targets). Returns the inferred
    shapes; raises InvalidArgument naming the offending field and value."""
    if label_kind not in (datasets_pb2.LABEL_KIND_CLASSES, datasets_pb2.LABEL_KIND_REGRESSION):
        raise InvalidArgument(f"must be LABEL_KIND_CLASSES or LABEL_KIND_REGRESSION, got "
                              f"{_enum_name(datasets_pb2.LabelKind, label_kind)}", field="label_kind")
    _at_least(output_size, 1, "output_size")

    summary = infer_network(network, feature_shape)
    _check_output(summary, label_kind, output_size)
    n_train, n_val = _check_training(training, label_kind=label_kind, example_count=example_count)
    _check_batch_norm_batches(summary, feature_shape, training, n_train)
    return summary


def _check_output(summary: NetworkSummary, label_kind: int, output_size: int) -> None:
    """The final output must be (output_size,): one logit per class or one value per target."""
    # The layer that decided the final width: the last that changes shapes.
    producer = next((s for s in reversed(summary.layers) if s.kind not in _SHAPE_PRESERVING), summary.layers[-1])
    field = field_path("network", "layers", producer.index)
    what = "classes" if label_kind == datasets_pb2.LABEL_KIND_CLASSES else "regression targets"
    out = summary.output_shape
    _require(
        len(out) == 1,
        f"the network's output has shape {_shape(out)} but must be ({output_size},), one value per "
        f"{'class' if what == 'classes' else 'target'}; end with flatten and dense({output_size})",
        field,
    )
    _require(out[0] == output_size,
             f"final layer width {out[0]} does not match the dataset's {output_size} {what}", field)


def _check_training(training: network_pb2.TrainingConfig, *, label_kind: int, example_count: int) -> tuple[int, int]:
    """Checks the loss, optimizer, batching and regularization; returns (n_train, n_val)."""
    # Loss: must fit the labels.
    loss = training.loss.WhichOneof("kind")
    _require(loss is not None, "loss kind is not set; choose cross_entropy (classes) or mse (regression)",
             "training.loss")
    wanted = {"cross_entropy": datasets_pb2.LABEL_KIND_CLASSES, "mse": datasets_pb2.LABEL_KIND_REGRESSION}[loss]
    _require(
        wanted == label_kind,
        f"{loss} loss needs {datasets_pb2.LabelKind.Name(wanted)} labels, but the dataset's labels are "
        f"{datasets_pb2.LabelKind.Name(label_kind)}",
        field_path("training", "loss", loss),
    )

    _check_optimizer(training.optimizer)

    _at_least(training.epochs, 1, "training.epochs")
    _in_unit_interval(training.validation_split, "training.validation_split")
    _finite(training.l1_penalty, "training.l1_penalty")
    _require(training.l1_penalty >= 0, f"must be >= 0, got {_fmt(training.l1_penalty)}", "training.l1_penalty")
    if training.HasField("input_normalization"):
        _check_enum(network_pb2.InputNormalization, training.input_normalization, "training.input_normalization")

    # The split.
    _at_least(example_count, 1, "example_count")
    n_train, n_val = training_split_sizes(example_count, training.validation_split)
    split = _fmt(training.validation_split)
    # floor(n * split) < n for any split < 1, so this holds whenever n >= 1; kept as the contract.
    _require(n_train >= 1, f"{split} of {example_count} examples leaves no training examples",
             "training.validation_split")
    _require(training.validation_split == 0 or n_val >= 1,
             f"{split} of {example_count} examples holds out no example for validation "
             f"(floor({example_count} * {split}) = 0); use a larger split or 0", "training.validation_split")

    _check_batching(training.batching, n_train=n_train, n_val=n_val)
    if training.HasField("early_stopping"):
        _check_early_stopping(training.early_stopping, label_kind=label_kind, has_validation=n_val > 0)
    return n_train, n_val


def _check_optimizer(optimizer: network_pb2.Optimizer) -> None:
    kind = optimizer.WhichOneof("kind")
    _require(kind is not None, "optimizer kind is not set; choose sgd, adam or rmsprop", "training.optimizer")
    p, field = getattr(optimizer, kind), field_path("training", "optimizer", kind)
    _finite(p.learning_rate, f"{field}.learning_rate")
    _require(p.learning_rate > 0, f"must be > 0, got {_fmt(p.learning_rate)}", f"{field}.learning_rate")
    _finite(p.weight_decay, f"{field}.weight_decay")
    _require(p.weight_decay >= 0, f"must be >= 0, got {_fmt(p.weight_decay)}", f"{field}.weight_decay")
    if kind in ("sgd", "rmsprop"):
        _in_unit_interval(p.momentum, f"{field}.momentum")
    if kind == "adam":
        for name in ("beta1", "beta2"):
            if p.HasField(name):
                _in_unit_interval(getattr(p, name), f"{field}.{name}")
    if kind == "rmsprop" and p.HasField("alpha"):
        _in_unit_interval(p.alpha, f"{field}.alpha")


def _check_batching(batching: network_pb2.Batching, *, n_train: int, n_val: int) -> None:
    mode = batching.WhichOneof("mode")
    _require(mode is not None, "batching mode is not set; choose full_batch, online or mini_batch",
             "training.batching")
    if mode == "mini_batch":
        field, size = "training.batching.mini_batch.batch_size", batching.mini_batch.batch_size
        _at_least(size, 1, field)
        _require(
            size <= n_train,
            f"batch size {size} is larger than the training split's {n_train} examples "
            f"({n_train + n_val} examples minus {n_val} held out for validation)",
            field,
        )


def _check_early_stopping(es: network_pb2.EarlyStopping, *, label_kind: int, has_validation: bool) -> None:
    field = "training.early_stopping"
    _at_least(es.patience, 1, f"{field}.patience")
    _finite(es.min_delta, f"{field}.min_delta")
    _require(es.min_delta >= 0, f"must be >= 0, got {_fmt(es.min_delta)}", f"{field}.min_delta")
    if not es.HasField("monitor"):
        return
    _check_enum(network_pb2.Metric, es.monitor, f"{field}.monitor")
    name = network_pb2.Metric.Name(es.monitor)
    if es.monitor in (network_pb2.METRIC_VALIDATION_LOSS, network_pb2.METRIC_VALIDATION_ACCURACY):
        _require(has_validation, f"{name} needs a validation split, but training.validation_split is 0",
                 f"{field}.monitor")
    if es.monitor == network_pb2.METRIC_VALIDATION_ACCURACY:
        _require(label_kind == datasets_pb2.LABEL_KIND_CLASSES,
                 f"{name} needs class labels, but the dataset's labels are LABEL_KIND_REGRESSION",
                 f"{field}.monitor")


def batch_size_of(batching: network_pb2.Batching, n_train: int) -> int:
    """Examples per gradient step for a batching mode."""
    mode = batching.WhichOneof("mode")
    if mode == "full_batch":
        return n_train
    if mode == "online":
        return 1
    return batching.mini_batch.batch_size


def _check_batch_norm_batches(summary: NetworkSummary, feature_shape: Shape,
                              training: network_pb2.TrainingConfig, n_train: int) -> None:
    """Batch norm in training mode needs more than one value per channel in a
    batch; online batching (or a last mini-batch of one example) on a vector
    gives it exactly one, and torch fails mid-training. Refuse that up front."""
    batch = batch_size_of(training.batching, n_train)
    smallest = n_train % batch or batch  # the last batch of an epoch is the smallest
    in_shape = tuple(feature_shape)
    for s in summary.layers:
        if s.kind == "batch_norm":
            values_per_channel = smallest * math.prod(in_shape[1:])
            _require(
                values_per_channel > 1,
                f"batch_norm on input shape {_shape(in_shape)} needs batches of at least 2 examples, but "
                f"the batching gives a batch of {smallest} ({n_train} training examples, batch size {batch})",
                field_path("network", "layers", s.index, "batch_norm"),
            )
        in_shape = s.output_shape
