"""``gw.Client``: one channel, three service stubs, numpy in and numpy out.

    import numpy as np, gradwire as gw

    X = np.random.rand(150, 4).astype(np.float32); y = np.arange(150) % 3
    with gw.Client("localhost:50051", timeout=30.0) as client:
        job = client.train([gw.Dense(16), gw.ReLU(), gw.Dense(3)], (X, y),
                           optimizer=gw.SGD(0.1), epochs=20, batch_size=16)
        model = job.wait()
        print(client.predict(model, X[:2]).shape)      # (2, 3)

Every call goes through ``_unary`` / ``_server_stream`` / ``_client_stream``,
which apply the default deadline and the credentials' metadata, and turn any
``grpc.RpcError`` into the matching ``gw.APIError`` subclass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import pathlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar, Union

import grpc
import numpy as np

from gradwire._errors import GradwireError, InvalidArgumentError, translate_rpc_errors
from gradwire._layers import (
    INT64_MAX, Layer, Sequential, check_bool, check_float, check_int, check_str, check_strs, check_timeout,
    network_proto,
)
from gradwire._resources import (
    DEFAULT,
    Dataset,
    Model,
    ModelStatistics,
    Prediction,
    RegisteredModel,
    TrainingEvent,
    TrainingJob,
    _Resource,
)
from gradwire._summary import NetworkSummary
from gradwire._tensors import (DTYPES, as_wire_array, feature_array, fill_tensor, from_tensor, non_finite, numeric_array,
                               rectangular_array, to_tensor, with_tensor)
from gradwire._training import (
    BatchingName,
    EarlyStopping,
    Loss,
    LossName,
    NormalizationName,
    Optimizer,
    Schedule,
    training_config,
)
from gradwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    tensor_pb2,
    training_pb2,
    training_pb2_grpc,
)

__all__ = ["Client"]

T = TypeVar("T")
LabelKindName = Literal["classes", "regression", "multi_label"]
PrecisionName = Literal["fp32", "tf32", "bf16"]
DatasetRef = Union[Dataset, str, tuple[Any, Any]]
NetworkRef = Union[Sequential, Sequence[Layer], network_pb2.NetworkSpec]


_LABEL_KINDS = {"classes": datasets_pb2.LABEL_KIND_CLASSES, "regression": datasets_pb2.LABEL_KIND_REGRESSION,
                "multi_label": datasets_pb2.LABEL_KIND_MULTI_LABEL}
_PAGE_SIZE = 200
_MiB = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 64 * _MiB  # the server's default GRADWIRE_MAX_MESSAGE_BYTES


def _pem(value: bytes | str | os.PathLike[str] | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return pathlib.Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {os.fspath(value)!r}: {exc.strerror}") from None


class Client:
    """A connection to a gradwire server.

    Args:
        target: ``host:port`` of the server.
        timeout: default deadline in seconds of every unary call (``None``: no
            deadline). Each method also takes ``timeout=`` for that call alone.
            Streams (upload, watch, export) have no default deadline.
        max_message_bytes: largest single message sent or received, the same
            64 MiB as the server's default (``GRADWIRE_MAX_MESSAGE_BYTES``); raise
            both together for a larger inline dataset. ``predict`` sends a batch
            past half of it as several requests, and uploads stream in chunks:
            neither needs it raised.
        token: bearer token sent as ``authorization: Bearer <token>`` on every
            call (servers started with ``GRADWIRE_AUTH_TOKENS`` require one).
        tls: speak TLS (implied by any of the three PEM options below).
        root_certificates: PEM bytes or a file path of the CA that signed the
            server's certificate (default: the system's roots).
        certificate_chain, private_key: PEM bytes or file paths of this client's
            certificate and key, for servers that require mutual TLS.
        channel_options: extra ``grpc`` channel options, ``[(key, value), ...]``.
        connections: how many connections ``predict`` and ``predict_full`` spread their calls
            over, in turn (every other call uses the first). 1, the default, shares one
            connection with the other clients of this process to the same target, as gRPC
            does; above 1 each is this client's own. A server with ``GRADWIRE_RPC_PROCESSES``
            hands each connection to one of its processes, so a client whose threads predict
            concurrently reaches several processes only with several connections. At most
            MAX_CONNECTIONS (256): each is a channel and a TCP connection of its own.
        credentials: a ready ``grpc.ChannelCredentials`` (instead of the TLS
            options above); plaintext when neither is given.
        metadata: ``[(key, value), ...]`` sent with every call.

    Use it as a context manager, or call ``close()``:

    >>> import gradwire as gw
    >>> with gw.Client("localhost:50051") as client:   # doctest: +SKIP
    ...     print([d.name for d in client.list_datasets()])
    >>> client = gw.Client("gradwire.example.com:443", token="s3cret",
    ...                    root_certificates="ca.pem")   # doctest: +SKIP
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = 30.0,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        certificate_chain: bytes | str | os.PathLike[str] | None = None,
        private_key: bytes | str | os.PathLike[str] | None = None,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        connections: int = 1,
    ) -> None:
        check_str("target", target)
        timeout = check_timeout(timeout)
        connections = check_int("connections", connections, minimum=1, maximum=MAX_CONNECTIONS)
        options = list(channel_options or ())
        if max_message_bytes is not None:
            max_message_bytes = check_int("max_message_bytes", max_message_bytes, minimum=1)
            options += [
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ]
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (mutual TLS needs both)")
        if token is not None and (not check_str("token", token) or any(c.isspace() for c in token)):
            raise ValueError("token must be non-empty and without spaces")
        if credentials is None and (tls or root_certificates or certificate_chain):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates, "root_certificates"),
                private_key=_pem(private_key, "private_key"),
                certificate_chain=_pem(certificate_chain, "certificate_chain"),
            )
        self.target = target
        self.timeout = timeout
        self._metadata = tuple(metadata or ()) + ((("authorization", f"Bearer {token}"),) if token else ())
        if connections > 1:  # a subchannel pool of its own each: separate connections
            options.append(("grpc.use_local_subchannel_pool", 1))
        if credentials is None:
            self._channels = [grpc.insecure_channel(target, options=options) for _ in range(connections)]
        else:
            self._channels = [grpc.secure_channel(target, credentials, options=options) for _ in range(connections)]
        self._channel = self._channels[0]
        self._datasets = datasets_pb2_grpc.DatasetServiceStub(self._channel)
        self._jobs = training_pb2_grpc.TrainingJobServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)
        # Predict's stub method of each connection, in turn (a C iterator: safe across threads); and
        # one that sends a request already serialized (a large one: see _predict)
        self._predict_methods = itertools.cycle([
            (models_pb2_grpc.ModelServiceStub(c).Predict,
             c.unary_unary(PREDICT_METHOD, request_serializer=None, response_deserializer=models_pb2.PredictResponse.FromString))
            for c in self._channels])
        self._network = network_pb2_grpc.NetworkServiceStub(self._channel)
        self._shapes: dict[str, _Shapes] = {}  # models are immutable: cache per name
        # predict splits a batch whose request or response would pass this (half the message limit)
        self._split_bytes = (max_message_bytes if max_message_bytes is not None else GRPC_DEFAULT_RECEIVE_BYTES) // 2

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel (every connection); calls in flight are cancelled."""
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the token
        return f"<gradwire.Client target={self.target!r} timeout={self.timeout}>"

    def wait_for_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel connects (every connection); raises UnavailableError after ``timeout`` s."""
        seconds = check_timeout(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            for channel in self._channels:
                grpc.channel_ready_future(channel).result(
                    timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except grpc.FutureTimeoutError:
            from gradwire._errors import UnavailableError

            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE, f"no server at {self.target} within {timeout}s"
            ) from None

    # --- the one place calls are made ----------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is DEFAULT else check_timeout(timeout)

    def _unary(self, method: Callable[..., T], request: Any, timeout: float | None = DEFAULT) -> T:
        with translate_rpc_errors():
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)

    def _server_stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Iterator[Any]:
        with translate_rpc_errors():
            call = method(request, timeout=check_timeout(timeout), metadata=self._metadata)
            try:
                yield from call
            finally:
                call.cancel()  # the caller stopped early: end the RPC (no-op once it has finished)

    def _client_stream(self, method: Callable[..., T], requests: Iterator[Any], timeout: float | None) -> T:
        with translate_rpc_errors():
            return method(requests, timeout=check_timeout(timeout), metadata=self._metadata)

    def _pages(self, method: Callable[..., Any], request_type: type, field: str, **request_fields: Any) -> list[Any]:
        items: list[Any] = []
        token = ""
        while True:
            response = self._unary(method, request_type(page_size=_PAGE_SIZE, page_token=token, **request_fields))
            items.extend(getattr(response, field))
            token = response.next_page_token
            if not token:
                return items

    # --- datasets ------------------------------------------------------------------------

    def upload_dataset(
        self,
        features: Any,
        labels: Any,
        *,
        name: str = "",
        class_names: Sequence[str] | None = None,
        label_kind: LabelKindName | None = None,
        chunk_bytes: int = _MiB,
        timeout: float | None = None,
    ) -> Dataset:
        """Uploads a dataset in chunks (no 4 MiB ceiling) and returns it.

        Args:
            features: array ``[examples, ...]``, sent as float32.
            labels: ``[examples]`` class indices, or ``[examples]`` /
                ``[examples, targets]`` regression targets.
            name: display name.
            class_names: name of class i at index i (classification only).
            label_kind: ``"classes"``, ``"regression"`` or ``"multi_label"`` (a
                [examples, labels] matrix of 0 / 1; train it with
                ``loss="binary_cross_entropy"``); ``None`` infers it from
                the labels' dtype: integers are classes, floats regression targets.
            chunk_bytes: bytes per streamed message.
            timeout: deadline for the whole upload (default: none).

        >>> data = client.upload_dataset(X, y, name="digits")   # doctest: +SKIP
        >>> data.example_count, data.feature_shape              # doctest: +SKIP
        (1797, (1, 8, 8))
        """
        chunk_bytes = check_int("chunk_bytes", chunk_bytes, minimum=1)
        check_str("name", name)
        if class_names is not None:
            class_names = check_strs("class_names", class_names)
        feats, labs, kind = _prepare_dataset(features, labels, label_kind, class_names)
        header = datasets_pb2.DatasetUploadHeader(
            display_name=name,
            features_shape=feats.shape,
            features_dtype=tensor_pb2.DATA_TYPE_FLOAT32,
            labels_shape=labs.shape,
            labels_dtype=DTYPES[labs.dtype],
            label_kind=_LABEL_KINDS[kind],
            class_names=list(class_names or ()),
        )
        requests = _upload_requests(header, feats, labs, chunk_bytes)
        return Dataset(self, self._client_stream(self._datasets.UploadDataset, requests, timeout))

    def get_dataset(self, name: str | Dataset, *, timeout: float | None = DEFAULT) -> Dataset:
        """The dataset ``datasets/{id}``."""
        request = datasets_pb2.GetDatasetRequest(name=_name(name))
        return Dataset(self, self._unary(self._datasets.GetDataset, request, timeout))

    def list_datasets(self) -> list[Dataset]:
        """All datasets, newest first (every page)."""
        protos = self._pages(self._datasets.ListDatasets, datasets_pb2.ListDatasetsRequest, "datasets")
        return [Dataset(self, p) for p in protos]

    def delete_dataset(self, name: str | Dataset, *, timeout: float | None = DEFAULT) -> None:
        """Deletes a dataset (refused with FailedPreconditionError while a job uses it)."""
        self._unary(self._datasets.DeleteDataset, datasets_pb2.DeleteDatasetRequest(name=_name(name)), timeout)

    # --- training ------------------------------------------------------------------------

    def train(
        self,
        network: NetworkRef,
        dataset: DatasetRef,
        *,
        optimizer: Optimizer,
        loss: LossName | Loss = "cross_entropy",
        epochs: int,
        batch_size: int | None = None,
        batching: BatchingName | None = None,
        drop_last: bool = False,
        schedule: Schedule | None = None,
        gradient_clip_norm: float | None = None,
        top_k: int | None = None,
        test_data: DatasetRef | None = None,
        validation_split: float = 0.0,
        early_stopping: EarlyStopping | None = None,
        seed: int | None = None,
        shuffle: bool = True,
        l1_penalty: float = 0.0,
        input_normalization: NormalizationName | None = None,
        name: str = "",
        registered_model: str | None = None,
        aliases: Sequence[str] = (),
        precision: PrecisionName | None = None,
        channels_last: bool = False,
        request_id: str | None = None,
        timeout: float | None = DEFAULT,
    ) -> TrainingJob:
        """Queues a training job and returns it at once (state QUEUED); ``job.wait()`` follows it.

        Args:
            network: a ``gw.Sequential``, a list of layers, or a NetworkSpec.
            dataset: a ``Dataset``, a ``"datasets/{id}"`` name, or a small
                ``(features, labels)`` tuple sent inline.
            optimizer: ``gw.SGD(...)``, ``gw.Adam(...)`` or ``gw.RMSprop(...)``.
            loss: ``"cross_entropy"`` or ``"binary_cross_entropy"`` (class labels;
                binary needs 2 classes and ONE output), ``"mse"``, ``"mae"`` or
                ``"huber"`` (regression), or a builder such as
                ``gw.CrossEntropy(label_smoothing=0.1, class_weights=[...])``.
            epochs: passes over the training split.
            batch_size: examples per step (mini-batch gradient descent).
            batching: ``"full"`` (batch GD), ``"online"`` (one example per step) or
                ``"mini_batch"`` (needs ``batch_size``). One of the two is required.
            drop_last: skip each epoch's last, smaller mini-batch.
            schedule: ``gw.StepDecay``, ``gw.ExponentialDecay``, ``gw.CosineDecay``
                or ``gw.ReduceOnPlateau``; the rate of each epoch is in the history.
            gradient_clip_norm: clip the global gradient L2 norm to this value.
            top_k: k of the top-k accuracy in the evaluations (default min(5, classes)).
            test_data: a dataset scored once at the end (``model.test_evaluation``):
                a ``Dataset``, a name, or a ``(features, labels)`` tuple.
            validation_split: fraction held out for validation, in [0, 1).
            early_stopping: ``gw.EarlyStopping(patience=...)``.
            seed: for weight init, the split, shuffling and dropout (None: drawn).
            shuffle: reshuffle the training split every epoch.
            l1_penalty: L1 coefficient (L2 is the optimizer's ``weight_decay``).
            input_normalization: ``"none"``, ``"min_max"`` or ``"standardize"``,
                fitted on the training split and baked into the exported graph.
            name: display name.
            registered_model: publish the trained model as the next version of
                this registered model (``"digits"`` or ``"registeredModels/digits"``;
                created if absent); ``latest`` moves to it.
            aliases: aliases to point at that version, e.g. ``["production"]``.
            precision: ``"fp32"`` (default), ``"tf32"`` or ``"bf16"`` (mixed precision;
                the exported model stays float32).
            channels_last: NHWC activations for convolutional networks (faster on GPUs).
            request_id: makes the call idempotent: a retry with the same id returns
                the job the first call created, never a second one (default: a
                fresh UUID per call, so the SDK's own retries are safe).

        >>> job = client.train([gw.Dense(3)], data, optimizer=gw.Adam(), epochs=10,
        ...                    batching="full")                      # doctest: +SKIP
        """
        check_str("name", name)
        if request_id is not None:
            check_str("request_id", request_id)
        check_bool("channels_last", channels_last)
        config = training_config(
            optimizer=optimizer,
            loss=loss,
            epochs=epochs,
            batch_size=batch_size,
            batching=batching,
            drop_last=drop_last,
            schedule=schedule,
            gradient_clip_norm=gradient_clip_norm,
            top_k=top_k,
            validation_split=validation_split,
            early_stopping=early_stopping,
            seed=seed,
            shuffle=shuffle,
            l1_penalty=l1_penalty,
            input_normalization=input_normalization,
        )
        request = training_pb2.CreateTrainingJobRequest(
            display_name=name,
            network=network_proto(network),
            training=config,
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
        )
        if registered_model is not None and registered_model != "":  # a 0 or [] is refused, not taken for none
            request.registered_model = _registered(registered_model, "registered_model")
        request.aliases.extend(check_strs("aliases", aliases))
        if precision is not None or channels_last:
            if precision is not None and (not isinstance(precision, str) or precision not in _PRECISIONS):
                raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
            request.performance.precision = _PRECISIONS[precision or "fp32"]
            request.performance.channels_last = channels_last
        if isinstance(dataset, Dataset):
            request.dataset = dataset.name
        elif isinstance(dataset, str):
            request.dataset = dataset
        elif isinstance(dataset, tuple) and len(dataset) == 2:
            request.inline_dataset.CopyFrom(_inline_dataset(*dataset, display_name=name))
        else:
            raise TypeError(
                f"dataset must be a gw.Dataset, a 'datasets/...' name or a (features, labels) tuple, "
                f"got {type(dataset).__name__}"
            )
        if isinstance(test_data, Dataset):
            request.test_dataset = test_data.name
        elif isinstance(test_data, str):
            request.test_dataset = test_data
        elif isinstance(test_data, tuple) and len(test_data) == 2:
            test_name = f"{name[:MAX_DISPLAY_NAME_CHARS - len(TEST_SET_SUFFIX)]}{TEST_SET_SUFFIX}"  # within the bound
            request.inline_test_dataset.CopyFrom(_inline_dataset(*test_data, display_name=test_name))
        elif test_data is not None:
            raise TypeError(
                f"test_data must be a gw.Dataset, a 'datasets/...' name, a (features, labels) tuple or None, "
                f"got {type(test_data).__name__}"
            )
        return TrainingJob(self, self._unary(self._jobs.CreateTrainingJob, request, timeout))

    def summary(self, network: NetworkRef, input_shape: Sequence[int] | Dataset, *,
                timeout: float | None = DEFAULT) -> NetworkSummary:
        """Each layer's output shape, parameter count and FLOPs per example, without
        training (like Keras' ``model.summary()``); ``print()`` it for a table.

        Args:
            network: a ``gw.Sequential``, a list of layers, or a NetworkSpec.
            input_shape: one example's shape, e.g. ``(1, 8, 8)``, or a ``Dataset``.

        >>> print(client.summary(net, (1, 8, 8)))                       # doctest: +SKIP
        """
        if isinstance(input_shape, Dataset):
            input_shape = input_shape.feature_shape
        if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
            raise TypeError(f"input_shape must be a sequence of ints such as (1, 8, 8), got {input_shape!r}")
        shape = [check_int(f"input_shape[{i}]", d, minimum=1, maximum=INT64_MAX) for i, d in enumerate(input_shape)]
        if not shape:
            raise ValueError("input_shape must name at least one axis, got ()")
        request = network_pb2.SummarizeNetworkRequest(network=network_proto(network), input_shape=shape)
        return NetworkSummary.from_proto(self._unary(self._network.SummarizeNetwork, request, timeout))

    def get_job(self, name: str | TrainingJob, *, timeout: float | None = DEFAULT) -> TrainingJob:
        """The job ``trainingJobs/{id}``, with its per-epoch history."""
        request = training_pb2.GetTrainingJobRequest(name=_name(name))
        return TrainingJob(self, self._unary(self._jobs.GetTrainingJob, request, timeout))

    def list_jobs(self) -> list[TrainingJob]:
        """All jobs, newest first (without their history: ``job.refresh()`` fetches it)."""
        protos = self._pages(self._jobs.ListTrainingJobs, training_pb2.ListTrainingJobsRequest, "training_jobs")
        return [TrainingJob(self, p) for p in protos]

    def cancel_job(self, name: str | TrainingJob, *, timeout: float | None = DEFAULT) -> TrainingJob:
        """Cancels a queued or running job (FailedPreconditionError once it has finished). Once
        accepted, the job ends CANCELLED, even when its last epoch had already run (a model it was
        exporting is discarded, never published)."""
        request = training_pb2.CancelTrainingJobRequest(name=_name(name))
        return TrainingJob(self, self._unary(self._jobs.CancelTrainingJob, request, timeout))

    def watch_job(self, name: str | TrainingJob, *, timeout: float | None = None) -> Iterator[TrainingEvent]:
        """The job's events: its history replayed, then live ones until it ends.

        Each stream holds one of the server's RPC threads; when the server already has its limit
        of them open (``GRADWIRE_MAX_WATCH_STREAMS``) this raises ``ResourceExhaustedError``.
        ``job.wait()`` then follows the job by polling instead.

        >>> for event in client.watch_job(job):                   # doctest: +SKIP
        ...     print(event.sequence, event.state, event.epoch)
        """
        request = training_pb2.WatchTrainingJobRequest(name=_name(name))
        for event in self._server_stream(self._jobs.WatchTrainingJob, request, timeout):
            yield TrainingEvent.from_proto(event)

    # --- models --------------------------------------------------------------------------

    def get_model(self, name: str | Model, *, timeout: float | None = DEFAULT) -> Model:
        """The model ``models/{id}``."""
        proto = self._unary(self._models.GetModel, models_pb2.GetModelRequest(name=_name(name)), timeout)
        self._shapes[proto.name] = _Shapes.of(proto)
        return Model(self, proto)

    def list_models(self) -> list[Model]:
        """All models, newest first (every page)."""
        protos = self._pages(self._models.ListModels, models_pb2.ListModelsRequest, "models")
        return [Model(self, p) for p in protos]

    def delete_model(self, name: str | Model, *, timeout: float | None = DEFAULT) -> None:
        """Deletes a model and its ONNX file."""
        self._unary(self._models.DeleteModel, models_pb2.DeleteModelRequest(name=_name(name)), timeout)

    def predict(self, model: str | Model, features: Any, *, timeout: float | None = DEFAULT) -> np.ndarray:
        """Runs the model: softmax probabilities ``(n, classes)`` for a classifier,
        predicted values ``(n, targets)`` for a regression model.

        ``features`` is ``(n, *model.input_shape)``, sent as float32 (raw,
        unnormalized: the model's normalization is baked in). A single example
        of exactly ``model.input_shape`` is accepted too; its result then has no
        batch axis either (``(classes,)``). The result is a read-only view of the
        response (``.copy()`` it to modify in place). A batch whose request or
        answer would pass half of ``max_message_bytes`` is sent as several
        requests that fit (two in flight, ``timeout`` for each), joined in order.

        >>> probs = client.predict(model, X[:5])    # doctest: +SKIP
        >>> probs.shape, probs.sum(axis=1).round(3)  # doctest: +SKIP
        ((5, 10), array([1., 1., 1., 1., 1.], dtype=float32))
        """
        return self._predict_call(model, features, timeout, _output, lambda out: out[0], OUTPUT_ONLY)

    def predict_full(self, model: str | Model, features: Any, *, timeout: float | None = DEFAULT) -> Prediction:
        """Runs the model and returns everything: probabilities, class indices and
        names (classifiers) or values (regression), as a ``gw.Prediction``.

        >>> p = client.predict_full(model, X[:3])      # doctest: +SKIP
        >>> p.classes, p.class_names                   # doctest: +SKIP
        (array([0, 1, 2]), ['0', '1', '2'])
        """
        return self._predict_call(model, features, timeout, _prediction, _first)

    def _predict_call(self, model: str | Model, features: Any, timeout, decode: Callable[[Any], T],
                      first: Callable[[T], T], fields: Sequence[str] = ()) -> T:
        """One Predict: ``decode`` turns the response into the result (``predict`` decodes only the
        output tensor), ``first`` drops the batch axis of a single example's result, ``fields`` is
        the request's read_mask (empty: every field)."""
        name = _name(model, "model")
        feats = feature_array(features)  # compact integer and half-float features travel as they are
        try:
            return self._predict(name, feats, self._shapes_of(model) if isinstance(model, Model) else None, timeout,
                                 decode, first, fields)
        except InvalidArgumentError as err:
            # An alias (`registeredModels/x@production`) may have moved to a version with another
            # input shape since its shape was cached: look it up again and retry once.
            if err.field != "features.shape" or name.startswith("models/") or name not in self._shapes:
                raise
            del self._shapes[name]
            return self._predict(name, feats, None, timeout, decode, first, fields)

    def _predict(self, name: str, feats: np.ndarray, shapes: _Shapes | None, timeout,
                 decode: Callable[[Any], T], first: Callable[[T], T], fields: Sequence[str]) -> T:
        shapes = shapes if shapes is not None else self._model_shapes(name)
        single = feats.shape == shapes.input_shape
        if single:
            feats = feats[np.newaxis]  # (1, *input_shape)
        rows = shapes.rows_within(self._split_bytes, feats.itemsize, full=not fields)
        if len(feats) <= rows:
            method, serialized = next(self._predict_methods)
            call, request = _predict_request(method, serialized, name, feats, fields)
            result = decode(self._unary(call, request, timeout))
        else:  # several requests, two in flight: the next one's bytes travel while the server runs one
            why = non_finite(feats)
            if why is not None:  # the server's check, with the row counted in the whole batch, not in its request
                raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"features: {why}")
            parts: list[T] = []
            pending: list[grpc.Future] = []
            try:
                for start in range(0, len(feats), rows):
                    method, serialized = next(self._predict_methods)
                    call, request = _predict_request(method, serialized, name, feats[start:start + rows], fields)
                    with translate_rpc_errors():
                        pending.append(call.future(request, timeout=self._deadline(timeout), metadata=self._metadata))
                        if len(pending) == 2:
                            parts.append(decode(pending.pop(0).result()))
                with translate_rpc_errors():
                    parts += [decode(f.result()) for f in pending]
            finally:
                for f in pending:
                    f.cancel()  # a request failed: the rest are not waited for (no-op once finished)
            result = _joined(parts)
        return first(result) if single else result

    # --- the model registry ------------------------------------------------------------

    def publish_model(
        self, model: str | Model, registered_model: str, *, aliases: Sequence[str] = (), timeout: float | None = DEFAULT
    ) -> Model:
        """Publishes a model as the next version of ``registered_model`` (created if absent).
        The server loads the model's session first, so the first request by the new version's
        names does not wait for it.

        >>> v = client.publish_model(model, "digits", aliases=["production"])  # doctest: +SKIP
        >>> v.version, v.aliases                                              # doctest: +SKIP
        (1, ['latest', 'production'])
        """
        request = models_pb2.PublishModelRequest(name=_name(model, "model"), registered_model=_registered(registered_model, "registered_model"),
                                                 aliases=check_strs("aliases", aliases))
        return Model(self, self._unary(self._models.PublishModel, request, timeout))

    def get_registered_model(self, name: str, *, timeout: float | None = DEFAULT) -> RegisteredModel:
        """``"digits"`` or ``"registeredModels/digits"``: its latest version and aliases."""
        request = models_pb2.GetRegisteredModelRequest(name=_registered(name))
        return RegisteredModel(self, self._unary(self._models.GetRegisteredModel, request, timeout))

    def list_registered_models(self) -> list[RegisteredModel]:
        """All registered models, newest first (every page)."""
        protos = self._pages(self._models.ListRegisteredModels, models_pb2.ListRegisteredModelsRequest, "registered_models")
        return [RegisteredModel(self, p) for p in protos]

    def list_model_versions(self, name: str) -> list[Model]:
        """A registered model's versions, newest first (every page)."""
        protos = self._pages(self._models.ListModelVersions, models_pb2.ListModelVersionsRequest, "models",
                             parent=_registered(name))
        return [Model(self, p) for p in protos]

    def set_alias(self, name: str, alias: str, version: int, *, timeout: float | None = DEFAULT) -> RegisteredModel:
        """Points ``alias`` (e.g. ``"production"``) at ``version``, moving it if it exists. The
        server loads that version's session before the alias moves (0.17 s for a 76 MB model),
        so the first request by the alias after this returns does not wait for it."""
        request = models_pb2.SetModelAliasRequest(name=_registered(name), alias=check_str("alias", alias),
                                                  version=check_int("version", version, minimum=1, maximum=INT64_MAX))
        self._shapes.pop(f"{request.name}@{alias}", None)
        return RegisteredModel(self, self._unary(self._models.SetModelAlias, request, timeout))

    def delete_alias(self, name: str, alias: str, *, timeout: float | None = DEFAULT) -> RegisteredModel:
        """Removes ``alias`` (``latest`` cannot be removed)."""
        request = models_pb2.DeleteModelAliasRequest(name=_registered(name), alias=check_str("alias", alias))
        return RegisteredModel(self, self._unary(self._models.DeleteModelAlias, request, timeout))

    def delete_registered_model(self, name: str, *, force: bool = False, timeout: float | None = DEFAULT) -> None:
        """Deletes a registered model and its aliases. Refused while it still has versions unless
        ``force=True``, which deletes every version's model (and ONNX file) with it."""
        if not isinstance(force, bool):
            raise TypeError(f"force must be a bool, got {force!r}")
        request = models_pb2.DeleteRegisteredModelRequest(name=_registered(name), force=force)
        self._unary(self._models.DeleteRegisteredModel, request, timeout)

    def set_batching(
        self,
        model: str | Model,
        *,
        enabled: bool | None = None,
        max_batch_size: int = 0,
        max_delay_ms: float = 0.0,
        clear: bool = False,
        timeout: float | None = DEFAULT,
    ) -> Model:
        """Overrides the server's dynamic batching for one model version (``clear=True``: back to
        the server's defaults). Zero / None keeps the server's default for that setting."""
        request = models_pb2.UpdateModelBatchingRequest(name=_name(model, "model"))
        if not check_bool("clear", clear):
            request.dynamic_batching.max_batch_size = check_int("max_batch_size", max_batch_size, minimum=0)
            delay = check_float("max_delay_ms", max_delay_ms, low=0.0, high=INT64_MAX / 1000)
            request.dynamic_batching.max_delay_micros = round(delay * 1000)
            if enabled is not None:
                request.dynamic_batching.enabled = check_bool("enabled", enabled)
        return Model(self, self._unary(self._models.UpdateModelBatching, request, timeout))

    def statistics(self, model: str | Model | None = None, *, timeout: float | None = DEFAULT) -> list[ModelStatistics]:
        """What the server answered for ``model`` (a ``Model``, ``models/{id}`` or
        ``registeredModels/{name}[@{version or alias}]``), or for every model it has served
        (``None``): requests, rows, onnxruntime calls by batch size, and where the time went.
        Counted since the server started (with several RPC processes, the others' counts are
        up to 0.5 s late).

        >>> (s,) = client.statistics(model)            # doctest: +SKIP
        >>> s.rows / s.executions, s.queue_us          # doctest: +SKIP
        (7.6, 310.2)
        """
        # Imported here: gradwire.kserve registers the `inference.*` protobuf symbols, which an
        # Open Inference Protocol client in the same process (tritonclient) registers too.
        from gradwire.kserve import grpc_service_pb2, grpc_service_pb2_grpc

        request = grpc_service_pb2.ModelStatisticsRequest()
        if model is not None:
            name = _name(model, "model")
            if name.startswith("models/"):
                request.name = name.split("/", 1)[1]
            elif name.startswith("registeredModels/"):
                request.name, _, request.version = name.split("/", 1)[1].partition("@")
            else:
                raise ValueError(f"model must be a Model, 'models/{{id}}' or 'registeredModels/{{name}}[@{{version}}]', got {name!r}")
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        response = self._unary(stub.ModelStatistics, request, timeout)
        return [ModelStatistics.from_proto(m) for m in response.model_stats]

    def _shapes_of(self, model: Model) -> _Shapes:
        shapes = self._shapes.get(model.proto.name)  # a model id's: computed once
        if shapes is None:
            shapes = self._shapes[model.proto.name] = _Shapes.of(model.proto)
        return shapes

    def _model_shapes(self, name: str) -> _Shapes:
        if name not in self._shapes:
            # Alias names are cached too; predict_full looks one up again when the server says the
            # shape no longer fits (the alias moved to a version with another input shape).
            self._shapes[name] = _Shapes.of(self.get_model(name).proto)
        return self._shapes[name]

    def export_model(
        self, model: str | Model, path: str | os.PathLike[str], *, timeout: float | None = None
    ) -> pathlib.Path:
        """Streams the model's ONNX file to ``path`` and returns the path.

        Written to a temporary file beside ``path``, fsynced, then renamed, so
        ``path`` never holds a partial file. With a ``Model`` (not a bare name)
        the bytes are checked against its ``onnx_sha256``.

        >>> client.export_model(model, "digits.onnx")   # doctest: +SKIP
        PosixPath('digits.onnx')
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or a path (os.PathLike), got {path!r}")
        if not os.fspath(path):
            raise ValueError("path must name the file to write, such as 'model.onnx', got ''")
        path = pathlib.Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"path {str(path)!r} is a directory: name the file to write, such as "
                                    f"{str(path / 'model.onnx')!r}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"path {str(path)!r}: its directory {str(path.parent)!r} does not exist")
        expected = model.onnx_sha256 if isinstance(model, Model) else ""
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        digest = hashlib.sha256()
        request = models_pb2.ExportModelRequest(name=_name(model, "model"))
        try:
            with open(tmp, "wb") as f:
                for response in self._server_stream(self._models.ExportModel, request, timeout):
                    f.write(response.chunk_data)
                    digest.update(response.chunk_data)
                f.flush()
                os.fsync(f.fileno())
            if expected and digest.hexdigest() != expected:
                raise GradwireError(
                    f"{request.name}: downloaded ONNX has sha256 {digest.hexdigest()}, expected {expected}"
                )
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


# --- helpers ---------------------------------------------------------------------------


MAX_CONNECTIONS = 256  # Client(connections=): each is a channel and a connection of its own
MAX_DISPLAY_NAME_CHARS = 1024  # the server's bound on a display name (its datasets.MAX_DISPLAY_NAME_CHARS)
TEST_SET_SUFFIX = " (test)"  # an inline test set's display name: the job's, then this

_PRECISIONS = {
    "fp32": training_pb2.TrainingPerformance.PRECISION_FP32,
    "tf32": training_pb2.TrainingPerformance.PRECISION_TF32,
    "bf16": training_pb2.TrainingPerformance.PRECISION_BF16,
}


def _registered(name: str, field: str = "name") -> str:
    """``"digits"`` -> ``"registeredModels/digits"`` (full names pass through). ``field``: the
    argument's name, for the error."""
    if isinstance(name, RegisteredModel):
        return name.name
    if not isinstance(name, str):
        raise TypeError(f"{field} must be a registered model's name (a str such as 'digits') or a "
                        f"gw.RegisteredModel, got {name!r}")
    return name if name.startswith("registeredModels/") else f"registeredModels/{name}"


