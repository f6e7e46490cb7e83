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
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from gradwire.v1 import datasets_pb2, network_pb2

from .errors import InvalidArgument, enum_name, field_path

# protobuf's 2 GiB limit on one message, less room for the graph: the most float32 weights one ONNX
# file holds (export.py); a network past it could train, but its model could not be exported
MAX_ONNX_WEIGHT_BYTES = 2**31 - (64 << 20)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LayerSummary:
    """One layer after shape inference. flops: estimated floating-point
    operations of one example's forward pass (a multiply-add counts 2;
    element-wise layers one per output element, normalizations a few)."""

    index: int
    kind: str
    output_shape: Shape
    parameter_count: int
    flops: int = 0
    path: str = ""
    # Residual blocks: the body's layers, and the skip projection
    # (None: identity; ("dense",), ("conv1d", stride) or ("conv2d", stride)).
    children: tuple["LayerSummary", ...] = ()
    projection: tuple | None = None


@dataclass(frozen=True)
class NetworkSummary:
    """A whole network after shape inference."""

    layers: tuple[LayerSummary, ...]
    output_shape: Shape
    parameter_count: int
    flops: int = 0
    input_shape: Shape = ()

    def rows(self) -> list[tuple[int, LayerSummary]]:
        """(depth, layer) in display order: a residual block, then its body."""
        out: list[tuple[int, LayerSummary]] = []

        def walk(layers, depth):
            for layer in layers:
                out.append((depth, layer))
                walk(layer.children, depth + 1)

        walk(self.layers, 0)
        return out


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


def _check_enum(enum_type, value: int, field: str) -> None:
    """Reject the *_UNSPECIFIED zero value and values this server does not know
    (proto3 enums are open, so an unknown number survives parsing)."""
    name = enum_name(enum_type, value)
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
# Per-layer shape inference: (layer params, input shape, field) -> (output shape, parameter count, FLOPs)

# Defaults the proto documents for optional fields (nets.py builds with them).
MLP_RATIO = 4.0
NORM_EPSILON = 1e-5


def _require_rank(kind: str, in_shape: Shape, ranks: tuple[int, ...], what: str, field: str) -> None:
    _require(len(in_shape) in ranks, f"{kind} needs {what} input, got shape {_shape(in_shape)}", field)


def _require_image(kind: str, in_shape: Shape, field: str) -> None:
    _require_rank(kind, in_shape, (3,), "(channels, height, width)", field)


def _check_epsilon(p, field: str) -> None:
    if p.HasField("epsilon"):
        _finite(p.epsilon, f"{field}.epsilon")
        _require(p.epsilon > 0, f"must be > 0, got {_fmt(p.epsilon)}", f"{field}.epsilon")


def _check_activation(p, field: str) -> None:
    """An inline Activation (field ``activation``) when set."""
    if not p.HasField("activation"):
        return
    kind = p.activation.WhichOneof("kind")
    _require(kind is not None, "activation kind is not set; choose relu, leaky_relu, sigmoid, tanh, elu, gelu "
             "or silu, or leave activation unset", f"{field}.activation")
    inner = getattr(p.activation, kind)
    if kind == "leaky_relu" and inner.HasField("negative_slope"):
        _finite(inner.negative_slope, f"{field}.activation.leaky_relu.negative_slope")
    if kind == "elu" and inner.HasField("alpha"):
        _finite(inner.alpha, f"{field}.activation.elu.alpha")


def _activation_flops(p, out_shape: Shape) -> int:
    return math.prod(out_shape) if p.HasField("activation") else 0


def _infer_dense(p: network_pb2.Dense, in_shape: Shape, field: str):
    _require(
        len(in_shape) == 1,
        f"dense needs a 1-D (features,) input, got shape {_shape(in_shape)}; add a flatten layer before it",
        field,
    )
    _at_least(p.units, 1, f"{field}.units")
    _check_activation(p, field)
    use_bias = p.use_bias if p.HasField("use_bias") else True
    out = (p.units,)
    return out, in_shape[0] * p.units + (p.units if use_bias else 0), 2 * in_shape[0] * p.units + _activation_flops(p, out)


def conv2d_padding(p) -> int | str:
    """The padding a Conv2d / Conv1d asks for: a pixel count, or "same"."""
    which = p.WhichOneof("padding")
    if which == "padding_size":
        return p.padding_size
    if which == "padding_mode" and p.padding_mode == network_pb2.PADDING_MODE_SAME:
        return "same"
    return 0  # unset or VALID


conv_padding = conv2d_padding


