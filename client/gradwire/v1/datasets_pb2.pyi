import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gradwire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_KIND_UNSPECIFIED: _ClassVar[LabelKind]
    LABEL_KIND_CLASSES: _ClassVar[LabelKind]
    LABEL_KIND_REGRESSION: _ClassVar[LabelKind]
    LABEL_KIND_MULTI_LABEL: _ClassVar[LabelKind]
LABEL_KIND_UNSPECIFIED: LabelKind
LABEL_KIND_CLASSES: LabelKind
LABEL_KIND_REGRESSION: LabelKind
LABEL_KIND_MULTI_LABEL: LabelKind

class Dataset(_message.Message):
    __slots__ = ("name", "display_name", "feature_shape", "example_count", "label_kind", "class_names", "class_count", "target_count", "sha256", "size_bytes", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABEL_KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNT_FIELD_NUMBER: _ClassVar[int]
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    example_count: int
    label_kind: LabelKind
    class_names: _containers.RepeatedScalarFieldContainer[str]
    class_count: int
    target_count: int
    sha256: str
    size_bytes: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., feature_shape: _Optional[_Iterable[int]] = ..., example_count: _Optional[int] = ..., label_kind: _Optional[_Union[LabelKind, str]] = ..., class_names: _Optional[_Iterable[str]] = ..., class_count: _Optional[int] = ..., target_count: _Optional[int] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InlineDataset(_message.Message):
    __slots__ = ("features", "labels", "label_kind", "class_names", "display_name")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    features: _tensor_pb2.Tensor
    labels: _tensor_pb2.Tensor
    label_kind: LabelKind
    class_names: _containers.RepeatedScalarFieldContainer[str]
    display_name: str
    def __init__(self, features: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., label_kind: _Optional[_Union[LabelKind, str]] = ..., class_names: _Optional[_Iterable[str]] = ..., display_name: _Optional[str] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("header", "features_chunk", "labels_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FEATURES_CHUNK_FIELD_NUMBER: _ClassVar[int]
    LABELS_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: DatasetUploadHeader
    features_chunk: bytes
    labels_chunk: bytes
    def __init__(self, header: _Optional[_Union[DatasetUploadHeader, _Mapping]] = ..., features_chunk: _Optional[bytes] = ..., labels_chunk: _Optional[bytes] = ...) -> None: ...

class DatasetUploadHeader(_message.Message):
    __slots__ = ("display_name", "features_shape", "features_dtype", "labels_shape", "labels_dtype", "label_kind", "class_names")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_DTYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_DTYPE_FIELD_NUMBER: _ClassVar[int]
    LABEL_KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    features_shape: _containers.RepeatedScalarFieldContainer[int]
    features_dtype: _tensor_pb2.DataType
    labels_shape: _containers.RepeatedScalarFieldContainer[int]
    labels_dtype: _tensor_pb2.DataType
    label_kind: LabelKind
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, display_name: _Optional[str] = ..., features_shape: _Optional[_Iterable[int]] = ..., features_dtype: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., labels_shape: _Optional[_Iterable[int]] = ..., labels_dtype: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., label_kind: _Optional[_Union[LabelKind, str]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
