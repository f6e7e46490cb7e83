from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PaddingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PADDING_MODE_UNSPECIFIED: _ClassVar[PaddingMode]
    PADDING_MODE_SAME: _ClassVar[PaddingMode]
    PADDING_MODE_VALID: _ClassVar[PaddingMode]

class InputNormalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_NORMALIZATION_UNSPECIFIED: _ClassVar[InputNormalization]
    INPUT_NORMALIZATION_NONE: _ClassVar[InputNormalization]
    INPUT_NORMALIZATION_MIN_MAX: _ClassVar[InputNormalization]
    INPUT_NORMALIZATION_STANDARDIZE: _ClassVar[InputNormalization]

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_TRAIN_LOSS: _ClassVar[Metric]
    METRIC_VALIDATION_LOSS: _ClassVar[Metric]
    METRIC_VALIDATION_ACCURACY: _ClassVar[Metric]
PADDING_MODE_UNSPECIFIED: PaddingMode
PADDING_MODE_SAME: PaddingMode
PADDING_MODE_VALID: PaddingMode
INPUT_NORMALIZATION_UNSPECIFIED: InputNormalization
INPUT_NORMALIZATION_NONE: InputNormalization
INPUT_NORMALIZATION_MIN_MAX: InputNormalization
INPUT_NORMALIZATION_STANDARDIZE: InputNormalization
METRIC_UNSPECIFIED: Metric
METRIC_TRAIN_LOSS: Metric
METRIC_VALIDATION_LOSS: Metric
METRIC_VALIDATION_ACCURACY: Metric

