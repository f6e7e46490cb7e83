"""Keras-like layer builders: each one is a frozen dataclass whose ``to_proto()``
returns a ``gradwire.v1.Layer``; ``Sequential`` turns a list of them into a
``gradwire.v1.NetworkSpec``.

Layers name only their own hyper-parameters; the server infers every input
shape from the dataset, so ``Dense(10)`` never names its input width.

    >>> import gradwire as gw
    >>> net = gw.Sequential([gw.Conv2d(8, kernel_size=3, padding="same"), gw.ReLU(),
    ...                      gw.MaxPool2d(2), gw.Flatten(), gw.Dense(10)])
    >>> len(net.to_proto().layers)
    5
    >>> net[0]
    Conv2d(filters=8, kernel_size=3, stride=1, padding='same', use_bias=True)

Checks here catch the obvious mistakes early (a ValueError that names the
value); the server validates everything again and is the authority.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator
from collections.abc import Iterable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Literal, Union, overload

from gradwire.v1 import network_pb2

__all__ = [
    "Layer",
    "Dense",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "Flatten",
    "Dropout",
    "BatchNorm",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "ELU",
    "Softmax",
    "Sequential",
    "layer_from_proto",
]

Padding = Union[Literal["valid", "same"], int]


# --- argument checks shared with _training.py --------------------------------------------


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an int (numpy ints welcome, bools and floats not), >= minimum."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within [low, high] (either end may be open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {number}")
    if low is not None and (number < low or (low_open and number == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {number}")
    if high is not None and (number > high or (high_open and number == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {number}")
    return number


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


# --- layers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """Base class: a layer builder. ``to_proto()`` gives the ``gradwire.v1.Layer``.

    Subclasses set ``_kind`` (the ``Layer.kind`` oneof field) and name their
    hyper-parameters exactly like the proto message's fields, so one generic
    ``to_proto`` / ``from_proto`` pair serves all of them. ``None`` means "unset:
    the server's default".
    """

    _kind: ClassVar[str]

    def to_proto(self) -> network_pb2.Layer:
        layer = network_pb2.Layer()
        message = getattr(layer, self._kind)
        message.SetInParent()  # an empty message (ReLU {}) must still select the oneof
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                setattr(message, field.name, value)
        return layer

    @classmethod
    def _from_message(cls, message: Any) -> Layer:
        kwargs = {}
        for field in dataclasses.fields(cls):
            has = message.HasField(field.name) if _is_optional(message, field.name) else True
            if has:
                value = getattr(message, field.name)
                kwargs[field.name] = _tidy_float(value) if isinstance(value, float) else value
        return cls(**kwargs)


def _is_optional(message: Any, name: str) -> bool:
    return message.DESCRIPTOR.fields_by_name[name].has_presence


def _tidy_float(value: float) -> float:
    # proto floats are float32: 0.1 comes back as 0.10000000149; show what was meant.
    return float(f"{value:.7g}")


@dataclass(frozen=True)
class Dense(Layer):
    """Fully-connected layer ``y = x W^T + b`` with ``units`` outputs.

    >>> Dense(10)
    Dense(units=10, use_bias=True)
    """

    _kind: ClassVar[str] = "dense"
    units: int
    _: KW_ONLY
    use_bias: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", check_int("units", self.units, minimum=1))
        check_bool("use_bias", self.use_bias)


@dataclass(frozen=True)
class Conv2d(Layer):
    """2-D convolution: ``filters`` (K) filters of ``kernel_size`` (F) with ``stride`` (S).

    ``padding`` is ``"valid"`` (none), ``"same"`` (keep height and width; stride 1)
    or a number of zero pixels on each side. Input is (channels, height, width).

    >>> Conv2d(16, kernel_size=3, padding="same").to_proto().conv2d.padding_mode
    1
    """

    _kind: ClassVar[str] = "conv2d"
    filters: int
    kernel_size: int
    _: KW_ONLY
    stride: int = 1
    padding: Padding = "valid"
    use_bias: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", check_int("filters", self.filters, minimum=1))
        object.__setattr__(self, "kernel_size", check_int("kernel_size", self.kernel_size, minimum=1))
        object.__setattr__(self, "stride", check_int("stride", self.stride, minimum=1))
        if isinstance(self.padding, str):
            if self.padding not in ("valid", "same"):
                raise ValueError(f"padding must be 'valid', 'same' or an int >= 0, got {self.padding!r}")
        else:
            object.__setattr__(self, "padding", check_int("padding", self.padding, minimum=0))
        check_bool("use_bias", self.use_bias)

    def to_proto(self) -> network_pb2.Layer:
        conv = network_pb2.Conv2d(
            filters=self.filters, kernel_size=self.kernel_size, stride=self.stride, use_bias=self.use_bias
        )
        if self.padding == "same":
            conv.padding_mode = network_pb2.PADDING_MODE_SAME
        elif self.padding == "valid":
            conv.padding_mode = network_pb2.PADDING_MODE_VALID
        else:
            conv.padding_size = int(self.padding)
        return network_pb2.Layer(conv2d=conv)

    @classmethod
    def _from_message(cls, message: Any) -> Layer:
        which = message.WhichOneof("padding")
        padding: Padding = "valid"
        if which == "padding_size":
            padding = message.padding_size
        elif which == "padding_mode" and message.padding_mode == network_pb2.PADDING_MODE_SAME:
            padding = "same"
        return cls(
            message.filters,
            kernel_size=message.kernel_size,
            stride=message.stride if message.HasField("stride") else 1,
            padding=padding,
            use_bias=message.use_bias if message.HasField("use_bias") else True,
        )


@dataclass(frozen=True)
class _Pool2d(Layer):
    kernel_size: int
    _: KW_ONLY
    stride: int | None = None  # None: the server's default, kernel_size

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", check_int("kernel_size", self.kernel_size, minimum=1))
        if self.stride is not None:
            object.__setattr__(self, "stride", check_int("stride", self.stride, minimum=1))


@dataclass(frozen=True)
class MaxPool2d(_Pool2d):
    """2-D max pooling over ``kernel_size`` windows; ``stride`` defaults to ``kernel_size``.

    >>> MaxPool2d(2)
    MaxPool2d(kernel_size=2, stride=None)
    """

    _kind: ClassVar[str] = "max_pool2d"


@dataclass(frozen=True)
class AvgPool2d(_Pool2d):
    """2-D average pooling over ``kernel_size`` windows; ``stride`` defaults to ``kernel_size``."""

    _kind: ClassVar[str] = "avg_pool2d"


@dataclass(frozen=True)
class Flatten(Layer):
    """Flattens every axis but the batch axis (between convolutions and Dense layers)."""

    _kind: ClassVar[str] = "flatten"


@dataclass(frozen=True)
class Dropout(Layer):
    """Zeroes each unit with probability ``rate`` in [0, 1) while training.

    >>> Dropout(0.25).to_proto().dropout.rate
    0.25
    """

    _kind: ClassVar[str] = "dropout"
    rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", check_float("rate", self.rate, low=0.0, high=1.0, high_open=True))


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalization (1-D for vectors, 2-D for feature maps).

    ``momentum`` in (0, 1] (server default 0.1), ``epsilon`` > 0 (default 1e-5).
    """

    _kind: ClassVar[str] = "batch_norm"
    _: KW_ONLY
    momentum: float | None = None
    epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.momentum is not None:
            object.__setattr__(
                self, "momentum", check_float("momentum", self.momentum, low=0.0, high=1.0, low_open=True)
            )
        if self.epsilon is not None:
            object.__setattr__(self, "epsilon", check_float("epsilon", self.epsilon, low=0.0, low_open=True))


