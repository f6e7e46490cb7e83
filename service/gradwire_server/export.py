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
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pathlib
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from gradwire.v1 import datasets_pb2, network_pb2

from . import errors, files, nets
from .train import Normalization, TrainResult

log = logging.getLogger(__name__)

OPSET_VERSION = 17  # onnxruntime >= 1.14 and every current Triton ORT backend run it
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "features"


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

    model = _export(wrapper, holdout, output)
    _add_metadata(model, result.normalization, input_shape=input_shape, label_kind=label_kind,
                  class_names=class_names, extra=metadata or {})
    data = model.SerializeToString()
    onnx.checker.check_model(data, full_check=True)  # the bytes: a ModelProto would be serialized again

    diff = _parity(wrapper, data, holdout, output)
    if not diff <= PARITY_TOLERANCE:  # also catches NaN
        raise errors.Internal(
            f"ONNX export does not match PyTorch: max abs difference {diff:.3g} > {PARITY_TOLERANCE:g}")

    with files.atomic_writer(path) as f:
        f.write(data)
    return ExportResult(parity_max_abs_diff=diff, opset_version=OPSET_VERSION,
                        sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def _export(wrapper: ExportedModel, holdout: np.ndarray, output: str) -> onnx.ModelProto:
    example = torch.from_numpy(holdout[:2])
    with warnings.catch_warnings():
        # The exporters announce deprecations and tracer details on every call; the parity check is what we trust.
        warnings.simplefilter("ignore")
        try:
            buffer = io.BytesIO()  # in memory: no temporary file written and read back
            torch.onnx.export(
                wrapper, (example,), buffer, dynamo=False, opset_version=OPSET_VERSION,
                input_names=[INPUT_NAME], output_names=[output],
                dynamic_axes={INPUT_NAME: {0: "batch"}, output: {0: "batch"}},
            )
            return onnx.load_from_string(buffer.getvalue())
        except Exception as exc:  # the legacy exporter is deprecated upstream
            log.warning("TorchScript ONNX export failed (%s); using the dynamo exporter", exc)
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, opset_version=OPSET_VERSION,
                input_names=[INPUT_NAME], output_names=[output],
                dynamic_shapes={"features": {0: torch.export.Dim("batch")}},
            )
            return program.model_proto


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


def _parity(wrapper: ExportedModel, data: bytes, holdout: np.ndarray, output: str) -> float:
    """Max abs difference between onnxruntime and PyTorch on one example and on the whole holdout."""
    options = ort.SessionOptions()
    # Repacking the weights for fast repeated calls costs more than it saves on two calls.
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    diffs = []
    for batch in (holdout[:1], holdout):
        with torch.no_grad():
            expected = wrapper(torch.from_numpy(batch)).numpy()
        (got,) = session.run([output], {INPUT_NAME: batch})
        if got.shape != expected.shape:
            raise errors.Internal(f"ONNX output shape {got.shape} != PyTorch's {expected.shape}")
        diffs.append(np.max(np.abs(got.astype(np.float64) - expected)))
    return float(np.max(diffs))  # NaN propagates, and fails the check
