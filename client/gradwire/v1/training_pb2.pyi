import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from gradwire.v1 import datasets_pb2 as _datasets_pb2
from gradwire.v1 import network_pb2 as _network_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingJob(_message.Message):
    __slots__ = ("name", "display_name", "dataset", "network", "training", "state", "create_time", "start_time", "end_time", "history", "error", "model", "seed", "device", "parameter_count", "registered_model", "aliases", "performance", "model_version", "request_id", "test_dataset", "flops")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[TrainingJob.State]
        QUEUED: _ClassVar[TrainingJob.State]
        RUNNING: _ClassVar[TrainingJob.State]
        SUCCEEDED: _ClassVar[TrainingJob.State]
        FAILED: _ClassVar[TrainingJob.State]
        CANCELLING: _ClassVar[TrainingJob.State]
        CANCELLED: _ClassVar[TrainingJob.State]
    STATE_UNSPECIFIED: TrainingJob.State
    QUEUED: TrainingJob.State
    RUNNING: TrainingJob.State
    SUCCEEDED: TrainingJob.State
    FAILED: TrainingJob.State
    CANCELLING: TrainingJob.State
    CANCELLED: TrainingJob.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEST_DATASET_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    dataset: str
    network: _network_pb2.NetworkSpec
    training: _network_pb2.TrainingConfig
    state: TrainingJob.State
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    history: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    error: _status_pb2.Status
    model: str
    seed: int
    device: str
    parameter_count: int
    registered_model: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    performance: TrainingPerformance
    model_version: int
    request_id: str
    test_dataset: str
    flops: int
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., dataset: _Optional[str] = ..., network: _Optional[_Union[_network_pb2.NetworkSpec, _Mapping]] = ..., training: _Optional[_Union[_network_pb2.TrainingConfig, _Mapping]] = ..., state: _Optional[_Union[TrainingJob.State, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., history: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., model: _Optional[str] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ..., parameter_count: _Optional[int] = ..., registered_model: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., performance: _Optional[_Union[TrainingPerformance, _Mapping]] = ..., model_version: _Optional[int] = ..., request_id: _Optional[str] = ..., test_dataset: _Optional[str] = ..., flops: _Optional[int] = ...) -> None: ...

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "iterations", "train_loss", "validation_loss", "validation_accuracy", "train_accuracy", "learning_rate", "samples_per_second", "elapsed_seconds", "max_gradient_norm", "examples")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    iterations: int
    train_loss: float
    validation_loss: float
    validation_accuracy: float
    train_accuracy: float
    learning_rate: float
    samples_per_second: float
    elapsed_seconds: float
    max_gradient_norm: float
    examples: int
    def __init__(self, epoch: _Optional[int] = ..., iterations: _Optional[int] = ..., train_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., validation_accuracy: _Optional[float] = ..., train_accuracy: _Optional[float] = ..., learning_rate: _Optional[float] = ..., samples_per_second: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., max_gradient_norm: _Optional[float] = ..., examples: _Optional[int] = ...) -> None: ...

class TrainingJobEvent(_message.Message):
    __slots__ = ("sequence", "event_time", "state", "epoch", "message", "error", "model")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    event_time: _timestamp_pb2.Timestamp
    state: TrainingJob.State
    epoch: EpochMetrics
    message: str
    error: _status_pb2.Status
    model: str
    def __init__(self, sequence: _Optional[int] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[TrainingJob.State, str]] = ..., epoch: _Optional[_Union[EpochMetrics, _Mapping]] = ..., message: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class CreateTrainingJobRequest(_message.Message):
    __slots__ = ("display_name", "dataset", "inline_dataset", "network", "training", "test_dataset", "inline_test_dataset", "request_id", "validate_only", "registered_model", "aliases", "performance")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATASET_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    TEST_DATASET_FIELD_NUMBER: _ClassVar[int]
    INLINE_TEST_DATASET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    dataset: str
    inline_dataset: _datasets_pb2.InlineDataset
    network: _network_pb2.NetworkSpec
    training: _network_pb2.TrainingConfig
    test_dataset: str
    inline_test_dataset: _datasets_pb2.InlineDataset
    request_id: str
    validate_only: bool
    registered_model: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    performance: TrainingPerformance
    def __init__(self, display_name: _Optional[str] = ..., dataset: _Optional[str] = ..., inline_dataset: _Optional[_Union[_datasets_pb2.InlineDataset, _Mapping]] = ..., network: _Optional[_Union[_network_pb2.NetworkSpec, _Mapping]] = ..., training: _Optional[_Union[_network_pb2.TrainingConfig, _Mapping]] = ..., test_dataset: _Optional[str] = ..., inline_test_dataset: _Optional[_Union[_datasets_pb2.InlineDataset, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ..., registered_model: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., performance: _Optional[_Union[TrainingPerformance, _Mapping]] = ...) -> None: ...

class TrainingPerformance(_message.Message):
    __slots__ = ("precision", "channels_last")
    class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PRECISION_UNSPECIFIED: _ClassVar[TrainingPerformance.Precision]
        PRECISION_FP32: _ClassVar[TrainingPerformance.Precision]
        PRECISION_TF32: _ClassVar[TrainingPerformance.Precision]
        PRECISION_BF16: _ClassVar[TrainingPerformance.Precision]
    PRECISION_UNSPECIFIED: TrainingPerformance.Precision
    PRECISION_FP32: TrainingPerformance.Precision
    PRECISION_TF32: TrainingPerformance.Precision
    PRECISION_BF16: TrainingPerformance.Precision
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_LAST_FIELD_NUMBER: _ClassVar[int]
    precision: TrainingPerformance.Precision
    channels_last: bool
    def __init__(self, precision: _Optional[_Union[TrainingPerformance.Precision, str]] = ..., channels_last: _Optional[bool] = ...) -> None: ...

class GetTrainingJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListTrainingJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrainingJobsResponse(_message.Message):
    __slots__ = ("training_jobs", "next_page_token")
    TRAINING_JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    training_jobs: _containers.RepeatedCompositeFieldContainer[TrainingJob]
    next_page_token: str
    def __init__(self, training_jobs: _Optional[_Iterable[_Union[TrainingJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelTrainingJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchTrainingJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