@dataclass(frozen=True)
class ReLU(Layer):
    """Rectified linear unit, ``max(0, x)``."""

    _kind: ClassVar[str] = "relu"


@dataclass(frozen=True)
class LeakyReLU(Layer):
    """Leaky ReLU, ``max(negative_slope * x, x)``; the lecture's slope 0.1 by default."""

    _kind: ClassVar[str] = "leaky_relu"
    negative_slope: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "negative_slope", check_float("negative_slope", self.negative_slope))


@dataclass(frozen=True)
class Sigmoid(Layer):
    """Logistic sigmoid, ``1 / (1 + exp(-x))``."""

    _kind: ClassVar[str] = "sigmoid"


@dataclass(frozen=True)
class Tanh(Layer):
    """Hyperbolic tangent."""

    _kind: ClassVar[str] = "tanh"


@dataclass(frozen=True)
class ELU(Layer):
    """Exponential linear unit: ``x`` for x >= 0, ``alpha * (exp(x) - 1)`` otherwise."""

    _kind: ClassVar[str] = "elu"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_float("alpha", self.alpha))


@dataclass(frozen=True)
class Softmax(Layer):
    """Softmax over the last axis; only allowed last (classifiers get one on export anyway)."""

    _kind: ClassVar[str] = "softmax"


