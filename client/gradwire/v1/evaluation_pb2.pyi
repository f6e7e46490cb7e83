from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Evaluation(_message.Message):
    __slots__ = ("split", "example_count", "loss", "classification", "regression")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    REGRESSION_FIELD_NUMBER: _ClassVar[int]
    split: str
    example_count: int
    loss: float
    classification: ClassificationMetrics
    regression: RegressionMetrics
    def __init__(self, split: _Optional[str] = ..., example_count: _Optional[int] = ..., loss: _Optional[float] = ..., classification: _Optional[_Union[ClassificationMetrics, _Mapping]] = ..., regression: _Optional[_Union[RegressionMetrics, _Mapping]] = ...) -> None: ...

class ClassificationMetrics(_message.Message):
    __slots__ = ("accuracy", "top_k", "top_k_accuracy", "per_class", "macro_f1", "confusion_matrix")
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_K_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    MACRO_F1_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_MATRIX_FIELD_NUMBER: _ClassVar[int]
    accuracy: float
    top_k: int
    top_k_accuracy: float
    per_class: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    macro_f1: float
    confusion_matrix: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, accuracy: _Optional[float] = ..., top_k: _Optional[int] = ..., top_k_accuracy: _Optional[float] = ..., per_class: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ..., macro_f1: _Optional[float] = ..., confusion_matrix: _Optional[_Iterable[int]] = ...) -> None: ...

class ClassMetrics(_message.Message):
    __slots__ = ("class_name", "precision", "recall", "f1", "support")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, class_name: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class RegressionMetrics(_message.Message):
    __slots__ = ("mse", "mae", "r2")
    MSE_FIELD_NUMBER: _ClassVar[int]
    MAE_FIELD_NUMBER: _ClassVar[int]
    R2_FIELD_NUMBER: _ClassVar[int]
    mse: float
    mae: float
    r2: float
    def __init__(self, mse: _Optional[float] = ..., mae: _Optional[float] = ..., r2: _Optional[float] = ...) -> None: ...
