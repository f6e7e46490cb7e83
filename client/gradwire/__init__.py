"""gradwire: train neural networks on a gradwire server, from numpy, over gRPC.

    import numpy as np, gradwire as gw
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    with gw.Client("localhost:50051") as client:
        data = client.upload_dataset(X, y, name="digits", class_names=[str(d) for d in range(10)])
        net = gw.Sequential([
            gw.Conv2d(16, kernel_size=3, padding="same"), gw.BatchNorm(), gw.ReLU(), gw.MaxPool2d(2),
            gw.Conv2d(32, kernel_size=3, padding="same"), gw.ReLU(), gw.MaxPool2d(2),
            gw.Flatten(), gw.Dropout(0.25), gw.Dense(10),
        ])
        job = client.train(net, data, optimizer=gw.Adam(learning_rate=1e-3, weight_decay=1e-4),
                           loss="cross_entropy", batch_size=32, epochs=30, validation_split=0.2,
                           early_stopping=gw.EarlyStopping(patience=5), seed=0)
        model = job.wait(progress=True)        # a progress bar with loss and accuracy per epoch
        probs = client.predict(model, X[:5])   # numpy (5, 10); each row sums to 1
        model.download("digits.onnx")

The SDK never imports torch: its dependencies are grpcio, protobuf,
googleapis-common-protos, numpy and tqdm. Generated messages and stubs live in
``gradwire.v1``.
"""

from gradwire._client import Client
from gradwire._errors import (
    AbortedError,
    AlreadyExistsError,
    APIError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    GradwireError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TrainingCancelledError,
    TrainingFailedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from gradwire._layers import (
    ELU,
    GELU,
    AvgPool1d,
    AvgPool2d,
    BatchNorm,
    ClassToken,
    Conv1d,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GroupNorm,
    InstanceNorm,
    Layer,
    LayerNorm,
    LeakyReLU,
    MaxPool1d,
    MaxPool2d,
    Maxout,
    PatchEmbedding,
    PositionEmbedding,
    ReLU,
    ResidualBlock,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    SpatialDropout,
    Tanh,
    TokenPooling,
    TransformerEncoder,
)
from gradwire._resources import (
    Dataset,
    EpochMetrics,
    JobState,
    Model,
    ModelStatistics,
    Prediction,
    RegisteredModel,
    TrainingEvent,
    TrainingJob,
)
from gradwire._tensors import from_tensor, to_tensor
from gradwire._summary import NetworkSummary
from gradwire._training import (
    MAE,
    MSE,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    BinaryCrossEntropy,
    CosineDecay,
    CrossEntropy,
    EarlyStopping,
    ExponentialDecay,
    Huber,
    Loss,
    Optimizer,
    ReduceOnPlateau,
    RMSprop,
    Schedule,
    StepDecay,
)

# Kept equal to pyproject.toml's version (hard-coded: importlib.metadata would report whatever
# other copy happens to be installed when the package runs from a source tree).
__version__ = "0.1.0"

__all__ = [
    "__version__",
    # client and resources
    "Client",
    "Dataset",
    "TrainingJob",
    "Model",
    "RegisteredModel",
    "JobState",
    "EpochMetrics",
    "TrainingEvent",
    "ModelStatistics",
    "Prediction",
    # network
    "Layer",
    "Sequential",
    "Dense",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "Flatten",
    "Dropout",
    "BatchNorm",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "ELU",
    "Softmax",
    "Maxout",
    "GELU",
    "SiLU",
    "LayerNorm",
    "InstanceNorm",
    "GroupNorm",
    "Conv1d",
    "MaxPool1d",
    "AvgPool1d",
    "GlobalAvgPool",
    "SpatialDropout",
    "ResidualBlock",
    "PatchEmbedding",
    "ClassToken",
    "PositionEmbedding",
    "TransformerEncoder",
    "TokenPooling",
    "NetworkSummary",
    # training
    "Optimizer",
    "SGD",
    "Adam",
    "RMSprop",
    "AdamW",
    "Adagrad",
    "EarlyStopping",
    "Loss",
    "CrossEntropy",
    "BinaryCrossEntropy",
    "MSE",
    "MAE",
    "Huber",
    "Schedule",
    "StepDecay",
    "ExponentialDecay",
    "CosineDecay",
    "ReduceOnPlateau",
    # tensors
    "to_tensor",
    "from_tensor",
    # errors
    "GradwireError",
    "APIError",
    "FieldViolation",
    "InvalidArgumentError",
    "OutOfRangeError",
    "NotFoundError",
    "AlreadyExistsError",
    "FailedPreconditionError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "DeadlineExceededError",
    "UnavailableError",
    "CancelledError",
    "AbortedError",
    "UnimplementedError",
    "InternalError",
    "TrainingFailedError",
    "TrainingCancelledError",
]