def _name(resource: str | _Resource[Any], field: str = "name") -> str:
    """A resource's name, from the object or the name itself. ``field``: the argument's name, for the error."""
    if isinstance(resource, _Resource):
        return resource.name
    if isinstance(resource, str):
        return resource
    raise TypeError(f"{field} must be a resource name (a str) or a gradwire object such as gw.Model, got {resource!r}")


def _prepare_dataset(
    features: Any, labels: Any, label_kind: LabelKindName | None, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, LabelKindName]:
    """Features as C-contiguous '<f4'; labels as '<i8' (classes) or '<f4' (regression)."""
    given = numeric_array(features, "features")
    if given.ndim < 2:
        raise ValueError(
            f"features must be [examples, ...] with at least 2 axes, got shape {given.shape} "
            "(one feature per example? reshape(-1, 1))"
        )
    with np.errstate(over="ignore"):  # a float64 past float32's range: said below, by its value
        feats = as_wire_array(given, np.float32)
    if given.dtype.itemsize > 4 and given.dtype.kind == "f" and not np.isfinite(feats).all():
        past = np.isinf(feats) & np.isfinite(given)
        if past.any():
            at = np.unravel_index(int(np.argmax(past)), given.shape)
            raise ValueError(f"features: example {at[0]} holds {given[at]:g} at {list(at[1:])}, past float32's "
                             f"range (+-3.4e38); features travel as float32")
    labs = rectangular_array(labels, "labels")
    if label_kind is None:
        if labs.dtype.kind in "biu" and labs.ndim == 2:
            label_kind = "multi_label"  # a 0 / 1 matrix: any number of labels per example
        elif labs.dtype.kind in "biu":
            label_kind = "classes"
        elif labs.dtype.kind == "f":
            label_kind = "regression"
        else:
            raise TypeError(f"labels must be integers (classes) or floats (regression), got dtype {labs.dtype}")
    if label_kind == "classes":
        if labs.dtype.kind == "f":
            if not np.all(np.isfinite(labs)) or not np.array_equal(labs, np.round(labs)):
                raise ValueError("label_kind='classes' needs whole-number labels (class indices)")
        elif labs.dtype.kind not in "biu":
            raise TypeError(f"class labels must be integers, got dtype {labs.dtype}")
        if labs.ndim != 1:
            raise ValueError(f"class labels must be [examples], got shape {labs.shape}")
        labs = as_wire_array(labs, np.int64)
    elif label_kind == "multi_label":
        if labs.ndim != 2 or labs.shape[1] < 1:
            raise ValueError(f"multi-label labels must be [examples, labels] of 0 / 1, got shape {labs.shape}")
        if labs.dtype.kind not in "biuf" or not np.isin(labs, (0, 1)).all():
            raise ValueError("multi-label labels must all be 0 or 1")
        if class_names is not None and len(class_names) != labs.shape[1]:
            raise ValueError(f"{len(class_names)} class_names for {labs.shape[1]} labels")
        labs = as_wire_array(labs, np.int64)
    elif label_kind == "regression":
        if class_names:
            raise ValueError(f"class_names only apply to class labels, and these labels (dtype {labs.dtype}) are "
                             "regression targets: pass integer labels, or label_kind='classes'")
        if labs.ndim not in (1, 2):
            raise ValueError(f"labels (regression targets) must be [examples] or [examples, targets], got shape {labs.shape}")
        labs = as_wire_array(labs, np.float32)
    else:
        raise ValueError(f"label_kind must be 'classes', 'regression', 'multi_label' or None, got {label_kind!r}")
    if labs.shape[0] != feats.shape[0]:
        raise ValueError(f"features have {feats.shape[0]} examples but labels have {labs.shape[0]}")
    return feats, labs, label_kind


