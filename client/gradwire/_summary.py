"""A network's summary (``Client.summary``) and a model's evaluations, as plain objects that print as tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradwire.v1 import evaluation_pb2, network_pb2

__all__ = ["NetworkSummary", "LayerRow", "Evaluation", "format_count"]


def format_count(n: int) -> str:
    """1234567 -> '1.23M' (FLOPs and parameter counts in a table)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


@dataclass(frozen=True)
class LayerRow:
    path: str
    kind: str
    output_shape: tuple[int, ...]
    parameter_count: int
    flops: int
    depth: int


@dataclass(frozen=True)
class NetworkSummary:
    """Output shapes, parameters and FLOPs per example, layer by layer, like
    Keras' ``model.summary()``; ``print(summary)`` shows the table."""

    layers: tuple[LayerRow, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    parameter_count: int
    flops: int
    proto: network_pb2.NetworkSummary = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, p: network_pb2.NetworkSummary) -> NetworkSummary:
        rows = tuple(LayerRow(r.path, r.kind, tuple(r.output_shape), r.parameter_count, r.flops, r.depth)
                     for r in p.layers)
        return cls(rows, tuple(p.input_shape), tuple(p.output_shape), p.parameter_count, p.flops, p)

    def table(self) -> str:
        header = ("#", "layer", "output shape", "params", "FLOPs")
        body = [(r.path.rsplit("layers", 1)[-1].strip("[]") if r.depth == 0 else "", "  " * r.depth + r.kind,
                 str(r.output_shape), f"{r.parameter_count:,}", format_count(r.flops)) for r in self.layers]
        body.insert(0, ("", "input", str(self.input_shape), "", ""))
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(5)]
        line = "  ".join("-" * w for w in widths)

        def fmt(row):
            return "  ".join(c.rjust(w) if i in (0, 3, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

        out = [fmt(header), line, *map(fmt, body), line,
               f"Total parameters: {self.parameter_count:,}",
               f"FLOPs per example: {self.flops:,} ({format_count(self.flops)}; a multiply-add counts 2)"]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on one split ("train", "validation" or "test")."""

    split: str
    example_count: int
    loss: float
    accuracy: float | None = None
    top_k: int | None = None
    top_k_accuracy: float | None = None
    macro_f1: float | None = None
    per_class: tuple[dict, ...] = ()  # {"class_name", "precision", "recall", "f1", "support"}
    confusion_matrix: np.ndarray | None = field(default=None, compare=False)  # (classes, classes): true i, predicted j
    mse: float | None = None
    mae: float | None = None
    r2: float | None = None

    @classmethod
    def from_proto(cls, e: evaluation_pb2.Evaluation) -> Evaluation | None:
        if not e.split:
            return None
        if e.HasField("classification"):
            c = e.classification
            k = len(c.per_class)
            confusion = (np.asarray(c.confusion_matrix, dtype=np.int64).reshape(k, k)
                         if len(c.confusion_matrix) == k * k and k else None)  # multi-label: none
            per_class = tuple({"class_name": m.class_name, "precision": m.precision, "recall": m.recall, "f1": m.f1,
                               "support": m.support} for m in c.per_class)
            return cls(e.split, e.example_count, e.loss, accuracy=c.accuracy, top_k=c.top_k,
                       top_k_accuracy=c.top_k_accuracy, macro_f1=c.macro_f1, per_class=per_class,
                       confusion_matrix=confusion)
        r = e.regression
        return cls(e.split, e.example_count, e.loss, mse=r.mse, mae=r.mae, r2=r.r2)

    def __str__(self) -> str:
        if self.accuracy is None:
            return (f"{self.split} ({self.example_count} examples): loss {self.loss:.4g}, MSE {self.mse:.4g}, "
                    f"MAE {self.mae:.4g}, R² {self.r2:.4f}")
        lines = [f"{self.split} ({self.example_count} examples): loss {self.loss:.4g}, accuracy {self.accuracy:.4f}, "
                 + (f"top-{self.top_k} {self.top_k_accuracy:.4f}, " if self.top_k else "") + f"macro F1 {self.macro_f1:.4f}",
                 f"  {'class':<12} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>7}"]
        lines += [f"  {m['class_name']:<12} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>7.3f} "
                  f"{m['support']:>7}" for m in self.per_class]
        return "\n".join(lines)
