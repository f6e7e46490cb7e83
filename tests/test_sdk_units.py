"""SDK pieces that need no server: tensors, layer and training builders, the error table, the CLI."""

from __future__ import annotations

import inspect
import subprocess
import sys

import grpc
import numpy as np
import pytest

import gradwire as gw
from gradwire import _client, _errors, _tensors, _training
from gradwire._training import training_config
from gradwire.cli import main as cli_main
from gradwire.v1 import datasets_pb2, models_pb2, models_pb2_grpc, network_pb2, tensor_pb2, training_pb2, training_pb2_grpc

# --- tensors ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (4, 1, 8, 8)])
def test_tensor_round_trip(dtype, shape):
    array = (np.arange(int(np.prod(shape))) - 3).astype(dtype).reshape(shape)
    tensor = gw.to_tensor(array)
    assert list(tensor.shape) == list(shape)
    assert len(tensor.raw_data) == array.nbytes
    back = gw.from_tensor(tensor)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_tensor_is_little_endian_row_major():
    tensor = gw.to_tensor(np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert tensor.dtype == tensor_pb2.DATA_TYPE_INT32
    assert tensor.raw_data == b"\x01\0\0\0\x02\0\0\0\x03\0\0\0\x04\0\0\0"


def test_tensor_from_non_contiguous_and_big_endian_input():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    for view in (base.T, base[:, ::2], base[::-1], np.asfortranarray(base)):
        np.testing.assert_array_equal(gw.from_tensor(gw.to_tensor(view)), view)
    big = np.arange(6, dtype=">f8").reshape(2, 3)
    tensor = gw.to_tensor(big)
    assert tensor.raw_data == big.astype("<f8").tobytes()
    np.testing.assert_array_equal(gw.from_tensor(tensor), big)


def test_tensor_decode_is_zero_copy():
    tensor = gw.to_tensor(np.ones((100, 10), np.float32))
    decoded = gw.from_tensor(tensor)
    assert not decoded.flags.owndata and not decoded.flags.writeable


@pytest.mark.parametrize("shape", [(1, 4), (3, 1, 8, 8), (0, 4), (40, 1000), (20_000, 64)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_a_tensor_appended_to_a_serialized_request_parses_as_one_filled_in(shape, dtype):
    """with_tensor (what predict sends for a large batch) against protobuf filling the field."""
    from gradwire._tensors import as_wire_array, fill_tensor, with_tensor
    from gradwire.v1 import models_pb2

    wire = as_wire_array(np.arange(np.prod(shape)).reshape(shape), dtype)
    head = models_pb2.PredictRequest(name="registeredModels/x@production")
    head.read_mask.paths.extend(["probabilities", "values"])
    expected = models_pb2.PredictRequest()
    expected.CopyFrom(head)
    fill_tensor(expected.features, wire)
    got = models_pb2.PredictRequest.FromString(with_tensor(head.SerializeToString(), 2, wire))
    assert got == expected


def test_tensor_dtype_cast_and_rejection():
    assert gw.to_tensor([1.5, 2.5], dtype=np.float32).dtype == tensor_pb2.DATA_TYPE_FLOAT32
    assert gw.to_tensor(np.zeros(3, np.uint8)).dtype == tensor_pb2.DATA_TYPE_UINT8  # compact features travel as they are
    assert gw.from_tensor(gw.to_tensor(np.array([1.5, -2], np.float16))).dtype == np.float16
    with pytest.raises(TypeError, match="uint8"):  # the message lists what travels
        gw.to_tensor(np.zeros(3, np.uint32))


def test_tensor_decodes_json_style_values():
    floats = tensor_pb2.Tensor(shape=[2, 2], float_values=[0.5, 1.5, 2.5, 3.5])
    np.testing.assert_array_equal(gw.from_tensor(floats), np.array([[0.5, 1.5], [2.5, 3.5]], np.float32))
    assert gw.from_tensor(floats).dtype == np.float32
    doubles = tensor_pb2.Tensor(shape=[2], dtype=tensor_pb2.DATA_TYPE_FLOAT64, float_values=[0.1, 0.2])
    assert gw.from_tensor(doubles).dtype == np.float64
    ints = tensor_pb2.Tensor(shape=[3], int_values=[1, -2, 3])
    assert gw.from_tensor(ints).dtype == np.int64 and gw.from_tensor(ints).tolist() == [1, -2, 3]
    int32 = tensor_pb2.Tensor(shape=[1], dtype=tensor_pb2.DATA_TYPE_INT32, int_values=[7])
    assert gw.from_tensor(int32).dtype == np.int32


def test_tensor_decode_rejects_inconsistent_tensors():
    with pytest.raises(ValueError, match="needs 24"):
        gw.from_tensor(tensor_pb2.Tensor(shape=[2, 3], dtype=tensor_pb2.DATA_TYPE_FLOAT32, raw_data=b"\0" * 8))
    with pytest.raises(ValueError, match="needs a dtype"):
        gw.from_tensor(tensor_pb2.Tensor(shape=[2], raw_data=b"\0" * 8))
    with pytest.raises(ValueError, match="needs 3"):
        gw.from_tensor(tensor_pb2.Tensor(shape=[3], float_values=[1.0]))


# --- layers -------------------------------------------------------------------------------

LAYER_PROTOS = [
    (gw.Dense(10), network_pb2.Layer(dense=network_pb2.Dense(units=10, use_bias=True))),
    (gw.Dense(4, use_bias=False), network_pb2.Layer(dense=network_pb2.Dense(units=4, use_bias=False))),
    (
        gw.Conv2d(16, kernel_size=3, padding="same"),
        network_pb2.Layer(
            conv2d=network_pb2.Conv2d(
                filters=16, kernel_size=3, stride=1, padding_mode=network_pb2.PADDING_MODE_SAME, use_bias=True
            )
        ),
    ),
    (
        gw.Conv2d(8, 5, stride=2),
        network_pb2.Layer(
            conv2d=network_pb2.Conv2d(
                filters=8, kernel_size=5, stride=2, padding_mode=network_pb2.PADDING_MODE_VALID, use_bias=True
            )
        ),
    ),
    (
        gw.Conv2d(8, 3, padding=1, use_bias=False),
        network_pb2.Layer(
            conv2d=network_pb2.Conv2d(filters=8, kernel_size=3, stride=1, padding_size=1, use_bias=False)
        ),
    ),
    (gw.MaxPool2d(2), network_pb2.Layer(max_pool2d=network_pb2.MaxPool2d(kernel_size=2))),
    (gw.MaxPool2d(3, stride=1), network_pb2.Layer(max_pool2d=network_pb2.MaxPool2d(kernel_size=3, stride=1))),
    (gw.AvgPool2d(2), network_pb2.Layer(avg_pool2d=network_pb2.AvgPool2d(kernel_size=2))),
    (gw.Flatten(), network_pb2.Layer(flatten=network_pb2.Flatten())),
    (gw.Dropout(0.25), network_pb2.Layer(dropout=network_pb2.Dropout(rate=0.25))),
    (gw.BatchNorm(), network_pb2.Layer(batch_norm=network_pb2.BatchNorm())),
    (
        gw.BatchNorm(momentum=0.5, epsilon=1e-3),
        network_pb2.Layer(batch_norm=network_pb2.BatchNorm(momentum=0.5, epsilon=1e-3)),
    ),
    (gw.ReLU(), network_pb2.Layer(relu=network_pb2.ReLU())),
    (gw.LeakyReLU(), network_pb2.Layer(leaky_relu=network_pb2.LeakyReLU(negative_slope=0.1))),
    (gw.Sigmoid(), network_pb2.Layer(sigmoid=network_pb2.Sigmoid())),
    (gw.Tanh(), network_pb2.Layer(tanh=network_pb2.Tanh())),
    (gw.ELU(), network_pb2.Layer(elu=network_pb2.ELU(alpha=1.0))),
    (gw.ELU(alpha=0.5), network_pb2.Layer(elu=network_pb2.ELU(alpha=0.5))),
    (gw.Softmax(), network_pb2.Layer(softmax=network_pb2.Softmax())),
    (gw.Dense(4, activation="relu"),
     network_pb2.Layer(dense=network_pb2.Dense(units=4, use_bias=True, activation=network_pb2.Activation(relu={})))),
    (gw.Conv2d(4, 3, dilation=2, activation="gelu"),
     network_pb2.Layer(conv2d=network_pb2.Conv2d(filters=4, kernel_size=3, stride=1, dilation=2, use_bias=True,
                                                 padding_mode=network_pb2.PADDING_MODE_VALID,
                                                 activation=network_pb2.Activation(gelu={})))),
    (gw.Maxout(8, pieces=3), network_pb2.Layer(maxout=network_pb2.Maxout(units=8, pieces=3))),
    (gw.GELU(), network_pb2.Layer(gelu=network_pb2.GELU())),
    (gw.SiLU(), network_pb2.Layer(silu=network_pb2.SiLU())),
    (gw.LayerNorm(epsilon=1e-6), network_pb2.Layer(layer_norm=network_pb2.LayerNorm(epsilon=1e-6))),
    (gw.InstanceNorm(affine=False), network_pb2.Layer(instance_norm=network_pb2.InstanceNorm(affine=False))),
    (gw.GroupNorm(4), network_pb2.Layer(group_norm=network_pb2.GroupNorm(groups=4))),
    (gw.Conv1d(6, 5, padding="same", activation="silu"),
     network_pb2.Layer(conv1d=network_pb2.Conv1d(filters=6, kernel_size=5, stride=1, use_bias=True,
                                                 padding_mode=network_pb2.PADDING_MODE_SAME,
                                                 activation=network_pb2.Activation(silu={})))),
    (gw.MaxPool1d(2), network_pb2.Layer(max_pool1d=network_pb2.MaxPool1d(kernel_size=2))),
    (gw.AvgPool1d(3, stride=1), network_pb2.Layer(avg_pool1d=network_pb2.AvgPool1d(kernel_size=3, stride=1))),
    (gw.GlobalAvgPool(), network_pb2.Layer(global_avg_pool=network_pb2.GlobalAvgPool())),
    (gw.SpatialDropout(0.2), network_pb2.Layer(spatial_dropout=network_pb2.SpatialDropout(rate=0.2))),
    (gw.ResidualBlock([gw.Dense(4), gw.ReLU()], activation="relu"),
     network_pb2.Layer(residual_block=network_pb2.ResidualBlock(
         layers=[gw.Dense(4).to_proto(), gw.ReLU().to_proto()], activation=network_pb2.Activation(relu={})))),
    (gw.PatchEmbedding(2, embedding_dim=16),
     network_pb2.Layer(patch_embedding=network_pb2.PatchEmbedding(patch_size=2, embedding_dim=16))),
    (gw.ClassToken(), network_pb2.Layer(class_token=network_pb2.ClassToken())),
    (gw.PositionEmbedding(), network_pb2.Layer(position_embedding=network_pb2.PositionEmbedding())),
    (gw.TransformerEncoder(depth=2, heads=4, mlp_ratio=2.0, dropout=0.1),
     network_pb2.Layer(transformer_encoder=network_pb2.TransformerEncoder(depth=2, heads=4, mlp_ratio=2.0,
                                                                          dropout=0.1))),
    (gw.TokenPooling("mean"),
     network_pb2.Layer(token_pooling=network_pb2.TokenPooling(mode=network_pb2.TOKEN_POOLING_MODE_MEAN))),
]


@pytest.mark.parametrize("layer, expected", LAYER_PROTOS, ids=[repr(layer) for layer, _ in LAYER_PROTOS])
def test_layer_to_proto(layer, expected):
    proto = layer.to_proto()
    assert proto == expected
    assert proto.WhichOneof("kind") == expected.WhichOneof("kind")  # empty kinds still select the oneof
    assert gw.Sequential([proto])[0] == layer  # and back


def test_every_layer_kind_has_a_builder():
    kinds = {f.name for f in network_pb2.Layer.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert {layer.to_proto().WhichOneof("kind") for layer, _ in LAYER_PROTOS} == kinds


@pytest.mark.parametrize(
    "build, exc, text",
    [
        (lambda: gw.Dense(0), ValueError, "units must be >= 1, got 0"),
        (lambda: gw.Dense(-3), ValueError, "got -3"),
        (lambda: gw.Dense(2.5), TypeError, "units must be an int, got 2.5"),
        (lambda: gw.Dense(True), TypeError, "units"),
        (lambda: gw.Conv2d(8, kernel_size=0), ValueError, "kernel_size must be >= 1, got 0"),
        (lambda: gw.Conv2d(8, 3, stride=0), ValueError, "stride"),
        (lambda: gw.Conv2d(8, 3, padding="full"), ValueError, "'full'"),
        (lambda: gw.Conv2d(8, 3, padding=-1), ValueError, "padding must be >= 0, got -1"),
        (lambda: gw.MaxPool2d(0), ValueError, "kernel_size"),
        (lambda: gw.Dropout(1.0), ValueError, "rate must be < 1.0, got 1.0"),
        (lambda: gw.Dropout(-0.1), ValueError, "rate"),
        (lambda: gw.BatchNorm(momentum=0), ValueError, "momentum must be > 0.0"),
        (lambda: gw.BatchNorm(epsilon=-1), ValueError, "epsilon"),
        (lambda: gw.LeakyReLU(float("nan")), ValueError, "finite"),
        (lambda: gw.Sequential([]), ValueError, "at least one layer"),
        (lambda: gw.Dense(3, activation="swish"), ValueError, "activation must be one of .* got 'swish'"),
        (lambda: gw.Dense(3, activation="softmax"), ValueError, "not an inline activation"),
        (lambda: gw.Conv2d(3, 3, dilation=0), ValueError, "dilation must be >= 1, got 0"),
        (lambda: gw.Conv2d(3, 3, stride=2, padding="same"), ValueError, "padding='same' needs stride=1, got stride=2"),
        (lambda: gw.Conv1d(3, 0), ValueError, "kernel_size must be >= 1, got 0"),
        (lambda: gw.Maxout(4, pieces=1), ValueError, "pieces must be >= 2, got 1"),
        (lambda: gw.GroupNorm(0), ValueError, "groups must be >= 1, got 0"),
        (lambda: gw.LayerNorm(epsilon=0), ValueError, "epsilon must be > 0.0, got 0.0"),
        (lambda: gw.SpatialDropout(1), ValueError, "rate must be < 1.0, got 1.0"),
        (lambda: gw.ResidualBlock([]), ValueError, "at least one layer"),
        (lambda: gw.ResidualBlock([gw.Dense(3), gw.Softmax()]), ValueError, "cannot contain Softmax"),
        (lambda: gw.PatchEmbedding(0, embedding_dim=8), ValueError, "patch_size must be >= 1, got 0"),
        (lambda: gw.TransformerEncoder(depth=0, heads=2), ValueError, "depth must be >= 1, got 0"),
        (lambda: gw.TransformerEncoder(depth=1, heads=2, dropout=1.5), ValueError, "dropout must be < 1.0, got 1.5"),
        (lambda: gw.TransformerEncoder(depth=1, heads=2, mlp_ratio=0), ValueError, "mlp_ratio must be > 0.0, got 0"),
        (lambda: gw.TokenPooling("max"), ValueError, "got 'max'"),
        (lambda: gw.Sequential([gw.ReLU]), TypeError, "call it"),
        (lambda: gw.Sequential([gw.Dense(2), "relu"]), TypeError, "layers\\[1\\]"),
        (lambda: gw.Sequential(gw.Dense(2)), TypeError, "list of layers"),
    ],
)
def test_layer_checks_name_the_value(build, exc, text):
    with pytest.raises(exc, match=text):
        build()


def test_numpy_ints_are_ints():
    assert gw.Dense(np.int64(7)).to_proto().dense.units == 7


def test_sequential_to_proto_and_back():
    net = gw.Sequential([gw.Conv2d(4, 3, padding="same"), gw.ReLU(), gw.Flatten(), gw.Dropout(0.1), gw.Dense(3)])
    spec = net.to_proto()
    assert [layer.WhichOneof("kind") for layer in spec.layers] == ["conv2d", "relu", "flatten", "dropout", "dense"]
    assert gw.Sequential.from_proto(spec) == net  # float32 0.1 is shown as 0.1
    assert len(net) == 5 and isinstance(net[1:], gw.Sequential) and "Conv2d(filters=4" in repr(net)


# --- optimizers and training config -------------------------------------------------------


def test_optimizer_protos():
    assert gw.SGD(0.1, momentum=0.9).to_proto().sgd.momentum == pytest.approx(0.9)
    adam = gw.Adam(learning_rate=1e-3, weight_decay=1e-4).to_proto().adam
    assert adam.learning_rate == pytest.approx(1e-3) and adam.weight_decay == pytest.approx(1e-4)
    assert adam.beta1 == pytest.approx(0.9) and adam.beta2 == pytest.approx(0.999)
    rms = gw.RMSprop(0.01, alpha=0.9).to_proto()
    assert rms.WhichOneof("kind") == "rmsprop" and rms.rmsprop.alpha == pytest.approx(0.9)
    with pytest.raises(ValueError, match="learning_rate must be > 0.0, got 0.0"):
        gw.SGD(0)
    with pytest.raises(ValueError, match="momentum"):
        gw.SGD(0.1, momentum=1.0)


def test_early_stopping_proto():
    proto = gw.EarlyStopping(patience=5).to_proto()
    assert proto.patience == 5 and proto.restore_best_weights and not proto.HasField("monitor")
    proto = gw.EarlyStopping(patience=2, monitor="validation_accuracy", min_delta=0.01).to_proto()
    assert proto.monitor == network_pb2.METRIC_VALIDATION_ACCURACY
    with pytest.raises(ValueError, match="'val_acc'"):
        gw.EarlyStopping(patience=2, monitor="val_acc")
    with pytest.raises(ValueError, match="patience must be >= 1, got 0"):
        gw.EarlyStopping(patience=0)


def _config(**overrides):
    kwargs = {"optimizer": gw.Adam(), "epochs": 3, "batch_size": 8}
    kwargs.update(overrides)
    return _training.training_config(**kwargs)


def test_training_config_defaults():
    cfg = _config()
    assert cfg.loss.WhichOneof("kind") == "cross_entropy"
    assert cfg.batching.mini_batch.batch_size == 8
    assert cfg.epochs == 3 and cfg.shuffle and not cfg.HasField("seed")
    assert not cfg.HasField("early_stopping") and not cfg.HasField("input_normalization")
    cfg = _config(seed=0, validation_split=0.2, l1_penalty=1e-4, early_stopping=gw.EarlyStopping(patience=3))
    assert cfg.HasField("seed") and cfg.seed == 0
    assert cfg.validation_split == pytest.approx(0.2) and cfg.early_stopping.patience == 3


@pytest.mark.parametrize(
    "batch_size, batching, mode",
    [(32, None, "mini_batch"), (32, "mini_batch", "mini_batch"), (None, "full", "full_batch"), (None, "online", "online")],
)
def test_batching_modes(batch_size, batching, mode):
    assert _config(batch_size=batch_size, batching=batching).batching.WhichOneof("mode") == mode


@pytest.mark.parametrize(
    "batch_size, batching, text",
    [
        (None, None, "batch_size=N"),
        (None, "mini_batch", "needs batch_size"),
        (16, "full", "contradicts"),
        (16, "online", "contradicts"),
        (None, "stochastic", "'stochastic'"),
        (0, None, "batch_size must be >= 1, got 0"),
    ],
)
def test_batching_validation(batch_size, batching, text):
    with pytest.raises(ValueError, match=text):
        _config(batch_size=batch_size, batching=batching)


def test_loss_and_normalization():
    assert _config(loss="mse").loss.WhichOneof("kind") == "mse"
    with pytest.raises(ValueError, match="'l2'"):
        _config(loss="l2")
    for name, value in [
        ("none", network_pb2.INPUT_NORMALIZATION_NONE),
        ("min_max", network_pb2.INPUT_NORMALIZATION_MIN_MAX),
        ("standardize", network_pb2.INPUT_NORMALIZATION_STANDARDIZE),
    ]:
        assert _config(input_normalization=name).input_normalization == value
    with pytest.raises(ValueError, match="'zscore'"):
        _config(input_normalization="zscore")


@pytest.mark.parametrize(
    "overrides, exc, text",
    [
        ({"epochs": 0}, ValueError, "epochs must be >= 1, got 0"),
        ({"validation_split": 1.0}, ValueError, "validation_split must be < 1.0"),
        ({"l1_penalty": -1}, ValueError, "l1_penalty"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"seed": 2**64}, ValueError, "seed must be <= 18446744073709551615, got 18446744073709551616"),
        ({"shuffle": "yes"}, TypeError, "shuffle"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be"),
        ({"early_stopping": 5}, TypeError, "early_stopping"),
    ],
)
def test_training_config_validation(overrides, exc, text):
    with pytest.raises(exc, match=text):
        _config(**overrides)


# --- datasets -----------------------------------------------------------------------------


@pytest.mark.parametrize("features, exc, text", [
    ([[1, 2, 3, 4], [1, 2]], ValueError, "features must be an array: its rows differ in length or shape"),
    ([["a", "b"]], TypeError, "features must be numbers (bool, integer or float), got strings (dtype <U1)"),
    (np.ones((1, 2), complex), TypeError, "got complex numbers (dtype complex128)"),
    (np.array([["2020-01-01"]], "datetime64[D]"), TypeError, "got datetimes (dtype datetime64[D])"),
    ({"a": 1}, TypeError, "features must be numbers (bool, integer or float), got dict {'a': 1}"),
    (np.array([[1.0, "x"]], object), TypeError, "got str 'x'"),
    (None, TypeError, "features must be an array of numbers, got None"),
    (5.0, ValueError, "features must be examples, (n, *input_shape), or one example, input_shape; got one value, 5.0"),
])
def test_features_that_are_not_numbers_say_what_they_are(features, exc, text):
    """numpy alone casts complex numbers (dropping the imaginary part), datetimes and digit strings
    to float without a word; the SDK says what it got instead."""
    with pytest.raises(exc) as err:
        _tensors.feature_array(features)
    assert text in str(err.value)
    if features is not None and not isinstance(features, float):
        with pytest.raises(exc) as err:
            _client._prepare_dataset(features, [0] * len(features), None)
        assert text in str(err.value)


def test_numbers_of_any_kind_are_features():
    assert _tensors.feature_array(np.ones((2, 3), bool)).dtype == np.float32
    assert _tensors.feature_array(np.ones((2, 3), np.uint8)).dtype == np.uint8  # compact: sent as it is
    assert _tensors.feature_array([[1, 2**40]]).tolist() == [[1.0, float(2**40)]]
    got = _tensors.feature_array(np.array([[1, None, 2.5]], object))  # None as NaN: the server then names it
    assert got.dtype == np.float32 and np.isnan(got[0, 1]) and got[0, 2] == 2.5


def test_label_kind_inference():
    X = np.zeros((4, 2))
    feats, labs, kind = _client._prepare_dataset(X, [0, 1, 2, 1], None)
    assert kind == "classes" and labs.dtype == np.dtype("<i8") and feats.dtype == np.dtype("<f4")
    _, labs, kind = _client._prepare_dataset(X, np.array([0.5, 1, 2, 3]), None)
    assert kind == "regression" and labs.dtype == np.dtype("<f4")
    _, labs, kind = _client._prepare_dataset(X, np.array([0.0, 1.0, 2.0, 1.0]), "classes")
    assert kind == "classes" and labs.dtype == np.dtype("<i8")
    _, labs, kind = _client._prepare_dataset(X, np.zeros((4, 3), np.int32), "regression")
    assert labs.shape == (4, 3) and labs.dtype == np.dtype("<f4")


@pytest.mark.parametrize(
    "features, labels, kind, text",
    [
        (np.zeros(4), [0, 1, 0, 1], None, "at least 2 axes"),
        (np.zeros((4, 2)), [0, 1, 0], None, "4 examples but labels have 3"),
        (np.zeros((4, 2)), [0.5, 1, 0, 1], "classes", "whole-number"),
        (np.zeros((4, 2)), np.zeros((4, 2), np.int64), "classes", "must be \\[examples\\]"),
        (np.zeros((4, 2)), ["a", "b", "c", "d"], None, "dtype <U1"),
        (np.zeros((4, 2)), [0, 1, 0, 1], "ordinal", "'ordinal'"),
    ],
)
def test_dataset_validation(features, labels, kind, text):
    with pytest.raises((ValueError, TypeError), match=text):
        _client._prepare_dataset(features, labels, kind)


def test_upload_stream_order_and_chunking():
    feats, labs, _ = _client._prepare_dataset(np.arange(30, dtype=np.float64).reshape(10, 3).T.T, np.arange(10), None)
    header = datasets_pb2.DatasetUploadHeader(display_name="x")
    messages = list(_client._upload_requests(header, feats, labs, chunk_bytes=16))
    parts = [m.WhichOneof("part") for m in messages]
    assert parts[0] == "header" and parts.count("header") == 1
    assert parts.index("labels_chunk") > max(i for i, p in enumerate(parts) if p == "features_chunk")
    assert all(len(m.features_chunk) <= 16 for m in messages[1:])
    assert b"".join(m.features_chunk for m in messages) == feats.tobytes()
    assert b"".join(m.labels_chunk for m in messages) == np.arange(10, dtype="<i8").tobytes()


def test_inline_dataset():
    inline = _client._inline_dataset(np.ones((3, 2)), [0, 1, 1], display_name="tiny")
    assert inline.label_kind == datasets_pb2.LABEL_KIND_CLASSES and inline.display_name == "tiny"
    np.testing.assert_array_equal(gw.from_tensor(inline.features), np.ones((3, 2), np.float32))
    assert gw.from_tensor(inline.labels).tolist() == [0, 1, 1]


# --- errors -------------------------------------------------------------------------------


def test_every_status_code_maps_to_an_api_error():
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            assert code not in _errors.ERRORS_BY_CODE
            continue
        cls = _errors.ERRORS_BY_CODE[code]
        assert issubclass(cls, gw.APIError) and cls is not gw.APIError
        err = gw.APIError.from_status(code, "boom")
        assert type(err) is cls and err.code is code and isinstance(err, gw.GradwireError)
        assert str(err) == f"{code.name}: boom"


@pytest.mark.parametrize(
    "code, cls",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, gw.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, gw.NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, gw.AlreadyExistsError),
        (grpc.StatusCode.FAILED_PRECONDITION, gw.FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, gw.ResourceExhaustedError),
        (grpc.StatusCode.UNAUTHENTICATED, gw.UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, gw.PermissionDeniedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, gw.DeadlineExceededError),
        (grpc.StatusCode.UNAVAILABLE, gw.UnavailableError),
        (grpc.StatusCode.CANCELLED, gw.CancelledError),
        (grpc.StatusCode.INTERNAL, gw.InternalError),
        (grpc.StatusCode.UNKNOWN, gw.InternalError),
    ],
)
def test_named_error_classes(code, cls):
    assert _errors.ERRORS_BY_CODE[code] is cls


@pytest.mark.parametrize(
    "message, field",
    [
        ("network.layers[3].conv2d.kernel_size: must be >= 1, got 0", "network.layers[3].conv2d.kernel_size"),
        ("training.epochs: must be >= 1, got 0", "training.epochs"),
        ("name: not a dataset name: 'foo'", "name"),
        ("features.shape[1]: expected 4, got 5", "features.shape[1]"),
        ("model models/abc is not ready", None),
        ("failed to connect to all addresses; last error: ...", None),
        ("network.layers[3]:no space", None),
        ("", None),
    ],
)
def test_field_parsing(message, field):
    assert gw.APIError(grpc.StatusCode.INVALID_ARGUMENT, message).field == field


class _FakeRpcError(grpc.RpcError, grpc.Call):
    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


def test_translate_rpc_errors_hides_the_grpc_chain():
    from google.rpc import error_details_pb2, status_pb2

    detail = status_pb2.Status(code=3, message="x")
    bad = error_details_pb2.BadRequest(field_violations=[{"field": "training.epochs", "description": "bad"}])
    detail.details.add().Pack(bad)
    trailers = (("grpc-status-details-bin", detail.SerializeToString()),)
    with pytest.raises(gw.InvalidArgumentError) as info:
        with _errors.translate_rpc_errors():
            raise _FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "training.epochs: must be >= 1, got 0", trailers)
    err = info.value
    assert err.field == "training.epochs" and err.message == "training.epochs: must be >= 1, got 0"
    assert err.__cause__ is None and err.__suppress_context__
    assert len(err.details) == 1 and err.details[0].Is(error_details_pb2.BadRequest.DESCRIPTOR)


def test_api_errors_pickle():
    import pickle

    err = pickle.loads(pickle.dumps(gw.NotFoundError(grpc.StatusCode.NOT_FOUND, "models/x: not found")))
    assert type(err) is gw.NotFoundError and err.code is grpc.StatusCode.NOT_FOUND
    assert err.message == "models/x: not found" and err.field is None  # "models/x" is no field path


# --- client and CLI, offline --------------------------------------------------------------


def test_unreachable_server_is_unavailable_error():
    with gw.Client("127.0.0.1:1", timeout=5) as client:
        with pytest.raises(gw.UnavailableError) as info:
            client.get_dataset("datasets/x")
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:1" in str(info.value)  # gRPC's own words name the address
    assert str(info.value).endswith("; is a gradwire server running at that address? (`gradwire serve` starts one; "
                                    "gw.Client's target names it)")


def test_train_rejects_bad_dataset_argument_before_calling():
    with gw.Client("127.0.0.1:1") as client:
        with pytest.raises(TypeError, match="dataset must be"):
            client.train([gw.Dense(2)], 42, optimizer=gw.SGD(0.1), epochs=1, batch_size=1)
        with pytest.raises(ValueError, match="batch_size=N"):
            client.train([gw.Dense(2)], "datasets/x", optimizer=gw.SGD(0.1), epochs=1)


# Values a caller can pass by mistake: wrong types, past what a 32- or 64-bit field holds,
# non-finite, empty. Every SDK argument either takes one (it then reaches the wire, here a port
# with no server) or refuses it with a TypeError or ValueError that names the argument; never
# an error in protobuf's, numpy's or gRPC's own words (`Value out of range: 2147483648`,
# `'NoneType' object has no attribute 'startswith'`), which name none.
BAD_ARGUMENTS = [None, -1, 0, 2**31, 2**63, 2**64, 1.5, float("nan"), float("inf"), 1e300, "", "x" * 300, b"bytes", [],
                 {}, object(), True, np.float64(2.0), [None], ["a", 5]]


def _argument_outcome(call, kwargs: dict, argument: str) -> str:
    """How ``call(**kwargs)`` took ``kwargs[argument]``: 'refused' (a TypeError / ValueError naming
    ``argument``), 'sent' (it reached the wire), or what went wrong instead."""
    try:
        result = call(**kwargs)
        if hasattr(result, "__next__"):  # a stream's generator: the call starts when it is read
            next(result, None)
    except gw.UnavailableError:
        return "sent"
    except (TypeError, ValueError) as exc:
        return "refused" if argument in str(exc) else f"{type(exc).__name__} not naming {argument!r}: {exc}"
    except OSError as exc:  # a path the file system refuses, in its words, with the path
        return "refused" if argument == "path" and exc.filename else f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001  (what the test is about)
        return f"{type(exc).__name__}: {exc}"
    return "sent"


def _client_calls(client: gw.Client, model: gw.Model, tmp_path) -> dict:
    """Each public Client method with arguments that are all valid: {method: (callable, kwargs)}."""
    X, y = np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1])
    job = gw.TrainingJob(client, training_pb2.TrainingJob(name="trainingJobs/j", state=training_pb2.TrainingJob.RUNNING))
    registered = gw.RegisteredModel(client, models_pb2.RegisteredModel(name="registeredModels/r"))
    return {
        "upload_dataset": (client.upload_dataset, {"features": X, "labels": y, "name": "d", "class_names": ["a", "b"], "chunk_bytes": 64}),
        "get_dataset": (client.get_dataset, {"name": "datasets/x"}),
        "delete_dataset": (client.delete_dataset, {"name": "datasets/x"}),
        "train": (client.train, {"network": [gw.Dense(2)], "dataset": (X, y), "optimizer": gw.Adam(0.01), "epochs": 2, "batch_size": 2,
                                     "top_k": 1, "seed": 3, "name": "n", "registered_model": "r", "aliases": ["prod"], "precision": "fp32",
                                     "channels_last": False, "request_id": "id", "input_normalization": "standardize"}),
        "summary": (client.summary, {"network": [gw.Dense(2)], "input_shape": [3]}),
        "get_job": (client.get_job, {"name": "trainingJobs/x"}),
        "cancel_job": (client.cancel_job, {"name": "trainingJobs/x"}),
        "watch_job": (client.watch_job, {"name": "trainingJobs/x"}),
        "get_model": (client.get_model, {"name": "models/x"}),
        "delete_model": (client.delete_model, {"name": "models/x"}),
        "predict": (client.predict, {"model": model, "features": X[:1]}),
        "predict_full": (client.predict_full, {"model": model, "features": X[:1]}),
        "publish_model": (client.publish_model, {"model": model, "registered_model": "r", "aliases": ["prod"]}),
        "get_registered_model": (client.get_registered_model, {"name": "r"}),
        "list_model_versions": (client.list_model_versions, {"name": "r"}),
        "set_alias": (client.set_alias, {"name": "r", "alias": "prod", "version": 2}),
        "delete_alias": (client.delete_alias, {"name": "r", "alias": "prod"}),
        "delete_registered_model": (client.delete_registered_model, {"name": "r", "force": True}),
        "set_batching": (client.set_batching, {"model": model, "enabled": True, "max_batch_size": 8, "max_delay_ms": 0.5, "clear": False}),
        "statistics": (client.statistics, {"model": model}),
        "export_model": (client.export_model, {"model": model, "path": tmp_path / "m.onnx"}),
        "Model.download": (model.download, {"path": tmp_path / "m.onnx"}),
        "RegisteredModel.predict": (registered.predict, {"features": X[:1], "alias": "prod"}),
        "RegisteredModel.set_alias": (registered.set_alias, {"alias": "prod", "version": 2}),
        "RegisteredModel.delete": (registered.delete, {"force": True}),
        "TrainingJob.wait": (job.wait, {"progress": False, "timeout": 0}),
    }