def _upload_requests(
    header: datasets_pb2.DatasetUploadHeader, features: np.ndarray, labels: np.ndarray, chunk_bytes: int
) -> Iterator[datasets_pb2.UploadDatasetRequest]:
    """Header, then feature chunks, then label chunks: slices of a memoryview, one chunk in memory."""
    yield datasets_pb2.UploadDatasetRequest(header=header)
    for field, array in (("features_chunk", features), ("labels_chunk", labels)):
        view = memoryview(array.reshape(-1).view(np.uint8))  # the array's own bytes, no copy
        for start in range(0, len(view), chunk_bytes):
            yield datasets_pb2.UploadDatasetRequest(**{field: bytes(view[start : start + chunk_bytes])})


def _inline_dataset(features: Any, labels: Any, *, display_name: str = "") -> datasets_pb2.InlineDataset:
    feats, labs, kind = _prepare_dataset(features, labels, None)
    return datasets_pb2.InlineDataset(
        features=to_tensor(feats),
        labels=to_tensor(labs),
        label_kind=_LABEL_KINDS[kind],
        display_name=display_name,
    )


OUTPUT_ONLY = ("probabilities", "values")  # predict()'s read_mask: the server skips class indices and names
PREDICT_METHOD = f"/{models_pb2.DESCRIPTOR.services_by_name['ModelService'].full_name}/Predict"
FEATURES_FIELD = models_pb2.PredictRequest.DESCRIPTOR.fields_by_name["features"].number
LARGE_REQUEST_BYTES = 64 * 1024  # from here on, predict serializes its request itself (with_tensor)


