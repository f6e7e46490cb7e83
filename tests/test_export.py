"""export.py: every layer kind exports to a valid ONNX file that onnxruntime
runs with PyTorch's results (the oracle), with the metadata clients need."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from gradwire.v1 import datasets_pb2, network_pb2
from gradwire_server import errors, export, spec, train

IMAGE, VECTOR, SEQUENCE = (2, 6, 6), (5,), (3, 10)
HEAD = "layers { flatten {} } layers { dense { units: 3 } }"
VIT_HEAD = "layers { token_pooling { mode: TOKEN_POOLING_MODE_MEAN } } layers { dense { units: 3 } }"
PATCHES = "layers { patch_embedding { patch_size: 2 embedding_dim: 8 } }"

# One case per kind of the Layer oneof (a new kind fails test_every_layer_kind_has_a_case until added).
CASES = {
    "dense": (VECTOR, "layers { dense { units: 3 use_bias: false } }"),
    "conv2d": (IMAGE, "layers { conv2d { filters: 3 kernel_size: 2 padding_mode: PADDING_MODE_SAME } }"
                      "layers { conv2d { filters: 2 kernel_size: 3 stride: 2 padding_size: 1 } }" + HEAD),
    "max_pool2d": (IMAGE, "layers { max_pool2d { kernel_size: 3 stride: 2 } }" + HEAD),
    "avg_pool2d": (IMAGE, "layers { avg_pool2d { kernel_size: 2 } }" + HEAD),
    "flatten": (IMAGE, HEAD),
    "dropout": (VECTOR, "layers { dropout { rate: 0.5 } } layers { dense { units: 3 } }"),
    "batch_norm": (IMAGE, "layers { batch_norm { momentum: 0.5 } } layers { flatten {} } layers { dense { units: 8 } }"
                          "layers { batch_norm { epsilon: 0.001 } } layers { dense { units: 3 } }"),
    "relu": (VECTOR, "layers { dense { units: 8 } } layers { relu {} } layers { dense { units: 3 } }"),
    "leaky_relu": (VECTOR, "layers { dense { units: 8 } } layers { leaky_relu { negative_slope: 0.2 } }"
                           "layers { dense { units: 3 } }"),
    "sigmoid": (VECTOR, "layers { dense { units: 8 } } layers { sigmoid {} } layers { dense { units: 3 } }"),
    "tanh": (VECTOR, "layers { dense { units: 8 } } layers { tanh {} } layers { dense { units: 3 } }"),
    "elu": (VECTOR, "layers { dense { units: 8 } } layers { elu { alpha: 0.7 } } layers { dense { units: 3 } }"),
    "softmax": (VECTOR, "layers { dense { units: 3 } } layers { softmax {} }"),
    "maxout": (VECTOR, "layers { maxout { units: 4 pieces: 3 } } layers { dense { units: 3 } }"),
    "gelu": (VECTOR, "layers { dense { units: 8 activation { gelu {} } } } layers { gelu {} } layers { dense { units: 3 } }"),
    "silu": (IMAGE, "layers { conv2d { filters: 2 kernel_size: 3 activation { silu {} } } } layers { silu {} }" + HEAD),
    "layer_norm": (IMAGE, "layers { layer_norm {} } layers { flatten {} } layers { dense { units: 6 } }"
                          "layers { layer_norm { epsilon: 0.001 } } layers { dense { units: 3 } }"),
    "instance_norm": (IMAGE, "layers { conv2d { filters: 4 kernel_size: 3 } } layers { instance_norm {} }" + HEAD),
    "group_norm": (IMAGE, "layers { conv2d { filters: 4 kernel_size: 3 } } layers { group_norm { groups: 2 } }"
                          "layers { flatten {} } layers { dense { units: 6 } } layers { group_norm { groups: 3 } }"
                          "layers { dense { units: 3 } }"),
    "conv1d": (SEQUENCE, "layers { conv1d { filters: 4 kernel_size: 3 dilation: 2 padding_mode: PADDING_MODE_SAME "
                         "activation { relu {} } } } layers { instance_norm { affine: false } }"
                         "layers { conv1d { filters: 2 kernel_size: 2 stride: 2 padding_size: 1 } }" + HEAD),
    "max_pool1d": (SEQUENCE, "layers { max_pool1d { kernel_size: 3 stride: 2 } }" + HEAD),
    "avg_pool1d": (SEQUENCE, "layers { avg_pool1d { kernel_size: 2 } } layers { batch_norm {} }" + HEAD),
    "global_avg_pool": (IMAGE, "layers { conv2d { filters: 4 kernel_size: 3 } } layers { global_avg_pool {} }"
                               "layers { dense { units: 3 } }"),
    "spatial_dropout": (IMAGE, "layers { conv2d { filters: 4 kernel_size: 3 } } layers { spatial_dropout { rate: 0.3 } }"
                               + HEAD),
    "residual_block": (IMAGE, "layers { residual_block { layers { conv2d { filters: 2 kernel_size: 3 "
                              "padding_mode: PADDING_MODE_SAME activation { relu {} } } } layers { batch_norm {} } "
                              "activation { relu {} } } }"
                              "layers { residual_block { layers { conv2d { filters: 4 kernel_size: 3 stride: 2 padding_size: 1 } } } }"
                              "layers { flatten {} } layers { residual_block { layers { dense { units: 5 } } layers { tanh {} } } }"
                              "layers { dense { units: 3 } }"),
    "patch_embedding": (IMAGE, PATCHES + VIT_HEAD),
    "class_token": (IMAGE, PATCHES + "layers { class_token {} } layers { token_pooling { mode: TOKEN_POOLING_MODE_CLASS_TOKEN } }"
                                     "layers { dense { units: 3 } }"),
    "position_embedding": (IMAGE, PATCHES + "layers { position_embedding {} }" + VIT_HEAD),
    "transformer_encoder": (IMAGE, PATCHES + "layers { class_token {} } layers { position_embedding {} }"
                                   "layers { transformer_encoder { depth: 2 heads: 2 mlp_ratio: 2 dropout: 0.1 } }"
                                   "layers { token_pooling { mode: TOKEN_POOLING_MODE_CLASS_TOKEN } } layers { dense { units: 3 } }"),
    "token_pooling": (IMAGE, PATCHES + "layers { transformer_encoder { depth: 1 heads: 4 } }" + VIT_HEAD),
}
LAYER_KINDS = [f.name for f in network_pb2.Layer.DESCRIPTOR.oneofs_by_name["kind"].fields]

TRAINING = """loss { cross_entropy {} } optimizer { adam { learning_rate: 0.01 } }
    batching { mini_batch { batch_size: 8 } } epochs: 2 validation_split: 0.25 """


def trained(shape, network: str, training: str = TRAINING, *, regression_targets: int = 0) -> train.TrainResult:
    """Trains briefly on 40 random examples (10 held out for the parity check)."""
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(40, *shape)).astype(np.float32)
    if regression_targets:
        data = train.TrainingData(x, rng.normal(size=(40, regression_targets)).astype(np.float32),
                                  datasets_pb2.LABEL_KIND_REGRESSION, regression_targets)
    else:
        data = train.TrainingData(x, np.arange(40) % 3, datasets_pb2.LABEL_KIND_CLASSES, 3)
    spec_net = text_format.Parse(network, network_pb2.NetworkSpec())
    config = text_format.Parse(training, network_pb2.TrainingConfig())
    spec.validate_job(spec_net, config, feature_shape=shape, label_kind=data.label_kind,
                      output_size=data.output_size, example_count=40)
    return train.train(spec_net, config, data, seed=0, device=torch.device("cpu"), on_epoch=lambda r: None)


def reference(result: train.TrainResult, features: np.ndarray, classifier: bool = True) -> np.ndarray:
    """What PyTorch says, written out: normalize, run the network, softmax."""
    x = torch.from_numpy(result.normalization.apply(features))
    with torch.no_grad():
        out = result.model(x)
        explicit_softmax = isinstance(result.model[-1], torch.nn.Softmax)
        return (torch.softmax(out, -1) if classifier and not explicit_softmax else out).numpy()


real_export_lean = export._export_lean


def test_every_layer_kind_has_a_case():
    assert sorted(CASES) == sorted(LAYER_KINDS)


@pytest.mark.parametrize("lean", [False, True], ids=["folded", "weights-as-inputs"])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_layer_kind_exports_and_matches_pytorch(kind, lean, tmp_path, monkeypatch, caplog):
    # Both ways of exporting, whichever a network's size picks: the exporter's folding (small
    # networks) and the weights traced as inputs, then appended as initializers (large ones).
    monkeypatch.setattr(export, "LEAN_EXPORT_BYTES", 0 if lean else 1 << 40)
    took = []
    monkeypatch.setattr(export, "_export_lean", lambda *a: took.append(1) or real_export_lean(*a))
    shape, network = CASES[kind]
    result = trained(shape, network)
    path = tmp_path / "model.onnx"
    exported = export.export_onnx(result, input_shape=shape, label_kind=datasets_pb2.LABEL_KIND_CLASSES,
                                  class_names=["a", "b", "c"], path=path)
    assert took == ([1] if lean else []) and "failed" not in caplog.text
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["features"]
    if lean:  # every weight the graph reads is in it, once
        names = [t.name for t in model.graph.initializer]
        wrapper = export.ExportedModel(result.model, result.normalization, classifier=True)
        assert len(names) == len(set(names)) and set(names) <= set(wrapper.state_dict())
    assert exported.parity_max_abs_diff <= 1e-4
    assert exported.size_bytes == path.stat().st_size

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features = np.random.default_rng(1).normal(2.0, 3.0, size=(7, *shape)).astype(np.float32)
    for batch in (features[:1], features):
        (probabilities,) = session.run(["probabilities"], {"features": batch})
        np.testing.assert_allclose(probabilities, reference(result, batch), atol=1e-4, rtol=0)
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("normalization", ["INPUT_NORMALIZATION_MIN_MAX", "INPUT_NORMALIZATION_STANDARDIZE"])
def test_normalization_is_baked_in(normalization, tmp_path):
    shape, network = CASES["relu"]
    result = trained(shape, network, TRAINING + f"input_normalization: {normalization}")
    path = tmp_path / "model.onnx"
    export.export_onnx(result, input_shape=shape, label_kind=datasets_pb2.LABEL_KIND_CLASSES,
                       class_names=[], path=path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = np.random.default_rng(1).normal(2.0, 3.0, size=(7, *shape)).astype(np.float32)
    (probabilities,) = session.run(None, {"features": raw})  # raw features in: the graph normalizes
    np.testing.assert_allclose(probabilities, reference(result, raw), atol=1e-4, rtol=0)

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    norm = json.loads(props["normalization"])
    assert norm["kind"] == normalization
    np.testing.assert_allclose(norm["offset"], result.normalization.offset.ravel(), rtol=1e-6)
    np.testing.assert_allclose(norm["scale"], result.normalization.scale.ravel(), rtol=1e-6)


def test_regression_exports_values(tmp_path):
    result = trained(VECTOR, "layers { dense { units: 4 } } layers { elu {} } layers { dense { units: 2 } }",
                     TRAINING.replace("cross_entropy", "mse"), regression_targets=2)
    path = tmp_path / "model.onnx"
    export.export_onnx(result, input_shape=VECTOR, label_kind=datasets_pb2.LABEL_KIND_REGRESSION,
                       class_names=[], path=path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["values"]
    x = np.ones((3, *VECTOR), np.float32)
    (values,) = session.run(None, {"features": x})
    np.testing.assert_allclose(values, reference(result, x, classifier=False), atol=1e-4, rtol=0)


def test_metadata_and_signature_for_plain_onnxruntime(tmp_path):
    shape, network = CASES["conv2d"]
    result = trained(shape, network)
    path = tmp_path / "models" / "m1.onnx"
    exported = export.export_onnx(result, input_shape=shape, label_kind=datasets_pb2.LABEL_KIND_CLASSES,
                                  class_names=["cat", "dog", "bird"], path=path,
                                  metadata={"model": "models/m1", "dataset_sha256": "abc"})
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == ["cat", "dog", "bird"]
    assert json.loads(props["input_shape"]) == list(shape)
    assert json.loads(props["normalization"]) == {"kind": "INPUT_NORMALIZATION_NONE"}
    assert props["label_kind"] == "LABEL_KIND_CLASSES" and props["producer"] == "gradwire"
    assert props["model"] == "models/m1" and props["dataset_sha256"] == "abc"
    assert exported.opset_version == export.OPSET_VERSION
    assert exported.opset_version in {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    import hashlib
    assert exported.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    # What any onnxruntime client sees: a dynamic batch axis in, probabilities out.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "features" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == list(shape)
    assert out.name == "probabilities" and out.shape[1:] == [3]
    assert list(path.parent.iterdir()) == [path]  # no temp files left


def test_parity_failure_raises_and_leaves_no_file(tmp_path, monkeypatch):
    shape, network = CASES["tanh"]
    result = trained(shape, network)
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # nothing can pass
    path = tmp_path / "model.onnx"
    with pytest.raises(errors.Internal, match="does not match PyTorch"):
        export.export_onnx(result, input_shape=shape, label_kind=datasets_pb2.LABEL_KIND_CLASSES,
                           class_names=[], path=path)
    assert list(tmp_path.iterdir()) == []


def test_dynamo_exporter_fallback(tmp_path, monkeypatch, caplog):
    # The TorchScript exporter is deprecated upstream; when it fails, the dynamo exporter must do.
    real_export = torch.onnx.export

    def legacy_gone(*args, dynamo: bool = True, **kwargs):
        if not dynamo:
            raise RuntimeError("legacy exporter unavailable")
        return real_export(*args, dynamo=True, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", legacy_gone)
    shape, network = CASES["batch_norm"]
    result = trained(shape, network, TRAINING + "input_normalization: INPUT_NORMALIZATION_STANDARDIZE")
    path = tmp_path / "model.onnx"
    exported = export.export_onnx(result, input_shape=shape, label_kind=datasets_pb2.LABEL_KIND_CLASSES,
                                  class_names=[], path=path)
    assert "using the dynamo exporter" in caplog.text
    assert exported.parity_max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    x = np.random.default_rng(1).normal(size=(7, *shape)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"features": x})[0], reference(result, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shapes", [[(4, 3), (3,), ()], [(0, 2), (70, 300)]])
def test_serialize_appends_weights_as_protobuf_would(shapes):
    # _serialize writes the initializers' bytes itself; onnx must read exactly the model it would
    # have built with them as TensorProtos (float32 and int64, a scalar, an empty tensor, a tensor
    # whose length needs a 3-byte varint).
    rng = np.random.default_rng(0)
    weights = {f"w{i}": (rng.normal(size=s).astype(np.float32) if i % 2 == 0 else rng.integers(-9, 9, size=s))
               for i, s in enumerate(shapes)}
    x = onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["features"], ["out"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["batch", 3])])
    model = onnx.helper.make_model(graph, producer_name="gradwire")
    model.metadata_props.add(key="k", value="v")
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    expected.graph.initializer.extend(onnx.numpy_helper.from_array(a, name) for name, a in weights.items())
    got = onnx.load_from_string(export._serialize(model, weights))
    assert got == expected
    for name, a in weights.items():
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(next(t for t in got.graph.initializer if t.name == name)), a)
    assert export._serialize(model, {}) == model.SerializeToString()


def test_any_network_the_validator_accepts_trains_exports_and_matches_pytorch(tmp_path):
    """The whole job's promise: a generated network of any layer kinds and hyper-parameters
    (test_spec's generator), with a flatten and a 3-class head added, that validate_job accepts
    also trains, exports to ONNX and passes the parity check, so no job is accepted that then
    fails at its end. 250 generated networks; most are refused, and at least 60 go all the way."""
    from hypothesis import HealthCheck, given, settings
    from test_spec import _networks

    seen: collections.Counter = collections.Counter()
    head = text_format.Parse("layers { flatten {} } layers { dense { units: 3 } }", network_pb2.NetworkSpec()).layers

    @settings(max_examples=250, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(_networks())
    def check(case):
        shape, layers = case
        network = network_pb2.NetworkSpec(layers=[*layers, *head])
        text = text_format.MessageToString(network, as_one_line=True)
        try:
            result = trained(shape, text)
        except errors.InvalidArgument:
            seen["refused"] += 1
            return
        exported = export.export_onnx(result, input_shape=shape, label_kind=datasets_pb2.LABEL_KIND_CLASSES,
                                      class_names=["a", "b", "c"], path=tmp_path / f"m{seen['exported']}.onnx")
        assert exported.parity_max_abs_diff <= export.PARITY_TOLERANCE, text
        seen["exported"] += 1
        seen.update(layer.WhichOneof("kind") for layer in layers)

    check()
    print(f"train + export fuzz: {dict(seen)}")
    assert seen["exported"] >= 60, seen
