"""KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`) on gradwire's own port.

Model names: a registered model's name (`digits`), with `model_version` a version
number, an alias (`production`) or "" for the latest; or a model id (the `{id}` of
`models/{id}`) with an empty version. Inputs arrive as raw_input_contents (decoded
with np.frombuffer, no copy) or as typed contents; outputs go back as
raw_output_contents, which is what tritonclient reads. The classification extension
answers the top K classes as BYTES "value:index:label" strings. With Triton's system shared
memory extension (shm.py), an input's or output's parameters may name a registered region
instead: "shared_memory_region", "shared_memory_byte_size" and "shared_memory_offset".
ModelStreamInfer (Triton's streaming inference) takes ModelInfer requests on one stream, runs up
to GRADWIRE_INFER_STREAM_IN_FLIGHT of them (and GRADWIRE_MAX_MESSAGE_BYTES of their bytes) at
once and answers each in the order sent.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures

import grpc
import numpy as np

from gradwire.kserve import grpc_service_pb2 as pb
from gradwire.kserve import grpc_service_pb2_grpc
from gradwire.v1 import datasets_pb2, models_pb2

from .. import errors
from ..interceptors import INTERNAL_MESSAGE, STATUS_BY_CODE
from ..inference import ModelStats, Timing, model_path
from ..serving import Serving, retry_if_gone
from ..shm import Region, SharedMemoryRegions
from ..store import every
from .context import ServerState, StreamSlots
from .convert import array_from_raw, check_value_count, checked_count, typed_values
from .models import check_features, run_model
from . import wire
from .wire import Decoded

log = logging.getLogger("gradwire.kserve")
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("classification", "statistics", "model_configuration")
SHM_EXTENSION = "system_shared_memory"
SHM_REGION, SHM_BYTE_SIZE, SHM_OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"
BACKEND = "onnxruntime"
# Open Inference Protocol datatype -> numpy dtype, and which typed-contents field carries it (FP16
# has none: raw_input_contents only). The model gets float32: the compact types (every value exact
# in float32) save the client 2-4 times the bytes, e.g. image pixels as UINT8.
DATATYPES = {
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "UINT8": (np.dtype("u1"), "uint_contents"),
    "INT8": (np.dtype("i1"), "int_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "FP16": (np.dtype("<f2"), None),
}


def _version() -> str:
    try:
        return importlib.metadata.version("gradwire")
    except importlib.metadata.PackageNotFoundError:
        return "0"


# Methods of Triton's GRPCInferenceService that gradwire does not serve, and what a client does
# instead. Answered UNIMPLEMENTED with these words (`unserved_methods`) rather than gRPC's bare
# "Method not found!".
_NO_CUDA_SHM = ("gradwire serves Triton's system shared memory extension, not CUDA shared memory: register a POSIX "
                "shared memory region (SystemSharedMemoryRegister) instead")
UNSERVED = {
    "CudaSharedMemoryStatus": _NO_CUDA_SHM,
    "CudaSharedMemoryRegister": _NO_CUDA_SHM,
    "CudaSharedMemoryUnregister": _NO_CUDA_SHM,
    "TraceSetting": "gradwire has no Triton trace settings: ModelStatistics gives each model's time by stage "
                    "(queue, compute_input, compute_infer, compute_output)",
    "LogSettings": "gradwire's logging is a server setting (GRADWIRE_LOG_LEVEL), fixed while it runs",
}


def unserved_methods() -> grpc.GenericRpcHandler:
    """A handler for `UNSERVED`'s methods: each call fails UNIMPLEMENTED, saying why."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

    def refuse(why: str) -> Callable:
        def handler(request: bytes, context) -> bytes:
            raise errors.Unimplemented(why)

        return handler

    return grpc.method_handlers_generic_handler(service, {
        name: grpc.unary_unary_rpc_method_handler(refuse(f"{service}/{name} is not served: {why}"))
        for name, why in UNSERVED.items()})


