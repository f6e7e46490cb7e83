"""ModelService: get, list, delete, export (streamed ONNX bytes), predict (onnxruntime)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from google.protobuf import empty_pb2

from gradwire.v1 import datasets_pb2, models_pb2, models_pb2_grpc

from .. import errors, files
from ..inference import model_path
from ..store import resource_id
from .context import ServerState
from .convert import is_raw, numpy_to_tensor, tensor_to_numpy

EXPORT_CHUNK_BYTES = 1024 * 1024


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.s = state

    def GetModel(self, request: models_pb2.GetModelRequest, context) -> models_pb2.Model:
        return self.s.store.get_model(resource_id(request.name, "models"))

    def ListModels(self, request: models_pb2.ListModelsRequest, context) -> models_pb2.ListModelsResponse:
        items, token = self.s.store.list_models(request.page_size, request.page_token)
        return models_pb2.ListModelsResponse(models=items, next_page_token=token)

    def DeleteModel(self, request: models_pb2.DeleteModelRequest, context) -> empty_pb2.Empty:
        model_id = resource_id(request.name, "models")
        self.s.store.delete_model(model_id)
        self.s.sessions.evict(model_id)
        files.remove_tree(model_path(self.s.settings.data_dir, model_id).parent)
        return empty_pb2.Empty()

    def ExportModel(self, request: models_pb2.ExportModelRequest, context) -> Iterator[models_pb2.ExportModelResponse]:
        model_id = resource_id(request.name, "models")
        self.s.store.get_model(model_id)
        with open(model_path(self.s.settings.data_dir, model_id), "rb") as f:
            while chunk := f.read(EXPORT_CHUNK_BYTES):
                yield models_pb2.ExportModelResponse(chunk_data=chunk)

    def Predict(self, request: models_pb2.PredictRequest, context) -> models_pb2.PredictResponse:
        model_id = resource_id(request.name, "models")
        model = self.s.store.get_model(model_id)
        if not request.HasField("features"):
            raise errors.InvalidArgument("required", field="features")
        features = tensor_to_numpy(request.features, "features")
        expected = list(model.input_shape)
        if features.ndim != len(expected) + 1 or list(features.shape[1:]) != expected or features.shape[0] < 1:
            raise errors.InvalidArgument(
                f"must be [batch, {', '.join(map(str, expected))}] for model '{model.name}', got {list(features.shape)}",
                field="features.shape",
            )
        features = features.astype(np.float32, copy=False)
        output = self.s.sessions.run(model_id, features)
        raw = is_raw(request.features)
        if model.label_kind == datasets_pb2.LABEL_KIND_REGRESSION:
            return models_pb2.PredictResponse(values=numpy_to_tensor(output, raw=raw))
        classes = output.argmax(axis=1)
        names = [model.class_names[i] for i in classes] if model.class_names else []
        return models_pb2.PredictResponse(
            probabilities=numpy_to_tensor(output, raw=raw),
            predicted_classes=classes.tolist(),
            predicted_class_names=names,
        )