GRPC_DEFAULT_RECEIVE_BYTES = 4 * _MiB  # gRPC's own limit, where Client(max_message_bytes=None) leaves it


@dataclasses.dataclass(frozen=True)
class _Shapes:
    """What predict needs to know of a model: its input shape, and how many bytes a row of
    features and of the answer take."""

    input_shape: tuple[int, ...]
    elements: int  # in one example's features
    answer_row_bytes: int  # one example's output tensor, as predict asks for it
    full_answer_row_bytes: int  # and with everything predict_full asks for (indices, names, label sets)

    @staticmethod
    def of(proto: models_pb2.Model) -> _Shapes:
        shape = tuple(proto.input_shape)
        name = max((len(n.encode()) for n in proto.class_names), default=0) + 4  # a name and its tag
        label = 11 + name  # an index (at most 10 bytes and its tag) and a name, per label of a set
        outputs = max(1, proto.output_size)
        return _Shapes(shape, math.prod(shape), 4 * outputs + 16,
                       4 * outputs + 16 + 11 + name + outputs * label)

    def rows_within(self, nbytes: int, itemsize: int, full: bool) -> int:
        """How many examples one request (features of ``itemsize`` bytes) and its answer may carry
        in ``nbytes``."""
        per_row = max(itemsize * self.elements, self.full_answer_row_bytes if full else self.answer_row_bytes)
        return max(1, nbytes // max(1, per_row))


def _predict_request(method, serialized, name: str, feats: np.ndarray, fields: Sequence[str]) -> tuple[Callable, Any]:
    """(the stub method to call, its request) for one Predict of ``feats``."""
    request = models_pb2.PredictRequest(name=name)
    if fields:
        request.read_mask.paths.extend(fields)
    if feats.nbytes >= LARGE_REQUEST_BYTES:  # the features' bytes copied once, not three times
        return serialized, with_tensor(request.SerializeToString(), FEATURES_FIELD, feats)
    fill_tensor(request.features, feats)  # a wire array already (feature_array)
    return method, request


def _joined(parts: list[T]) -> T:
    """The results of one batch's requests, in order, as one (``predict``'s arrays or
    ``predict_full``'s Predictions)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)

    def arrays(key: str) -> np.ndarray | None:
        values = [getattr(p, key) for p in parts]
        return None if values[0] is None else np.concatenate(values)

    def lists(key: str) -> list | None:
        values = [getattr(p, key) for p in parts]
        return None if values[0] is None else [item for v in values for item in v]

    return Prediction(probabilities=arrays("probabilities"), classes=arrays("classes"), class_names=lists("class_names"),
                      values=arrays("values"), label_sets=lists("label_sets"), label_set_names=lists("label_set_names"))


def _output(response: models_pb2.PredictResponse) -> np.ndarray:
    """The probabilities (classifiers) or values (regression) alone: what ``predict`` returns."""
    if response.HasField("probabilities"):
        return from_tensor(response.probabilities)
    if response.HasField("values"):
        return from_tensor(response.values)
    raise GradwireError("the server's PredictResponse carried neither probabilities nor values")


def _prediction(response: models_pb2.PredictResponse) -> Prediction:
    if response.HasField("probabilities"):
        sets = response.predicted_label_sets
        return Prediction(
            probabilities=from_tensor(response.probabilities),
            classes=np.asarray(response.predicted_classes, dtype=np.int64),
            class_names=list(response.predicted_class_names),
            values=None,
            label_sets=[list(s.indices) for s in sets] if sets else None,
            label_set_names=[list(s.names) for s in sets] if sets else None,
        )
    values = from_tensor(response.values) if response.HasField("values") else None
    return Prediction(probabilities=None, classes=None, class_names=[], values=values)


def _first(p: Prediction) -> Prediction:
    """The prediction of a batch of one, without the batch axis."""
    return Prediction(
        probabilities=None if p.probabilities is None else p.probabilities[0],
        classes=None if p.classes is None else p.classes[0],
        class_names=p.class_names[:1],
        values=None if p.values is None else p.values[0],
        label_sets=None if p.label_sets is None else p.label_sets[:1],
        label_set_names=None if p.label_set_names is None else p.label_set_names[:1],
    )
