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
    "Maxout",
    "GELU",
    "SiLU",
    "LayerNorm",
    "InstanceNorm",
    "GroupNorm",
    "Conv1d",
    "MaxPool1d",
    "AvgPool1d",
    "GlobalAvgPool",
    "SpatialDropout",
    "ResidualBlock",
    "PatchEmbedding",
    "ClassToken",
    "PositionEmbedding",
    "TransformerEncoder",
    "TokenPooling",
    "Sequential",
    "layer_from_proto",
]

Padding = Union[Literal["valid", "same"], int]
ActivationName = Literal["relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu", "silu"]
ACTIVATION_NAMES = ("relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu", "silu")


def check_activation(value: Any) -> str | None:
    """An inline activation name, or None."""
    if value is None:
        return None
    if value == "softmax":
        raise ValueError("activation='softmax' is not an inline activation: classifiers get a softmax in the "
                         "exported graph anyway; add gw.Softmax() as the last layer if you want it explicit")
    if not isinstance(value, str) or value not in ACTIVATION_NAMES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_NAMES)} or None, got {value!r}")
    return value


def activation_proto(name: str) -> network_pb2.Activation:
    activation = network_pb2.Activation()
    getattr(activation, name).SetInParent()
    return activation


def activation_name(message: Any) -> str | None:
    if not message.HasField("activation"):
        return None
    return message.activation.WhichOneof("kind")


def _padding_from(message: Any) -> Padding:
    which = message.WhichOneof("padding")
    if which == "padding_size":
        return message.padding_size
    if which == "padding_mode" and message.padding_mode == network_pb2.PADDING_MODE_SAME:
        return "same"
    return "valid"


def _check_padding(obj: Any) -> None:
    if isinstance(obj.padding, str):
        if obj.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same' or an int >= 0, got {obj.padding!r}")
        if obj.padding == "same" and obj.stride != 1:
            raise ValueError(f"padding='same' needs stride=1, got stride={obj.stride}")
    else:
        object.__setattr__(obj, "padding", check_int("padding", obj.padding, minimum=0))


# --- argument checks shared with _training.py --------------------------------------------


