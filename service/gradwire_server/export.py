"""Exports a trained network to ONNX and checks the file against PyTorch.

The graph is  features -> (features - offset) / scale -> network -> softmax
(classifiers; a sigmoid per label for multi-label models), so clients send
raw features and get probabilities. A binary
cross-entropy network has one logit: its graph ends in a sigmoid and emits
[1 - p, p], so predictions and class names work as for any classifier. Input
``features`` [batch, *input_shape]; output ``probabilities`` [batch, classes]
or ``values`` [batch, targets]; the batch axis is dynamic.

Exporter choice, by measurement (torch 2.13 CPU, onnxruntime 1.32, 2 cores,
the digits CNN: conv16-bn-relu-pool-conv32-relu-pool-flatten-dropout-dense10):

    exporter                    export time (warm / first)   ORT batch 1      ORT batch 1024
    dynamo=False (TorchScript)  ~0.11 s / 0.29 s             ~40-50k ex/s     ~335-365k ex/s
    dynamo=True  (torch.export) ~1.05 s / 5.0 s              ~30-55k ex/s     ~360-380k ex/s

Both produce the same 9-node graph (batch norm folded into the conv) and the
same outputs; inference speed is equal within noise. The TorchScript exporter
exports ~10x faster and needs no torch.export tracing, so it is the default;
it is deprecated upstream, so when it fails (or is gone in a future torch) we
fall back to dynamo=True. Either way the parity check below decides whether
the file is accepted.

A network with 16 MB of weights or more is exported with its weights as graph inputs, which
become initializers again in the file (`_export_lean`, `_serialize`): the exporter's passes
copied the weights several times (for an 18.9M-parameter MLP, 76 MB: 0.6-0.9 s of export,
10 ms this way). Its file keeps a batch norm beside its convolution, for onnxruntime to fold
when it loads the file. The file is written while the checker and the parity check run,
side by side, and PyTorch's side of the parity check runs while onnxruntime loads the model.
Measured for that MLP, export to file on disk: 1.6 s before, 0.43-0.59 s with the file written
beside the checks, 0.35-0.37 s with the checks side by side too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pathlib
import warnings
from concurrent import futures
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from gradwire._tensors import delimited
from gradwire.v1 import datasets_pb2, network_pb2

from . import errors, files, nets, spec
from .train import Normalization, TrainResult

log = logging.getLogger(__name__)

OPSET_VERSION = 17  # onnxruntime >= 1.14 and every current Triton ORT backend run it
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "features"
# Networks whose weights (parameters and buffers) take this much or more are exported with them as
# graph inputs (`_export_lean`); smaller ones keep the exporter's constant folding, which gives
# a tidier graph (a batch norm folded into its convolution) at little cost.
LEAN_EXPORT_BYTES = 16 << 20
MAX_PROTO_BYTES = spec.MAX_ONNX_WEIGHT_BYTES  # protobuf's 2 GB limit on one message, less room for the graph


@dataclass(frozen=True)
class ExportResult:
    parity_max_abs_diff: float
    opset_version: int
    sha256: str
    size_bytes: int


class ExportedModel(nn.Module):
    """What the ONNX graph computes: normalization, network, softmax."""

    def __init__(self, network: nn.Sequential, normalization: Normalization, classifier: bool,
                 binary: bool = False, multi_label: bool = False) -> None:
        super().__init__()
        self.binary, self.multi_label = binary, multi_label
        # The graph applies its own softmax for classifiers; an explicit final one is dropped, not doubled.
        self.network = nets.logits_network(network) if classifier else network
        self.classifier = classifier
        self.normalize = normalization.kind != network_pb2.INPUT_NORMALIZATION_NONE
        self.register_buffer("offset", torch.from_numpy(np.asarray(normalization.offset, np.float32)))
        self.register_buffer("scale", torch.from_numpy(np.asarray(normalization.scale, np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.offset) / self.scale if self.normalize else features  # (batch, *input_shape)
        y = self.network(x)  # (batch, outputs)
        if self.multi_label:  # one independent probability per label
            return torch.sigmoid(y)
        if self.binary:  # one logit: sigmoid, then (batch, 2) probabilities of class 0 and class 1
            p = torch.sigmoid(y)
            return torch.cat([1 - p, p], dim=-1)
        return torch.softmax(y, dim=-1) if self.classifier else y


def output_name(label_kind: int) -> str:
    return "values" if label_kind == datasets_pb2.LABEL_KIND_REGRESSION else "probabilities"


def export_onnx(
    result: TrainResult,
    *,
    input_shape: tuple[int, ...],
    label_kind: int,
    class_names: list[str],
    path: pathlib.Path,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Writes ``result.model`` as ONNX to ``path`` (atomically) after checking
    that onnxruntime agrees with PyTorch on the holdout examples (raises
    errors.Internal when the max abs difference exceeds 1e-4)."""
    classifier = label_kind != datasets_pb2.LABEL_KIND_REGRESSION
    wrapper = ExportedModel(result.model, result.normalization, classifier, result.binary,
                            result.multi_label).to("cpu").eval()
    output = output_name(label_kind)
    holdout = np.ascontiguousarray(result.holdout_features, dtype=np.float32)
    if holdout.ndim < 1 or len(holdout) == 0 or tuple(holdout.shape[1:]) != tuple(input_shape):
        raise errors.Internal(f"holdout features of shape {holdout.shape} do not fit input shape {tuple(input_shape)}")

    model, weights = _export(wrapper, holdout, output)
    _add_metadata(model, result.normalization, input_shape=input_shape, label_kind=label_kind,
                  class_names=class_names, extra=metadata or {})
    data = _serialize(model, weights)
    del model, weights

    # The file is written, fsynced and hashed on one thread (76 MB: 0.3 s) and checked on another
    # while the parity check runs; it replaces `path` only once both checks passed, and is removed
    # when either fails. (The checker and onnxruntime's session creation each parse the bytes on
    # one core; side by side they took 230-250 ms for that MLP, one after the other 270-320 ms.)
    with files.atomic_writer(path) as f, futures.ThreadPoolExecutor(3, thread_name_prefix="onnx-export") as pool:
        written = pool.submit(_write, f, data)
        checked = pool.submit(onnx.checker.check_model, data, full_check=True)  # the bytes, not a ModelProto
        try:
            diff = _parity(wrapper, data, holdout, output, pool)
        finally:
            checked.result()  # a file the checker refuses fails with the checker's message
        if not diff <= PARITY_TOLERANCE:  # also catches NaN
            raise errors.Internal(
                f"ONNX export does not match PyTorch: max abs difference {diff:.3g} > {PARITY_TOLERANCE:g}")
        sha256 = written.result()
    return ExportResult(parity_max_abs_diff=diff, opset_version=OPSET_VERSION, sha256=sha256, size_bytes=len(data))


