"""Builds a torch network from a NetworkSpec.

One table, ``BUILDERS``, maps each kind of the ``Layer.kind`` oneof to a
function ``(layer params, input shape) -> (module, output shape)``. Shapes are
per example (no batch axis). The output shapes are the ones ``spec.py`` infers
(one shape-inference implementation, checked against torch's forward pass by
the tests), so a spec that passed validation always builds.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gradwire.v1 import network_pb2

from . import spec

Shape = tuple[int, ...]
Builder = Callable[..., nn.Module]

# Defaults the proto documents for optional fields.
LEAKY_RELU_SLOPE = 0.1
ELU_ALPHA = 1.0
BATCH_NORM_MOMENTUM = 0.1
BATCH_NORM_EPSILON = 1e-5


def _opt(message, name: str, default):
    return getattr(message, name) if message.HasField(name) else default


def _dense(p: network_pb2.Dense, in_shape: Shape) -> nn.Module:
    # (batch, in_features) -> (batch, units)
    return nn.Linear(in_shape[0], p.units, bias=_opt(p, "use_bias", True))


def _conv2d(p: network_pb2.Conv2d, in_shape: Shape) -> nn.Module:
    # (batch, channels, height, width) -> (batch, filters, height', width')
    padding, k = spec.conv2d_padding(p), p.kernel_size
    if padding == "same":  # stride 1 (spec.py checks): k - 1 pixels of padding in total per axis
        padding = (k - 1) // 2
    conv = nn.Conv2d(in_shape[0], p.filters, kernel_size=k, stride=_opt(p, "stride", 1), padding=padding,
                     bias=_opt(p, "use_bias", True))
    if spec.conv2d_padding(p) == "same" and k % 2 == 0:
        # An even kernel needs one more pixel on the right / bottom, as torch's padding="same" does;
        # explicit, because padding="same" warns about copying the input on every such forward.
        return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), conv)
    return conv


def _max_pool2d(p: network_pb2.MaxPool2d, in_shape: Shape) -> nn.Module:
    return nn.MaxPool2d(p.kernel_size, stride=_opt(p, "stride", p.kernel_size))


def _avg_pool2d(p: network_pb2.AvgPool2d, in_shape: Shape) -> nn.Module:
    return nn.AvgPool2d(p.kernel_size, stride=_opt(p, "stride", p.kernel_size))


def _flatten(p, in_shape: Shape) -> nn.Module:
    return nn.Flatten()  # (batch, ...) -> (batch, prod(...))


def _dropout(p: network_pb2.Dropout, in_shape: Shape) -> nn.Module:
    return nn.Dropout(p.rate)


def _batch_norm(p: network_pb2.BatchNorm, in_shape: Shape) -> nn.Module:
    # 1-D over (batch, features); 2-D over (batch, channels, height, width).
    cls = nn.BatchNorm1d if len(in_shape) == 1 else nn.BatchNorm2d
    return cls(in_shape[0], eps=_opt(p, "epsilon", BATCH_NORM_EPSILON),
               momentum=_opt(p, "momentum", BATCH_NORM_MOMENTUM))


BUILDERS: dict[str, Builder] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "flatten": _flatten,
    "dropout": _dropout,
    "batch_norm": _batch_norm,
    "relu": lambda p, s: nn.ReLU(),
    "leaky_relu": lambda p, s: nn.LeakyReLU(_opt(p, "negative_slope", LEAKY_RELU_SLOPE)),
    "sigmoid": lambda p, s: nn.Sigmoid(),
    "tanh": lambda p, s: nn.Tanh(),
    "elu": lambda p, s: nn.ELU(_opt(p, "alpha", ELU_ALPHA)),
    "softmax": lambda p, s: nn.Softmax(dim=-1),
}


def build_network(network: network_pb2.NetworkSpec, feature_shape: Shape) -> nn.Sequential:
    """Builds the layers in order. Initialization draws from torch's global RNG,
    so call ``torch.manual_seed`` first for reproducible weights. Raises
    InvalidArgument for a spec that does not fit ``feature_shape``."""
    summary = spec.infer_network(network, tuple(feature_shape))
    modules, in_shape = [], tuple(feature_shape)
    for layer, layer_summary in zip(network.layers, summary.layers):
        kind = layer_summary.kind
        modules.append(BUILDERS[kind](getattr(layer, kind), in_shape))
        in_shape = layer_summary.output_shape
    return nn.Sequential(*modules)


def trailing_softmax(model: nn.Sequential) -> bool:
    """Whether the network ends in an explicit softmax (allowed only last)."""
    return len(model) > 0 and isinstance(model[-1], nn.Softmax)


def logits_network(model: nn.Sequential) -> nn.Module:
    """The network without an explicit final softmax: what cross-entropy
    trains on, and what export puts its own softmax after. Shares modules."""
    return model[:-1] if trailing_softmax(model) else model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