# The widths of the proto fields the checks below feed: a value past them would fail in
# protobuf's own words ("Value out of range: 2147483648"), which name no argument.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int = INT32_MAX) -> int:
    """``value`` as an int (numpy ints welcome, bools and floats not), within [minimum, maximum]
    (by default what a 32-bit field holds)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    if number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {number}")
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
    """``value`` as a finite float within [low, high] (either end may be open) that a 32-bit
    float field holds (past +-3.4e38 it would arrive as an infinity)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int past a double's range
        raise ValueError(f"{name} must be finite, got {value}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {number}")
    if abs(number) > FLOAT32_MAX:
        raise ValueError(f"{name} must be within a 32-bit float's range (+-3.4e38), got {number:g}")
    if low is not None and (number < low or (low_open and number == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {number}")
    if high is not None and (number > high or (high_open and number == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {number}")
    return number


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


NO_DEADLINE_S = 1e9  # a timeout this long (31 years) or longer is none


def check_timeout(value: Any, name: str = "timeout", *, zero_ok: bool = False) -> float | None:
    """Seconds > 0 (>= 0 with ``zero_ok``), or None for no deadline. NO_DEADLINE_S or more (an
    infinity too) is None: gRPC takes a deadline that far off (about 2**33 s) for one already
    passed, and fails the call at once with DEADLINE_EXCEEDED."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int past a double's range: for ever
        return None
    if not (seconds >= 0 if zero_ok else seconds > 0):
        raise ValueError(f"{name} must be {'>=' if zero_ok else '>'} 0 seconds or None, got {value!r}")
    return None if seconds >= NO_DEADLINE_S else seconds


def check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {value!r}")
    return value


def check_strs(name: str, values: Any) -> list[str]:
    """A list of str from any iterable of them (not from a str itself, which would be its letters)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of str, got {values!r}")
    return [check_str(f"{name}[{i}]", v) for i, v in enumerate(values)]


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
            if value is None or (field.name == "dilation" and value == 1):  # 1: the default, left off the wire
                continue
            if field.name == "activation":
                message.activation.CopyFrom(activation_proto(value))
            elif field.name == "padding":
                if value == "same":
                    message.padding_mode = network_pb2.PADDING_MODE_SAME
                elif value == "valid":
                    message.padding_mode = network_pb2.PADDING_MODE_VALID
                else:
                    message.padding_size = int(value)
            elif field.name == "layers":
                message.layers.extend(item.to_proto() for item in value)
            elif field.name == "mode" and self._kind == "token_pooling":
                message.mode = _POOLING_MODES[value]
            else:
                setattr(message, field.name, value)
        return layer

    @classmethod
    def _from_message(cls, message: Any) -> Layer:
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name == "activation":
                kwargs["activation"] = activation_name(message)
            elif field.name == "padding":
                kwargs["padding"] = _padding_from(message)
            elif field.name == "layers":
                kwargs["layers"] = [layer_from_proto(layer) for layer in message.layers]
            elif field.name == "mode" and cls._kind == "token_pooling":
                kwargs["mode"] = {v: k for k, v in _POOLING_MODES.items()}.get(message.mode, "mean")
            elif message.HasField(field.name) if _is_optional(message, field.name) else True:
                value = getattr(message, field.name)
                kwargs[field.name] = _tidy_float(value) if isinstance(value, float) else value
        if "layers" in kwargs:
            return cls(kwargs.pop("layers"), **kwargs)
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
    activation: ActivationName | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", check_int("units", self.units, minimum=1))
        check_bool("use_bias", self.use_bias)
        check_activation(self.activation)

    def __repr__(self) -> str:
        extra = f", activation={self.activation!r}" if self.activation else ""
        return f"Dense(units={self.units}, use_bias={self.use_bias}{extra})"


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
    dilation: int = 1
    activation: ActivationName | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", check_int("filters", self.filters, minimum=1))
        object.__setattr__(self, "kernel_size", check_int("kernel_size", self.kernel_size, minimum=1))
        object.__setattr__(self, "stride", check_int("stride", self.stride, minimum=1))
        object.__setattr__(self, "dilation", check_int("dilation", self.dilation, minimum=1))
        _check_padding(self)
        check_bool("use_bias", self.use_bias)
        check_activation(self.activation)

    @classmethod
    def _from_message(cls, message: Any) -> Layer:
        return cls(
            message.filters,
            kernel_size=message.kernel_size,
            stride=message.stride if message.HasField("stride") else 1,
            padding=_padding_from(message),
            use_bias=message.use_bias if message.HasField("use_bias") else True,
            dilation=message.dilation if message.HasField("dilation") else 1,
            activation=activation_name(message),
        )

    def __repr__(self) -> str:
        extra = "".join([f", dilation={self.dilation}" if self.dilation != 1 else "",
                         f", activation={self.activation!r}" if self.activation else ""])
        return (f"{type(self).__name__}(filters={self.filters}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, use_bias={self.use_bias}{extra})")


@dataclass(frozen=True, repr=False)
class Conv1d(Conv2d):
    """1-D convolution over (channels, length) sequences: ``filters`` (K) filters of
    length ``kernel_size`` (F), ``stride``, ``dilation``, padding as for Conv2d.

    >>> Conv1d(8, kernel_size=5, padding="same", activation="relu").to_proto().conv1d.activation.HasField("relu")
    True
    """

    _kind: ClassVar[str] = "conv1d"


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


@dataclass(frozen=True)
class GELU(Layer):
    """Gaussian error linear unit, ``x * Phi(x)``."""

    _kind: ClassVar[str] = "gelu"


@dataclass(frozen=True)
class SiLU(Layer):
    """Sigmoid linear unit (swish), ``x * sigmoid(x)``."""

    _kind: ClassVar[str] = "silu"


@dataclass(frozen=True)
class Maxout(Layer):
    """Maxout: ``units`` outputs, each the max of ``pieces`` (k >= 2) affine maps of a vector.

    >>> Maxout(16, pieces=3)
    Maxout(units=16, pieces=3)
    """

    _kind: ClassVar[str] = "maxout"
    units: int
    pieces: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", check_int("units", self.units, minimum=1))
        object.__setattr__(self, "pieces", check_int("pieces", self.pieces, minimum=2))


def _check_epsilon(obj: Any) -> None:
    if obj.epsilon is not None:
        object.__setattr__(obj, "epsilon", check_float("epsilon", obj.epsilon, low=0.0, low_open=True))


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Layer normalization: over the last axis of vectors and token sequences, over
    all of (channels, height, width) for images. ``epsilon`` > 0 (server default 1e-5)."""

    _kind: ClassVar[str] = "layer_norm"
    _: KW_ONLY
    epsilon: float | None = None

    def __post_init__(self) -> None:
        _check_epsilon(self)


@dataclass(frozen=True)
class InstanceNorm(Layer):
    """Instance normalization per example and channel over the spatial axes;
    ``affine`` learns a scale and shift per channel (default True)."""

    _kind: ClassVar[str] = "instance_norm"
    _: KW_ONLY
    epsilon: float | None = None
    affine: bool = True

    def __post_init__(self) -> None:
        _check_epsilon(self)
        check_bool("affine", self.affine)


@dataclass(frozen=True)
class GroupNorm(Layer):
    """Group normalization: the channels split into ``groups`` (which must divide them).

    >>> GroupNorm(4).to_proto().group_norm.groups
    4
    """

    _kind: ClassVar[str] = "group_norm"
    groups: int
    _: KW_ONLY
    epsilon: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", check_int("groups", self.groups, minimum=1))
        _check_epsilon(self)


@dataclass(frozen=True)
class MaxPool1d(_Pool2d):
    """1-D max pooling over (channels, length); ``stride`` defaults to ``kernel_size``."""

    _kind: ClassVar[str] = "max_pool1d"


@dataclass(frozen=True)
class AvgPool1d(_Pool2d):
    """1-D average pooling over (channels, length); ``stride`` defaults to ``kernel_size``."""

    _kind: ClassVar[str] = "avg_pool1d"


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Global average pooling: (channels, ...) -> (channels,)."""

    _kind: ClassVar[str] = "global_avg_pool"


@dataclass(frozen=True)
class SpatialDropout(Layer):
    """Spatial dropout: zeroes whole channels of a feature map with probability ``rate``."""

    _kind: ClassVar[str] = "spatial_dropout"
    rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", check_float("rate", self.rate, low=0.0, high=1.0, high_open=True))


@dataclass(frozen=True, init=False)
class ResidualBlock(Layer):
    """``activation(layers(x) + skip(x))``; the server adds a projection (1x1 conv or
    dense) to the skip when the body changes the shape.

    >>> block = ResidualBlock([Conv2d(8, 3, padding="same", activation="relu"), Conv2d(8, 3, padding="same")],
    ...                       activation="relu")
    >>> len(block.to_proto().residual_block.layers)
    2
    """

    _kind: ClassVar[str] = "residual_block"
    layers: tuple[Layer, ...]
    activation: ActivationName | None = None

    def __init__(self, layers: Iterable[Layer | network_pb2.Layer], *, activation: ActivationName | None = None) -> None:
        items = Sequential(layers).layers  # the same checks as a network's layers
        if any(isinstance(layer, Softmax) for layer in items):
            raise ValueError("a residual block cannot contain Softmax; put it last in the network")
        object.__setattr__(self, "layers", items)
        object.__setattr__(self, "activation", check_activation(activation))


@dataclass(frozen=True)
class PatchEmbedding(Layer):
    """ViT patch embedding: (C, H, W) -> (patches, ``embedding_dim``); ``patch_size`` must divide H and W.

    >>> PatchEmbedding(4, embedding_dim=32).to_proto().patch_embedding.embedding_dim
    32
    """

    _kind: ClassVar[str] = "patch_embedding"
    patch_size: int
    _: KW_ONLY
    embedding_dim: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", check_int("patch_size", self.patch_size, minimum=1))
        object.__setattr__(self, "embedding_dim", check_int("embedding_dim", self.embedding_dim, minimum=1))


@dataclass(frozen=True)
class ClassToken(Layer):
    """Prepends a learned class token to a (tokens, width) sequence."""

    _kind: ClassVar[str] = "class_token"


@dataclass(frozen=True)
class PositionEmbedding(Layer):
    """Adds learned position embeddings to a (tokens, width) sequence."""

    _kind: ClassVar[str] = "position_embedding"


@dataclass(frozen=True)
class TransformerEncoder(Layer):
    """``depth`` pre-norm transformer blocks with ``heads`` attention heads (which must
    divide the token width), an MLP of ``mlp_ratio`` x width, ``dropout``; then a layer norm.

    >>> TransformerEncoder(depth=2, heads=4)
    TransformerEncoder(depth=2, heads=4, mlp_ratio=4.0, dropout=0.0)
    """

    _kind: ClassVar[str] = "transformer_encoder"
    _: KW_ONLY
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", check_int("depth", self.depth, minimum=1))
        object.__setattr__(self, "heads", check_int("heads", self.heads, minimum=1))
        object.__setattr__(self, "mlp_ratio", check_float("mlp_ratio", self.mlp_ratio, low=0.0, low_open=True))
        object.__setattr__(self, "dropout", check_float("dropout", self.dropout, low=0.0, high=1.0, high_open=True))


_POOLING_MODES = {"class_token": network_pb2.TOKEN_POOLING_MODE_CLASS_TOKEN, "mean": network_pb2.TOKEN_POOLING_MODE_MEAN}


@dataclass(frozen=True)
class TokenPooling(Layer):
    """(tokens, width) -> (width,): ``"class_token"`` (needs ClassToken) or ``"mean"``."""

    _kind: ClassVar[str] = "token_pooling"
    mode: Literal["class_token", "mean"] = "class_token"

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in _POOLING_MODES:
            raise ValueError(f"mode must be one of {list(_POOLING_MODES)}, got {self.mode!r}")


# The one table: oneof field name -> builder.
LAYERS_BY_KIND: dict[str, type[Layer]] = {
    cls._kind: cls
    for cls in (Dense, Conv2d, MaxPool2d, AvgPool2d, Flatten, Dropout, BatchNorm, ReLU, LeakyReLU,
                Sigmoid, Tanh, ELU, Softmax, Maxout, GELU, SiLU, LayerNorm, InstanceNorm, GroupNorm, Conv1d,
                MaxPool1d, AvgPool1d, GlobalAvgPool, SpatialDropout, ResidualBlock, PatchEmbedding, ClassToken,
                PositionEmbedding, TransformerEncoder, TokenPooling)
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
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
            raise TypeError(f"Sequential takes a list of layers, e.g. Sequential([gw.Dense(10)]), got {layers!r}")
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
            raise ValueError("layers is empty: a network needs at least one layer")
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
    if isinstance(network, (str, bytes)) or not isinstance(network, Iterable):
        raise TypeError(f"network must be a gw.Sequential, a list of layers or a NetworkSpec, got {network!r}")
    try:
        return Sequential(network).to_proto()
    except (TypeError, ValueError) as exc:  # "layers[2] must be a gradwire layer": which argument's
        raise type(exc)(f"network: {exc}") from None