def test_every_client_argument_is_refused_by_name_or_sent(tmp_path):
    model = gw.Model(None, models_pb2.Model(name="models/m", input_shape=[3]))
    with gw.Client("127.0.0.1:1", timeout=5) as client:
        model._client = client
        calls = _client_calls(client, model, tmp_path)
        assert {name for name in dir(client) if not name.startswith("_") and callable(getattr(client, name))} - set(calls) == {
            "close", "list_datasets", "list_jobs", "list_models", "list_registered_models", "wait_for_ready"}  # no arguments; one that waits (below)
        wrong, refused = [], 0
        for method, (call, valid) in calls.items():
            for argument in [*valid, "timeout"]:
                for value in BAD_ARGUMENTS:
                    if method.endswith(".wait") and argument == "timeout" and (value is None or isinstance(value, float | int) and value >= 0):
                        continue  # a valid timeout (None, inf: none): it would wait for the job
                    outcome = _argument_outcome(call, {**valid, argument: value}, argument)
                    refused += outcome == "refused"
                    if outcome not in ("refused", "sent"):
                        wrong.append(f"{method}({argument}={value!r:.40}): {outcome}")
        assert not wrong, "\n".join(wrong)
        assert refused > 700  # most of these values are wrong for most arguments


@pytest.mark.parametrize(("call", "argument", "exc", "text"), [
    (lambda c: c.set_alias("r", "prod", 2**63), "version", ValueError, "version must be <= 9223372036854775807, got 9223372036854775808"),
    (lambda c: c.set_alias("r", "prod", 1.0), "version", TypeError, "version must be an int, got 1.0"),
    (lambda c: c.get_registered_model(None), "name", TypeError, "name must be a registered model's name (a str such as 'digits')"),
    (lambda c: c.set_batching("models/m", max_delay_ms=float("inf")), "max_delay_ms", ValueError, "max_delay_ms must be finite, got inf"),
    (lambda c: c.set_batching("models/m", enabled=1), "enabled", TypeError, "enabled must be True or False, got 1"),
    (lambda c: c.get_model("models/m", timeout="5"), "timeout", TypeError, "timeout must be a number of seconds or None, got '5'"),
    (lambda c: c.get_model("models/m", timeout=float("nan")), "timeout", ValueError, "timeout must be > 0 seconds or None, got nan"),
    (lambda c: c.train([gw.Dense(2)], "datasets/x", optimizer=gw.Adam(), epochs=2**31, batch_size=1), "epochs", ValueError,
     "epochs must be <= 2147483647, got 2147483648"),
    (lambda c: c.train([gw.Dense(2)], "datasets/x", optimizer=gw.Adam(1e300), epochs=1, batch_size=1), "learning_rate", ValueError,
     "learning_rate must be within a 32-bit float's range (+-3.4e38), got 1e+300"),
    (lambda c: c.train(None, "datasets/x", optimizer=gw.Adam(), epochs=1, batch_size=1), "network", TypeError,
     "network must be a gw.Sequential, a list of layers or a NetworkSpec, got None"),
    (lambda c: c.train([gw.Dense(2)], "datasets/x", optimizer=gw.Adam(), epochs=1, batch_size=1, aliases="prod"), "aliases",
     TypeError, "aliases must be a list of str, got 'prod'"),
    (lambda c: c.upload_dataset(np.zeros((2, 3)), [[0, 1], [1]]), "labels", ValueError,
     "labels must be an array: its rows differ in length or shape"),
    (lambda c: c.wait_for_ready(timeout="1"), "timeout", TypeError, "timeout must be a number of seconds or None, got '1'"),
    (lambda c: gw.RegisteredModel(c, models_pb2.RegisteredModel(name="registeredModels/r")).predict([[1.0]], alias=None), "alias",
     TypeError, "alias must be an alias (a str) or a version number (an int), got None"),
    (lambda c: c.export_model("models/m", "no-such-dir/m.onnx"), "path", FileNotFoundError,
     "path 'no-such-dir/m.onnx': its directory 'no-such-dir' does not exist"),
])
def test_bad_arguments_name_themselves(call, argument, exc, text):
    with gw.Client("127.0.0.1:1", timeout=5) as client, pytest.raises(exc) as info:
        call(client)
    assert text in str(info.value) and argument in str(info.value)


