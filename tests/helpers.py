"""Small builders shared by the API tests (raw protobuf, no SDK)."""

from __future__ import annotations

import os
import pathlib
import threading
import uuid

import numpy as np
from sklearn.datasets import load_iris

from gradwire.kserve import grpc_service_pb2 as kserve_pb
from gradwire.v1 import datasets_pb2, network_pb2, tensor_pb2, training_pb2

State = training_pb2.TrainingJob.State


def on_threads(fn, n: int) -> None:
    """Runs fn(0) .. fn(n - 1), each on a thread of its own; fails with what any of them raised."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            fn(k)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def iris(n: int | None = None):
    X, y = load_iris(return_X_y=True)
    if n is not None:
        idx = np.random.default_rng(0).permutation(len(y))[:n]
        X, y = X[idx], y[idx]
    return X.astype(np.float32), y.astype(np.int64)


def values_tensor(a: np.ndarray) -> tensor_pb2.Tensor:
    """As grpcurl users send it: shape plus plain numbers."""
    if a.dtype.kind == "f":
        return tensor_pb2.Tensor(shape=a.shape, float_values=a.ravel().tolist())
    return tensor_pb2.Tensor(shape=a.shape, int_values=a.ravel().tolist())


def raw_tensor(a: np.ndarray, dtype=tensor_pb2.DATA_TYPE_FLOAT32) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(shape=a.shape, dtype=dtype, raw_data=np.ascontiguousarray(a).tobytes())


def inline(X: np.ndarray, y: np.ndarray, names=("setosa", "versicolor", "virginica")) -> datasets_pb2.InlineDataset:
    return datasets_pb2.InlineDataset(
        features=values_tensor(X), labels=values_tensor(y), label_kind=datasets_pb2.LABEL_KIND_CLASSES, class_names=list(names)
    )


def mlp(*widths: int) -> network_pb2.NetworkSpec:
    layers = []
    for i, w in enumerate(widths):
        layers.append(network_pb2.Layer(dense=network_pb2.Dense(units=w)))
        if i < len(widths) - 1:
            layers.append(network_pb2.Layer(relu=network_pb2.ReLU()))
    return network_pb2.NetworkSpec(layers=layers)


def config(epochs: int = 3, batch_size: int = 16, lr: float = 0.01, **kw) -> network_pb2.TrainingConfig:
    return network_pb2.TrainingConfig(
        loss=network_pb2.Loss(cross_entropy=network_pb2.CrossEntropyLoss()),
        optimizer=network_pb2.Optimizer(adam=network_pb2.Adam(learning_rate=lr)),
        batching=network_pb2.Batching(mini_batch=network_pb2.MiniBatch(batch_size=batch_size)),
        epochs=epochs,
        seed=0,
        **kw,
    )


def upload_requests(X: np.ndarray, y: np.ndarray, *, chunk: int = 1 << 20, label_kind=datasets_pb2.LABEL_KIND_CLASSES, names=()):
    header = datasets_pb2.DatasetUploadHeader(
        display_name="test",
        features_shape=X.shape,
        features_dtype=tensor_pb2.DATA_TYPE_FLOAT32,
        labels_shape=y.shape,
        labels_dtype=tensor_pb2.DATA_TYPE_INT64 if y.dtype.kind == "i" else tensor_pb2.DATA_TYPE_FLOAT32,
        label_kind=label_kind,
        class_names=list(names),
    )
    yield datasets_pb2.UploadDatasetRequest(header=header)
    fb, lb = memoryview(np.ascontiguousarray(X)).cast("B"), memoryview(np.ascontiguousarray(y)).cast("B")
    for i in range(0, len(fb), chunk):
        yield datasets_pb2.UploadDatasetRequest(features_chunk=bytes(fb[i : i + chunk]))
    for i in range(0, len(lb), chunk):
        yield datasets_pb2.UploadDatasetRequest(labels_chunk=bytes(lb[i : i + chunk]))


class ShmObject:
    """A POSIX shared memory object of the test's own (what shm_open creates: a file in /dev/shm)."""

    def __init__(self, size: int) -> None:
        self.key = f"/gradwire-test-{uuid.uuid4().hex[:12]}"
        self.path = pathlib.Path("/dev/shm") / self.key[1:]
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, size)
        os.close(fd)

    def write(self, data: bytes, at: int) -> None:
        fd = os.open(self.path, os.O_RDWR)
        os.pwrite(fd, data, at)
        os.close(fd)

    def read(self, size: int, at: int) -> bytes:
        fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(fd, size, at)
        os.close(fd)
        return data

    def truncate(self, size: int) -> None:
        os.truncate(self.path, size)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def shm_params(region: str, byte_size: int, offset: int | None = None) -> dict:
    params = {"shared_memory_region": kserve_pb.InferParameter(string_param=region),
              "shared_memory_byte_size": kserve_pb.InferParameter(int64_param=byte_size)}
    if offset is not None:
        params["shared_memory_offset"] = kserve_pb.InferParameter(int64_param=offset)
    return params


def shm_request(rows: int, in_region: str | None = "in", out_region: str | None = "out", out_offset: int | None = None):
    """An iris request whose input is read from ``in_region`` and whose output goes to ``out_region``."""
    inp = kserve_pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, 4],
                                                parameters=shm_params(in_region, rows * 16) if in_region else None)
    outputs = [kserve_pb.ModelInferRequest.InferRequestedOutputTensor(
        name="probabilities", parameters=shm_params(out_region, rows * 12, out_offset))] if out_region else []
    return kserve_pb.ModelInferRequest(model_name="iris-kserve", inputs=[inp], outputs=outputs)


def set_scalar(draw, message, field, ints, floats) -> None:
    """For the property tests' message generators: sets a bool, enum, float or integer field of
    ``message`` to a value drawn for its type (any of the enum's values; integers from ``ints``,
    not below 0 for unsigned ones; floats from ``floats``)."""
    from hypothesis import strategies as st

    if field.type == field.TYPE_BOOL:
        value = draw(st.booleans())
    elif field.type == field.TYPE_ENUM:
        value = draw(st.sampled_from([v.number for v in field.enum_type.values]))
    elif field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        value = draw(floats)
    else:
        value = draw(ints)
        if field.type in (field.TYPE_UINT32, field.TYPE_UINT64):
            value = max(value, 0)
    setattr(message, field.name, value)
