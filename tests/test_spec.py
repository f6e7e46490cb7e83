"""spec.py: every invalid job is refused with its field path and value, and the
inferred shapes and parameter counts equal what torch builds (nets.py)."""

from __future__ import annotations

import collections

import pytest
import torch
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor as _F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwire.v1 import datasets_pb2, network_pb2
from gradwire_server import errors, nets, spec
from helpers import set_scalar

CLASSES = datasets_pb2.LABEL_KIND_CLASSES
REGRESSION = datasets_pb2.LABEL_KIND_REGRESSION

IMAGE_NET = """
layers { conv2d { filters: 4 kernel_size: 3 } }
layers { relu {} }
layers { max_pool2d { kernel_size: 2 } }
layers { flatten {} }
layers { dense { units: 10 } }
"""
TRAINING = """
loss { cross_entropy {} }
optimizer { sgd { learning_rate: 0.1 } }
batching { mini_batch { batch_size: 10 } }
epochs: 2
validation_split: 0.2
"""
HEAD10 = " layers { flatten {} } layers { dense { units: 10 } }"
VIT10 = " layers { token_pooling { mode: TOKEN_POOLING_MODE_MEAN } } layers { dense { units: 10 } }"
IMAGE = dict(feature_shape=(1, 8, 8), label_kind=CLASSES, output_size=10, example_count=100)


def net(text: str) -> network_pb2.NetworkSpec:
    return text_format.Parse(text, network_pb2.NetworkSpec())


def cfg(text: str) -> network_pb2.TrainingConfig:
    return text_format.Parse(text, network_pb2.TrainingConfig())


def validate(network: str = IMAGE_NET, training: str = TRAINING, **overrides) -> spec.NetworkSummary:
    return spec.validate_job(net(network), cfg(training), **{**IMAGE, **overrides})


def test_valid_job_summary():
    summary = validate()
    assert [s.output_shape for s in summary.layers] == [(4, 6, 6), (4, 6, 6), (4, 3, 3), (36,), (10,)]
    assert summary.parameter_count == (4 * 9 + 4) + (36 * 10 + 10)