def test_an_infinite_timeout_is_no_deadline():
    """gRPC takes an infinite timeout for a deadline already passed (DEADLINE_EXCEEDED at once)."""
    with gw.Client("127.0.0.1:1", timeout=float("inf")) as client:
        assert client.timeout is None
        with pytest.raises(gw.UnavailableError):
            client.get_dataset("datasets/x", timeout=float("inf"))


@pytest.mark.parametrize("argument", ["target", "timeout", "max_message_bytes", "token", "connections"])
def test_client_arguments_are_refused_by_name(argument):
    for value in BAD_ARGUMENTS:
        outcome = _argument_outcome(lambda **kwargs: gw.Client(**kwargs).close(), {"target": "127.0.0.1:1", argument: value}, argument)
        assert outcome in ("refused", "sent"), f"Client({argument}={value!r}): {outcome}"


def _builders() -> list[type]:
    """Every public layer, optimizer, loss, schedule and early-stopping builder."""
    kinds = (gw.Layer, gw.Optimizer, gw.Loss, gw.Schedule, gw.EarlyStopping)
    found = [getattr(gw, n) for n in dir(gw) if isinstance(getattr(gw, n), type) and issubclass(getattr(gw, n), kinds)]
    return [cls for cls in found if cls not in kinds]


@pytest.mark.parametrize("builder", _builders(), ids=lambda cls: cls.__name__)
def test_every_builder_argument_is_refused_by_name_or_built(builder):
    required = {"units": 4, "filters": 4, "kernel_size": 2, "rate": 0.5, "groups": 2, "pieces": 2, "patch_size": 2,
                "embedding_dim": 4, "depth": 1, "heads": 2, "layers": [gw.Dense(2)], "learning_rate": 0.01, "step_size": 2,
                "gamma": 0.5}
    parameters = [p for p in inspect.signature(builder).parameters.values() if p.kind is not p.VAR_KEYWORD]
    valid = {p.name: required[p.name] for p in parameters if p.default is inspect.Parameter.empty}
    wrong = []
    for p in parameters:
        for value in BAD_ARGUMENTS:
            try:
                built = builder(**{**valid, p.name: value})
                built.to_proto()
            except (TypeError, ValueError) as exc:
                if p.name not in str(exc):
                    wrong.append(f"{builder.__name__}({p.name}={value!r:.40}): {type(exc).__name__} {exc}")
            except Exception as exc:  # noqa: BLE001  (what the test is about)
                wrong.append(f"{builder.__name__}({p.name}={value!r:.40}): {type(exc).__name__} {exc}")
    assert not wrong, "\n".join(wrong)