def _one_repository(name: str) -> None:
    if name:
        raise errors.NotFound(f"gradwire serves one model repository, named \"\"; got {name!r}", field="repository_name")


def serialize_bytes(items: list[bytes]) -> bytes:
    """The protocol's raw BYTES encoding: per element a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


class KServeServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.s = state
        self._server_version = _version()
        self._stream_slots = StreamSlots(state.settings.infer_streams, "ModelStreamInfer", "GRADWIRE_MAX_INFER_STREAMS",
                                         "send ModelInfer calls instead, or open the stream again later")
        self._stream_pool: futures.ThreadPoolExecutor | None = None  # made at the first stream
        self._stream_pool_lock = threading.Lock()

    # ---- naming ---------------------------------------------------------

    def _served(self, name: str, version: str, field: str) -> Serving:
        """`_resolve`, answered from the serving cache while the database is unchanged."""
        return self.s.serving.get(("kserve", name, version), lambda: self._resolve(name, version, field))

    def _resolve(self, name: str, version: str, field: str) -> models_pb2.Model:
        if not name:
            raise errors.InvalidArgument("required: a registered model's name or a model id", field=field)
        store = self.s.store
        try:
            store.get_registered_model(f"registeredModels/{name}")
        except (errors.NotFound, errors.InvalidArgument):
            if version:
                raise errors.NotFound(
                    f"no registered model {name!r}; versions ({version!r}) exist only for registered models"
                ) from None
            return store.get_model_by_name(f"models/{name}", field)
        selector = f"@{version}" if version else ""
        return store.get_model_by_name(f"registeredModels/{name}{selector}", field)

    def _unready(self, model: models_pb2.Model) -> str:
        """Why the model cannot serve ("" when it can): its ONNX file missing, or not of the size its
        export wrote (damaged on disk since: its load would fail DATA_LOSS). One stat, no read."""
        try:
            size = model_path(self.s.settings.data_dir, model.name.split("/", 1)[1]).stat().st_size
        except FileNotFoundError:
            return "its ONNX file is missing"
        if model.onnx_size_bytes and size != model.onnx_size_bytes:
            return f"its ONNX file holds {size} bytes, where its export wrote {model.onnx_size_bytes}: it was damaged since"
        return ""

    def _io_names(self, model: models_pb2.Model) -> tuple[str, str]:
        return self.s.sessions.io_names(model.name.split("/", 1)[1])

    # ---- health and metadata -------------------------------------------

    def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        try:
            model = self._resolve(request.name, request.version, "name")
        except errors.NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self._unready(model))

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        extensions = (*EXTENSIONS, SHM_EXTENSION) if self.s.shm is not None else EXTENSIONS
        return pb.ServerMetadataResponse(name="gradwire", version=self._server_version, extensions=extensions)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        model = self._resolve(request.name, request.version, "name")
        input_name, output_name = self._io_names(model)
        versions: list[str] = []
        if model.registered_model:
            listed = every(lambda size, page: self.s.store.list_model_versions(model.registered_model, size, page))
            versions = [str(m.version) for m in listed][::-1]  # oldest first
        Tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=versions,
            platform=PLATFORM,
            inputs=[Tensor(name=input_name, datatype="FP32", shape=[-1, *model.input_shape])],
            outputs=[Tensor(name=output_name, datatype="FP32", shape=[-1, model.output_size])],
        )

    def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        """Triton's model configuration extension: what tritonclient's get_model_config reads."""
        served = self._served(request.name, request.version, "name")
        model = served.model
        input_name, output_name = self._io_names(model)
        row_bytes = 4 * math.prod(served.input_shape)
        config = pb.ModelConfig(
            name=request.name,
            platform=PLATFORM,
            backend=BACKEND,
            version_policy=pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All()),
            # the batch axis is dynamic: one request may carry as many rows as fit in a message
            max_batch_size=max(1, min(2**31 - 1, self.s.settings.max_message_bytes // row_bytes)),
            input=[pb.ModelInput(name=input_name, data_type=pb.TYPE_FP32, dims=served.input_shape)],
            output=[pb.ModelOutput(name=output_name, data_type=pb.TYPE_FP32, dims=[model.output_size])],
        )
        gpu = self.s.sessions.placement(served.model_id)
        config.instance_group.append(pb.ModelInstanceGroup(
            name=f"{request.name}_0", count=self.s.settings.rpc_processes,  # one batcher per RPC process
            kind=pb.ModelInstanceGroup.KIND_CPU if gpu is None else pb.ModelInstanceGroup.KIND_GPU,
            gpus=[] if gpu is None else [gpu]))
        policy = served.policy
        if policy.enabled:
            config.dynamic_batching.preferred_batch_size.append(policy.max_batch_size)
            config.dynamic_batching.max_queue_delay_microseconds = round(policy.max_delay_s * 1e6)
        return pb.ModelConfigResponse(config=config)

    def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        """Triton's statistics extension: one model version's (by name and version), or, with no
        name, every model the server has served, since it started (with several RPC processes, the
        others' counts are up to shared_stats.FLUSH_S late)."""
        others = self.s.shared_stats.others() if self.s.shared_stats is not None else {}
        if request.name:
            model = self._resolve(request.name, request.version, "name")
            entries = [(request.name, str(model.version) if model.version else "", model.name.split("/", 1)[1])]
        else:
            entries = []
            for model_id in sorted({*self.s.sessions.model_stats_ids(), *others}):
                try:
                    model = self.s.store.get_model(model_id)
                except errors.NotFound:  # deleted since
                    continue
                if model.registered_model:
                    entries.append((model.registered_model.split("/", 1)[1], str(model.version), model_id))
                else:
                    entries.append((model_id, "", model_id))

        def whole_server(model_id: str) -> ModelStats:
            stats = self.s.sessions.model_stats(model_id).snapshot()
            if model_id in others:
                stats.add(others[model_id])
            return stats

        return pb.ModelStatisticsResponse(model_stats=[
            _statistics(name, version, whole_server(model_id)) for name, version, model_id in entries
        ])

    def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        """Triton's model repository index: every model version, under the name and version a
        request uses for it (a registered model's name and version number, or a bare model id)."""
        _one_repository(request.repository_name)
        Index = pb.RepositoryIndexResponse.ModelIndex
        entries: list[tuple[str, int, Index]] = []
        for model in every(self.s.store.list_models):
            model_id = model.name.split("/", 1)[1]
            reason = self._unready(model)
            ready = not reason
            if request.ready and not ready:
                continue
            name = model.registered_model.split("/", 1)[1] if model.registered_model else model_id
            entries.append((name, model.version, Index(
                name=name, version=str(model.version) if model.registered_model else "",
                state="READY" if ready else "UNAVAILABLE", reason=reason)))
        return pb.RepositoryIndexResponse(models=[index for _, _, index in sorted(entries, key=lambda e: e[:2])])

    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context) -> pb.RepositoryModelLoadResponse:
        """Triton's explicit load, as gradwire can mean it: the model's session is loaded (and run
        once) now, in this RPC process, instead of at its first request. A registered model's name
        loads its latest version and the versions its aliases point at; a model id, that model."""
        _one_repository(request.repository_name)
        for key in sorted(request.parameters):
            raise errors.InvalidArgument(
                f"gradwire's models come from its training jobs: a load takes no model configuration or files, got {key!r}",
                field=f"parameters[{key!r}]")
        name = request.model_name
        if not name:
            raise errors.InvalidArgument("required: a registered model's name or a model id", field="model_name")
        try:
            registered = self.s.store.get_registered_model(f"registeredModels/{name}")
        except (errors.NotFound, errors.InvalidArgument):
            versions = [""]  # a model id, or NOT_FOUND below
        else:
            versions = ["", *sorted({str(version) for version in registered.aliases.values()})]
        warmed: set[str] = set()
        for version in versions:
            served = self._served(name, version, "model_name")
            if served.model_id not in warmed:  # a missing ONNX file: NOT_FOUND, as for a prediction
                self.s.sessions.warm(served.model_id, served.input_shape, served.policy)
                warmed.add(served.model_id)
        log.info("loaded %s on request (RepositoryModelLoad): %s", name, ", ".join(sorted(warmed)))
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context) -> pb.RepositoryModelUnloadResponse:
        _one_repository(request.repository_name)
        if request.model_name:
            self._resolve(request.model_name, "", "model_name")  # NOT_FOUND first, for a name that means nothing
        raise errors.FailedPrecondition(
            "gradwire serves every model version it holds, each loaded at its first request: there is no unload. To take "
            "a version out of service, delete it (gradwire.v1.ModelService/DeleteModel) or move its aliases "
            "(SetModelAlias); GRADWIRE_MAX_SESSIONS and GRADWIRE_MAX_SESSION_BYTES bound what stays loaded",
            field="model_name")

    # ---- system shared memory ------------------------------------------

    def _regions(self) -> SharedMemoryRegions:
        if self.s.shm is None:
            why = ("it is turned off (GRADWIRE_SYSTEM_SHARED_MEMORY)" if not self.s.settings.system_shared_memory
                   else "this platform has no /dev/shm")
            raise errors.FailedPrecondition(f"this server does not serve the system shared memory extension: {why}")
        return self.s.shm

    def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest, context) -> pb.SystemSharedMemoryStatusResponse:
        Status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(regions={
            r.name: Status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
            for r in self._regions().status(request.name)
        })

    def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest,
                                   context) -> pb.SystemSharedMemoryRegisterResponse:
        self._regions().register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest,
                                     context) -> pb.SystemSharedMemoryUnregisterResponse:
        self._regions().unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    def _shm_target(self, params, field: str) -> tuple[Region, int, int] | None:
        """(region, offset, byte_size) when a tensor's ``params`` name a shared memory region, else None."""
        if not params:  # nearly every request: no map look-ups
            return None
        if SHM_REGION not in params:
            for name in (SHM_BYTE_SIZE, SHM_OFFSET):
                if name in params:
                    raise errors.InvalidArgument(f"{name!r} needs {SHM_REGION!r} beside it", field=f"{field}.{name}")
            return None
        param = params[SHM_REGION]
        if param.WhichOneof("parameter_choice") != "string_param":
            raise errors.InvalidArgument(f"must be a string (a registered region's name), got "
                                         f"{param.WhichOneof('parameter_choice')}", field=f"{field}.{SHM_REGION}")
        region = self._regions().lookup(param.string_param, f"{field}.{SHM_REGION}")
        if SHM_BYTE_SIZE not in params:
            raise errors.InvalidArgument(f"required with {SHM_REGION!r}", field=f"{field}.{SHM_BYTE_SIZE}")
        byte_size = _integer(params[SHM_BYTE_SIZE], f"{field}.{SHM_BYTE_SIZE}")
        offset = _integer(params[SHM_OFFSET], f"{field}.{SHM_OFFSET}") if SHM_OFFSET in params else 0
        return region, offset, byte_size

    # ---- inference ------------------------------------------------------

    def _input(self, request: pb.ModelInferRequest, raw: memoryview | None, input_name: str) -> np.ndarray:
        if len(request.inputs) != 1:
            raise errors.InvalidArgument(f"the model takes exactly one input, {input_name!r}; got {len(request.inputs)}", field="inputs")
        t = request.inputs[0]
        if t.name != input_name:
            raise errors.InvalidArgument(f"the model's input is {input_name!r}, got {t.name!r}", field="inputs[0].name")
        if t.datatype not in DATATYPES:
            raise errors.InvalidArgument(f"must be one of {', '.join(DATATYPES)}, got {t.datatype!r}", field="inputs[0].datatype")
        dtype, contents_field = DATATYPES[t.datatype]
        shape = list(t.shape)
        checked_count(shape, "inputs[0].shape")
        contents = [raw] if raw is not None else request.raw_input_contents  # raw: as wire.model_infer_request left it
        target = self._shm_target(t.parameters, "inputs[0].parameters")
        if target is not None:
            if contents or t.HasField("contents"):
                raise errors.InvalidArgument(f"the input's data comes from {SHM_REGION!r}: set neither raw_input_contents "
                                             f"nor inputs[0].contents", field="inputs[0].parameters")
            region, offset, byte_size = target
            limit = self.s.settings.max_message_bytes  # the most a request may carry over the wire, too
            if byte_size > limit:
                raise errors.ResourceExhausted(f"{byte_size} bytes is more than an input may hold, {limit} "
                                               f"(GRADWIRE_MAX_MESSAGE_BYTES)", field=f"inputs[0].parameters.{SHM_BYTE_SIZE}")
            count = math.prod(shape)
            if byte_size != count * dtype.itemsize:
                raise errors.InvalidArgument(f"shape {shape} x {t.datatype} needs {count * dtype.itemsize} bytes, got {byte_size}",
                                             field=f"inputs[0].parameters.{SHM_BYTE_SIZE}")
            array = np.empty(shape, dtype)  # aligned, and filled straight from the object
            self._regions().read_into(region, offset, array, f"inputs[0].parameters.{SHM_REGION}")
            return array
        if contents:
            if len(contents) != 1:
                raise errors.InvalidArgument(f"one entry per input (1), got {len(contents)}", field="raw_input_contents")
            if t.HasField("contents"):
                raise errors.InvalidArgument("set either raw_input_contents or inputs[0].contents, not both", field="inputs[0].contents")
            return array_from_raw(contents[0], dtype, shape, t.datatype, "raw_input_contents[0]")
        if contents_field is None:
            raise errors.InvalidArgument(f"{t.datatype} tensors have no typed contents in the protocol: send raw_input_contents",
                                         field="inputs[0].contents")
        values = getattr(t.contents, contents_field)
        check_value_count(values, shape, f"inputs[0].contents.{contents_field}")
        return typed_values(values, dtype, t.datatype, f"inputs[0].contents.{contents_field}").reshape(shape)

    def ModelInfer(self, request: pb.ModelInferRequest | Decoded, context) -> pb.ModelInferResponse:
        return self._model_infer(request, time.perf_counter_ns())

    def _model_infer(self, request: pb.ModelInferRequest | Decoded, arrived: int) -> pb.ModelInferResponse:
        request, raw = wire.unwrap(request)  # a large request's raw input bytes apart, as they arrived

        def attempt() -> pb.ModelInferResponse:
            served = self._served(request.model_name, request.model_version, "model_name")
            with self.s.sessions.timing(served.model_id, arrived) as timing:  # the model's statistics
                return self._infer(request, raw, served, timing)

        return retry_if_gone(attempt)

    def _infer(self, request: pb.ModelInferRequest, raw: memoryview | None, served: Serving,
               timing: Timing) -> pb.ModelInferResponse:
        model = served.model
        input_name, output_name = self._io_names(model)
        features = check_features(served, self._input(request, raw, input_name), "inputs[0]")  # float32
        requested = list(request.outputs) or [pb.ModelInferRequest.InferRequestedOutputTensor(name=output_name)]
        targets = []  # per output: where in shared memory it goes, or None
        for i, out in enumerate(requested):
            if out.name != output_name:
                raise errors.InvalidArgument(f"the model's output is {output_name!r}, got {out.name!r}", field=f"outputs[{i}].name")
            targets.append(self._shm_target(out.parameters, f"outputs[{i}].parameters"))  # refused before the model runs
        output = run_model(self.s, served, features, timing)  # (batch, output_size) float32
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=str(model.version) if model.version else "", id=request.id
        )
        for i, (out, target) in enumerate(zip(requested, targets)):
            if "classification" in out.parameters:
                data, shape = self._classification(model, output, out.parameters["classification"], f"outputs[{i}].parameters")
                response.outputs.add(name=out.name, datatype="BYTES", shape=shape)
            else:
                values = np.ascontiguousarray(output, dtype="<f4")
                data = memoryview(values).cast("B") if target is not None else values.tobytes()  # shared memory: no copy
                response.outputs.add(name=out.name, datatype="FP32", shape=output.shape)
            if target is not None:
                region, offset, byte_size = target
                if len(data) > byte_size:
                    raise errors.InvalidArgument(f"the output takes {len(data)} bytes, more than the {byte_size} given",
                                                 field=f"outputs[{i}].parameters.{SHM_BYTE_SIZE}")
                self._regions().write(region, offset, data, f"outputs[{i}].parameters.{SHM_REGION}")
                data = b""  # as Triton does: an empty entry keeps raw_output_contents in step with outputs
            response.raw_output_contents.append(data)
        return response

    # ---- streaming inference --------------------------------------------

    def ModelStreamInfer(self, request_iterator: Iterable[pb.ModelInferRequest | Decoded],
                         context) -> Iterator[pb.ModelStreamInferResponse]:
        """Triton's streaming inference: each request as ModelInfer would answer it, up to
        infer_stream_in_flight (and max_message_bytes of them) at once (a stream of one-row requests merges in the batcher, one of
        large requests overlaps their transfer with the model's runs), answered in the order sent.
        A request that fails is answered with its error message and id; the stream goes on."""
        settings = self.s.settings
        with self._stream_slots.held():  # the stream holds an RPC thread for its whole life
            yield from in_order(self._stream_one, request_iterator, self._pool(), settings.infer_stream_in_flight,
                                settings.max_message_bytes, request_bytes)

    def _pool(self) -> futures.ThreadPoolExecutor:
        """The threads that run streamed requests (as many as the RPC threads), shared by every stream."""
        with self._stream_pool_lock:
            if self._stream_pool is None:
                self._stream_pool = futures.ThreadPoolExecutor(self.s.settings.rpc_threads, thread_name_prefix="stream-infer")
            return self._stream_pool

    def _stream_one(self, request: pb.ModelInferRequest | Decoded, arrived: int) -> pb.ModelStreamInferResponse:
        asked, _ = wire.unwrap(request)
        try:
            answer = pb.ModelStreamInferResponse(infer_response=self._model_infer(request, arrived))
        except Exception as exc:  # answered in the stream, as ModelInfer's interceptor answers a call
            if isinstance(exc, errors.GradwireError):
                message = f"{STATUS_BY_CODE[errors.code_of(exc)].name}: {exc.message}"
            else:  # a bug
                log.exception("unexpected error in ModelStreamInfer")
                message = f"INTERNAL: {INTERNAL_MESSAGE}"
            answer = pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
                model_name=asked.model_name, model_version=asked.model_version, id=asked.id))
        # A client that asks Triton for final-response flags (tritonclient's
        # enable_empty_final_response=True, for models that answer a request several times) waits
        # for an answer marked final: every gradwire answer is its request's one and only, so it is.
        final = asked.parameters.get(FINAL_ASKED)
        if final is not None and final.bool_param:
            answer.infer_response.parameters[FINAL].bool_param = True
        return answer

    def close(self) -> None:
        """Stops the streamed requests' threads (after the server has stopped)."""
        with self._stream_pool_lock:
            pool, self._stream_pool = self._stream_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _classification(model: models_pb2.Model, output: np.ndarray, param: pb.InferParameter, field: str) -> tuple[bytes, list[int]]:
        """Top K per row as "value:index:label" (label left out when the model has no class names)."""
        if model.label_kind != datasets_pb2.LABEL_KIND_CLASSES:
            kind = datasets_pb2.LabelKind.Name(model.label_kind)
            raise errors.InvalidArgument(f"the classification extension needs a classifier (LABEL_KIND_CLASSES); this model is {kind}",
                                         field=field)
        k = _integer(param, field, "'classification' must be an integer (the number of classes)")
        if not 1 <= k <= output.shape[1]:
            raise errors.InvalidArgument(f"'classification' must be between 1 and {output.shape[1]}, got {k}", field=field)
        top = np.argsort(-output, axis=1, kind="stable")[:, :k]  # (batch, k)
        items = []
        for row, indices in zip(output, top):
            for idx in indices:
                label = f":{model.class_names[idx]}" if model.class_names else ""
                items.append(f"{row[idx]:f}:{idx}{label}".encode())
        return serialize_bytes(items), [len(output), k]