# The one table: oneof field name -> builder.
LAYERS_BY_KIND: dict[str, type[Layer]] = {
    cls._kind: cls
    for cls in (Dense, Conv2d, MaxPool2d, AvgPool2d, Flatten, Dropout, BatchNorm, ReLU, LeakyReLU,
                Sigmoid, Tanh, ELU, Softmax)
}


def layer_from_proto(layer: network_pb2.Layer) -> Layer:
    """The builder for a ``gradwire.v1.Layer`` (inverse of ``to_proto``)."""
    kind = layer.WhichOneof("kind")
    if kind is None:
        raise ValueError("layer has no kind set")
    return LAYERS_BY_KIND[kind]._from_message(getattr(layer, kind))


class Sequential:
    """Layers applied in order; ``to_proto()`` gives the ``gradwire.v1.NetworkSpec``.

    Accepts layer builders or ready-made ``gradwire.v1.Layer`` messages.

    >>> import gradwire as gw
    >>> net = gw.Sequential([gw.Dense(32), gw.ReLU(), gw.Dense(3)])
    >>> net
    Sequential([
      Dense(units=32, use_bias=True),
      ReLU(),
      Dense(units=3, use_bias=True),
    ])
    """

    def __init__(self, layers: Iterable[Layer | network_pb2.Layer]) -> None:
        if isinstance(layers, (Layer, network_pb2.Layer)):
            raise TypeError("Sequential takes a list of layers, e.g. Sequential([gw.Dense(10)])")
        items: list[Layer] = []
        for i, layer in enumerate(layers):
            if isinstance(layer, network_pb2.Layer):
                layer = layer_from_proto(layer)
            elif isinstance(layer, type) and issubclass(layer, Layer):
                raise TypeError(f"layers[{i}]: got the class {layer.__name__}; call it: {layer.__name__}(...)")
            elif not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be a gradwire layer, got {layer!r}")
            items.append(layer)
        if not items:
            raise ValueError("a network needs at least one layer")
        self.layers: tuple[Layer, ...] = tuple(items)

    @classmethod
    def from_proto(cls, spec: network_pb2.NetworkSpec) -> Sequential:
        """The builders of a ``gradwire.v1.NetworkSpec`` (e.g. ``job.proto.network``)."""
        return cls(layer_from_proto(layer) for layer in spec.layers)

    def to_proto(self) -> network_pb2.NetworkSpec:
        return network_pb2.NetworkSpec(layers=[layer.to_proto() for layer in self.layers])

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    @overload
    def __getitem__(self, index: int) -> Layer: ...
    @overload
    def __getitem__(self, index: slice) -> Sequential: ...
    def __getitem__(self, index: int | slice) -> Layer | Sequential:
        if isinstance(index, slice):
            return Sequential(self.layers[index])
        return self.layers[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequential) and self.layers == other.layers

    def __hash__(self) -> int:
        return hash(self.layers)

    def __repr__(self) -> str:
        body = "".join(f"  {layer!r},\n" for layer in self.layers)
        return f"Sequential([\n{body}])"


def network_proto(network: Sequential | Iterable[Layer] | network_pb2.NetworkSpec) -> network_pb2.NetworkSpec:
    """A NetworkSpec from a Sequential, a list of layers, or a NetworkSpec."""
    if isinstance(network, network_pb2.NetworkSpec):
        return network
    if isinstance(network, Sequential):
        return network.to_proto()
    if isinstance(network, Layer):
        raise TypeError("network must be a Sequential or a list of layers, got a single layer")
    return Sequential(network).to_proto()
