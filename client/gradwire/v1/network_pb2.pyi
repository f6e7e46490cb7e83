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
    METRIC_TRAIN_ACCURACY: _ClassVar[Metric]

class MetricMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_MODE_UNSPECIFIED: _ClassVar[MetricMode]
    METRIC_MODE_MIN: _ClassVar[MetricMode]
    METRIC_MODE_MAX: _ClassVar[MetricMode]

class TokenPoolingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_POOLING_MODE_UNSPECIFIED: _ClassVar[TokenPoolingMode]
    TOKEN_POOLING_MODE_CLASS_TOKEN: _ClassVar[TokenPoolingMode]
    TOKEN_POOLING_MODE_MEAN: _ClassVar[TokenPoolingMode]
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
METRIC_TRAIN_ACCURACY: Metric
METRIC_MODE_UNSPECIFIED: MetricMode
METRIC_MODE_MIN: MetricMode
METRIC_MODE_MAX: MetricMode
TOKEN_POOLING_MODE_UNSPECIFIED: TokenPoolingMode
TOKEN_POOLING_MODE_CLASS_TOKEN: TokenPoolingMode
TOKEN_POOLING_MODE_MEAN: TokenPoolingMode

class NetworkSpec(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    def __init__(self, layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("dense", "conv2d", "max_pool2d", "avg_pool2d", "flatten", "dropout", "batch_norm", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "softmax", "maxout", "gelu", "silu", "layer_norm", "instance_norm", "group_norm", "conv1d", "max_pool1d", "avg_pool1d", "global_avg_pool", "spatial_dropout", "residual_block", "patch_embedding", "class_token", "position_embedding", "transformer_encoder", "token_pooling")
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
    MAXOUT_FIELD_NUMBER: _ClassVar[int]
    GELU_FIELD_NUMBER: _ClassVar[int]
    SILU_FIELD_NUMBER: _ClassVar[int]
    LAYER_NORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_NORM_FIELD_NUMBER: _ClassVar[int]
    GROUP_NORM_FIELD_NUMBER: _ClassVar[int]
    CONV1D_FIELD_NUMBER: _ClassVar[int]
    MAX_POOL1D_FIELD_NUMBER: _ClassVar[int]
    AVG_POOL1D_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_AVG_POOL_FIELD_NUMBER: _ClassVar[int]
    SPATIAL_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_BLOCK_FIELD_NUMBER: _ClassVar[int]
    PATCH_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    CLASS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    POSITION_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMER_ENCODER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_POOLING_FIELD_NUMBER: _ClassVar[int]
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
    maxout: Maxout
    gelu: GELU
    silu: SiLU
    layer_norm: LayerNorm
    instance_norm: InstanceNorm
    group_norm: GroupNorm
    conv1d: Conv1d
    max_pool1d: MaxPool1d
    avg_pool1d: AvgPool1d
    global_avg_pool: GlobalAvgPool
    spatial_dropout: SpatialDropout
    residual_block: ResidualBlock
    patch_embedding: PatchEmbedding
    class_token: ClassToken
    position_embedding: PositionEmbedding
    transformer_encoder: TransformerEncoder
    token_pooling: TokenPooling
    def __init__(self, dense: _Optional[_Union[Dense, _Mapping]] = ..., conv2d: _Optional[_Union[Conv2d, _Mapping]] = ..., max_pool2d: _Optional[_Union[MaxPool2d, _Mapping]] = ..., avg_pool2d: _Optional[_Union[AvgPool2d, _Mapping]] = ..., flatten: _Optional[_Union[Flatten, _Mapping]] = ..., dropout: _Optional[_Union[Dropout, _Mapping]] = ..., batch_norm: _Optional[_Union[BatchNorm, _Mapping]] = ..., relu: _Optional[_Union[ReLU, _Mapping]] = ..., leaky_relu: _Optional[_Union[LeakyReLU, _Mapping]] = ..., sigmoid: _Optional[_Union[Sigmoid, _Mapping]] = ..., tanh: _Optional[_Union[Tanh, _Mapping]] = ..., elu: _Optional[_Union[ELU, _Mapping]] = ..., softmax: _Optional[_Union[Softmax, _Mapping]] = ..., maxout: _Optional[_Union[Maxout, _Mapping]] = ..., gelu: _Optional[_Union[GELU, _Mapping]] = ..., silu: _Optional[_Union[SiLU, _Mapping]] = ..., layer_norm: _Optional[_Union[LayerNorm, _Mapping]] = ..., instance_norm: _Optional[_Union[InstanceNorm, _Mapping]] = ..., group_norm: _Optional[_Union[GroupNorm, _Mapping]] = ..., conv1d: _Optional[_Union[Conv1d, _Mapping]] = ..., max_pool1d: _Optional[_Union[MaxPool1d, _Mapping]] = ..., avg_pool1d: _Optional[_Union[AvgPool1d, _Mapping]] = ..., global_avg_pool: _Optional[_Union[GlobalAvgPool, _Mapping]] = ..., spatial_dropout: _Optional[_Union[SpatialDropout, _Mapping]] = ..., residual_block: _Optional[_Union[ResidualBlock, _Mapping]] = ..., patch_embedding: _Optional[_Union[PatchEmbedding, _Mapping]] = ..., class_token: _Optional[_Union[ClassToken, _Mapping]] = ..., position_embedding: _Optional[_Union[PositionEmbedding, _Mapping]] = ..., transformer_encoder: _Optional[_Union[TransformerEncoder, _Mapping]] = ..., token_pooling: _Optional[_Union[TokenPooling, _Mapping]] = ...) -> None: ...

class Activation(_message.Message):
    __slots__ = ("relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu", "silu")
    RELU_FIELD_NUMBER: _ClassVar[int]
    LEAKY_RELU_FIELD_NUMBER: _ClassVar[int]
    SIGMOID_FIELD_NUMBER: _ClassVar[int]
    TANH_FIELD_NUMBER: _ClassVar[int]
    ELU_FIELD_NUMBER: _ClassVar[int]
    GELU_FIELD_NUMBER: _ClassVar[int]
    SILU_FIELD_NUMBER: _ClassVar[int]
    relu: ReLU
    leaky_relu: LeakyReLU
    sigmoid: Sigmoid
    tanh: Tanh
    elu: ELU
    gelu: GELU
    silu: SiLU
    def __init__(self, relu: _Optional[_Union[ReLU, _Mapping]] = ..., leaky_relu: _Optional[_Union[LeakyReLU, _Mapping]] = ..., sigmoid: _Optional[_Union[Sigmoid, _Mapping]] = ..., tanh: _Optional[_Union[Tanh, _Mapping]] = ..., elu: _Optional[_Union[ELU, _Mapping]] = ..., gelu: _Optional[_Union[GELU, _Mapping]] = ..., silu: _Optional[_Union[SiLU, _Mapping]] = ...) -> None: ...

class Dense(_message.Message):
    __slots__ = ("units", "use_bias", "activation")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    USE_BIAS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    units: int
    use_bias: bool
    activation: Activation
    def __init__(self, units: _Optional[int] = ..., use_bias: _Optional[bool] = ..., activation: _Optional[_Union[Activation, _Mapping]] = ...) -> None: ...

class Conv2d(_message.Message):
    __slots__ = ("filters", "kernel_size", "stride", "padding_size", "padding_mode", "use_bias", "activation", "dilation")
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    PADDING_MODE_FIELD_NUMBER: _ClassVar[int]
    USE_BIAS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    DILATION_FIELD_NUMBER: _ClassVar[int]
    filters: int
    kernel_size: int
    stride: int
    padding_size: int
    padding_mode: PaddingMode
    use_bias: bool
    activation: Activation
    dilation: int
    def __init__(self, filters: _Optional[int] = ..., kernel_size: _Optional[int] = ..., stride: _Optional[int] = ..., padding_size: _Optional[int] = ..., padding_mode: _Optional[_Union[PaddingMode, str]] = ..., use_bias: _Optional[bool] = ..., activation: _Optional[_Union[Activation, _Mapping]] = ..., dilation: _Optional[int] = ...) -> None: ...

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

class Maxout(_message.Message):
    __slots__ = ("units", "pieces")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    units: int
    pieces: int
    def __init__(self, units: _Optional[int] = ..., pieces: _Optional[int] = ...) -> None: ...

class GELU(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiLU(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LayerNorm(_message.Message):
    __slots__ = ("epsilon",)
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    def __init__(self, epsilon: _Optional[float] = ...) -> None: ...

class InstanceNorm(_message.Message):
    __slots__ = ("epsilon", "affine")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    AFFINE_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    affine: bool
    def __init__(self, epsilon: _Optional[float] = ..., affine: _Optional[bool] = ...) -> None: ...

class GroupNorm(_message.Message):
    __slots__ = ("groups", "epsilon")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    groups: int
    epsilon: float
    def __init__(self, groups: _Optional[int] = ..., epsilon: _Optional[float] = ...) -> None: ...

class Conv1d(_message.Message):
    __slots__ = ("filters", "kernel_size", "stride", "padding_size", "padding_mode", "use_bias", "activation", "dilation")
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    PADDING_MODE_FIELD_NUMBER: _ClassVar[int]
    USE_BIAS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    DILATION_FIELD_NUMBER: _ClassVar[int]
    filters: int
    kernel_size: int
    stride: int
    padding_size: int
    padding_mode: PaddingMode
    use_bias: bool
    activation: Activation
    dilation: int
    def __init__(self, filters: _Optional[int] = ..., kernel_size: _Optional[int] = ..., stride: _Optional[int] = ..., padding_size: _Optional[int] = ..., padding_mode: _Optional[_Union[PaddingMode, str]] = ..., use_bias: _Optional[bool] = ..., activation: _Optional[_Union[Activation, _Mapping]] = ..., dilation: _Optional[int] = ...) -> None: ...

class MaxPool1d(_message.Message):
    __slots__ = ("kernel_size", "stride")
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    kernel_size: int
    stride: int
    def __init__(self, kernel_size: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class AvgPool1d(_message.Message):
    __slots__ = ("kernel_size", "stride")
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    kernel_size: int
    stride: int
    def __init__(self, kernel_size: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class GlobalAvgPool(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpatialDropout(_message.Message):
    __slots__ = ("rate",)
    RATE_FIELD_NUMBER: _ClassVar[int]
    rate: float
    def __init__(self, rate: _Optional[float] = ...) -> None: ...

class ResidualBlock(_message.Message):
    __slots__ = ("layers", "activation")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    activation: Activation
    def __init__(self, layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., activation: _Optional[_Union[Activation, _Mapping]] = ...) -> None: ...

class PatchEmbedding(_message.Message):
    __slots__ = ("patch_size", "embedding_dim")
    PATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    patch_size: int
    embedding_dim: int
    def __init__(self, patch_size: _Optional[int] = ..., embedding_dim: _Optional[int] = ...) -> None: ...

class ClassToken(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PositionEmbedding(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TransformerEncoder(_message.Message):
    __slots__ = ("depth", "heads", "mlp_ratio", "dropout")
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    MLP_RATIO_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    depth: int
    heads: int
    mlp_ratio: float
    dropout: float
    def __init__(self, depth: _Optional[int] = ..., heads: _Optional[int] = ..., mlp_ratio: _Optional[float] = ..., dropout: _Optional[float] = ...) -> None: ...

class TokenPooling(_message.Message):
    __slots__ = ("mode",)
    MODE_FIELD_NUMBER: _ClassVar[int]
    mode: TokenPoolingMode
    def __init__(self, mode: _Optional[_Union[TokenPoolingMode, str]] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("loss", "optimizer", "batching", "epochs", "shuffle", "seed", "validation_split", "l1_penalty", "early_stopping", "input_normalization", "gradient_clip_norm", "schedule", "top_k")
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
    GRADIENT_CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
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
    gradient_clip_norm: float
    schedule: LearningRateSchedule
    top_k: int
    def __init__(self, loss: _Optional[_Union[Loss, _Mapping]] = ..., optimizer: _Optional[_Union[Optimizer, _Mapping]] = ..., batching: _Optional[_Union[Batching, _Mapping]] = ..., epochs: _Optional[int] = ..., shuffle: _Optional[bool] = ..., seed: _Optional[int] = ..., validation_split: _Optional[float] = ..., l1_penalty: _Optional[float] = ..., early_stopping: _Optional[_Union[EarlyStopping, _Mapping]] = ..., input_normalization: _Optional[_Union[InputNormalization, str]] = ..., gradient_clip_norm: _Optional[float] = ..., schedule: _Optional[_Union[LearningRateSchedule, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...

class LearningRateSchedule(_message.Message):
    __slots__ = ("step", "exponential", "cosine", "reduce_on_plateau")
    STEP_FIELD_NUMBER: _ClassVar[int]
    EXPONENTIAL_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    REDUCE_ON_PLATEAU_FIELD_NUMBER: _ClassVar[int]
    step: StepDecay
    exponential: ExponentialDecay
    cosine: CosineDecay
    reduce_on_plateau: ReduceOnPlateau
    def __init__(self, step: _Optional[_Union[StepDecay, _Mapping]] = ..., exponential: _Optional[_Union[ExponentialDecay, _Mapping]] = ..., cosine: _Optional[_Union[CosineDecay, _Mapping]] = ..., reduce_on_plateau: _Optional[_Union[ReduceOnPlateau, _Mapping]] = ...) -> None: ...

class StepDecay(_message.Message):
    __slots__ = ("step_size", "gamma")
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    step_size: int
    gamma: float
    def __init__(self, step_size: _Optional[int] = ..., gamma: _Optional[float] = ...) -> None: ...

class ExponentialDecay(_message.Message):
    __slots__ = ("gamma",)
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    gamma: float
    def __init__(self, gamma: _Optional[float] = ...) -> None: ...

class CosineDecay(_message.Message):
    __slots__ = ("warmup_epochs", "min_learning_rate")
    WARMUP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MIN_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    warmup_epochs: int
    min_learning_rate: float
    def __init__(self, warmup_epochs: _Optional[int] = ..., min_learning_rate: _Optional[float] = ...) -> None: ...

class ReduceOnPlateau(_message.Message):
    __slots__ = ("monitor", "factor", "patience", "min_delta", "min_learning_rate")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    MIN_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    monitor: Metric
    factor: float
    patience: int
    min_delta: float
    min_learning_rate: float
    def __init__(self, monitor: _Optional[_Union[Metric, str]] = ..., factor: _Optional[float] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ..., min_learning_rate: _Optional[float] = ...) -> None: ...

class Loss(_message.Message):
    __slots__ = ("cross_entropy", "mse", "binary_cross_entropy", "mae", "huber")
    CROSS_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    MSE_FIELD_NUMBER: _ClassVar[int]
    BINARY_CROSS_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    MAE_FIELD_NUMBER: _ClassVar[int]
    HUBER_FIELD_NUMBER: _ClassVar[int]
    cross_entropy: CrossEntropyLoss
    mse: MeanSquaredErrorLoss
    binary_cross_entropy: BinaryCrossEntropyLoss
    mae: MeanAbsoluteErrorLoss
    huber: HuberLoss
    def __init__(self, cross_entropy: _Optional[_Union[CrossEntropyLoss, _Mapping]] = ..., mse: _Optional[_Union[MeanSquaredErrorLoss, _Mapping]] = ..., binary_cross_entropy: _Optional[_Union[BinaryCrossEntropyLoss, _Mapping]] = ..., mae: _Optional[_Union[MeanAbsoluteErrorLoss, _Mapping]] = ..., huber: _Optional[_Union[HuberLoss, _Mapping]] = ...) -> None: ...

class CrossEntropyLoss(_message.Message):
    __slots__ = ("label_smoothing", "class_weights")
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    CLASS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    label_smoothing: float
    class_weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label_smoothing: _Optional[float] = ..., class_weights: _Optional[_Iterable[float]] = ...) -> None: ...

class BinaryCrossEntropyLoss(_message.Message):
    __slots__ = ("positive_weight",)
    POSITIVE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    positive_weight: float
    def __init__(self, positive_weight: _Optional[float] = ...) -> None: ...

class MeanAbsoluteErrorLoss(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HuberLoss(_message.Message):
    __slots__ = ("delta",)
    DELTA_FIELD_NUMBER: _ClassVar[int]
    delta: float
    def __init__(self, delta: _Optional[float] = ...) -> None: ...

class MeanSquaredErrorLoss(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Optimizer(_message.Message):
    __slots__ = ("sgd", "adam", "rmsprop", "adamw", "adagrad")
    SGD_FIELD_NUMBER: _ClassVar[int]
    ADAM_FIELD_NUMBER: _ClassVar[int]
    RMSPROP_FIELD_NUMBER: _ClassVar[int]
    ADAMW_FIELD_NUMBER: _ClassVar[int]
    ADAGRAD_FIELD_NUMBER: _ClassVar[int]
    sgd: SGD
    adam: Adam
    rmsprop: RMSprop
    adamw: AdamW
    adagrad: Adagrad
    def __init__(self, sgd: _Optional[_Union[SGD, _Mapping]] = ..., adam: _Optional[_Union[Adam, _Mapping]] = ..., rmsprop: _Optional[_Union[RMSprop, _Mapping]] = ..., adamw: _Optional[_Union[AdamW, _Mapping]] = ..., adagrad: _Optional[_Union[Adagrad, _Mapping]] = ...) -> None: ...

class SGD(_message.Message):
    __slots__ = ("learning_rate", "momentum", "weight_decay", "nesterov")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    momentum: float
    weight_decay: float
    nesterov: bool
    def __init__(self, learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., nesterov: _Optional[bool] = ...) -> None: ...

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

class AdamW(_message.Message):
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

class Adagrad(_message.Message):
    __slots__ = ("learning_rate", "weight_decay", "lr_decay")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    LR_DECAY_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    weight_decay: float
    lr_decay: float
    def __init__(self, learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., lr_decay: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("batch_size", "drop_last")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DROP_LAST_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    drop_last: bool
    def __init__(self, batch_size: _Optional[int] = ..., drop_last: _Optional[bool] = ...) -> None: ...

class EarlyStopping(_message.Message):
    __slots__ = ("monitor", "patience", "min_delta", "restore_best_weights", "mode")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    RESTORE_BEST_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    monitor: Metric
    patience: int
    min_delta: float
    restore_best_weights: bool
    mode: MetricMode
    def __init__(self, monitor: _Optional[_Union[Metric, str]] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ..., restore_best_weights: _Optional[bool] = ..., mode: _Optional[_Union[MetricMode, str]] = ...) -> None: ...

class SummarizeNetworkRequest(_message.Message):
    __slots__ = ("network", "input_shape")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    network: NetworkSpec
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, network: _Optional[_Union[NetworkSpec, _Mapping]] = ..., input_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class NetworkSummary(_message.Message):
    __slots__ = ("layers", "input_shape", "output_shape", "parameter_count", "flops")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerSummary]
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    parameter_count: int
    flops: int
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerSummary, _Mapping]]] = ..., input_shape: _Optional[_Iterable[int]] = ..., output_shape: _Optional[_Iterable[int]] = ..., parameter_count: _Optional[int] = ..., flops: _Optional[int] = ...) -> None: ...

class LayerSummary(_message.Message):
    __slots__ = ("path", "kind", "output_shape", "parameter_count", "flops", "depth")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: str
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    parameter_count: int
    flops: int
    depth: int
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[str] = ..., output_shape: _Optional[_Iterable[int]] = ..., parameter_count: _Optional[int] = ..., flops: _Optional[int] = ..., depth: _Optional[int] = ...) -> None: ...