# (id, network, training, dataset overrides, field, fragments of the message)
INVALID = [
    ("no-layers", "", TRAINING, {}, "network.layers", ["at least one layer"]),
    ("kind-not-set", "layers { flatten {} } layers { dense { units: 10 } } layers {}", TRAINING, {},
     "network.layers[2]", ["layer kind is not set"]),
    ("dense-units-0", "layers { flatten {} } layers { dense { units: 0 } }", TRAINING, {},
     "network.layers[1].dense.units", [">= 1", "got 0"]),
    ("dense-needs-flatten", "layers { dense { units: 10 } }", TRAINING, {},
     "network.layers[0].dense", ["(1, 8, 8)", "flatten"]),
    ("conv-kernel-0", "layers { conv2d { filters: 4 kernel_size: 0 } }", TRAINING, {},
     "network.layers[0].conv2d.kernel_size", ["got 0"]),
    ("conv-filters-negative", "layers { conv2d { filters: -2 kernel_size: 3 } }", TRAINING, {},
     "network.layers[0].conv2d.filters", ["got -2"]),
    ("conv-stride-0", "layers { conv2d { filters: 2 kernel_size: 3 stride: 0 } }", TRAINING, {},
     "network.layers[0].conv2d.stride", ["got 0"]),
    ("conv-on-vector", "layers { conv2d { filters: 2 kernel_size: 3 } }", TRAINING, {"feature_shape": (64,)},
     "network.layers[0].conv2d", ["conv2d needs (channels, height, width) input, got shape (64,)"]),
    ("conv-kernel-too-big", "layers { conv2d { filters: 2 kernel_size: 9 padding_size: 0 } }", TRAINING, {},
     "network.layers[0].conv2d.kernel_size", ["kernel 9", "8x8"]),
    ("conv-kernel-too-big-padded", "layers { conv2d { filters: 2 kernel_size: 11 padding_size: 1 } }", TRAINING, {},
     "network.layers[0].conv2d.kernel_size", ["kernel 11", "10x10"]),
    ("conv-negative-padding", "layers { conv2d { filters: 2 kernel_size: 3 padding_size: -1 } }", TRAINING, {},
     "network.layers[0].conv2d.padding_size", ["got -1"]),
    ("conv-same-stride-2", "layers { conv2d { filters: 2 kernel_size: 3 stride: 2 padding_mode: PADDING_MODE_SAME } }",
     TRAINING, {}, "network.layers[0].conv2d.stride", ["SAME", "got 2"]),
    ("conv-padding-unspecified", "layers { conv2d { filters: 2 kernel_size: 3 padding_mode: PADDING_MODE_UNSPECIFIED } }",
     TRAINING, {}, "network.layers[0].conv2d.padding_mode", ["PADDING_MODE_UNSPECIFIED"]),
    ("maxpool-on-vector", "layers { flatten {} } layers { max_pool2d { kernel_size: 2 } }", TRAINING, {},
     "network.layers[1].max_pool2d", ["got shape (64,)"]),
    ("avgpool-too-big", "layers { avg_pool2d { kernel_size: 9 } }", TRAINING, {},
     "network.layers[0].avg_pool2d.kernel_size", ["kernel 9", "8x8"]),
    ("pool-stride-0", "layers { max_pool2d { kernel_size: 2 stride: 0 } }", TRAINING, {},
     "network.layers[0].max_pool2d.stride", ["got 0"]),
    ("dropout-1", "layers { flatten {} } layers { dropout { rate: 1 } } layers { dense { units: 10 } }", TRAINING, {},
     "network.layers[1].dropout.rate", ["[0, 1)", "got 1"]),
    ("dropout-negative", "layers { flatten {} } layers { dropout { rate: -0.5 } } layers { dense { units: 10 } }",
     TRAINING, {}, "network.layers[1].dropout.rate", ["got -0.5"]),
    ("batchnorm-momentum-0", "layers { batch_norm { momentum: 0 } }", TRAINING, {},
     "network.layers[0].batch_norm.momentum", ["(0, 1]", "got 0"]),
    ("batchnorm-epsilon-0", "layers { batch_norm { epsilon: 0 } }", TRAINING, {},
     "network.layers[0].batch_norm.epsilon", ["got 0"]),
    ("softmax-not-last", "layers { flatten {} } layers { softmax {} } layers { dense { units: 10 } }", TRAINING, {},
     "network.layers[1]", ["last layer"]),
    ("width-mismatch", "layers { flatten {} } layers { dense { units: 8 } } layers { relu {} }", TRAINING, {},
     "network.layers[1]", ["final layer width 8 does not match the dataset's 10 classes"]),
    ("output-not-vector", "layers { conv2d { filters: 10 kernel_size: 3 } } layers { relu {} }", TRAINING, {},
     "network.layers[0]", ["(10, 6, 6)", "flatten"]),
    ("regression-width", "layers { flatten {} } layers { dense { units: 3 } }",
     TRAINING.replace("cross_entropy", "mse"), {"label_kind": REGRESSION, "output_size": 2},
     "network.layers[1]", ["width 3", "2 regression targets"]),
    ("ce-on-regression", "layers { flatten {} } layers { dense { units: 10 } }", TRAINING,
     {"label_kind": REGRESSION}, "training.loss.cross_entropy", ["LABEL_KIND_CLASSES", "LABEL_KIND_REGRESSION"]),
    ("mse-on-classes", IMAGE_NET, TRAINING.replace("cross_entropy", "mse"), {},
     "training.loss.mse", ["LABEL_KIND_REGRESSION", "LABEL_KIND_CLASSES"]),
    ("loss-not-set", IMAGE_NET, TRAINING.replace("loss { cross_entropy {} }", ""), {}, "training.loss", ["not set"]),
    ("optimizer-not-set", IMAGE_NET, TRAINING.replace("optimizer { sgd { learning_rate: 0.1 } }", ""), {},
     "training.optimizer", ["not set"]),
    ("batching-not-set", IMAGE_NET, TRAINING.replace("batching { mini_batch { batch_size: 10 } }", ""), {},
     "training.batching", ["not set"]),
    ("lr-0", IMAGE_NET, TRAINING.replace("learning_rate: 0.1", "learning_rate: 0"), {},
     "training.optimizer.sgd.learning_rate", ["> 0", "got 0"]),
    ("adam-lr-negative", IMAGE_NET, TRAINING.replace("sgd { learning_rate: 0.1 }", "adam { learning_rate: -0.01 }"), {},
     "training.optimizer.adam.learning_rate", ["got -0.01"]),
    ("weight-decay-negative", IMAGE_NET, TRAINING.replace("learning_rate: 0.1", "learning_rate: 0.1 weight_decay: -1"),
     {}, "training.optimizer.sgd.weight_decay", ["got -1"]),
    ("momentum-1", IMAGE_NET, TRAINING.replace("learning_rate: 0.1", "learning_rate: 0.1 momentum: 1"), {},
     "training.optimizer.sgd.momentum", ["[0, 1)", "got 1"]),
    ("rmsprop-momentum", IMAGE_NET,
     TRAINING.replace("sgd { learning_rate: 0.1 }", "rmsprop { learning_rate: 0.1 momentum: 1.5 }"), {},
     "training.optimizer.rmsprop.momentum", ["got 1.5"]),
    ("adam-beta1", IMAGE_NET, TRAINING.replace("sgd { learning_rate: 0.1 }", "adam { learning_rate: 0.1 beta1: 1 }"),
     {}, "training.optimizer.adam.beta1", ["got 1"]),
    ("epochs-0", IMAGE_NET, TRAINING.replace("epochs: 2", "epochs: 0"), {}, "training.epochs", ["got 0"]),
    ("validation-split-1", IMAGE_NET, TRAINING.replace("validation_split: 0.2", "validation_split: 1"), {},
     "training.validation_split", ["[0, 1)", "got 1"]),
    ("validation-split-negative", IMAGE_NET, TRAINING.replace("validation_split: 0.2", "validation_split: -0.1"), {},
     "training.validation_split", ["got -0.1"]),
    ("validation-holds-out-nothing", IMAGE_NET, TRAINING.replace("batch_size: 10", "batch_size: 1"),
     {"example_count": 4}, "training.validation_split", ["0.2 of 4 examples", "no example"]),
    ("l1-negative", IMAGE_NET, TRAINING + "l1_penalty: -0.001", {}, "training.l1_penalty", ["got -0.001"]),
    ("normalization-unspecified", IMAGE_NET, TRAINING + "input_normalization: INPUT_NORMALIZATION_UNSPECIFIED", {},
     "training.input_normalization", ["INPUT_NORMALIZATION_UNSPECIFIED"]),
    ("monitor-unspecified", IMAGE_NET, TRAINING + "early_stopping { patience: 2 monitor: METRIC_UNSPECIFIED }", {},
     "training.early_stopping.monitor", ["METRIC_UNSPECIFIED"]),
    ("patience-0", IMAGE_NET, TRAINING + "early_stopping { patience: 0 }", {},
     "training.early_stopping.patience", ["got 0"]),
    ("min-delta-negative", IMAGE_NET, TRAINING + "early_stopping { patience: 1 min_delta: -1 }", {},
     "training.early_stopping.min_delta", ["got -1"]),
    ("monitor-validation-without-split", IMAGE_NET,
     TRAINING.replace("validation_split: 0.2", "") + "early_stopping { patience: 2 monitor: METRIC_VALIDATION_LOSS }",
     {}, "training.early_stopping.monitor", ["METRIC_VALIDATION_LOSS", "validation split"]),
    ("validation-accuracy-on-regression", "layers { flatten {} } layers { dense { units: 1 } }",
     TRAINING.replace("cross_entropy", "mse") + "early_stopping { patience: 2 monitor: METRIC_VALIDATION_ACCURACY }",
     {"label_kind": REGRESSION, "output_size": 1}, "training.early_stopping.monitor", ["METRIC_VALIDATION_ACCURACY"]),
    ("batch-size-0", IMAGE_NET, TRAINING.replace("batch_size: 10", "batch_size: 0"), {},
     "training.batching.mini_batch.batch_size", ["got 0"]),
    # 100 examples, floor(100 * 0.2) = 20 held out: 80 train.
    ("batch-larger-than-split", IMAGE_NET, TRAINING.replace("batch_size: 10", "batch_size: 90"), {},
     "training.batching.mini_batch.batch_size", ["batch size 90", "80 examples", "20 held out"]),
    # floor(n * split) < n for split < 1, so only an empty dataset leaves an empty training split.
    ("no-examples", IMAGE_NET, TRAINING, {"example_count": 0}, "example_count", ["got 0"]),
    ("batchnorm1d-online", "layers { flatten {} } layers { batch_norm {} } layers { dense { units: 10 } }",
     TRAINING.replace("mini_batch { batch_size: 10 }", "online {}"), {},
     "network.layers[1].batch_norm", ["batch of 1"]),
    ("batchnorm1d-last-batch-of-one", "layers { flatten {} } layers { batch_norm {} } layers { dense { units: 10 } }",
     TRAINING.replace("batch_size: 10", "batch_size: 79"), {},
     "network.layers[1].batch_norm", ["batch of 1", "80 training examples"]),
    # The lecture's and ViT's invalid combinations.
    ("group-norm-groups", "layers { conv2d { filters: 6 kernel_size: 3 } } layers { group_norm { groups: 4 } }" + HEAD10,
     TRAINING, {}, "network.layers[1].group_norm.groups", ["4 groups do not divide the 6 channels"]),
    ("maxout-pieces", "layers { flatten {} } layers { maxout { units: 10 pieces: 1 } }", TRAINING, {},
     "network.layers[1].maxout.pieces", [">= 2", "got 1"]),
    ("patch-size", "layers { patch_embedding { patch_size: 3 embedding_dim: 8 } }" + VIT10, TRAINING, {},
     "network.layers[0].patch_embedding.patch_size", ["patch size 3 does not divide", "8x8"]),
    ("heads", "layers { patch_embedding { patch_size: 2 embedding_dim: 10 } } "
              "layers { transformer_encoder { depth: 1 heads: 4 } }" + VIT10, TRAINING, {},
     "network.layers[1].transformer_encoder.heads", ["4 heads do not divide the token width 10"]),
    ("cls-without-token", "layers { patch_embedding { patch_size: 2 embedding_dim: 8 } } "
                          "layers { token_pooling { mode: TOKEN_POOLING_MODE_CLASS_TOKEN } } layers { dense { units: 10 } }",
     TRAINING, {}, "network.layers[1].token_pooling.mode", ["needs a class_token layer"]),
    ("encoder-on-image", "layers { transformer_encoder { depth: 1 heads: 1 } }" + HEAD10, TRAINING, {},
     "network.layers[0].transformer_encoder", ["(tokens, width)", "(1, 8, 8)"]),
    ("residual-rank", "layers { residual_block { layers { flatten {} } } }" + HEAD10, TRAINING, {},
     "network.layers[0].residual_block", ["(1, 8, 8) to (64,)", "not the rank"]),
    ("residual-nested-error", "layers { residual_block { layers { conv2d { filters: 2 kernel_size: 0 } } } }" + HEAD10,
     TRAINING, {}, "network.layers[0].residual_block.layers[0].conv2d.kernel_size", ["got 0"]),
    ("dilation-too-wide", "layers { conv2d { filters: 2 kernel_size: 3 dilation: 4 } }" + HEAD10, TRAINING, {},
     "network.layers[0].conv2d.kernel_size", ["dilation 4", "reach 9"]),
    ("activation-unset", "layers { flatten {} } layers { dense { units: 10 activation {} } }", TRAINING, {},
     "network.layers[1].dense.activation", ["activation kind is not set"]),
    ("ce-on-regression", IMAGE_NET, TRAINING, {"label_kind": REGRESSION},
     "training.loss.cross_entropy", ["needs LABEL_KIND_CLASSES", "LABEL_KIND_REGRESSION"]),
    ("mae-on-classes", IMAGE_NET, TRAINING.replace("cross_entropy {}", "mae {}"), {},
     "training.loss.mae", ["needs LABEL_KIND_REGRESSION"]),
    ("bce-three-classes", IMAGE_NET.replace("units: 10", "units: 1"), TRAINING.replace("cross_entropy {}", "binary_cross_entropy {}"),
     {"output_size": 3}, "training.loss.binary_cross_entropy", ["exactly 2 classes", "has 3"]),
    ("bce-two-outputs", IMAGE_NET.replace("units: 10", "units: 2"), TRAINING.replace("cross_entropy {}", "binary_cross_entropy {}"),
     {"output_size": 2}, "network.layers[4]", ["width 2", "log-odds"]),
    ("class-weights-count", IMAGE_NET, TRAINING.replace("cross_entropy {}", "cross_entropy { class_weights: [1, 2] }"), {},
     "training.loss.cross_entropy.class_weights", ["10 classes, got 2 weights"]),
    ("class-weight-zero", IMAGE_NET, TRAINING.replace("cross_entropy {}", "cross_entropy { class_weights: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0] }"),
     {}, "training.loss.cross_entropy.class_weights[9]", ["> 0", "got 0"]),
    ("label-smoothing", IMAGE_NET, TRAINING.replace("cross_entropy {}", "cross_entropy { label_smoothing: 1 }"), {},
     "training.loss.cross_entropy.label_smoothing", ["[0, 1)", "got 1"]),
    ("nesterov-no-momentum", IMAGE_NET, TRAINING.replace("learning_rate: 0.1", "learning_rate: 0.1 nesterov: true"), {},
     "training.optimizer.sgd.nesterov", ["momentum > 0"]),
    ("clip-zero", IMAGE_NET, TRAINING + "gradient_clip_norm: 0", {}, "training.gradient_clip_norm", ["> 0", "got 0"]),
    ("warmup-too-long", IMAGE_NET, TRAINING + "schedule { cosine { warmup_epochs: 2 } }", {},
     "training.schedule.cosine.warmup_epochs", ["< epochs (2)", "got 2"]),
    ("step-gamma", IMAGE_NET, TRAINING + "schedule { step { step_size: 1 gamma: 0 } }", {},
     "training.schedule.step.gamma", ["(0, 1]", "got 0"]),
    ("plateau-monitor", IMAGE_NET, TRAINING.replace("validation_split: 0.2", "")
     + "schedule { reduce_on_plateau { factor: 0.5 patience: 1 monitor: METRIC_VALIDATION_LOSS } }", {},
     "training.schedule.reduce_on_plateau.monitor", ["needs a validation split"]),
    ("top-k-too-big", IMAGE_NET, TRAINING + "top_k: 11", {}, "training.top_k", ["<= the dataset's 10 classes"]),
    ("bce-multi-label-width", IMAGE_NET, TRAINING.replace("cross_entropy {}", "binary_cross_entropy {}"),
     {"label_kind": datasets_pb2.LABEL_KIND_MULTI_LABEL, "output_size": 3}, "network.layers[4]",
     ["width 10 does not match the dataset's 3 labels"]),
    ("top-k-multi-label", IMAGE_NET.replace("units: 10", "units: 3"),
     TRAINING.replace("cross_entropy {}", "binary_cross_entropy {}") + "top_k: 2",
     {"label_kind": datasets_pb2.LABEL_KIND_MULTI_LABEL, "output_size": 3}, "training.top_k", ["single-label"]),
    ("ce-on-multi-label", IMAGE_NET.replace("units: 10", "units: 3"), TRAINING,
     {"label_kind": datasets_pb2.LABEL_KIND_MULTI_LABEL, "output_size": 3}, "training.loss.cross_entropy",
     ["needs LABEL_KIND_CLASSES labels", "LABEL_KIND_MULTI_LABEL"]),
    ("es-mode-unspecified", IMAGE_NET, TRAINING + "early_stopping { patience: 1 mode: METRIC_MODE_UNSPECIFIED }", {},
     "training.early_stopping.mode", ["METRIC_MODE_UNSPECIFIED is not allowed"]),
]


