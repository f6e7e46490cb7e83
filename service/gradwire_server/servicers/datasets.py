"""DatasetService: streamed uploads, get, list, delete."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import empty_pb2

from gradwire.v1 import datasets_pb2, datasets_pb2_grpc

from .. import datasets, errors
from ..store import resource_id
from .context import ServerState
from .wire import Chunk


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.s = state

    def UploadDataset(self, request_iterator: Iterator[datasets_pb2.UploadDatasetRequest | Chunk], context) -> datasets_pb2.Dataset:
        first = next(request_iterator, None)
        if first is None or isinstance(first, Chunk) or first.WhichOneof("part") != "header":
            raise errors.InvalidArgument("the first message of an upload must be a header", field="header")
        writer = datasets.DatasetWriter(
            self.s.store,
            self.s.settings.data_dir,
            first.header,
            max_bytes=self.s.settings.max_upload_bytes,
            quota_bytes=self.s.settings.data_quota_bytes,
        )
        try:
            for message in request_iterator:
                # a chunk message is taken as it arrived, unparsed (wire.upload_request)
                part, chunk = (message.part, message.data) if isinstance(message, Chunk) else (message.WhichOneof("part"), None)
                if part == "features_chunk":
                    writer.write_features(message.features_chunk if chunk is None else chunk)
                elif part == "labels_chunk":
                    writer.write_labels(message.labels_chunk if chunk is None else chunk)
                else:
                    raise errors.InvalidArgument(f"only the first message may be a header, got part {part!r}", field="header")
            return writer.finish()
        finally:
            writer.abort()

    def GetDataset(self, request: datasets_pb2.GetDatasetRequest, context) -> datasets_pb2.Dataset:
        return self.s.store.get_dataset(resource_id(request.name, "datasets"))

    def ListDatasets(self, request: datasets_pb2.ListDatasetsRequest, context) -> datasets_pb2.ListDatasetsResponse:
        items, token = self.s.store.list_datasets(request.page_size, request.page_token)
        return datasets_pb2.ListDatasetsResponse(datasets=items, next_page_token=token)

    def DeleteDataset(self, request: datasets_pb2.DeleteDatasetRequest, context) -> empty_pb2.Empty:
        dataset_id = resource_id(request.name, "datasets")
        datasets.delete(self.s.store, self.s.settings.data_dir, dataset_id)
        return empty_pb2.Empty()
