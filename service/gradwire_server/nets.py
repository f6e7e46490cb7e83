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


def _activation(p) -> nn.Module | None:
    """The module of an inline ``activation`` field, or None when unset."""
    if not p.HasField("activation"):
        return None
    kind = p.activation.WhichOneof("kind")
    return ACTIVATIONS[kind](getattr(p.activation, kind))


def _with_activation(module: nn.Module, p) -> nn.Module:
    act = _activation(p)
    return module if act is None else nn.Sequential(module, act)


def _dense(p: network_pb2.Dense, in_shape: Shape) -> nn.Module:
    # (batch, in_features) -> (batch, units)
    return _with_activation(nn.Linear(in_shape[0], p.units, bias=_opt(p, "use_bias", True)), p)


def _conv(cls: type, pad_cls: type, spatial_rank: int) -> Builder:
    def build(p, in_shape: Shape) -> nn.Module:
        # (batch, channels, *spatial) -> (batch, filters, *spatial')
        k, dilation = p.kernel_size, _opt(p, "dilation", 1)
        padding, extra = spec.conv_padding(p), 0
        if padding == "same":  # stride 1 (spec.py checks): dilation * (k - 1) pixels of padding in total per axis
            total = dilation * (k - 1)
            padding, extra = total // 2, total % 2
        conv = cls(in_shape[0], p.filters, kernel_size=k, stride=_opt(p, "stride", 1), padding=padding,
                   dilation=dilation, bias=_opt(p, "use_bias", True))
        if extra:
            # An odd total needs one more pixel on the right / bottom, as torch's padding="same" does;
            # explicit, because padding="same" warns about copying the input on every such forward.
            conv = nn.Sequential(pad_cls((0, 1) * spatial_rank), conv)
        return _with_activation(conv, p)

    return build


def _batch_norm(p: network_pb2.BatchNorm, in_shape: Shape) -> nn.Module:
    # 1-D over (batch, features) or (batch, channels, length); 2-D over (batch, channels, height, width).
    cls = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
    return cls(in_shape[0], eps=_opt(p, "epsilon", BATCH_NORM_EPSILON),
               momentum=_opt(p, "momentum", BATCH_NORM_MOMENTUM))


def _layer_norm(p: network_pb2.LayerNorm, in_shape: Shape) -> nn.Module:
    normalized = in_shape if len(in_shape) == 3 else in_shape[-1:]  # images: all of (C, H, W); else the last axis
    return nn.LayerNorm(list(normalized), eps=_opt(p, "epsilon", spec.NORM_EPSILON))


def _instance_norm(p: network_pb2.InstanceNorm, in_shape: Shape) -> nn.Module:
    cls = nn.InstanceNorm2d if len(in_shape) == 3 else nn.InstanceNorm1d
    return cls(in_shape[0], eps=_opt(p, "epsilon", spec.NORM_EPSILON), affine=_opt(p, "affine", True))


def _group_norm(p: network_pb2.GroupNorm, in_shape: Shape) -> nn.Module:
    return nn.GroupNorm(p.groups, in_shape[0], eps=_opt(p, "epsilon", spec.NORM_EPSILON))


class Maxout(nn.Module):
    """units outputs, each the max of `pieces` affine maps: (batch, in) -> (batch, units)."""

    def __init__(self, in_features: int, units: int, pieces: int) -> None:
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x).reshape(-1, self.units, self.pieces)  # (batch, units, pieces)
        return z.amax(dim=-1)