def _write(f, data: bytes) -> str:
    """Writes and fsyncs ``data`` (atomic_writer's own fsync then finds nothing left to do); its sha256."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _export(wrapper: ExportedModel, holdout: np.ndarray, output: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The graph, and the weights to add to it as initializers (none when the graph holds them)."""
    example = torch.from_numpy(holdout[:2])
    with warnings.catch_warnings():
        # The exporters announce deprecations and tracer details on every call; the parity check is what we trust.
        warnings.simplefilter("ignore")
        weights = {name: t.detach() for name, t in wrapper.state_dict().items()}
        if LEAN_EXPORT_BYTES <= sum(t.nbytes for t in weights.values()) < MAX_PROTO_BYTES:
            try:
                return _export_lean(wrapper, example, output, weights)
            except Exception as exc:  # a layer the tracer cannot take with its weights as inputs
                log.warning("export with the weights as graph inputs failed (%s); exporting with them folded in", exc)
        try:
            buffer = io.BytesIO()  # in memory: no temporary file written and read back
            torch.onnx.export(
                wrapper, (example,), buffer, dynamo=False, opset_version=OPSET_VERSION,
                input_names=[INPUT_NAME], output_names=[output],
                dynamic_axes={INPUT_NAME: {0: "batch"}, output: {0: "batch"}},
            )
            return onnx.load_from_string(buffer.getvalue()), {}
        except Exception as exc:  # the legacy exporter is deprecated upstream
            log.warning("TorchScript ONNX export failed (%s); using the dynamo exporter", exc)
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, opset_version=OPSET_VERSION,
                input_names=[INPUT_NAME], output_names=[output],
                dynamic_shapes={"features": {0: torch.export.Dim("batch")}},
            )
            return program.model_proto, {}


