"""TrainingJobService: create (validated, queued at once), get, list, cancel, watch."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator

import numpy as np

from gradwire.v1 import datasets_pb2, training_pb2, training_pb2_grpc

from .. import datasets, errors, registry, spec
from ..store import TERMINAL_STATES, new_id, resource_id
from .context import ServerState, StreamSlots
from .convert import tensor_to_numpy

LabelKind = datasets_pb2.LabelKind


class TrainingJobServicer(training_pb2_grpc.TrainingJobServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.s = state
        self._watch_slots = StreamSlots(state.settings.watch_streams, "WatchTrainingJob", "GRADWIRE_MAX_WATCH_STREAMS",
                                        "poll GetTrainingJob instead, or watch again later")

    def _store_inline(self, inline: datasets_pb2.InlineDataset, display_name: str,
                      field: str = "inline_dataset", publish: bool = True) -> datasets_pb2.Dataset:
        datasets.check_display_name(inline.display_name, f"{field}.display_name")
        if not inline.HasField("features"):
            raise errors.InvalidArgument("required", field=f"{field}.features")
        if not inline.HasField("labels"):
            raise errors.InvalidArgument("required", field=f"{field}.labels")
        features = tensor_to_numpy(inline.features, f"{field}.features")
        labels = tensor_to_numpy(inline.labels, f"{field}.labels")
        if features.ndim and features.shape[0] > self.s.settings.max_inline_examples:
            raise errors.ResourceExhausted(
                f"{features.shape[0]} inline examples exceed the limit of {self.s.settings.max_inline_examples}; upload the dataset instead"
            )
        if features.dtype.kind in "iu":
            features = features.astype(np.float32)
        features = features.astype(np.float32, copy=False)
        if inline.label_kind == LabelKind.LABEL_KIND_MULTI_LABEL and labels.dtype.kind in "iu":
            labels = labels.astype(np.int64)
        elif inline.label_kind == LabelKind.LABEL_KIND_CLASSES and labels.dtype.kind == "f":
            if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
                raise errors.InvalidArgument("class labels must be whole numbers", field=f"{field}.labels")
            labels = labels.astype(np.int64)
        elif inline.label_kind == LabelKind.LABEL_KIND_REGRESSION:
            labels = labels.astype(np.float32)
        return datasets.save_arrays(
            self.s.store,
            self.s.settings.data_dir,
            features,
            labels,
            label_kind=inline.label_kind,
            class_names=list(inline.class_names),
            display_name=(inline.display_name or display_name)[:datasets.MAX_DISPLAY_NAME_CHARS],  # " (test)" added
            max_bytes=self.s.settings.max_upload_bytes,
            field=field,
            quota_bytes=self.s.settings.data_quota_bytes,
            publish=publish,
        )

    def _check_limits(self, request: training_pb2.CreateTrainingJobRequest) -> None:
        limits = self.s.settings
        if request.training.epochs > limits.max_epochs:
            raise errors.ResourceExhausted(
                f"must be <= {limits.max_epochs}, the server's limit (GRADWIRE_MAX_EPOCHS), got {request.training.epochs}",
                field="training.epochs",
            )

    def CreateTrainingJob(self, request: training_pb2.CreateTrainingJobRequest, context) -> training_pb2.TrainingJob:
        source = request.WhichOneof("data")
        if source is None:
            raise errors.InvalidArgument("set `dataset` (an uploaded dataset's name) or `inline_dataset`", field="dataset")
        if not request.HasField("network"):
            raise errors.InvalidArgument("required", field="network")
        if not request.HasField("training"):
            raise errors.InvalidArgument("required", field="training")
        if request.test_dataset and request.HasField("inline_test_dataset"):
            raise errors.InvalidArgument("set at most one of test_dataset and inline_test_dataset",
                                         field="inline_test_dataset")
        request_id = check_request_id(request.request_id)
        fingerprint = request_sha256(request)
        if request_id and not request.validate_only:
            existing = self.s.store.job_by_request(request_id, fingerprint)
            if existing is not None:  # a retry: nothing new is stored
                return existing
        self._check_limits(request)
        datasets.check_display_name(request.display_name, "display_name")
        inline = source == "inline_dataset"
        publish = not request.validate_only
        made: list[datasets_pb2.Dataset] = []  # stored here; removed again unless the job is created
        created = False
        try:
            if inline:
                dataset = self._store_inline(request.inline_dataset, request.display_name, publish=publish)
                made.append(dataset)
            else:
                dataset = self.s.store.get_dataset(resource_id(request.dataset, "datasets", field="dataset"))
            test = None
            if request.HasField("inline_test_dataset"):
                test = self._store_inline(request.inline_test_dataset, f"{request.display_name} (test)",
                                          field="inline_test_dataset", publish=publish)
                made.append(test)
            elif request.test_dataset:
                test = self.s.store.get_dataset(resource_id(request.test_dataset, "datasets", field="test_dataset"))
            if test is not None:
                _check_test_dataset(dataset, test, "inline_test_dataset" if request.HasField("inline_test_dataset")
                                    else "test_dataset")
            summary = spec.validate_job(
                request.network,
                request.training,
                feature_shape=tuple(dataset.feature_shape),
                label_kind=dataset.label_kind,
                output_size=dataset.class_count or dataset.target_count,
                example_count=dataset.example_count,
            )
            if summary.parameter_count > self.s.settings.max_parameters:
                raise errors.ResourceExhausted(
                    f"has {summary.parameter_count} trainable parameters, over the server's budget of "
                    f"{self.s.settings.max_parameters} (GRADWIRE_MAX_PARAMETERS)",
                    field="network",
                )
            if 4 * summary.parameter_count > spec.MAX_ONNX_WEIGHT_BYTES:  # before hours of training, not after
                raise errors.ResourceExhausted(
                    f"has {summary.parameter_count} trainable parameters, {4 * summary.parameter_count / 2**30:.2f} GiB of "
                    f"float32 weights: more than one ONNX file can hold ({spec.MAX_ONNX_WEIGHT_BYTES / 2**30:.2f} GiB, "
                    "protobuf's limit), so its trained model could not be exported; use a smaller network",
                    field="network",
                )
            seed = request.training.seed if request.training.HasField("seed") else secrets.randbits(63)
            job = training_pb2.TrainingJob(
                name=f"trainingJobs/{new_id()}",
                display_name=request.display_name,
                dataset=dataset.name,
                network=request.network,
                training=request.training,
                seed=seed,
                parameter_count=summary.parameter_count,
                request_id=request_id,
                test_dataset=test.name if test is not None else "",
                flops=summary.flops,
            )
            publish_options(request, job)  # registered model, aliases, performance
            if request.validate_only:
                job.name = ""  # nothing was created
                if inline:
                    job.dataset = ""
                if request.HasField("inline_test_dataset"):
                    job.test_dataset = ""
                return job
            stored, created = self.s.store.insert_job(job, max_queued=self.s.settings.max_queued_jobs, request_sha256=fingerprint)
            return stored
        finally:
            if publish and not created:  # nothing is left half-made: inline datasets go with the refused job
                for stored_dataset in made:
                    dataset_id = stored_dataset.name.split("/", 1)[1]
                    datasets.delete(self.s.store, self.s.settings.data_dir, dataset_id)

    def GetTrainingJob(self, request: training_pb2.GetTrainingJobRequest, context) -> training_pb2.TrainingJob:
        return self.s.store.get_job(resource_id(request.name, "trainingJobs"))

    def ListTrainingJobs(self, request: training_pb2.ListTrainingJobsRequest, context) -> training_pb2.ListTrainingJobsResponse:
        jobs, token = self.s.store.list_jobs(request.page_size, request.page_token)
        return training_pb2.ListTrainingJobsResponse(training_jobs=jobs, next_page_token=token)

    def CancelTrainingJob(self, request: training_pb2.CancelTrainingJobRequest, context) -> training_pb2.TrainingJob:
        return self.s.store.request_cancel(resource_id(request.name, "trainingJobs"))

    def WatchTrainingJob(self, request: training_pb2.WatchTrainingJobRequest, context) -> Iterator[training_pb2.TrainingJobEvent]:
        job_id = resource_id(request.name, "trainingJobs")
        self.s.store.job_state(job_id)  # NOT_FOUND before the stream starts
        with self._watch_slots.held():  # the stream holds an RPC thread for the job's whole run
            last = 0
            ended = threading.Event()  # the client went away or the server is stopping
            context.add_callback(ended.set)
            while context.is_active():
                stamp = self.s.store.change_stamp()  # before the query: an event stored after it moves the stamp
                events = self.s.store.events_after(job_id, last)
                for event in events:
                    yield event
                    last = event.sequence
                    if event.state in TERMINAL_STATES:
                        return
                if not events:  # an event is sent within CHANGE_POLL_S of its commit
                    self.s.store.wait_for_change(stamp, self.s.settings.poll_interval_s, ended.is_set)


def publish_options(request: training_pb2.CreateTrainingJobRequest, job: training_pb2.TrainingJob) -> None:
    """Checks and copies the model-registry and performance options (fields 15-17) into the job."""
    if request.aliases and not request.registered_model:
        raise errors.InvalidArgument("aliases need `registered_model` (the model they name versions of)", field="aliases")
    if request.registered_model:
        _, selector = registry.split_name(request.registered_model, "registered_model")
        if selector is not None:
            raise errors.InvalidArgument(f"publish into a registered model, without '@{selector}'", field="registered_model")
        for i, alias in enumerate(request.aliases):
            registry.check_alias(alias, f"aliases[{i}]")
        job.registered_model = request.registered_model
        job.aliases.extend(request.aliases)
    if request.HasField("performance"):
        precision = request.performance.precision
        if precision not in training_pb2.TrainingPerformance.Precision.values():
            raise errors.InvalidArgument(f"unknown precision {precision}", field="performance.precision")
        job.performance.CopyFrom(request.performance)


def check_request_id(request_id: str) -> str:
    if request_id and (len(request_id) > 64 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in request_id)):
        raise errors.InvalidArgument(
            f"must be at most 64 letters, digits, '-' or '_' (a UUID fits), got {request_id[:80]!r}", field="request_id"
        )
    return request_id


def request_sha256(request: training_pb2.CreateTrainingJobRequest) -> str:
    """Fingerprint of what a request asks for (validate_only aside): a retry matches, a changed request does not."""
    copy = training_pb2.CreateTrainingJobRequest()
    copy.CopyFrom(request)
    copy.ClearField("validate_only")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _check_test_dataset(train: datasets_pb2.Dataset, test: datasets_pb2.Dataset, field: str) -> None:
    """A test dataset must look like the training data: same feature shape and label kind,
    classes the model knows, the same number of regression targets."""
    if list(test.feature_shape) != list(train.feature_shape):
        raise errors.InvalidArgument(f"feature shape {list(test.feature_shape)} differs from the training dataset's "
                                     f"{list(train.feature_shape)}", field=field)
    if test.label_kind != train.label_kind:
        raise errors.InvalidArgument(f"label kind {LabelKind.Name(test.label_kind)} differs from the training "
                                     f"dataset's {LabelKind.Name(train.label_kind)}", field=field)
    if test.label_kind == LabelKind.LABEL_KIND_MULTI_LABEL and test.class_count != train.class_count:
        raise errors.InvalidArgument(f"has {test.class_count} labels but the training dataset has "
                                     f"{train.class_count}", field=field)
    if test.label_kind == LabelKind.LABEL_KIND_CLASSES and test.class_count > train.class_count:
        raise errors.InvalidArgument(f"has {test.class_count} classes but the training dataset has "
                                     f"{train.class_count}", field=field)
    if test.label_kind == LabelKind.LABEL_KIND_REGRESSION and test.target_count != train.target_count:
        raise errors.InvalidArgument(f"has {test.target_count} regression targets but the training dataset has "
                                     f"{train.target_count}", field=field)
