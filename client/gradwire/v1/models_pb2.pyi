import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gradwire.v1 import datasets_pb2 as _datasets_pb2
from gradwire.v1 import evaluation_pb2 as _evaluation_pb2
from gradwire.v1 import network_pb2 as _network_pb2
from gradwire.v1 import training_pb2 as _training_pb2
from gradwire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Model(_message.Message):
    __slots__ = ("name", "display_name", "training_job", "dataset", "input_shape", "label_kind", "class_names", "output_size", "input_normalization", "network", "parameter_count", "final_metrics", "epochs_trained", "parity_max_abs_diff", "spec_sha256", "dataset_sha256", "onnx_sha256", "onnx_size_bytes", "opset_version", "create_time", "train_evaluation", "validation_evaluation", "test_evaluation", "test_dataset", "registered_model", "version", "aliases", "dynamic_batching")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LABEL_KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUT_NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_TRAINED_FIELD_NUMBER: _ClassVar[int]
    PARITY_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    SPEC_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    ONNX_SHA256_FIELD_NUMBER: _ClassVar[int]
    ONNX_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPSET_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EVALUATION_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EVALUATION_FIELD_NUMBER: _ClassVar[int]
    TEST_EVALUATION_FIELD_NUMBER: _ClassVar[int]
    TEST_DATASET_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCHING_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    training_job: str
    dataset: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    label_kind: _datasets_pb2.LabelKind
    class_names: _containers.RepeatedScalarFieldContainer[str]
    output_size: int
    input_normalization: _network_pb2.InputNormalization
    network: _network_pb2.NetworkSpec
    parameter_count: int
    final_metrics: _training_pb2.EpochMetrics
    epochs_trained: int
    parity_max_abs_diff: float
    spec_sha256: str
    dataset_sha256: str
    onnx_sha256: str
    onnx_size_bytes: int
    opset_version: int
    create_time: _timestamp_pb2.Timestamp
    train_evaluation: _evaluation_pb2.Evaluation
    validation_evaluation: _evaluation_pb2.Evaluation
    test_evaluation: _evaluation_pb2.Evaluation
    test_dataset: str
    registered_model: str
    version: int
    aliases: _containers.RepeatedScalarFieldContainer[str]
    dynamic_batching: DynamicBatching
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., training_job: _Optional[str] = ..., dataset: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., label_kind: _Optional[_Union[_datasets_pb2.LabelKind, str]] = ..., class_names: _Optional[_Iterable[str]] = ..., output_size: _Optional[int] = ..., input_normalization: _Optional[_Union[_network_pb2.InputNormalization, str]] = ..., network: _Optional[_Union[_network_pb2.NetworkSpec, _Mapping]] = ..., parameter_count: _Optional[int] = ..., final_metrics: _Optional[_Union[_training_pb2.EpochMetrics, _Mapping]] = ..., epochs_trained: _Optional[int] = ..., parity_max_abs_diff: _Optional[float] = ..., spec_sha256: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., onnx_sha256: _Optional[str] = ..., onnx_size_bytes: _Optional[int] = ..., opset_version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., train_evaluation: _Optional[_Union[_evaluation_pb2.Evaluation, _Mapping]] = ..., validation_evaluation: _Optional[_Union[_evaluation_pb2.Evaluation, _Mapping]] = ..., test_evaluation: _Optional[_Union[_evaluation_pb2.Evaluation, _Mapping]] = ..., test_dataset: _Optional[str] = ..., registered_model: _Optional[str] = ..., version: _Optional[int] = ..., aliases: _Optional[_Iterable[str]] = ..., dynamic_batching: _Optional[_Union[DynamicBatching, _Mapping]] = ...) -> None: ...

class RegisteredModel(_message.Message):
    __slots__ = ("name", "latest_version", "version_count", "aliases", "latest_model", "create_time", "update_time")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    LATEST_MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: int
    version_count: int
    aliases: _containers.ScalarMap[str, int]
    latest_model: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[int] = ..., version_count: _Optional[int] = ..., aliases: _Optional[_Mapping[str, int]] = ..., latest_model: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DynamicBatching(_message.Message):
    __slots__ = ("enabled", "max_batch_size", "max_delay_micros")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MICROS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    max_batch_size: int
    max_delay_micros: int
    def __init__(self, enabled: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., max_delay_micros: _Optional[int] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("chunk_data",)
    CHUNK_DATA_FIELD_NUMBER: _ClassVar[int]
    chunk_data: bytes
    def __init__(self, chunk_data: _Optional[bytes] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("name", "features", "read_mask")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    READ_MASK_FIELD_NUMBER: _ClassVar[int]
    name: str
    features: _tensor_pb2.Tensor
    read_mask: _field_mask_pb2.FieldMask
    def __init__(self, name: _Optional[str] = ..., features: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., read_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("probabilities", "predicted_classes", "predicted_class_names", "values", "predicted_label_sets")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASSES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_SETS_FIELD_NUMBER: _ClassVar[int]
    probabilities: _tensor_pb2.Tensor
    predicted_classes: _containers.RepeatedScalarFieldContainer[int]
    predicted_class_names: _containers.RepeatedScalarFieldContainer[str]
    values: _tensor_pb2.Tensor
    predicted_label_sets: _containers.RepeatedCompositeFieldContainer[LabelSet]
    def __init__(self, probabilities: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., predicted_classes: _Optional[_Iterable[int]] = ..., predicted_class_names: _Optional[_Iterable[str]] = ..., values: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., predicted_label_sets: _Optional[_Iterable[_Union[LabelSet, _Mapping]]] = ...) -> None: ...

class LabelSet(_message.Message):
    __slots__ = ("indices", "names")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class PublishModelRequest(_message.Message):
    __slots__ = ("name", "registered_model", "aliases")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    name: str
    registered_model: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., registered_model: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRegisteredModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListRegisteredModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRegisteredModelsResponse(_message.Message):
    __slots__ = ("registered_models", "next_page_token")
    REGISTERED_MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    registered_models: _containers.RepeatedCompositeFieldContainer[RegisteredModel]
    next_page_token: str
    def __init__(self, registered_models: _Optional[_Iterable[_Union[RegisteredModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetModelAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    version: int
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteModelAliasRequest(_message.Message):
    __slots__ = ("name", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class DeleteRegisteredModelRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class UpdateModelBatchingRequest(_message.Message):
    __slots__ = ("name", "dynamic_batching")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCHING_FIELD_NUMBER: _ClassVar[int]
    name: str
    dynamic_batching: DynamicBatching
    def __init__(self, name: _Optional[str] = ..., dynamic_batching: _Optional[_Union[DynamicBatching, _Mapping]] = ...) -> None: ...