class GlobalAvgPool(nn.Module):
    """(batch, channels, *spatial) -> (batch, channels)."""

    def __init__(self, spatial_rank: int) -> None:
        super().__init__()
        self.dims = tuple(range(2, 2 + spatial_rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.dims)


class Residual(nn.Module):
    """y = activation(body(x) + skip(x)); skip is the identity or a projection."""

    def __init__(self, body: nn.Sequential, skip: nn.Module | None, activation: nn.Module | None) -> None:
        super().__init__()
        self.body, self.skip = body, skip
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.skip is None else self.skip(x)
        return self.activation(self.body(x) + shortcut)


class PatchEmbedding(nn.Module):
    """(batch, C, H, W) -> (batch, patches, D): a patch-sized, patch-strided convolution."""

    def __init__(self, channels: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (batch, D, h, w) -> (batch, h * w, D)


class ClassToken(nn.Module):
    """(batch, N, D) -> (batch, N + 1, D) with a learned first token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # token + 0 * x[:, :1] broadcasts the token over the (dynamic) batch axis.
        return torch.cat([self.token + 0 * x[:, :1], x], dim=1)


class PositionEmbedding(nn.Module):
    """Adds a learned vector per position: (batch, N, D) -> (batch, N, D)."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.empty(1, tokens, dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.position


class Attention(nn.Module):
    """Multi-head self-attention written with plain matmuls (exports to any ONNX runtime)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, N, head_dim)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim ** -0.5, dim=-1)  # (batch, heads, N, N)
        out = (self.dropout(attn) @ v).transpose(1, 2).reshape(-1, n, d)  # (batch, N, D)
        return self.dropout(self.proj(out))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _transformer_encoder(p: network_pb2.TransformerEncoder, in_shape: Shape) -> nn.Module:
    dim = in_shape[1]
    hidden = spec.mlp_hidden(p, dim)
    blocks = [EncoderBlock(dim, p.heads, hidden, p.dropout) for _ in range(p.depth)]
    return nn.Sequential(*blocks, nn.LayerNorm(dim))  # ViT's final layer norm


class TokenPooling(nn.Module):
    """(batch, N, D) -> (batch, D): the first (class) token or the mean."""

    def __init__(self, mean: bool) -> None:
        super().__init__()
        self.mean = mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1) if self.mean else x[:, 0]


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": lambda p: nn.ReLU(),
    "leaky_relu": lambda p: nn.LeakyReLU(_opt(p, "negative_slope", LEAKY_RELU_SLOPE)),
    "sigmoid": lambda p: nn.Sigmoid(),
    "tanh": lambda p: nn.Tanh(),
    "elu": lambda p: nn.ELU(_opt(p, "alpha", ELU_ALPHA)),
    "gelu": lambda p: nn.GELU(),
    "silu": lambda p: nn.SiLU(),
}


BUILDERS: dict[str, Builder] = {
    "dense": _dense,
    "conv2d": _conv(nn.Conv2d, nn.ZeroPad2d, 2),
    "max_pool2d": lambda p, s: nn.MaxPool2d(p.kernel_size, stride=_opt(p, "stride", p.kernel_size)),
    "avg_pool2d": lambda p, s: nn.AvgPool2d(p.kernel_size, stride=_opt(p, "stride", p.kernel_size)),
    "flatten": lambda p, s: nn.Flatten(),  # (batch, ...) -> (batch, prod(...))
    "dropout": lambda p, s: nn.Dropout(p.rate),
    "batch_norm": _batch_norm,
    "softmax": lambda p, s: nn.Softmax(dim=-1),
    **{kind: (lambda make: lambda p, s: make(p))(make) for kind, make in ACTIVATIONS.items()},
    "maxout": lambda p, s: Maxout(s[0], p.units, p.pieces),
    "layer_norm": _layer_norm,
    "instance_norm": _instance_norm,
    "group_norm": _group_norm,
    "conv1d": _conv(nn.Conv1d, nn.ZeroPad1d, 1),
    "max_pool1d": lambda p, s: nn.MaxPool1d(p.kernel_size, stride=_opt(p, "stride", p.kernel_size)),
    "avg_pool1d": lambda p, s: nn.AvgPool1d(p.kernel_size, stride=_opt(p, "stride", p.kernel_size)),
    "global_avg_pool": lambda p, s: GlobalAvgPool(len(s) - 1),
    # Dropout1d / Dropout2d zero whole channels of (batch, C, L) / (batch, C, H, W).
    "spatial_dropout": lambda p, s: (nn.Dropout2d if len(s) == 3 else nn.Dropout1d)(p.rate),
    "residual_block": None,  # needs the block's inferred shapes: built by _build_layers
    "patch_embedding": lambda p, s: PatchEmbedding(s[0], p.patch_size, p.embedding_dim),
    "class_token": lambda p, s: ClassToken(s[1]),
    "position_embedding": lambda p, s: PositionEmbedding(s[0], s[1]),
    "transformer_encoder": _transformer_encoder,
    "token_pooling": lambda p, s: TokenPooling(p.mode == network_pb2.TOKEN_POOLING_MODE_MEAN),
}


def _projection(projection: tuple | None, in_shape: Shape, out_shape: Shape) -> nn.Module | None:
    if projection is None:
        return None
    if projection[0] == "dense":
        return nn.Linear(in_shape[0], out_shape[0])
    cls = nn.Conv2d if projection[0] == "conv2d" else nn.Conv1d
    return cls(in_shape[0], out_shape[0], kernel_size=1, stride=projection[1])  # 1x1, strided to the body's size


def _build_layers(layers, summaries, in_shape: Shape) -> list[nn.Module]:
    modules = []
    for layer, s in zip(layers, summaries):
        params = getattr(layer, s.kind)
        if s.kind == "residual_block":
            body = nn.Sequential(*_build_layers(params.layers, s.children, in_shape))
            modules.append(Residual(body, _projection(s.projection, in_shape, s.output_shape), _activation(params)))
        else:
            modules.append(BUILDERS[s.kind](params, in_shape))
        in_shape = s.output_shape
    return modules


def build_network(network: network_pb2.NetworkSpec, feature_shape: Shape) -> nn.Sequential:
    """Builds the layers in order. Initialization draws from torch's global RNG,
    so call ``torch.manual_seed`` first for reproducible weights. Raises
    InvalidArgument for a spec that does not fit ``feature_shape``."""
    summary = spec.infer_network(network, tuple(feature_shape))
    return nn.Sequential(*_build_layers(network.layers, summary.layers, tuple(feature_shape)))


def trailing_softmax(model: nn.Sequential) -> bool:
    """Whether the network ends in an explicit softmax (allowed only last)."""
    return len(model) > 0 and isinstance(model[-1], nn.Softmax)


def logits_network(model: nn.Sequential) -> nn.Module:
    """The network without an explicit final softmax: what cross-entropy
    trains on, and what export puts its own softmax after. Shares modules."""
    return model[:-1] if trailing_softmax(model) else model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