class _WeightsAsInputs(nn.Module):
    """Runs ``inner`` with the tensors passed after the features in place of its weights, so that
    the exporter traces them as graph inputs: its passes (shape inference, constant folding) then
    never copy the weights. ``inner`` is held outside the module tree: it adds no parameters."""

    def __init__(self, inner: nn.Module, names: list[str]) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)
        self.names = names

    def forward(self, features: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        swapped = []
        try:
            for name, tensor in zip(self.names, weights, strict=True):
                owner, _, attr = name.rpartition(".")
                module = self.inner.get_submodule(owner)
                table = module._parameters if attr in module._parameters else module._buffers
                swapped.append((table, attr, table[attr]))
                table[attr] = tensor
            return self.inner(features)
        finally:
            for table, attr, original in swapped:
                table[attr] = original


def _export_lean(wrapper: ExportedModel, example: torch.Tensor, output: str,
                 weights: dict[str, torch.Tensor]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The graph with the weights as inputs, which become initializers again when serialized.

    For an 18.9M-parameter MLP (76 MB) this takes 10 ms where the plain export takes 0.6-0.9 s,
    nearly all of it copies of the weights in the exporter's shape inference and constant
    folding, and in its serialization. What the folding would have done (a batch norm folded
    into its convolution) onnxruntime does when it loads the file."""
    names = list(weights)
    buffer = io.BytesIO()
    torch.onnx.export(
        _WeightsAsInputs(wrapper, names), (example, *weights.values()), buffer, dynamo=False,
        opset_version=OPSET_VERSION, input_names=[INPUT_NAME, *names], output_names=[output],
        dynamic_axes={INPUT_NAME: {0: "batch"}, output: {0: "batch"}},
    )
    model = onnx.load_from_string(buffer.getvalue())
    inputs = list(model.graph.input)
    if [i.name for i in inputs if i.name not in weights] != [INPUT_NAME]:
        raise ValueError(f"unexpected graph inputs {[i.name for i in inputs]}")
    del model.graph.input[:]
    model.graph.input.extend(i for i in inputs if i.name == INPUT_NAME)
    used = {i.name for i in inputs}  # the exporter drops inputs nothing reads
    return model, {name: t.cpu().contiguous().numpy() for name, t in weights.items() if name in used}


_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _serialize(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> bytes:
    """The model's bytes, with ``weights`` appended to its graph as initializers (raw, little-endian
    data): each weight is copied once, into the result, instead of into a TensorProto, the
    graph and the serialization in turn (for 76 MB, 20-30 ms instead of about 250 ms)."""
    if not weights:
        return model.SerializeToString()
    graph: list[bytes | memoryview] = [model.graph.SerializeToString()]
    for name, array in weights.items():
        head = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                                dims=array.shape).SerializeToString()
        raw = memoryview(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8))
        graph += delimited(_INITIALIZER, [head, *delimited(_RAW_DATA, [raw])])
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    rest.ClearField("graph")
    return b"".join([rest.SerializeToString(), *delimited(_GRAPH, graph)])


def _add_metadata(model: onnx.ModelProto, normalization: Normalization, *, input_shape, label_kind: int,
                  class_names: list[str], extra: dict[str, str]) -> None:
    norm = {"kind": network_pb2.InputNormalization.Name(normalization.kind)}
    if normalization.kind != network_pb2.INPUT_NORMALIZATION_NONE:
        norm |= {"offset": np.asarray(normalization.offset).ravel().tolist(),
                 "scale": np.asarray(normalization.scale).ravel().tolist()}
    props = {
        "class_names": json.dumps(list(class_names)),
        "input_shape": json.dumps([int(d) for d in input_shape]),
        "normalization": json.dumps(norm),
        "label_kind": datasets_pb2.LabelKind.Name(label_kind),
        "producer": "gradwire",
        **extra,
    }
    model.producer_name = "gradwire"
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=str(value))


def _parity(wrapper: ExportedModel, data: bytes, holdout: np.ndarray, output: str, pool: futures.Executor) -> float:
    """Max abs difference between onnxruntime and PyTorch on one example and on the whole holdout
    (PyTorch's outputs are computed on ``pool`` while onnxruntime loads the model)."""
    batches = (holdout[:1], holdout)

    def expected() -> list[np.ndarray]:
        with torch.no_grad():
            return [wrapper(torch.from_numpy(batch)).numpy() for batch in batches]

    torch_outputs = pool.submit(expected)
    options = ort.SessionOptions()
    # Repacking the weights for fast repeated calls costs more than it saves on two calls.
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    diffs = []
    for batch, want in zip(batches, torch_outputs.result(), strict=True):
        (got,) = session.run([output], {INPUT_NAME: batch})
        if got.shape != want.shape:
            raise errors.Internal(f"ONNX output shape {got.shape} != PyTorch's {want.shape}")
        diffs.append(np.max(np.abs(got.astype(np.float64) - want)))
    return float(np.max(diffs))  # NaN propagates, and fails the check