@pytest.mark.parametrize("network, training, overrides, field, fragments",
                         [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_job(network, training, overrides, field, fragments):
    with pytest.raises(errors.InvalidArgument) as info:
        validate(network, training, **overrides)
    assert info.value.field == field, info.value.message
    for fragment in fragments:
        assert fragment in info.value.message


def test_message_carries_field_path():
    with pytest.raises(errors.InvalidArgument) as info:
        validate("layers { conv2d { filters: 4 kernel_size: 0 } }")
    assert str(info.value) == "network.layers[0].conv2d.kernel_size: must be >= 1, got 0"


def test_batchnorm2d_online_is_fine():
    # (C, H, W) batch norm has H*W values per channel even with one example.
    validate("layers { batch_norm {} } layers { flatten {} } layers { dense { units: 10 } }",
             TRAINING.replace("mini_batch { batch_size: 10 }", "online {}"))


@pytest.mark.parametrize("count, split, expected", [
    (100, 0.2, (80, 20)), (10, 0.7, (3, 7)), (7, 0.5, (4, 3)), (5, 0.0, (5, 0)), (3, 0.1, (3, 0)),
])
def test_training_split_sizes(count, split, expected):
    # Splits arrive as float32 (0.7 -> 0.699999988); the floor must not lose an example.
    split32 = network_pb2.TrainingConfig(validation_split=split).validation_split
    assert spec.training_split_sizes(count, split32) == expected


def test_every_layer_kind_has_a_rule_and_a_builder():
    kinds = {f.name for f in network_pb2.Layer.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert kinds == set(spec.SHAPE_RULES) == set(nets.BUILDERS)


# Specs whose inferred shapes and parameter counts must equal torch's.
SHAPE_SPECS = [
    ((1, 8, 8), IMAGE_NET),
    ((3, 9, 7), """
     layers { conv2d { filters: 5 kernel_size: 3 stride: 2 padding_size: 1 use_bias: false } }
     layers { batch_norm { momentum: 0.2 epsilon: 0.001 } }
     layers { leaky_relu {} }
     layers { conv2d { filters: 6 kernel_size: 2 padding_mode: PADDING_MODE_SAME } }
     layers { avg_pool2d { kernel_size: 2 stride: 1 } }
     layers { conv2d { filters: 2 kernel_size: 2 padding_mode: PADDING_MODE_VALID } }
     layers { elu { alpha: 0.5 } }
     layers { flatten {} }
     layers { dropout { rate: 0.5 } }
     layers { dense { units: 4 use_bias: false } }
     layers { batch_norm {} }
     layers { softmax {} }"""),
    ((2, 5, 5), """
     layers { max_pool2d { kernel_size: 3 stride: 2 } }
     layers { sigmoid {} }
     layers { flatten {} }
     layers { dense { units: 7 } }
     layers { tanh {} }
     layers { dense { units: 3 } }"""),
    ((6,), "layers { dense { units: 5 } } layers { relu {} } layers { batch_norm {} } layers { flatten {} }"),
    ((3, 8, 8), """
     layers { residual_block { layers { conv2d { filters: 4 kernel_size: 3 stride: 2 padding_size: 1 activation { relu {} } } }
                               layers { group_norm { groups: 2 } } activation { relu {} } } }
     layers { residual_block { layers { conv2d { filters: 4 kernel_size: 3 dilation: 2 padding_mode: PADDING_MODE_SAME } }
                               layers { instance_norm {} } } }
     layers { spatial_dropout { rate: 0.1 } }
     layers { layer_norm {} }
     layers { global_avg_pool {} }
     layers { maxout { units: 3 pieces: 4 } }
     layers { residual_block { layers { dense { units: 5 activation { gelu {} } } } } }"""),
    ((2, 8, 8), """
     layers { patch_embedding { patch_size: 4 embedding_dim: 12 } }
     layers { class_token {} }
     layers { position_embedding {} }
     layers { transformer_encoder { depth: 2 heads: 3 mlp_ratio: 1.5 } }
     layers { token_pooling { mode: TOKEN_POOLING_MODE_CLASS_TOKEN } }
     layers { layer_norm {} }
     layers { dense { units: 3 } }"""),
    ((3, 20), """
     layers { conv1d { filters: 4 kernel_size: 4 padding_mode: PADDING_MODE_SAME activation { silu {} } } }
     layers { batch_norm {} }
     layers { max_pool1d { kernel_size: 2 } }
     layers { conv1d { filters: 6 kernel_size: 3 stride: 2 dilation: 2 } }
     layers { avg_pool1d { kernel_size: 2 stride: 1 } }
     layers { residual_block { layers { conv1d { filters: 8 kernel_size: 1 } } } }
     layers { flatten {} }"""),
]


@pytest.mark.parametrize("feature_shape, network", SHAPE_SPECS)
def test_shapes_and_parameter_counts_match_torch(feature_shape, network):
    spec_net = net(network)
    summary = spec.infer_network(spec_net, feature_shape)
    model = nets.build_network(spec_net, feature_shape).eval()
    assert summary.parameter_count == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, *feature_shape)
    for layer, module in zip(summary.layers, model):
        assert layer.parameter_count == sum(p.numel() for p in module.parameters()), layer
        x = module(x)
        assert tuple(x.shape[1:]) == layer.output_shape, layer
    assert tuple(x.shape[1:]) == summary.output_shape


def test_builder_defaults():
    model = nets.build_network(net("""
        layers { conv2d { filters: 2 kernel_size: 3 } } layers { max_pool2d { kernel_size: 2 } }
        layers { batch_norm {} } layers { leaky_relu {} } layers { elu {} } layers { flatten {} }
        layers { dense { units: 3 } }"""), (1, 8, 8))
    conv, pool, bn, leaky, elu, _, dense = model
    assert conv.padding == (0, 0) and conv.stride == (1, 1) and conv.bias is not None
    assert pool.stride == 2
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.momentum == 0.1 and bn.eps == 1e-5
    assert leaky.negative_slope == 0.1 and elu.alpha == 1.0 and dense.bias is not None


def test_summary_counts_flops_of_dense_and_conv():
    summary = validate()
    conv, _, pool, _, dense = summary.layers
    assert conv.flops == 2 * (1 * 3 * 3) * (4 * 6 * 6)  # a multiply-add per tap per output element
    assert dense.flops == 2 * 36 * 10
    assert summary.flops == sum(layer.flops for layer in summary.layers) > conv.flops + dense.flops
    vit = spec.infer_network(net(SHAPE_SPECS[-2][1]), SHAPE_SPECS[-2][0])
    encoder = vit.layers[3]
    n, d, h = 5, 12, 18
    assert encoder.flops >= 2 * (2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * h)


# ---- any network the validator accepts builds and runs in torch with exactly its shapes ---------


LAYER_KINDS = sorted(f.name for f in network_pb2.Layer.DESCRIPTOR.oneofs_by_name["kind"].fields)
ACTIVATION_KINDS = sorted(f.name for f in network_pb2.Activation.DESCRIPTOR.oneofs_by_name["kind"].fields)
_INTS = st.one_of(st.sampled_from([1, 1, 2, 2, 2, 3, 4]), st.sampled_from([-1, 0, 5, 8, 12]))  # mostly sound, edges too
_FLOATS = st.sampled_from([0.0, 0.1, 0.5, 1.0, 1.5, 2.0, -0.5])


@st.composite
def _fill(draw, message, depth: int, sound: bool = False) -> None:
    """Sets each field of a layer's message, or leaves it at its default, with values around the
    edges (0, -1, a kernel past its input...): nested activations and residual bodies too.
    ``sound``: every field set, to small values that are each valid on their own."""
    ints, floats = (st.sampled_from([1, 2, 2, 4]), st.sampled_from([0.1, 0.25, 0.5])) if sound else (_INTS, _FLOATS)
    for field in message.DESCRIPTOR.fields:
        if not sound and draw(st.integers(0, 3)) == 0:  # left at its default (0 for a count: refused)
            continue
        if field.is_repeated:  # a residual block's body
            if field.message_type is network_pb2.Layer.DESCRIPTOR and depth < 2:
                for _ in range(draw(st.integers(1, 3))):
                    getattr(message, field.name).add().CopyFrom(draw(_layers(depth + 1)))
        elif field.message_type is network_pb2.Activation.DESCRIPTOR:
            kind = draw(st.sampled_from(ACTIVATION_KINDS))
            draw(_fill(getattr(getattr(message, field.name), kind), depth + 1))
            getattr(message, field.name).SetInParent()
            getattr(getattr(message, field.name), kind).SetInParent()
        elif field.type == _F.TYPE_MESSAGE:
            draw(_fill(getattr(message, field.name), depth + 1))
        else:
            set_scalar(draw, message, field, ints, floats)


@st.composite
def _layers(draw, depth: int = 0, kinds: list[str] | None = None) -> network_pb2.Layer:
    layer = network_pb2.Layer()
    kind = draw(st.sampled_from(kinds or LAYER_KINDS))
    getattr(layer, kind).SetInParent()
    draw(_fill(getattr(layer, kind), depth, sound=draw(st.booleans())))
    return layer


FIRST = {1: ["dense"], 2: ["conv1d", "max_pool1d", "layer_norm"], 3: ["conv2d", "patch_embedding", "max_pool2d", "avg_pool2d", "group_norm"]}
NEXT = {"patch_embedding": ["class_token", "position_embedding", "transformer_encoder", "token_pooling"]}


@st.composite
def _networks(draw):
    """An input shape and 1-5 layers: most often begun as networks for that rank begin (and a
    patch embedding followed by the layers that take tokens), then any kinds."""
    feature_shape = draw(st.sampled_from([(6,), (3, 10), (4, 12), (2, 6, 6), (1, 8, 8), (3, 5, 7), (4, 8, 8)]))
    layers = []
    if draw(st.integers(0, 3)):
        kind = draw(st.sampled_from(FIRST[len(feature_shape)]))
        layers.append(draw(_layers(0, [kind])))
        layers += [draw(_layers(0, [follow])) for follow in NEXT.get(kind, []) if draw(st.booleans())]
    layers += draw(st.lists(_layers(), min_size=0 if layers else 1, max_size=3))
    return feature_shape, layers


@pytest.mark.parametrize("text, shape, input_shape", [
    ("layers { patch_embedding { patch_size: 1 embedding_dim: 1 } } layers { instance_norm {} }", (2, 6, 6), "(36, 1)"),
    ("layers { conv1d { filters: 3 kernel_size: 4 } } layers { instance_norm {} }", (2, 4), "(3, 1)"),
])
def test_instance_norm_needs_two_positions_per_channel(text, shape, input_shape):
    """Found by the fuzz below: accepted, these failed at the first training step in torch
    ("Expected more than 1 spatial element when training")."""
    with pytest.raises(errors.InvalidArgument) as err:
        spec.infer_network(net(text), shape)
    assert err.value.message == (f"network.layers[1].instance_norm: normalizes each channel over its positions, and input "
                                 f"shape {input_shape} has one position per channel; it needs at least 2")


def test_any_network_the_validator_accepts_runs_in_torch_with_its_shapes():
    """The validator's shape inference is the contract a job is accepted on: whatever it accepts,
    any layer kind with any hyper-parameters, must build, run forward and backward in torch, and
    give exactly the shapes and parameter counts it inferred; what it refuses, it refuses with
    InvalidArgument naming a field. 1,500 generated networks; every layer kind is accepted in some."""
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=1500, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(_networks())
    def check(case):
        feature_shape, layers = case
        network = network_pb2.NetworkSpec(layers=layers)
        try:
            summary = spec.infer_network(network, feature_shape)
        except errors.InvalidArgument as exc:
            assert exc.field and exc.field.startswith("network.layers["), exc.message
            seen["refused"] += 1
            return
        seen["accepted"] += 1
        seen.update(f"accepted {layer.WhichOneof('kind')}" for layer in layers)
        model = nets.build_network(network, feature_shape).train()
        assert summary.parameter_count == sum(p.numel() for p in model.parameters())
        x = torch.randn(3, *feature_shape)
        out = model(x)
        assert tuple(out.shape) == (3, *summary.output_shape), (summary.output_shape, tuple(out.shape))
        if any(p.requires_grad for p in model.parameters()):
            out.float().sum().backward()
        model.eval()
        y = x
        for layer, module in zip(summary.layers, model):
            assert layer.parameter_count == sum(p.numel() for p in module.parameters()), layer
            y = module(y)
            assert tuple(y.shape[1:]) == layer.output_shape, layer

    check()
    print(f"network fuzz: {seen['accepted']} accepted, {seen['refused']} refused")
    missing = [k for k in LAYER_KINDS if not seen[f"accepted {k}"]]
    assert seen["accepted"] >= 150 and not missing, (seen, missing)
