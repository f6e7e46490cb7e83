"""ModelService: get, list, delete, export (streamed ONNX bytes), predict (onnxruntime), and
the registry: publish a model as a registered model's next version, versions, aliases, and
each model's dynamic batching override.

Every RPC that names a model accepts `models/{id}`, `registeredModels/{name}` (latest version),
`registeredModels/{name}@{version}` and `registeredModels/{name}@{alias}`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator

import numpy as np
from google.protobuf import empty_pb2

from gradwire._tensors import non_finite
from gradwire.v1 import models_pb2, models_pb2_grpc

from .. import errors, files
from ..inference import Timing, model_path
from ..serving import Serving, retry_if_gone
from ..store import resource_id
from .context import ServerState
from .convert import is_raw, numpy_to_tensor, tensor_to_numpy
from . import wire
from .wire import Decoded

log = logging.getLogger("gradwire.models")
EXPORT_CHUNK_BYTES = 1024 * 1024


def check_features(served: Serving, features: np.ndarray, field: str) -> np.ndarray:
    """[batch, *input_shape] float32 (a view, never a copy, when it already is float32), every
    value finite: a NaN or an infinity would come back as NaN probabilities, and training data
    is held to the same rule (datasets.py). ``field``: the tensor's, e.g. ``features``."""
    expected = served.input_shape
    if features.ndim != len(expected) + 1 or features.shape[1:] != expected or features.shape[0] < 1:
        if features.shape[1:] == expected:
            raise errors.InvalidArgument(f"no rows to predict on ({list(features.shape)}): send at least one", field=f"{field}.shape")
        raise errors.InvalidArgument(
            f"must be [batch, {', '.join(map(str, expected))}] for model '{served.model.name}', got {list(features.shape)}",
            field=f"{field}.shape",
        )
    if features.dtype == np.float32:
        model_sees = features
    else:
        with np.errstate(over="ignore"):  # a float64 past float32's range becomes inf: refused below, by its value
            model_sees = features.astype(np.float32)
    why = non_finite(features, model_sees)
    if why is not None:
        raise errors.InvalidArgument(why, field=field)
    return model_sees


def run_model(state: ServerState, served: Serving, features: np.ndarray, timing: Timing | None = None) -> np.ndarray:
    """Through the model's batcher, with its override of the server's batching defaults."""
    return state.sessions.run(served.model_id, features, served.policy, timing)


RESPONSE_FIELDS = frozenset(models_pb2.PredictResponse.DESCRIPTOR.fields_by_name)