FINAL_ASKED, FINAL = "triton_enable_empty_final_response", "triton_final_response"


END = object()  # in_order's request stream ended: the client half-closed it, or the call died


class _InFlight:
    """What a stream has in progress: at most ``count`` requests and ``nbytes`` of their bytes (a
    larger request is let in alone)."""

    def __init__(self, count: int, nbytes: int) -> None:
        self._cv = threading.Condition()
        self._count = self._bytes = 0
        self._max_count, self._max_bytes = count, nbytes
        self._closed = False

    def take(self, size: int) -> bool:
        """Waits for room for a request of ``size`` bytes; False once closed."""
        with self._cv:
            while not self._closed and self._count and (self._count >= self._max_count or self._bytes + size > self._max_bytes):
                self._cv.wait()
            if self._closed:
                return False
            self._count += 1
            self._bytes += size
            return True

    def give(self, size: int) -> None:
        with self._cv:
            self._count -= 1
            self._bytes -= size
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


def in_order(handle: Callable[[object, int], object], requests: Iterable, pool: futures.Executor, in_flight: int,
             max_bytes: int, size: Callable[[object], int]) -> Iterator:
    """``handle(request, arrived_ns)`` of each request, run on ``pool``, yielded in the order the
    requests came. At most ``in_flight`` requests, and ``max_bytes`` of them by ``size``, are in
    progress at once (read and not yet answered): a reader thread takes the requests as they
    arrive, and waits for room first, so a client that sends faster than the answers are read is
    held back by gRPC's flow control, and memory stays bounded."""
    room = _InFlight(in_flight, max_bytes)
    order: queue.SimpleQueue = queue.SimpleQueue()  # (future, size), in request order, then END

    def read() -> None:
        try:
            for request in requests:
                arrived, nbytes = time.perf_counter_ns(), size(request)
                if not room.take(nbytes):
                    break  # the consumer is gone
                order.put((pool.submit(handle, request, arrived), nbytes))
        except Exception as exc:  # noqa: BLE001 - the call was cancelled or ran past its deadline: gRPC has ended it
            log.debug("ModelStreamInfer's requests ended: %r", exc)
        finally:
            order.put(END)

    reader = threading.Thread(target=read, name="stream-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = order.get()
            if item is END:
                return  # after every answer (a call that died has its status already)
            future, nbytes = item
            try:
                answer = future.result()  # handle() answers its own errors
            except futures.CancelledError:  # the server is stopping
                return
            room.give(nbytes)
            yield answer
    finally:
        room.close()  # a reader waiting for room stops


def request_bytes(request: pb.ModelInferRequest | Decoded) -> int:
    """A ModelInfer request's size on the wire (its raw input's bytes included when they came apart)."""
    message, raw = wire.unwrap(request)
    return message.ByteSize() + (len(raw) if raw is not None else 0)


def _integer(param: pb.InferParameter, field: str, needs: str = "must be an integer (int64_param)") -> int:
    """An integer parameter's value (int64 or uint64), or INVALID_ARGUMENT saying ``needs``."""
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise errors.InvalidArgument(f"{needs}, got {kind}", field=field)
    return getattr(param, kind)


def _statistics(name: str, version: str, stats: ModelStats) -> pb.ModelStatistics:
    duration = pb.StatisticDuration
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(**{k: duration(count=c, ns=ns) for k, (c, ns) in stats.requests.items()}),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=rows, compute_input=duration(count=n, ns=i),
                                    compute_infer=duration(count=n, ns=f), compute_output=duration(count=n, ns=o))
            for rows, (n, i, f, o) in sorted(stats.batches.items())
        ],
    )