class NetworkSpec(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    def __init__(self, layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("dense", "conv2d", "max_pool2d", "avg_pool2d", "flatten", "dropout", "batch_norm", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "softmax")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    CONV2D_FIELD_NUMBER: _ClassVar[int]
    MAX_POOL2D_FIELD_NUMBER: _ClassVar[int]
    AVG_POOL2D_FIELD_NUMBER: _ClassVar[int]
    FLATTEN_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    BATCH_NORM_FIELD_NUMBER: _ClassVar[int]
    RELU_FIELD_NUMBER: _ClassVar[int]
    LEAKY_RELU_FIELD_NUMBER: _ClassVar[int]
    SIGMOID_FIELD_NUMBER: _ClassVar[int]
    TANH_FIELD_NUMBER: _ClassVar[int]
    ELU_FIELD_NUMBER: _ClassVar[int]
    SOFTMAX_FIELD_NUMBER: _ClassVar[int]
    dense: Dense
    conv2d: Conv2d
    max_pool2d: MaxPool2d
    avg_pool2d: AvgPool2d
    flatten: Flatten
    dropout: Dropout
    batch_norm: BatchNorm
    relu: ReLU
    leaky_relu: LeakyReLU
    sigmoid: Sigmoid
    tanh: Tanh
    elu: ELU
    softmax: Softmax
    def __init__(self, dense: _Optional[_Union[Dense, _Mapping]] = ..., conv2d: _Optional[_Union[Conv2d, _Mapping]] = ..., max_pool2d: _Optional[_Union[MaxPool2d, _Mapping]] = ..., avg_pool2d: _Optional[_Union[AvgPool2d, _Mapping]] = ..., flatten: _Optional[_Union[Flatten, _Mapping]] = ..., dropout: _Optional[_Union[Dropout, _Mapping]] = ..., batch_norm: _Optional[_Union[BatchNorm, _Mapping]] = ..., relu: _Optional[_Union[ReLU, _Mapping]] = ..., leaky_relu: _Optional[_Union[LeakyReLU, _Mapping]] = ..., sigmoid: _Optional[_Union[Sigmoid, _Mapping]] = ..., tanh: _Optional[_Union[Tanh, _Mapping]] = ..., elu: _Optional[_Union[ELU, _Mapping]] = ..., softmax: _Optional[_Union[Softmax, _Mapping]] = ...) -> None: ...

class Dense(_message.Message):
    __slots__ = ("units", "use_bias")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    USE_BIAS_FIELD_NUMBER: _ClassVar[int]
    units: int
    use_bias: bool
    def __init__(self, units: _Optional[int] = ..., use_bias: _Optional[bool] = ...) -> None: ...

class Conv2d(_message.Message):
    __slots__ = ("filters", "kernel_size", "stride", "padding_size", "padding_mode", "use_bias")
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    PADDING_MODE_FIELD_NUMBER: _ClassVar[int]
    USE_BIAS_FIELD_NUMBER: _ClassVar[int]
    filters: int
    kernel_size: int
    stride: int
    padding_size: int
    padding_mode: PaddingMode
    use_bias: bool
    def __init__(self, filters: _Optional[int] = ..., kernel_size: _Optional[int] = ..., stride: _Optional[int] = ..., padding_size: _Optional[int] = ..., padding_mode: _Optional[_Union[PaddingMode, str]] = ..., use_bias: _Optional[bool] = ...) -> None: ...

class MaxPool2d(_message.Message):
    __slots__ = ("kernel_size", "stride")
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    kernel_size: int
    stride: int
    def __init__(self, kernel_size: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class AvgPool2d(_message.Message):
    __slots__ = ("kernel_size", "stride")
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    kernel_size: int
    stride: int
    def __init__(self, kernel_size: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class Flatten(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Dropout(_message.Message):
    __slots__ = ("rate",)
    RATE_FIELD_NUMBER: _ClassVar[int]
    rate: float
    def __init__(self, rate: _Optional[float] = ...) -> None: ...

class BatchNorm(_message.Message):
    __slots__ = ("momentum", "epsilon")
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    momentum: float
    epsilon: float
    def __init__(self, momentum: _Optional[float] = ..., epsilon: _Optional[float] = ...) -> None: ...

class ReLU(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeakyReLU(_message.Message):
    __slots__ = ("negative_slope",)
    NEGATIVE_SLOPE_FIELD_NUMBER: _ClassVar[int]
    negative_slope: float
    def __init__(self, negative_slope: _Optional[float] = ...) -> None: ...

class Sigmoid(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Tanh(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ELU(_message.Message):
    __slots__ = ("alpha",)
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    alpha: float
    def __init__(self, alpha: _Optional[float] = ...) -> None: ...

class Softmax(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("loss", "optimizer", "batching", "epochs", "shuffle", "seed", "validation_split", "l1_penalty", "early_stopping", "input_normalization")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SPLIT_FIELD_NUMBER: _ClassVar[int]
    L1_PENALTY_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_FIELD_NUMBER: _ClassVar[int]
    INPUT_NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    loss: Loss
    optimizer: Optimizer
    batching: Batching
    epochs: int
    shuffle: bool
    seed: int
    validation_split: float
    l1_penalty: float
    early_stopping: EarlyStopping
    input_normalization: InputNormalization
    def __init__(self, loss: _Optional[_Union[Loss, _Mapping]] = ..., optimizer: _Optional[_Union[Optimizer, _Mapping]] = ..., batching: _Optional[_Union[Batching, _Mapping]] = ..., epochs: _Optional[int] = ..., shuffle: _Optional[bool] = ..., seed: _Optional[int] = ..., validation_split: _Optional[float] = ..., l1_penalty: _Optional[float] = ..., early_stopping: _Optional[_Union[EarlyStopping, _Mapping]] = ..., input_normalization: _Optional[_Union[InputNormalization, str]] = ...) -> None: ...

class Loss(_message.Message):
    __slots__ = ("cross_entropy", "mse")
    CROSS_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    MSE_FIELD_NUMBER: _ClassVar[int]
    cross_entropy: CrossEntropyLoss
    mse: MeanSquaredErrorLoss
    def __init__(self, cross_entropy: _Optional[_Union[CrossEntropyLoss, _Mapping]] = ..., mse: _Optional[_Union[MeanSquaredErrorLoss, _Mapping]] = ...) -> None: ...

class CrossEntropyLoss(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MeanSquaredErrorLoss(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Optimizer(_message.Message):
    __slots__ = ("sgd", "adam", "rmsprop")
    SGD_FIELD_NUMBER: _ClassVar[int]
    ADAM_FIELD_NUMBER: _ClassVar[int]
    RMSPROP_FIELD_NUMBER: _ClassVar[int]
    sgd: SGD
    adam: Adam
    rmsprop: RMSprop
    def __init__(self, sgd: _Optional[_Union[SGD, _Mapping]] = ..., adam: _Optional[_Union[Adam, _Mapping]] = ..., rmsprop: _Optional[_Union[RMSprop, _Mapping]] = ...) -> None: ...

class SGD(_message.Message):
    __slots__ = ("learning_rate", "momentum", "weight_decay")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    momentum: float
    weight_decay: float
    def __init__(self, learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ...) -> None: ...

class Adam(_message.Message):
    __slots__ = ("learning_rate", "weight_decay", "beta1", "beta2")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    weight_decay: float
    beta1: float
    beta2: float
    def __init__(self, learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ...) -> None: ...

class RMSprop(_message.Message):
    __slots__ = ("learning_rate", "weight_decay", "momentum", "alpha")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    weight_decay: float
    momentum: float
    alpha: float
    def __init__(self, learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., momentum: _Optional[float] = ..., alpha: _Optional[float] = ...) -> None: ...

class Batching(_message.Message):
    __slots__ = ("full_batch", "online", "mini_batch")
    FULL_BATCH_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    MINI_BATCH_FIELD_NUMBER: _ClassVar[int]
    full_batch: FullBatch
    online: Online
    mini_batch: MiniBatch
    def __init__(self, full_batch: _Optional[_Union[FullBatch, _Mapping]] = ..., online: _Optional[_Union[Online, _Mapping]] = ..., mini_batch: _Optional[_Union[MiniBatch, _Mapping]] = ...) -> None: ...

class FullBatch(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Online(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MiniBatch(_message.Message):
    __slots__ = ("batch_size",)
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    def __init__(self, batch_size: _Optional[int] = ...) -> None: ...

class EarlyStopping(_message.Message):
    __slots__ = ("monitor", "patience", "min_delta", "restore_best_weights")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    RESTORE_BEST_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    monitor: Metric
    patience: int
    min_delta: float
    restore_best_weights: bool
    def __init__(self, monitor: _Optional[_Union[Metric, str]] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ..., restore_best_weights: _Optional[bool] = ...) -> None: ...