def test_import_does_not_import_torch():
    code = "import sys, gradwire; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_health_unreachable(capsys):
    assert cli_main(["health", "--target", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_cli_serve_without_server(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradwire_server.cli", None)  # import fails as if not installed
    assert cli_main(["serve", "--port", "0"]) == 2
    assert "the server is not installed: pip install 'gradwire[server]'" in capsys.readouterr().err


# --- job.wait against a scripted servicer (a real channel, no gradwire server) ----------

from concurrent import futures  # noqa: E402


State = training_pb2.TrainingJob.State


def _event(seq, state, epoch=None, **kw):
    event = training_pb2.TrainingJobEvent(sequence=seq, state=state, **kw)
    if epoch is not None:
        event.epoch.CopyFrom(training_pb2.EpochMetrics(epoch=epoch, train_loss=1.0 / epoch, validation_accuracy=0.5))
    return event


class _ScriptedJobs(training_pb2_grpc.TrainingJobServiceServicer):
    """The first Watch breaks with UNAVAILABLE after two events; the next replays everything."""

    def __init__(self, final_state, error=None):
        self.final_state, self.error, self.watches = final_state, error, 0
        self.events = [_event(1, State.QUEUED), _event(2, State.RUNNING)]
        self.events += [_event(2 + e, State.RUNNING, epoch=e) for e in (1, 2, 3)]
        self.events.append(_event(6, final_state, model="models/m1" if final_state == State.SUCCEEDED else ""))

    def WatchTrainingJob(self, request, context):
        self.watches += 1
        if self.watches == 1:
            yield from self.events[:2]
            context.abort(grpc.StatusCode.UNAVAILABLE, "server restarting")
        yield from self.events

    def GetTrainingJob(self, request, context):
        job = training_pb2.TrainingJob(name=request.name, state=self.final_state)
        job.training.epochs = 3
        job.history.extend(e.epoch for e in self.events if e.HasField("epoch"))
        if self.final_state == State.SUCCEEDED:
            job.model = "models/m1"
        if self.error:
            job.error.code, job.error.message = self.error
        return job


class _Models(models_pb2_grpc.ModelServiceServicer):
    def GetModel(self, request, context):
        if request.name != "models/m1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} not found")
        return models_pb2.Model(name=request.name, input_shape=[4], class_names=["a", "b"], parity_max_abs_diff=1e-7)


@pytest.fixture()
def scripted():
    servers = []

    def start(final_state, error=None):
        jobs = _ScriptedJobs(final_state, error)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        training_pb2_grpc.add_TrainingJobServiceServicer_to_server(jobs, server)
        models_pb2_grpc.add_ModelServiceServicer_to_server(_Models(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        client = gw.Client(f"127.0.0.1:{port}", timeout=5)
        job = gw.TrainingJob(client, training_pb2.TrainingJob(name="trainingJobs/j1", state=State.QUEUED))
        job.proto.training.epochs = 3
        return jobs, job

    yield start
    for server in servers:
        server.stop(None)


def test_wait_rewatches_after_unavailable_and_skips_seen_events(scripted, capsys):
    jobs, job = scripted(State.SUCCEEDED)
    model = job.wait(progress=True)
    assert jobs.watches == 2
    assert model.name == "models/m1" and model.class_names == ["a", "b"] and model.input_shape == (4,)
    assert [m.epoch for m in job.history] == [1, 2, 3] and job.state == "SUCCEEDED"
    assert "3/3" in capsys.readouterr().err  # the progress bar reached the last epoch once


def test_wait_raises_training_failed(scripted):
    _, job = scripted(State.FAILED, error=(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "out of memory"))
    with pytest.raises(gw.TrainingFailedError) as info:
        job.wait()
    err = info.value
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED and err.message == "out of memory"
    assert err.job is job and job.error == (grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory")


def test_wait_raises_training_cancelled(scripted):
    _, job = scripted(State.CANCELLED)
    with pytest.raises(gw.TrainingCancelledError, match="trainingJobs/j1 was cancelled"):
        job.wait()


def test_watch_events_are_typed(scripted):
    _, job = scripted(State.SUCCEEDED)
    with pytest.raises(gw.UnavailableError, match="server restarting"):
        list(job.watch())  # a bare watch does not reconnect: it reports the broken stream
    events = list(job.watch())
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[0].state is gw.JobState.QUEUED and events[0].epoch is None
    assert events[2].epoch.epoch == 1 and events[2].epoch.validation_loss is None
    assert events[-1].model == "models/m1" and events[-1].state.terminal


@pytest.mark.parametrize("module", ["_errors", "_tensors", "_training", "_layers", "_client", "_resources"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"gradwire.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize(
    "build, exc, text",
    [
        (lambda: gw.SGD(0.1, nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
        (lambda: gw.AdamW(weight_decay=-1), ValueError, "weight_decay must be >= 0.0, got -1.0"),
        (lambda: gw.Adagrad(lr_decay=-0.5), ValueError, "lr_decay must be >= 0.0, got -0.5"),
        (lambda: gw.CrossEntropy(label_smoothing=1.0), ValueError, "label_smoothing must be < 1.0, got 1.0"),
        (lambda: gw.CrossEntropy(class_weights=[1, 0]), ValueError, "class_weights\\[1\\] must be > 0.0, got 0.0"),
        (lambda: gw.CrossEntropy(class_weights=3), TypeError, "class_weights must be a list of numbers, got 3"),
        (lambda: gw.BinaryCrossEntropy(positive_weight=0), ValueError, "positive_weight must be > 0.0"),
        (lambda: gw.Huber(delta=0), ValueError, "delta must be > 0.0, got 0"),
        (lambda: gw.StepDecay(0), ValueError, "step_size must be >= 1, got 0"),
        (lambda: gw.StepDecay(2, gamma=1.5), ValueError, "gamma must be <= 1.0, got 1.5"),
        (lambda: gw.ExponentialDecay(0), ValueError, "gamma must be > 0.0, got 0"),
        (lambda: gw.CosineDecay(warmup_epochs=-1), ValueError, "warmup_epochs must be >= 0, got -1"),
        (lambda: gw.ReduceOnPlateau(factor=1.0), ValueError, "factor must be < 1.0, got 1.0"),
        (lambda: gw.ReduceOnPlateau(monitor="val_loss"), ValueError, "got 'val_loss'"),
        (lambda: gw.EarlyStopping(patience=2, mode="up"), ValueError, "mode must be 'min', 'max' or None, got 'up'"),
        (lambda: training_config(optimizer=gw.SGD(0.1), epochs=3, batching="full", drop_last=True), ValueError,
         "drop_last=True applies to mini-batches only"),
        (lambda: training_config(optimizer=gw.SGD(0.1), epochs=3, batch_size=4, schedule=gw.CosineDecay(warmup_epochs=3)),
         ValueError, "warmup_epochs must be < epochs \\(3\\), got 3"),
        (lambda: training_config(optimizer=gw.SGD(0.1), epochs=3, batch_size=4, schedule="cosine"), TypeError,
         "schedule must be"),
        (lambda: training_config(optimizer=gw.SGD(0.1), epochs=3, batch_size=4, gradient_clip_norm=0), ValueError,
         "gradient_clip_norm must be > 0.0, got 0"),
        (lambda: training_config(optimizer=gw.SGD(0.1), epochs=3, batch_size=4, top_k=0), ValueError,
         "top_k must be >= 1, got 0"),
        (lambda: training_config(optimizer=gw.SGD(0.1), epochs=3, batch_size=4, loss="bce"), ValueError, "got 'bce'"),
    ],
)
def test_training_options_are_checked_early(build, exc, text):
    with pytest.raises(exc, match=text):
        build()


def test_training_options_reach_the_config():
    config = training_config(
        optimizer=gw.AdamW(1e-3, weight_decay=0.05), epochs=10, batch_size=16, drop_last=True,
        loss=gw.CrossEntropy(label_smoothing=0.1, class_weights=[1, 2, 3]),
        schedule=gw.CosineDecay(warmup_epochs=2, min_learning_rate=1e-5), gradient_clip_norm=1.0, top_k=2,
        early_stopping=gw.EarlyStopping(patience=3, monitor="train_accuracy", mode="max"),
    )
    assert config.optimizer.adamw.weight_decay == pytest.approx(0.05)
    assert config.batching.mini_batch.drop_last and config.top_k == 2 and config.gradient_clip_norm == 1.0
    assert list(config.loss.cross_entropy.class_weights) == [1, 2, 3]
    assert config.schedule.cosine.warmup_epochs == 2
    assert config.early_stopping.mode == network_pb2.METRIC_MODE_MAX
    for name in ("binary_cross_entropy", "mae", "huber", "mse"):
        assert training_config(optimizer=gw.Adam(), epochs=1, batch_size=1, loss=name).loss.WhichOneof("kind") == name
    assert training_config(optimizer=gw.SGD(0.1, momentum=0.9, nesterov=True), epochs=1,
                           batching="online").optimizer.sgd.nesterov
    for schedule, kind in ((gw.StepDecay(3), "step"), (gw.ExponentialDecay(0.9), "exponential"),
                           (gw.ReduceOnPlateau(patience=2, monitor="validation_loss"), "reduce_on_plateau")):
        assert training_config(optimizer=gw.Adagrad(), epochs=5, batch_size=2,
                               schedule=schedule).schedule.WhichOneof("kind") == kind


def test_torch_tensors_are_taken_as_they_come():
    """A tensor that requires grad (numpy refuses it: "Can't call numpy() on Tensor that requires
    grad"), and a bfloat16 one (numpy has no such type), are read as numpy arrays, without torch
    being imported by the SDK itself."""
    torch = pytest.importorskip("torch")
    from gradwire._tensors import feature_array, numeric_array

    weights = torch.arange(6, dtype=torch.float32).reshape(2, 3).requires_grad_()
    assert feature_array(weights * 2).tolist() == [[0, 2, 4], [6, 8, 10]]
    assert numeric_array(torch.ones(2, dtype=torch.bfloat16), "labels").dtype == np.float32
    assert numeric_array(torch.tensor([1, 2]), "labels").dtype == np.int64
