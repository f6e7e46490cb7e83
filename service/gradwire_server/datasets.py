"""Dataset storage: validate, write atomically, register, load.

A dataset is two raw little-endian files under data_dir/datasets/{id}/
(features.bin, float32, and labels.bin) plus a row in the store. Uploads stream
into a scratch directory that is published by one rename once every byte is
checked, so a crash never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import shutil
import time

import numpy as np

from gradwire.v1 import datasets_pb2, tensor_pb2

from . import errors, files
from .errors import enum_name
from .store import Store, new_id, timestamp

LabelKind = datasets_pb2.LabelKind
DataType = tensor_pb2.DataType

NUMPY_DTYPES = {
    DataType.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    DataType.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    DataType.DATA_TYPE_INT32: np.dtype("<i4"),
    DataType.DATA_TYPE_INT64: np.dtype("<i8"),
    # Predict's features only (compact, and exact in float32); uploads and labels refuse them
    DataType.DATA_TYPE_UINT8: np.dtype("u1"),
    DataType.DATA_TYPE_INT8: np.dtype("i1"),
    DataType.DATA_TYPE_UINT16: np.dtype("<u2"),
    DataType.DATA_TYPE_INT16: np.dtype("<i2"),
    DataType.DATA_TYPE_FLOAT16: np.dtype("<f2"),
}
CLASS_LABEL_DTYPES = (DataType.DATA_TYPE_INT64, DataType.DATA_TYPE_INT32)
CHECK_BLOCK_BYTES = 16 * 1024**2
MAX_CLASS_COUNT = 2**31 - 1  # Dataset.class_count is an int32
MAX_DISPLAY_NAME_CHARS = 1024  # a dataset's or job's display name (check_display_name)
MAX_CLASS_NAME_CHARS = 256
FEATURES_FILE = "features.bin"
LABELS_FILE = "labels.bin"


class DatasetWriter:
    """Receives one dataset (header, feature bytes, label bytes) and publishes it.

    `field` is the path of the request part being written, for error messages
    ("header" for uploads, "inline_dataset" for inline data).
    """

    def __init__(
        self,
        store: Store,
        data_dir: pathlib.Path,
        header: datasets_pb2.DatasetUploadHeader,
        *,
        max_bytes: int,
        field: str = "header",
        quota_bytes: int | None = None,
    ) -> None:
        self._store, self._data_dir, self._field = store, data_dir, field
        self.header = header
        self._check_header(max_bytes)
        self._check_disk()
        if quota_bytes is None:
            self._open()
        else:
            with files.quota_lock(data_dir):
                self._check_quota(quota_bytes)
                self._open()
        self._written = {FEATURES_FILE: 0, LABELS_FILE: 0}
        self._hash = hashlib.sha256()  # of the feature bytes then the label bytes, as the client can compute it
        self._done = False

    def _open(self) -> None:
        """The scratch files, at their full size from the start (sparse): the data directory's
        usage then counts the whole dataset while it uploads, which is its quota reservation."""
        self._dir = files.scratch_dir(self._data_dir)
        self._features = open(self._dir / FEATURES_FILE, "wb")
        self._labels = open(self._dir / LABELS_FILE, "wb")
        self._features.truncate(self.expected[FEATURES_FILE])
        self._labels.truncate(self.expected[LABELS_FILE])

    def _f(self, name: str) -> str:
        return f"{self._field}.{name}"

    def _check_header(self, max_bytes: int) -> None:
        h = self.header
        fshape, lshape = list(h.features_shape), list(h.labels_shape)
        if len(fshape) < 2:
            raise errors.InvalidArgument(f"must be [examples, features...] with at least 2 dimensions, got {fshape}", field=self._f("features_shape"))
        if fshape[0] == 0:
            raise errors.InvalidArgument(f"the dataset is empty: shape {fshape} has 0 examples", field=self._f("features_shape"))
        if any(d < 1 for d in fshape):
            raise errors.InvalidArgument(f"every dimension must be >= 1, got {fshape}", field=self._f("features_shape"))
        if h.features_dtype != DataType.DATA_TYPE_FLOAT32:
            raise errors.InvalidArgument(f"must be DATA_TYPE_FLOAT32, got {enum_name(DataType, h.features_dtype)}", field=self._f("features_dtype"))
        if not lshape or lshape[0] != fshape[0]:
            raise errors.InvalidArgument(
                f"features and labels have different example counts: {fshape[0]} vs {lshape[0] if lshape else 'none'} (labels_shape {lshape})",
                field=self._f("labels_shape"),
            )
        if h.label_kind == LabelKind.LABEL_KIND_UNSPECIFIED:
            raise errors.InvalidArgument("must be LABEL_KIND_CLASSES or LABEL_KIND_REGRESSION, got LABEL_KIND_UNSPECIFIED", field=self._f("label_kind"))
        if h.label_kind not in (LabelKind.LABEL_KIND_CLASSES, LabelKind.LABEL_KIND_REGRESSION,
                                LabelKind.LABEL_KIND_MULTI_LABEL):
            raise errors.InvalidArgument(f"unknown label kind {h.label_kind}", field=self._f("label_kind"))
        if h.label_kind == LabelKind.LABEL_KIND_MULTI_LABEL:
            if h.labels_dtype not in (*CLASS_LABEL_DTYPES, DataType.DATA_TYPE_FLOAT32):
                raise errors.InvalidArgument(f"multi-label labels must be DATA_TYPE_INT64, DATA_TYPE_INT32 or "
                                             f"DATA_TYPE_FLOAT32 0 / 1 values, got {enum_name(DataType, h.labels_dtype)}",
                                             field=self._f("labels_dtype"))
            if len(lshape) != 2 or lshape[1] < 1:
                raise errors.InvalidArgument(f"multi-label labels must be [examples, labels], got {lshape}",
                                             field=self._f("labels_shape"))
            if h.class_names and len(h.class_names) != lshape[1]:
                raise errors.InvalidArgument(f"{len(h.class_names)} class names for {lshape[1]} labels",
                                             field=self._f("class_names"))
        elif h.label_kind == LabelKind.LABEL_KIND_CLASSES:
            if h.labels_dtype not in CLASS_LABEL_DTYPES:
                raise errors.InvalidArgument(f"class labels must be DATA_TYPE_INT64 or DATA_TYPE_INT32, got {enum_name(DataType, h.labels_dtype)}", field=self._f("labels_dtype"))
            if len(lshape) != 1:
                raise errors.InvalidArgument(f"class labels must be [examples], got {lshape}", field=self._f("labels_shape"))
        else:
            if h.labels_dtype != DataType.DATA_TYPE_FLOAT32:
                raise errors.InvalidArgument(f"regression targets must be DATA_TYPE_FLOAT32, got {enum_name(DataType, h.labels_dtype)}", field=self._f("labels_dtype"))
            if len(lshape) not in (1, 2) or any(d < 1 for d in lshape):
                raise errors.InvalidArgument(f"regression targets must be [examples] or [examples, targets], got {lshape}", field=self._f("labels_shape"))
            if h.class_names:
                raise errors.InvalidArgument("regression datasets have no class names", field=self._f("class_names"))
        check_display_name(h.display_name, self._f("display_name"))
        names = list(h.class_names)
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not name:
                raise errors.InvalidArgument("class names must be non-empty, got ''", field=self._f(f"class_names[{i}]"))
            if len(name) > MAX_CLASS_NAME_CHARS:
                raise errors.InvalidArgument(f"class names are at most {MAX_CLASS_NAME_CHARS} characters, got {len(name)}: "
                                             f"{name[:40]!r}...", field=self._f(f"class_names[{i}]"))
            if name in seen:
                raise errors.InvalidArgument(f"class names must be unique, got {name!r} again", field=self._f(f"class_names[{i}]"))
            seen.add(name)
        self.expected = {
            FEATURES_FILE: math.prod(fshape) * NUMPY_DTYPES[h.features_dtype].itemsize,
            LABELS_FILE: math.prod(lshape) * NUMPY_DTYPES[h.labels_dtype].itemsize,
        }
        total = sum(self.expected.values())
        if total > max_bytes:
            raise errors.ResourceExhausted(f"dataset of {total} bytes exceeds the server's limit of {max_bytes} bytes (GRADWIRE_MAX_UPLOAD_BYTES)")

    def _check_disk(self) -> None:
        """Refuse, before a byte is written, a dataset larger than the data directory's file system has
        free (the scratch files are sparse: they take their space as the bytes arrive). Uploads at
        once may still fill it together; the interceptor then says so (errors.disk_full)."""
        total = sum(self.expected.values())
        free = shutil.disk_usage(self._data_dir).free
        if total > free:
            raise errors.ResourceExhausted(
                f"the dataset takes {total / 2**20:.1f} MiB ({total} bytes), and the server's disk has {free / 2**20:.1f} MiB "
                f"free where it keeps its data: {errors.FREE_DISK_ADVICE}")

    def _check_quota(self, quota_bytes: int) -> None:
        """Refuse, before a byte is written, a dataset that would push the data directory past its quota
        (uploads still in progress count with their whole size: see `_open`)."""
        total = sum(self.expected.values())
        used = files.usage_bytes(self._data_dir)
        if used + total > quota_bytes:
            raise errors.ResourceExhausted(
                f"dataset of {total} bytes would exceed the data directory quota: {used} of {quota_bytes} bytes "
                "in use (GRADWIRE_DATA_QUOTA_BYTES); delete datasets or models you no longer need"
            )

    def _write(self, part: str, chunk: bytes, field: str) -> None:
        if part == FEATURES_FILE and self._written[LABELS_FILE]:
            raise errors.InvalidArgument("feature bytes must all come before label bytes", field=field)
        if self._written[part] + len(chunk) > self.expected[part]:
            raise errors.InvalidArgument(
                f"more bytes than shape x dtype allows: expected {self.expected[part]}, got at least {self._written[part] + len(chunk)}",
                field=field,
            )
        (self._features if part == FEATURES_FILE else self._labels).write(chunk)
        self._hash.update(chunk)
        self._written[part] += len(chunk)

    def write_features(self, chunk: bytes, field: str = "features_chunk") -> None:
        self._write(FEATURES_FILE, chunk, field)

    def write_labels(self, chunk: bytes, field: str = "labels_chunk") -> None:
        self._write(LABELS_FILE, chunk, field)

    def finish(self, *, publish: bool = True) -> datasets_pb2.Dataset:
        """Check sizes and contents, publish the files, register the dataset.

        With publish=False only checks, and returns the dataset it would register (validate_only)."""
        for part, field in ((FEATURES_FILE, "features_chunk"), (LABELS_FILE, "labels_chunk")):
            if self._written[part] != self.expected[part]:
                raise errors.InvalidArgument(
                    f"shape x dtype needs {self.expected[part]} bytes, got {self._written[part]}", field=field
                )
        self._features.close()
        self._labels.close()
        h = self.header
        class_count, target_count = self._check_contents()
        dataset_id = new_id()
        dataset = datasets_pb2.Dataset(
            name=f"datasets/{dataset_id}",
            display_name=h.display_name,
            feature_shape=list(h.features_shape)[1:],
            example_count=h.features_shape[0],
            label_kind=h.label_kind,
            class_names=list(h.class_names),
            class_count=class_count,
            target_count=target_count,
            sha256=self._hash.hexdigest(),
            size_bytes=sum(self._written.values()),
            create_time=timestamp(time.time()),
        )
        if not publish:
            return dataset
        files.publish_dir(self._dir, files.inside(self._data_dir, "datasets", dataset_id))
        self._done = True
        self._store.insert_dataset(
            dataset, features_dtype=h.features_dtype, labels_dtype=h.labels_dtype, labels_shape=json.dumps(list(h.labels_shape))
        )
        return dataset

    def abort(self) -> None:
        if not self._done:
            self._features.close()
            self._labels.close()
            files.remove_tree(self._dir)

    def _check_contents(self) -> tuple[int, int]:
        h = self.header
        feats = np.memmap(self._dir / FEATURES_FILE, dtype=NUMPY_DTYPES[h.features_dtype], mode="r")
        block = CHECK_BLOCK_BYTES // feats.itemsize
        for start in range(0, feats.size, block):
            part = feats[start : start + block]
            if not np.isfinite(part).all():
                bad = start + int(np.flatnonzero(~np.isfinite(part))[0])
                row = bad // math.prod(h.features_shape[1:])
                raise errors.InvalidArgument(f"features must be finite; example {row} holds {float(feats[bad])}", field=f"{self._field}.features")
        del feats
        labels = np.fromfile(self._dir / LABELS_FILE, dtype=NUMPY_DTYPES[h.labels_dtype])
        if h.label_kind == LabelKind.LABEL_KIND_REGRESSION:
            if not np.isfinite(labels).all():
                bad = int(np.flatnonzero(~np.isfinite(labels))[0])
                raise errors.InvalidArgument(f"regression targets must be finite; element {bad} is {float(labels[bad])}", field=f"{self._field}.labels")
            return 0, (h.labels_shape[1] if len(h.labels_shape) == 2 else 1)
        if h.label_kind == LabelKind.LABEL_KIND_MULTI_LABEL:
            bad = np.flatnonzero((labels != 0) & (labels != 1))
            if bad.size:
                i = int(bad[0])
                raise errors.InvalidArgument(
                    f"multi-label labels must be 0 or 1; example {i // h.labels_shape[1]}, label "
                    f"{i % h.labels_shape[1]} is {labels[i].item()}", field=f"{self._field}.labels")
            return int(h.labels_shape[1]), 0
        if h.class_names:
            class_count = len(h.class_names)
        else:
            top = int(labels.argmax())
            if labels[top] >= MAX_CLASS_COUNT:
                raise errors.InvalidArgument(f"label of example {top} is {int(labels[top])}; class indices must be below "
                                             f"{MAX_CLASS_COUNT}", field=f"{self._field}.labels")
            class_count = int(labels[top]) + 1
        bad = np.flatnonzero((labels < 0) | (labels >= class_count))
        if bad.size:
            i = int(bad[0])
            allowed = f"{len(h.class_names)} class names" if h.class_names else "class indices must be >= 0"
            raise errors.InvalidArgument(
                f"label of example {i} is {int(labels[i])}, out of range [0, {class_count - 1}] ({allowed})", field=f"{self._field}.labels"
            )
        if class_count < 2:
            raise errors.InvalidArgument(f"classification needs at least 2 classes, got {class_count}", field=f"{self._field}.labels")
        return class_count, 0


def save_arrays(
    store: Store,
    data_dir: pathlib.Path,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    label_kind: int,
    class_names: list[str],
    display_name: str,
    max_bytes: int,
    field: str,
    quota_bytes: int | None = None,
    publish: bool = True,
) -> datasets_pb2.Dataset:
    """Store in-memory arrays (an inline dataset) through the same checks as an upload."""
    dtypes = {v: k for k, v in NUMPY_DTYPES.items()}
    header = datasets_pb2.DatasetUploadHeader(
        display_name=display_name,
        features_shape=features.shape,
        features_dtype=dtypes.get(features.dtype.newbyteorder("<"), DataType.DATA_TYPE_UNSPECIFIED),
        labels_shape=labels.shape,
        labels_dtype=dtypes.get(labels.dtype.newbyteorder("<"), DataType.DATA_TYPE_UNSPECIFIED),
        label_kind=label_kind,
        class_names=class_names,
    )
    writer = DatasetWriter(store, data_dir, header, max_bytes=max_bytes, field=field, quota_bytes=quota_bytes)
    try:
        writer.write_features(np.ascontiguousarray(features).tobytes(), field=f"{field}.features")
        writer.write_labels(np.ascontiguousarray(labels).tobytes(), field=f"{field}.labels")
        return writer.finish(publish=publish)
    finally:
        writer.abort()


def check_display_name(value: str, field: str) -> None:
    """A human-readable name of at most MAX_DISPLAY_NAME_CHARS characters: it comes back in every
    Get and List answer (a page of 1 MB names would pass a message's size)."""
    if len(value) > MAX_DISPLAY_NAME_CHARS:
        raise errors.InvalidArgument(f"at most {MAX_DISPLAY_NAME_CHARS} characters, got {len(value)}: {value[:40]!r}...",
                                     field=field)


def load_arrays(store: Store, data_dir: pathlib.Path, dataset_id: str,
                field: str = "dataset") -> tuple[datasets_pb2.Dataset, np.ndarray, np.ndarray]:
    """Read a stored dataset into memory: (metadata, features [n, ...] float32, labels). A file gone
    or of the wrong size is DATA_LOSS, naming ``field`` (the job's field that names the dataset)."""
    dataset, fdt, ldt, lshape = store.dataset_storage(dataset_id)
    root = files.inside(data_dir, "datasets", dataset_id)
    features_shape, labels_shape = (dataset.example_count, *dataset.feature_shape), tuple(json.loads(lshape))
    features = _read(root / FEATURES_FILE, NUMPY_DTYPES[fdt], features_shape, dataset.name, "features", field)
    labels = _read(root / LABELS_FILE, NUMPY_DTYPES[ldt], labels_shape, dataset.name, "labels", field)
    if dataset.label_kind == LabelKind.LABEL_KIND_CLASSES:
        labels = labels.astype(np.int64, copy=False)
    elif dataset.label_kind == LabelKind.LABEL_KIND_MULTI_LABEL:
        labels = labels.astype(np.float32, copy=False)  # (n, labels) of 0 / 1
    return dataset, features.astype(np.float32, copy=False), labels


def _read(path: pathlib.Path, dtype: np.dtype, shape: tuple[int, ...], dataset: str, what: str, field: str) -> np.ndarray:
    """One of a dataset's files as an array of ``shape``; DATA_LOSS when it is gone or not of the size
    its upload wrote (damaged on disk since, or removed by hand)."""
    expected = math.prod(shape) * dtype.itemsize
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = None
    if size != expected:
        found = "is missing" if size is None else f"holds {size} bytes"
        raise errors.DataLoss(f"dataset '{dataset}': its {what} file {found}, where its upload wrote {expected} "
                              f"({list(shape)} {dtype.name}); it was damaged since: upload the dataset again", field=field)
    return np.fromfile(path, dtype=dtype).reshape(shape)


def delete(store: Store, data_dir: pathlib.Path, dataset_id: str) -> None:
    """Remove a dataset: its row first (refused while an unfinished job uses it), then its files.
    A crash in between leaves only an orphaned directory, which start-up removes."""
    store.delete_dataset(dataset_id)
    files.remove_tree(files.inside(data_dir, "datasets", dataset_id))


def remove_orphans(store: Store, data_dir: pathlib.Path) -> int:
    """Delete dataset directories with no row (a crash between publish and insert)."""
    root = data_dir / "datasets"
    if not root.exists():
        return 0
    known = store.dataset_ids()
    orphans = [d for d in root.iterdir() if d.name not in known]
    for d in orphans:
        files.remove_tree(d)
    return len(orphans)