def _infer_conv(kind: str, spatial_rank: int) -> Callable:
    what = "(channels, height, width)" if spatial_rank == 2 else "(channels, length)"

    def infer(p, in_shape: Shape, field: str):
        _require_rank(kind, in_shape, (spatial_rank + 1,), what, field)
        _at_least(p.filters, 1, f"{field}.filters")
        _at_least(p.kernel_size, 1, f"{field}.kernel_size")
        stride = p.stride if p.HasField("stride") else 1
        _at_least(stride, 1, f"{field}.stride")
        dilation = p.dilation if p.HasField("dilation") else 1
        _at_least(dilation, 1, f"{field}.dilation")
        if p.WhichOneof("padding") == "padding_mode":
            _check_enum(network_pb2.PaddingMode, p.padding_mode, f"{field}.padding_mode")
        if p.WhichOneof("padding") == "padding_size":
            _at_least(p.padding_size, 0, f"{field}.padding_size")
        _check_activation(p, field)

        channels, spatial = in_shape[0], in_shape[1:]
        k = p.kernel_size
        reach = dilation * (k - 1) + 1  # the span one filter covers
        padding = conv_padding(p)
        if padding == "same":
            _require(stride == 1, f"SAME padding needs stride 1, got {stride}", f"{field}.stride")
            out_sp = spatial
        else:
            padded = tuple(d + 2 * padding for d in spatial)
            _require(
                all(reach <= d for d in padded),
                f"kernel {k}" + (f" with dilation {dilation} (reach {reach})" if dilation > 1 else "")
                + f" is larger than the padded input {'x'.join(map(str, padded))} "
                f"(input shape {_shape(in_shape)}, padding {padding})",
                f"{field}.kernel_size",
            )
            out_sp = tuple((d - reach) // stride + 1 for d in padded)
        use_bias = p.use_bias if p.HasField("use_bias") else True
        taps = channels * k ** spatial_rank
        params = p.filters * taps + (p.filters if use_bias else 0)
        out = (p.filters, *out_sp)
        return out, params, 2 * taps * math.prod(out) + _activation_flops(p, out)

    return infer


def _infer_pool(kind: str, spatial_rank: int) -> Callable:
    what = "(channels, height, width)" if spatial_rank == 2 else "(channels, length)"

    def infer(p, in_shape: Shape, field: str):
        _require_rank(kind, in_shape, (spatial_rank + 1,), what, field)
        _at_least(p.kernel_size, 1, f"{field}.kernel_size")
        stride = p.stride if p.HasField("stride") else p.kernel_size
        _at_least(stride, 1, f"{field}.stride")
        k, spatial = p.kernel_size, in_shape[1:]
        _require(
            all(k <= d for d in spatial),
            f"kernel {k} is larger than the input {'x'.join(map(str, spatial))} (input shape {_shape(in_shape)})",
            f"{field}.kernel_size",
        )
        out = (in_shape[0], *((d - k) // stride + 1 for d in spatial))
        return out, 0, math.prod(out) * k ** spatial_rank

    return infer


def _infer_flatten(p, in_shape: Shape, field: str):
    return (math.prod(in_shape),), 0, 0


def _infer_dropout(p: network_pb2.Dropout, in_shape: Shape, field: str):
    _in_unit_interval(p.rate, f"{field}.rate")
    return in_shape, 0, 0


def _infer_spatial_dropout(p: network_pb2.SpatialDropout, in_shape: Shape, field: str):
    _require_rank("spatial_dropout", in_shape, (2, 3), "(channels, length) or (channels, height, width)", field)
    _in_unit_interval(p.rate, f"{field}.rate")
    return in_shape, 0, 0


def _infer_batch_norm(p: network_pb2.BatchNorm, in_shape: Shape, field: str):
    _require_rank("batch_norm", in_shape, (1, 2, 3),
                  "(features,), (channels, length) or (channels, height, width)", field)
    if p.HasField("momentum"):
        _in_unit_interval(p.momentum, f"{field}.momentum", low_open=True, high_open=False)
    _check_epsilon(p, field)
    # Learned scale and shift per channel / feature; folded into a multiply-add at inference.
    return in_shape, 2 * in_shape[0], 2 * math.prod(in_shape)


def _infer_layer_norm(p: network_pb2.LayerNorm, in_shape: Shape, field: str):
    _check_epsilon(p, field)
    normalized = in_shape if len(in_shape) == 3 else in_shape[-1:]
    return in_shape, 2 * math.prod(normalized), 5 * math.prod(in_shape)


def _infer_instance_norm(p: network_pb2.InstanceNorm, in_shape: Shape, field: str):
    _require_rank("instance_norm", in_shape, (2, 3), "(channels, length) or (channels, height, width)", field)
    # Each channel is normalized over its own positions: torch refuses one position in training.
    _require(math.prod(in_shape[1:]) > 1, f"normalizes each channel over its positions, and input shape "
             f"{_shape(in_shape)} has one position per channel; it needs at least 2", field)
    _check_epsilon(p, field)
    affine = p.affine if p.HasField("affine") else True
    return in_shape, (2 * in_shape[0] if affine else 0), 5 * math.prod(in_shape)


def _infer_group_norm(p: network_pb2.GroupNorm, in_shape: Shape, field: str):
    _at_least(p.groups, 1, f"{field}.groups")
    channels = in_shape[0]
    _require(channels % p.groups == 0,
             f"{p.groups} groups do not divide the {channels} channels (input shape {_shape(in_shape)})",
             f"{field}.groups")
    _check_epsilon(p, field)
    return in_shape, 2 * channels, 5 * math.prod(in_shape)


def _infer_same_shape(p, in_shape: Shape, field: str):
    return in_shape, 0, math.prod(in_shape)


def _infer_leaky_relu(p: network_pb2.LeakyReLU, in_shape: Shape, field: str):
    if p.HasField("negative_slope"):
        _finite(p.negative_slope, f"{field}.negative_slope")
    return in_shape, 0, math.prod(in_shape)


def _infer_elu(p: network_pb2.ELU, in_shape: Shape, field: str):
    if p.HasField("alpha"):
        _finite(p.alpha, f"{field}.alpha")
    return in_shape, 0, math.prod(in_shape)


def _infer_maxout(p: network_pb2.Maxout, in_shape: Shape, field: str):
    _require(len(in_shape) == 1,
             f"maxout needs a 1-D (features,) input, got shape {_shape(in_shape)}; add a flatten layer before it",
             field)
    _at_least(p.units, 1, f"{field}.units")
    _at_least(p.pieces, 2, f"{field}.pieces")
    width = p.units * p.pieces
    return (p.units,), (in_shape[0] + 1) * width, 2 * in_shape[0] * width + width


def _infer_global_avg_pool(p, in_shape: Shape, field: str):
    _require_rank("global_avg_pool", in_shape, (2, 3), "(channels, length) or (channels, height, width)", field)
    return (in_shape[0],), 0, math.prod(in_shape)


def _require_tokens(kind: str, in_shape: Shape, field: str) -> None:
    _require_rank(kind, in_shape, (2,), "a (tokens, width) sequence (e.g. after patch_embedding)", field)


def _infer_patch_embedding(p: network_pb2.PatchEmbedding, in_shape: Shape, field: str):
    _require_image("patch_embedding", in_shape, field)
    _at_least(p.patch_size, 1, f"{field}.patch_size")
    _at_least(p.embedding_dim, 1, f"{field}.embedding_dim")
    c, h, w = in_shape
    ps = p.patch_size
    _require(h % ps == 0 and w % ps == 0,
             f"patch size {ps} does not divide the image's height and width {h}x{w} (input shape {_shape(in_shape)})",
             f"{field}.patch_size")
    tokens = (h // ps) * (w // ps)
    params = c * ps * ps * p.embedding_dim + p.embedding_dim
    return (tokens, p.embedding_dim), params, 2 * c * ps * ps * p.embedding_dim * tokens


def _infer_class_token(p, in_shape: Shape, field: str):
    _require_tokens("class_token", in_shape, field)
    return (in_shape[0] + 1, in_shape[1]), in_shape[1], 0


def _infer_position_embedding(p, in_shape: Shape, field: str):
    _require_tokens("position_embedding", in_shape, field)
    return in_shape, math.prod(in_shape), math.prod(in_shape)


def mlp_hidden(p: network_pb2.TransformerEncoder, width: int) -> int:
    """Hidden width of a transformer block's MLP: round(mlp_ratio * width)."""
    ratio = p.mlp_ratio if p.HasField("mlp_ratio") else MLP_RATIO
    return max(1, round(float(f"{ratio:.7g}") * width))


def _infer_transformer_encoder(p: network_pb2.TransformerEncoder, in_shape: Shape, field: str):
    _require_tokens("transformer_encoder", in_shape, field)
    _at_least(p.depth, 1, f"{field}.depth")
    _at_least(p.heads, 1, f"{field}.heads")
    n, d = in_shape
    _require(d % p.heads == 0, f"{p.heads} heads do not divide the token width {d} (input shape {_shape(in_shape)})",
             f"{field}.heads")
    if p.HasField("mlp_ratio"):
        _finite(p.mlp_ratio, f"{field}.mlp_ratio")
        _require(p.mlp_ratio > 0, f"must be > 0, got {_fmt(p.mlp_ratio)}", f"{field}.mlp_ratio")
    _in_unit_interval(p.dropout, f"{field}.dropout")
    h = mlp_hidden(p, d)
    # Per block: 2 layer norms, qkv and output projections, the MLP; then one final layer norm.
    block_params = 2 * (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    block_flops = (2 * n * d * 3 * d + 2 * n * n * d * 2 + 2 * n * d * d + 2 * n * d * h * 2
                   + 3 * n * n * p.heads + 10 * n * d + n * h)
    return in_shape, p.depth * block_params + 2 * d, p.depth * block_flops + 5 * n * d


def _infer_token_pooling(p: network_pb2.TokenPooling, in_shape: Shape, field: str):
    _require_tokens("token_pooling", in_shape, field)
    _check_enum(network_pb2.TokenPoolingMode, p.mode, f"{field}.mode")
    n, d = in_shape
    return (d,), 0, (n * d if p.mode == network_pb2.TOKEN_POOLING_MODE_MEAN else 0)


def _skip_projection(in_shape: Shape, out_shape: Shape, field: str) -> tuple[tuple | None, int, int]:
    """How a residual block's skip maps in_shape to out_shape: (projection, params, flops)."""
    if in_shape == out_shape:
        return None, 0, 0
    problem = (f"the block maps {_shape(in_shape)} to {_shape(out_shape)}; a projection can change the "
               f"width or channels (and downsample feature maps by a stride), not the rank")
    _require(len(in_shape) == len(out_shape), problem, field)
    if len(in_shape) == 1:
        return ("dense",), in_shape[0] * out_shape[0] + out_shape[0], 2 * in_shape[0] * out_shape[0]
    _require(len(in_shape) in (2, 3), problem, field)
    # A 1x1 convolution with stride s gives (d - 1) // s + 1 per spatial axis.
    stride = next((s for s in range(1, max(in_shape[1:]) + 1)
                   if all((d - 1) // s + 1 == o for d, o in zip(in_shape[1:], out_shape[1:]))), None)
    _require(stride is not None,
             f"the block maps {_shape(in_shape)} to {_shape(out_shape)}; no 1x1 strided projection maps the "
             f"skip's spatial size {_shape(in_shape[1:])} to {_shape(out_shape[1:])}", field)
    kind = "conv2d" if len(in_shape) == 3 else "conv1d"
    params = in_shape[0] * out_shape[0] + out_shape[0]
    return (kind, stride), params, 2 * in_shape[0] * math.prod(out_shape)


# One entry per field of the Layer.kind oneof; a test checks none is missing.
SHAPE_RULES: dict[str, Callable] = {
    "dense": _infer_dense,
    "conv2d": _infer_conv("conv2d", 2),
    "max_pool2d": _infer_pool("max_pool2d", 2),
    "avg_pool2d": _infer_pool("avg_pool2d", 2),
    "flatten": _infer_flatten,
    "dropout": _infer_dropout,
    "batch_norm": _infer_batch_norm,
    "relu": _infer_same_shape,
    "leaky_relu": _infer_leaky_relu,
    "sigmoid": _infer_same_shape,
    "tanh": _infer_same_shape,
    "elu": _infer_elu,
    "softmax": _infer_same_shape,
    "maxout": _infer_maxout,
    "gelu": _infer_same_shape,
    "silu": _infer_same_shape,
    "layer_norm": _infer_layer_norm,
    "instance_norm": _infer_instance_norm,
    "group_norm": _infer_group_norm,
    "conv1d": _infer_conv("conv1d", 1),
    "max_pool1d": _infer_pool("max_pool1d", 1),
    "avg_pool1d": _infer_pool("avg_pool1d", 1),
    "global_avg_pool": _infer_global_avg_pool,
    "spatial_dropout": _infer_spatial_dropout,
    "residual_block": None,  # recursive: handled by _infer_layers
    "patch_embedding": _infer_patch_embedding,
    "class_token": _infer_class_token,
    "position_embedding": _infer_position_embedding,
    "transformer_encoder": _infer_transformer_encoder,
    "token_pooling": _infer_token_pooling,
}

# Layers that keep their input's shape; the others decide the network's width.
_SHAPE_PRESERVING = {"dropout", "batch_norm", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "softmax", "gelu",
                     "silu", "layer_norm", "instance_norm", "group_norm", "spatial_dropout", "position_embedding",
                     "transformer_encoder"}


def _infer_layers(layers, shape: Shape, parent: str, *, top: bool) -> tuple[list[LayerSummary], Shape]:
    _require(len(layers) > 0, "needs at least one layer", f"{parent}.layers")
    last = len(layers) - 1
    out: list[LayerSummary] = []
    seen: set[str] = set()
    for i, layer in enumerate(layers):
        field = field_path(parent, "layers", i)
        kind = layer.WhichOneof("kind")
        _require(kind is not None, "layer kind is not set", field)
        _require(kind in SHAPE_RULES, f"layer kind {kind} is not supported by this server", field)
        _require(
            kind != "softmax" or (top and i == last),
            f"softmax is allowed only as the network's last layer, found at layer {i} of {last + 1}"
            + ("" if top else " of a residual block"),
            field,
        )
        params = getattr(layer, kind)
        inner = field_path(field, kind)
        if kind == "residual_block":
            children, body_out = _infer_layers(params.layers, shape, inner, top=False)
            _check_activation(params, inner)
            projection, proj_params, proj_flops = _skip_projection(shape, body_out, inner)
            summary = LayerSummary(
                index=i, kind=kind, output_shape=body_out, path=field, children=tuple(children),
                projection=projection,
                parameter_count=sum(c.parameter_count for c in children) + proj_params,
                flops=sum(c.flops for c in children) + proj_flops + math.prod(body_out)
                + _activation_flops(params, body_out),
            )
        else:
            if kind == "token_pooling" and params.mode == network_pb2.TOKEN_POOLING_MODE_CLASS_TOKEN:
                _require("class_token" in seen, "TOKEN_POOLING_MODE_CLASS_TOKEN needs a class_token layer before it; "
                         "add one after patch_embedding or use TOKEN_POOLING_MODE_MEAN", f"{inner}.mode")
            out_shape, count, flops = SHAPE_RULES[kind](params, shape, inner)
            summary = LayerSummary(index=i, kind=kind, output_shape=out_shape, parameter_count=count,
                                   flops=flops, path=field)
        seen.add(kind)
        out.append(summary)
        shape = summary.output_shape
    return out, shape


def infer_network(network: network_pb2.NetworkSpec, feature_shape: Shape) -> NetworkSummary:
    """Validates each layer against its input and infers shapes, parameter
    counts and FLOPs. Does not check the final width (see ``validate_job``)."""
    feature_shape = tuple(int(d) for d in feature_shape)
    if not feature_shape or any(d < 1 for d in feature_shape):
        raise InvalidArgument(f"each example needs a shape of sizes >= 1, got {_shape(feature_shape)}",
                              field="feature_shape")
    layers, shape = _infer_layers(network.layers, feature_shape, "network", top=True)
    return NetworkSummary(layers=tuple(layers), output_shape=shape, input_shape=feature_shape,
                          parameter_count=sum(s.parameter_count for s in layers),
                          flops=sum(s.flops for s in layers))


# --------------------------------------------------------------------------
# The whole job

# Which labels each loss fits.
CLASSES, REGRESSION, MULTI_LABEL = (datasets_pb2.LABEL_KIND_CLASSES, datasets_pb2.LABEL_KIND_REGRESSION,
                                    datasets_pb2.LABEL_KIND_MULTI_LABEL)
LOSS_LABEL_KINDS = {
    "cross_entropy": (CLASSES,),
    "binary_cross_entropy": (CLASSES, MULTI_LABEL),
    "mse": (REGRESSION,),
    "mae": (REGRESSION,),
    "huber": (REGRESSION,),
}
DEFAULT_TOP_K = 5


def output_width(loss_kind: str | None, output_size: int, label_kind: int = CLASSES) -> int:
    """The network's final width for a loss: one logit for binary cross-entropy
    on two classes (the log-odds of class 1), else one per class, label or
    regression target."""
    return 1 if loss_kind == "binary_cross_entropy" and label_kind == CLASSES else output_size


def top_k_of(training: network_pb2.TrainingConfig, classes: int) -> int:
    return training.top_k if training.HasField("top_k") else min(DEFAULT_TOP_K, classes)


def activation_bytes(summary: NetworkSummary, network: network_pb2.NetworkSpec) -> int:
    """About the most memory one example's forward pass holds at once without gradients (in
    bytes; evaluation passes and onnxruntime calls are sized by it): four
    float32 copies of its largest tensor (a layer's input and output, and a normalization's or
    an activation's temporaries), counting a transformer block's attention scores (heads x tokens
    x tokens) and MLP (tokens x hidden), which its output shape does not show."""
    largest = math.prod(summary.input_shape)

    def walk(layers: Iterable[LayerSummary], specs) -> None:
        nonlocal largest
        for layer, p in zip(layers, specs, strict=True):
            largest = max(largest, math.prod(layer.output_shape))
            kind = p.WhichOneof("kind")
            if kind == "residual_block":
                walk(layer.children, p.residual_block.layers)
            elif kind == "transformer_encoder" and len(layer.output_shape) == 2:
                (tokens, width), t = layer.output_shape, p.transformer_encoder
                largest = max(largest, t.heads * tokens * tokens, tokens * mlp_hidden(t, width))

    walk(summary.layers, network.layers)
    return 4 * 4 * largest


# Layers whose backward pass needs their input, which autograd keeps from the forward pass until
# then: a weight's gradient is computed from it (dense, convolutions) or a normalization's from its
# statistics over it.
KEEPS_INPUT = frozenset({"dense", "conv1d", "conv2d", "maxout", "patch_embedding", "batch_norm", "layer_norm",
                         "instance_norm", "group_norm", "transformer_encoder"})


def step_bytes(summary: NetworkSummary, batch: int, value_bytes: int = 4) -> int:
    """A lower bound on the memory one training step of ``batch`` examples holds at its peak: the
    inputs that the layers in KEEPS_INPUT keep for the backward pass (``value_bytes`` each: 2
    under bf16 autocast), and the weights with their gradients (float32). Activations, a
    layer's temporaries and the optimizer's state come on top; a step that needs more than this
    cannot run, however the allocator packs it."""
    kept = sum(math.prod(shape) for s, shape in _with_inputs(summary.layers, summary.input_shape) if s.kind in KEEPS_INPUT)
    return batch * kept * value_bytes + 2 * 4 * summary.parameter_count


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
    if label_kind not in (CLASSES, REGRESSION, MULTI_LABEL):
        raise InvalidArgument(f"must be LABEL_KIND_CLASSES, LABEL_KIND_REGRESSION or LABEL_KIND_MULTI_LABEL, got "
                              f"{enum_name(datasets_pb2.LabelKind, label_kind)}", field="label_kind")
    _at_least(output_size, 1, "output_size")

    summary = infer_network(network, feature_shape)
    loss = _check_loss(training, label_kind=label_kind, output_size=output_size)
    _check_output(summary, label_kind, output_width(loss, output_size, label_kind), loss)
    n_train, n_val = _check_training(training, label_kind=label_kind, example_count=example_count,
                                     output_size=output_size)
    _check_batch_norm_batches(summary, feature_shape, training, n_train)
    return summary


def _check_output(summary: NetworkSummary, label_kind: int, width: int, loss: str) -> None:
    """The final output must be (width,): one logit per class, one value per target,
    or one logit for binary cross-entropy."""
    # The layer that decided the final width: the last that changes shapes.
    producer = next((s for s in reversed(summary.layers) if s.kind not in _SHAPE_PRESERVING), summary.layers[-1])
    field = field_path("network", "layers", producer.index)
    out = summary.output_shape
    if loss == "binary_cross_entropy" and label_kind == CLASSES:
        what, each = "binary_cross_entropy output (the log-odds of class 1)", "one logit for binary_cross_entropy"
    elif label_kind == MULTI_LABEL:
        what, each = f"{width} labels", "one logit per label"
    elif label_kind == datasets_pb2.LABEL_KIND_CLASSES:
        what, each = f"{width} classes", "one value per class"
    else:
        what, each = f"{width} regression targets", "one value per target"
    _require(
        len(out) == 1,
        f"the network's output has shape {_shape(out)} but must be ({width},), {each}; "
        f"end with flatten and dense({width})",
        field,
    )
    _require(out[0] == width, f"final layer width {out[0]} does not match the dataset's {what}", field)
    if loss == "binary_cross_entropy":
        _require(summary.layers[-1].kind != "softmax",
                 "binary_cross_entropy trains on sigmoid logits; a softmax does not fit it; drop it",
                 field_path("network", "layers", summary.layers[-1].index))


def _check_loss(training: network_pb2.TrainingConfig, *, label_kind: int, output_size: int) -> str:
    loss = training.loss.WhichOneof("kind")
    _require(loss is not None, "loss kind is not set; choose cross_entropy or binary_cross_entropy (classes), "
             "or mse, mae or huber (regression)", "training.loss")
    field = field_path("training", "loss", loss)
    wanted = LOSS_LABEL_KINDS[loss]
    _require(
        label_kind in wanted,
        f"{loss} loss needs {' or '.join(datasets_pb2.LabelKind.Name(w) for w in wanted)} labels, but the "
        f"dataset's labels are {enum_name(datasets_pb2.LabelKind, label_kind)}",
        field,
    )
    p = getattr(training.loss, loss)
    if loss == "cross_entropy":
        _in_unit_interval(p.label_smoothing, f"{field}.label_smoothing")
        if len(p.class_weights):
            _require(len(p.class_weights) == output_size,
                     f"needs one weight per class: {output_size} classes, got {len(p.class_weights)} weights",
                     f"{field}.class_weights")
            for i, w in enumerate(p.class_weights):
                _finite(w, f"{field}.class_weights[{i}]")
                _require(w > 0, f"must be > 0, got {_fmt(w)}", f"{field}.class_weights[{i}]")
    if loss == "binary_cross_entropy" and label_kind == CLASSES:
        _require(output_size == 2,
                 f"binary_cross_entropy needs exactly 2 classes (labels 0 and 1), but the dataset has {output_size}; "
                 "use cross_entropy", field)
        if p.HasField("positive_weight"):
            _finite(p.positive_weight, f"{field}.positive_weight")
            _require(p.positive_weight > 0, f"must be > 0, got {_fmt(p.positive_weight)}", f"{field}.positive_weight")
    if loss == "huber" and p.HasField("delta"):
        _finite(p.delta, f"{field}.delta")
        _require(p.delta > 0, f"must be > 0, got {_fmt(p.delta)}", f"{field}.delta")
    return loss


def _check_training(training: network_pb2.TrainingConfig, *, label_kind: int, example_count: int,
                    output_size: int) -> tuple[int, int]:
    """Checks the optimizer, batching, schedule and regularization; returns (n_train, n_val)."""
    _check_optimizer(training.optimizer)

    _at_least(training.epochs, 1, "training.epochs")
    _in_unit_interval(training.validation_split, "training.validation_split")
    _finite(training.l1_penalty, "training.l1_penalty")
    _require(training.l1_penalty >= 0, f"must be >= 0, got {_fmt(training.l1_penalty)}", "training.l1_penalty")
    if training.HasField("input_normalization"):
        _check_enum(network_pb2.InputNormalization, training.input_normalization, "training.input_normalization")
    if training.HasField("gradient_clip_norm"):
        _finite(training.gradient_clip_norm, "training.gradient_clip_norm")
        _require(training.gradient_clip_norm > 0, f"must be > 0, got {_fmt(training.gradient_clip_norm)}",
                 "training.gradient_clip_norm")
    if training.HasField("top_k"):
        _require(label_kind == datasets_pb2.LABEL_KIND_CLASSES,
                 f"top-k accuracy applies to single-label classifiers only, but the dataset's labels are "
                 f"{enum_name(datasets_pb2.LabelKind, label_kind)}; leave top_k unset", "training.top_k")
        _at_least(training.top_k, 1, "training.top_k")
        _require(training.top_k <= output_size,
                 f"must be <= the dataset's {output_size} classes, got {training.top_k}", "training.top_k")

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
    if training.HasField("schedule"):
        _check_schedule(training, label_kind=label_kind, has_validation=n_val > 0)
    return n_train, n_val


def _check_optimizer(optimizer: network_pb2.Optimizer) -> None:
    kind = optimizer.WhichOneof("kind")
    _require(kind is not None, "optimizer kind is not set; choose sgd, adam, adamw, rmsprop or adagrad",
             "training.optimizer")
    p, field = getattr(optimizer, kind), field_path("training", "optimizer", kind)
    _finite(p.learning_rate, f"{field}.learning_rate")
    _require(p.learning_rate > 0, f"must be > 0, got {_fmt(p.learning_rate)}", f"{field}.learning_rate")
    if kind != "adamw" or p.HasField("weight_decay"):
        _finite(p.weight_decay, f"{field}.weight_decay")
        _require(p.weight_decay >= 0, f"must be >= 0, got {_fmt(p.weight_decay)}", f"{field}.weight_decay")
    if kind in ("sgd", "rmsprop"):
        _in_unit_interval(p.momentum, f"{field}.momentum")
    if kind == "sgd" and p.HasField("nesterov") and p.nesterov:
        _require(p.momentum > 0, "Nesterov momentum needs momentum > 0, got 0", f"{field}.nesterov")
    if kind in ("adam", "adamw"):
        for name in ("beta1", "beta2"):
            if p.HasField(name):
                _in_unit_interval(getattr(p, name), f"{field}.{name}")
    if kind == "rmsprop" and p.HasField("alpha"):
        _in_unit_interval(p.alpha, f"{field}.alpha")
    if kind == "adagrad":
        _finite(p.lr_decay, f"{field}.lr_decay")
        _require(p.lr_decay >= 0, f"must be >= 0, got {_fmt(p.lr_decay)}", f"{field}.lr_decay")


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


_LOWER_IS_BETTER = {network_pb2.METRIC_TRAIN_LOSS, network_pb2.METRIC_VALIDATION_LOSS}


def _check_monitor(monitor: int, field: str, *, label_kind: int, has_validation: bool) -> None:
    _check_enum(network_pb2.Metric, monitor, field)
    name = network_pb2.Metric.Name(monitor)
    if monitor in (network_pb2.METRIC_VALIDATION_LOSS, network_pb2.METRIC_VALIDATION_ACCURACY):
        _require(has_validation, f"{name} needs a validation split, but training.validation_split is 0", field)
    if monitor in (network_pb2.METRIC_VALIDATION_ACCURACY, network_pb2.METRIC_TRAIN_ACCURACY):
        _require(label_kind != REGRESSION,
                 f"{name} needs class labels, but the dataset's labels are LABEL_KIND_REGRESSION", field)


def _check_early_stopping(es: network_pb2.EarlyStopping, *, label_kind: int, has_validation: bool) -> None:
    field = "training.early_stopping"
    _at_least(es.patience, 1, f"{field}.patience")
    _finite(es.min_delta, f"{field}.min_delta")
    _require(es.min_delta >= 0, f"must be >= 0, got {_fmt(es.min_delta)}", f"{field}.min_delta")
    if es.HasField("mode"):
        _check_enum(network_pb2.MetricMode, es.mode, f"{field}.mode")
    if es.HasField("monitor"):
        _check_monitor(es.monitor, f"{field}.monitor", label_kind=label_kind, has_validation=has_validation)


def _check_schedule(training: network_pb2.TrainingConfig, *, label_kind: int, has_validation: bool) -> None:
    schedule = training.schedule
    kind = schedule.WhichOneof("kind")
    _require(kind is not None, "schedule kind is not set; choose step, exponential, cosine or reduce_on_plateau, "
             "or leave schedule unset", "training.schedule")
    p, field = getattr(schedule, kind), field_path("training", "schedule", kind)
    if kind == "step":
        _at_least(p.step_size, 1, f"{field}.step_size")
    if kind in ("step", "exponential"):
        _in_unit_interval(p.gamma, f"{field}.gamma", low_open=True, high_open=False)
    if kind == "cosine":
        _at_least(p.warmup_epochs, 0, f"{field}.warmup_epochs")
        _require(p.warmup_epochs < training.epochs,
                 f"must be < epochs ({training.epochs}), got {p.warmup_epochs}", f"{field}.warmup_epochs")
    if kind in ("cosine", "reduce_on_plateau"):
        _finite(p.min_learning_rate, f"{field}.min_learning_rate")
        _require(p.min_learning_rate >= 0, f"must be >= 0, got {_fmt(p.min_learning_rate)}",
                 f"{field}.min_learning_rate")
        base = getattr(training.optimizer, training.optimizer.WhichOneof("kind")).learning_rate
        _require(p.min_learning_rate <= base,
                 f"must be <= the optimizer's learning_rate {_fmt(base)}, got {_fmt(p.min_learning_rate)}",
                 f"{field}.min_learning_rate")
    if kind == "reduce_on_plateau":
        _in_unit_interval(p.factor, f"{field}.factor", low_open=True)
        _at_least(p.patience, 1, f"{field}.patience")
        _finite(p.min_delta, f"{field}.min_delta")
        _require(p.min_delta >= 0, f"must be >= 0, got {_fmt(p.min_delta)}", f"{field}.min_delta")
        if p.HasField("monitor"):
            _check_monitor(p.monitor, f"{field}.monitor", label_kind=label_kind, has_validation=has_validation)


def batch_size_of(batching: network_pb2.Batching, n_train: int) -> int:
    """Examples per gradient step for a batching mode."""
    mode = batching.WhichOneof("mode")
    if mode == "full_batch":
        return n_train
    if mode == "online":
        return 1
    return batching.mini_batch.batch_size


def drop_last_of(batching: network_pb2.Batching) -> bool:
    return (batching.WhichOneof("mode") == "mini_batch" and batching.mini_batch.HasField("drop_last")
            and batching.mini_batch.drop_last)


def iterations_per_epoch(batching: network_pb2.Batching, n_train: int) -> int:
    """ceil(n / batch size), or floor(n / batch size) with drop_last."""
    batch = batch_size_of(batching, n_train)
    return n_train // batch if drop_last_of(batching) else math.ceil(n_train / batch)


def _check_batch_norm_batches(summary: NetworkSummary, feature_shape: Shape,
                              training: network_pb2.TrainingConfig, n_train: int) -> None:
    """Batch norm in training mode needs more than one value per channel in a
    batch; online batching (or a last mini-batch of one example) on a vector
    gives it exactly one, and torch fails mid-training. Refuse that up front."""
    batch = batch_size_of(training.batching, n_train)
    smallest = batch if drop_last_of(training.batching) else (n_train % batch or batch)
    for s, in_shape in _with_inputs(summary.layers, tuple(feature_shape)):
        if s.kind == "batch_norm":
            values_per_channel = smallest * math.prod(in_shape[1:])
            _require(
                values_per_channel > 1,
                f"batch_norm on input shape {_shape(in_shape)} needs batches of at least 2 examples, but "
                f"the batching gives a batch of {smallest} ({n_train} training examples, batch size {batch})",
                field_path(s.path or field_path("network", "layers", s.index), "batch_norm"),
            )


def _with_inputs(layers, in_shape: Shape):
    """(layer, its input shape) for every layer, residual bodies included."""
    for s in layers:
        yield s, in_shape
        if s.children:
            yield from _with_inputs(s.children, in_shape)
        in_shape = s.output_shape