def read_mask(request: models_pb2.PredictRequest) -> frozenset[str]:
    """The PredictResponse fields the request asks for (all when its read_mask is empty)."""
    paths = request.read_mask.paths
    if not paths:
        return RESPONSE_FIELDS
    for i, path in enumerate(paths):
        if path not in RESPONSE_FIELDS:
            raise errors.InvalidArgument(f"{path!r} is not a PredictResponse field; use any of {', '.join(sorted(RESPONSE_FIELDS))}",
                                         field=f"read_mask.paths[{i}]")
    return frozenset(paths)


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.s = state

    def _model(self, name: str, field: str = "name") -> models_pb2.Model:
        return self.s.store.get_model_by_name(name, field)

    def GetModel(self, request: models_pb2.GetModelRequest, context) -> models_pb2.Model:
        return retry_if_gone(lambda: self._model(request.name))  # `latest` whose model was just deleted: the one before

    def ListModels(self, request: models_pb2.ListModelsRequest, context) -> models_pb2.ListModelsResponse:
        items, token = self.s.store.list_models(request.page_size, request.page_token)
        return models_pb2.ListModelsResponse(models=items, next_page_token=token)

    def DeleteModel(self, request: models_pb2.DeleteModelRequest, context) -> empty_pb2.Empty:
        model_id = resource_id(request.name, "models")  # deleting by alias would be too easy a mistake
        self.s.store.delete_model(model_id)
        self._remove_files(model_id)
        return empty_pb2.Empty()

    def _remove_files(self, model_id: str) -> None:
        """After a model's row is gone: its loaded session, then its directory."""
        self.s.sessions.evict(model_id)
        files.remove_tree(model_path(self.s.settings.data_dir, model_id).parent)

    def ExportModel(self, request: models_pb2.ExportModelRequest, context) -> Iterator[models_pb2.ExportModelResponse]:
        """The model's ONNX file in chunks, hashed as it goes: a file damaged on disk since its export
        (another sha256 than the one recorded) ends the stream DATA_LOSS, so that no client keeps
        it (the SDK writes to a temporary file, and removes it on an error)."""
        model = self._model(request.name)
        model_id = model.name.split("/", 1)[1]
        try:
            f = open(model_path(self.s.settings.data_dir, model_id), "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise errors.NotFound(f"model 'models/{model_id}' was deleted") from None
        digest, size = hashlib.sha256(), 0
        with f:
            while chunk := f.read(EXPORT_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                yield models_pb2.ExportModelResponse(chunk_data=chunk)
        if model.onnx_sha256 and digest.hexdigest() != model.onnx_sha256:
            raise errors.DataLoss(
                f"model '{model.name}': its ONNX file was damaged on disk since its export ({size} bytes with sha256 "
                f"{digest.hexdigest()}, where the export wrote {model.onnx_size_bytes} bytes with sha256 "
                f"{model.onnx_sha256}): train the model again, or restore the file")

    def Predict(self, request: models_pb2.PredictRequest | Decoded, context) -> models_pb2.PredictResponse:
        arrived = time.perf_counter_ns()
        request, raw = wire.unwrap(request)  # a large request's features' bytes apart, as they arrived
        name = request.name

        def attempt() -> models_pb2.PredictResponse:
            served = self.s.serving.get(name, lambda: self._model(name))
            with self.s.sessions.timing(served.model_id, arrived) as timing:  # the model's statistics
                return self._predict(request, raw, served, timing)

        return retry_if_gone(attempt)

    def _predict(self, request: models_pb2.PredictRequest, raw: memoryview | None, served: Serving,
                 timing: Timing) -> models_pb2.PredictResponse:
        if not request.HasField("features"):
            raise errors.InvalidArgument("required", field="features")
        wanted = read_mask(request)
        features = check_features(served, tensor_to_numpy(request.features, "features", raw), "features")
        output = run_model(self.s, served, features, timing)
        in_kind = is_raw(request.features)  # answered in the request's encoding
        if served.regression:
            return models_pb2.PredictResponse(values=numpy_to_tensor(output, raw=in_kind) if "values" in wanted else None)
        response = models_pb2.PredictResponse(
            probabilities=numpy_to_tensor(output, raw=in_kind) if "probabilities" in wanted else None)
        names = served.class_names
        if "predicted_classes" in wanted or "predicted_class_names" in wanted:
            classes = output.argmax(axis=1).tolist()
            if "predicted_classes" in wanted:
                response.predicted_classes.extend(classes)
            if names and "predicted_class_names" in wanted:
                response.predicted_class_names.extend([names[i] for i in classes])
        if served.multi_label and "predicted_label_sets" in wanted:  # above 0.5, as the evaluations count a label (logit > 0)
            for row in output > 0.5:
                indices = np.flatnonzero(row).tolist()
                response.predicted_label_sets.add(indices=indices, names=[names[i] for i in indices] if names else ())
        return response

    # ---- registry -------------------------------------------------------

    def PublishModel(self, request: models_pb2.PublishModelRequest, context) -> models_pb2.Model:
        model_id = resource_id(request.name, "models")
        if not request.registered_model:
            raise errors.InvalidArgument("required", field="registered_model")
        self._warm(model_id)  # before it is anyone's latest version
        return self.s.store.publish_model(model_id, request.registered_model, list(request.aliases))

    def GetRegisteredModel(self, request: models_pb2.GetRegisteredModelRequest, context) -> models_pb2.RegisteredModel:
        return self.s.store.get_registered_model(request.name)

    def ListRegisteredModels(self, request: models_pb2.ListRegisteredModelsRequest, context) -> models_pb2.ListRegisteredModelsResponse:
        items, token = self.s.store.list_registered_models(request.page_size, request.page_token)
        return models_pb2.ListRegisteredModelsResponse(registered_models=items, next_page_token=token)

    def ListModelVersions(self, request: models_pb2.ListModelVersionsRequest, context) -> models_pb2.ListModelVersionsResponse:
        items, token = self.s.store.list_model_versions(request.parent, request.page_size, request.page_token)
        return models_pb2.ListModelVersionsResponse(models=items, next_page_token=token)

    def SetModelAlias(self, request: models_pb2.SetModelAliasRequest, context) -> models_pb2.RegisteredModel:
        try:
            target = self.s.store.resolve_model(f"{request.name}@{request.version}")
        except errors.GradwireError:  # set_alias says what is wrong
            target = None
        if target is not None:
            self._warm(target)  # before the alias moves to it
        return self.s.store.set_alias(request.name, request.alias, request.version)

    def _warm(self, model_id: str) -> None:
        """Loads the model's session and runs it once before a name moves to it, so that the
        requests right after the move do not wait for the load (166 ms for a 76 MB MLP here).
        This process only; the others load it as soon as they see the move (serving.py)."""
        try:
            serving = Serving.of(self.s.store.get_model(model_id), self.s.sessions)
            self.s.sessions.warm(model_id, serving.input_shape, serving.policy)
        except errors.GradwireError as exc:  # not ready, gone: the move itself says what it says
            log.debug("could not warm model %s: %s", model_id, exc)

    def DeleteModelAlias(self, request: models_pb2.DeleteModelAliasRequest, context) -> models_pb2.RegisteredModel:
        return self.s.store.delete_alias(request.name, request.alias)

    def DeleteRegisteredModel(self, request: models_pb2.DeleteRegisteredModelRequest, context) -> empty_pb2.Empty:
        for model_id in self.s.store.delete_registered_model(request.name, request.force):
            self._remove_files(model_id)
        return empty_pb2.Empty()

    def UpdateModelBatching(self, request: models_pb2.UpdateModelBatchingRequest, context) -> models_pb2.Model:
        model_id = self.s.store.resolve_model(request.name)
        batching = request.dynamic_batching if request.HasField("dynamic_batching") else None
        if batching is not None:
            for field in ("max_batch_size", "max_delay_micros"):
                value = getattr(batching, field)
                if value < 0:
                    raise errors.InvalidArgument(f"must be >= 0 (0: the server's default), got {value}", field=f"dynamic_batching.{field}")
            if batching.max_delay_micros > 1_000_000:
                raise errors.InvalidArgument(f"must be <= 1000000 (one second), got {batching.max_delay_micros}", field="dynamic_batching.max_delay_micros")
        return self.s.store.set_batching(model_id, batching)
