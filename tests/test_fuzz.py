"""Property-based fuzzing of a live server: network specs, training configs and tensors, valid and invalid.

Every valid request is accepted; every invalid one is refused with a client error
naming a field; nothing answers UNKNOWN or INTERNAL, nothing crashes, and the
server is healthy (and still trains) afterwards. Requests are checked with
validate_only, and every tenth one is really created (its inline dataset
stored) and cancelled.
"""

from __future__ import annotations

import collections
import math

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwire.v1 import datasets_pb2, network_pb2 as nw, tensor_pb2, training_pb2, training_pb2_grpc
from helpers import State, config, inline, iris, mlp
from test_durability import watch_to_end

EXAMPLES = 500
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
ANSWERS: collections.Counter = collections.Counter()

ACTIVATIONS = [
    lambda d: nw.Layer(relu=nw.ReLU()),
    lambda d: nw.Layer(tanh=nw.Tanh()),
    lambda d: nw.Layer(sigmoid=nw.Sigmoid()),
    lambda d: nw.Layer(leaky_relu=nw.LeakyReLU(negative_slope=d.draw(st.floats(0, 0.5)))),
    lambda d: nw.Layer(elu=nw.ELU(alpha=d.draw(st.floats(0.1, 2)))),
    lambda d: nw.Layer(dropout=nw.Dropout(rate=d.draw(st.floats(0, 0.9)))),
]


def _valid_mlp(d, features: int, classes: int) -> list[nw.Layer]:
    layers = []
    for _ in range(d.draw(st.integers(0, 3))):
        layers.append(nw.Layer(dense=nw.Dense(units=d.draw(st.integers(1, 12)))))
        if d.draw(st.booleans()):
            layers.append(d.draw(st.sampled_from(ACTIVATIONS))(d))
    layers.append(nw.Layer(dense=nw.Dense(units=classes)))
    if d.draw(st.booleans()):
        layers.append(nw.Layer(softmax=nw.Softmax()))
    return layers


def _valid_cnn(d, shape: tuple[int, int, int], classes: int) -> list[nw.Layer]:
    _, h, w = shape
    layers = []
    for _ in range(d.draw(st.integers(1, 2))):
        k = d.draw(st.integers(1, min(h, w, 3)))
        layers.append(nw.Layer(conv2d=nw.Conv2d(filters=d.draw(st.integers(1, 4)), kernel_size=k, padding_mode=nw.PADDING_MODE_SAME)))
        layers.append(nw.Layer(relu=nw.ReLU()))
        if min(h, w) >= 2 and d.draw(st.booleans()):
            layers.append(nw.Layer(max_pool2d=nw.MaxPool2d(kernel_size=2)))
            h, w = h // 2, w // 2
    layers.append(nw.Layer(flatten=nw.Flatten()))
    layers.append(nw.Layer(dense=nw.Dense(units=classes)))
    return layers


def _valid_training(d, n: int) -> nw.TrainingConfig:
    kind = d.draw(st.sampled_from(["sgd", "adam", "rmsprop"]))
    lr = d.draw(st.floats(1e-4, 1.0))
    optimizer = nw.Optimizer(**{kind: {"sgd": nw.SGD, "adam": nw.Adam, "rmsprop": nw.RMSprop}[kind](learning_rate=lr)})
    split = d.draw(st.sampled_from([0.0, 0.25]))
    n_train = n - math.floor(n * split)
    mode = d.draw(st.sampled_from(["full", "online", "mini"]))
    batching = {"full": nw.Batching(full_batch=nw.FullBatch()), "online": nw.Batching(online=nw.Online()),
                "mini": nw.Batching(mini_batch=nw.MiniBatch(batch_size=d.draw(st.integers(1, n_train))))}[mode]
    return nw.TrainingConfig(loss=nw.Loss(cross_entropy=nw.CrossEntropyLoss()), optimizer=optimizer, batching=batching,
                             epochs=d.draw(st.integers(1, 3)), validation_split=split, seed=d.draw(st.integers(0, 2**32)),
                             l1_penalty=d.draw(st.sampled_from([0.0, 1e-4])))


def _tensor(a: np.ndarray, raw: bool) -> tensor_pb2.Tensor:
    if raw:
        dtype = tensor_pb2.DATA_TYPE_FLOAT32 if a.dtype.kind == "f" else tensor_pb2.DATA_TYPE_INT64
        return tensor_pb2.Tensor(shape=a.shape, dtype=dtype, raw_data=a.astype("<f4" if a.dtype.kind == "f" else "<i8").tobytes())
    if a.dtype.kind == "f":
        return tensor_pb2.Tensor(shape=a.shape, float_values=a.ravel().tolist())
    return tensor_pb2.Tensor(shape=a.shape, int_values=a.ravel().tolist())


BREAKS = [
    "units", "final_units", "epochs", "lr", "batch", "no_loss", "no_optimizer", "no_batching", "dropout",
    "empty_layer", "no_layers", "split", "mse", "values_count", "nan_features", "label_range", "neg_dim",
    "raw_len", "huge_dim", "huge_epochs", "huge_net", "l1", "momentum", "request_id", "normalization", "dtype",
]


# Each breaks one thing a client can get wrong; the answer must be a refusal, never a crash.
def _break(d, request: training_pb2.CreateTrainingJobRequest) -> str:
    net, tr, data = request.network, request.training, request.inline_dataset
    dense = [layer.dense for layer in net.layers if layer.HasField("dense")]
    # drawn from a wide integer, so every kind comes up (sampled_from favours the first ones)
    choice = BREAKS[d.draw(st.integers(0, 2**32)) % len(BREAKS)]
    if choice == "units":
        dense[0].units = d.draw(st.integers(-(2**31), 0))
    elif choice == "final_units":
        dense[-1].units = dense[-1].units + d.draw(st.integers(1, 5))
    elif choice == "epochs":
        tr.epochs = d.draw(st.integers(-(2**31), 0))
    elif choice == "lr":
        kind = tr.optimizer.WhichOneof("kind")
        getattr(tr.optimizer, kind).learning_rate = d.draw(st.sampled_from([0.0, -1.0, float("nan"), float("inf")]))
    elif choice == "batch":
        tr.batching.mini_batch.batch_size = d.draw(st.sampled_from([0, -5, 10**6]))
    elif choice == "no_loss":
        tr.ClearField("loss")
    elif choice == "no_optimizer":
        tr.ClearField("optimizer")
    elif choice == "no_batching":
        tr.ClearField("batching")
    elif choice == "dropout":
        net.layers.insert(0, nw.Layer(dropout=nw.Dropout(rate=d.draw(st.sampled_from([1.0, 1.5, -0.1, float("nan")])))))
    elif choice == "empty_layer":
        net.layers.insert(d.draw(st.integers(0, len(net.layers))), nw.Layer())
    elif choice == "no_layers":
        del net.layers[:]
    elif choice == "split":
        tr.validation_split = d.draw(st.sampled_from([1.0, -0.5, float("nan"), 0.01]))  # 0.01 of <= 24 holds out none
    elif choice == "mse":
        tr.loss.CopyFrom(nw.Loss(mse=nw.MeanSquaredErrorLoss()))
    elif choice == "values_count":
        del data.features.float_values[:]
        data.features.ClearField("raw_data")
        data.features.float_values.extend([0.5] * d.draw(st.integers(1, 7)))
    elif choice == "nan_features":
        x = np.zeros(tuple(data.features.shape), np.float32)
        x.flat[d.draw(st.integers(0, x.size - 1))] = d.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        data.features.CopyFrom(_tensor(x, d.draw(st.booleans())))
    elif choice == "label_range":
        y = np.zeros(data.labels.shape[0], np.int64)
        y[0] = d.draw(st.sampled_from([-1, len(data.class_names), 10**12]))
        data.labels.CopyFrom(_tensor(y, d.draw(st.booleans())))
    elif choice == "neg_dim":
        data.features.shape[0] = -data.features.shape[0]
    elif choice == "raw_len":
        data.features.CopyFrom(tensor_pb2.Tensor(shape=data.features.shape, dtype=tensor_pb2.DATA_TYPE_FLOAT32,
                                                 raw_data=b"\0" * d.draw(st.integers(0, 64))))
    elif choice == "huge_dim":
        data.features.shape[0] = 10**12
    elif choice == "huge_epochs":
        tr.epochs = 2**31 - 1
    elif choice == "huge_net":
        net.layers.insert(0, nw.Layer(dense=nw.Dense(units=2**31 - 1)))
    elif choice == "l1":
        tr.l1_penalty = d.draw(st.sampled_from([-1.0, float("nan")]))
    elif choice == "momentum":
        tr.optimizer.CopyFrom(nw.Optimizer(sgd=nw.SGD(learning_rate=0.1, momentum=d.draw(st.sampled_from([1.5, -0.1, float("nan")])))))
    elif choice == "request_id":
        request.request_id = d.draw(st.sampled_from(["../../etc/passwd", "a" * 65, "space id", "ünï"]))
    elif choice == "normalization":
        tr.input_normalization = d.draw(st.sampled_from([0, 99]))
    elif choice == "dtype":
        data.features.dtype = d.draw(st.sampled_from([99, tensor_pb2.DATA_TYPE_UNSPECIFIED]))
        if data.features.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED:
            data.features.raw_data = b"\0" * 8
            del data.features.float_values[:]
    return choice


class _Draw:
    def __init__(self, draw) -> None:
        self.draw = draw


@st.composite
def cases(draw):
    d = _Draw(draw)
    classes = d.draw(st.integers(2, 4))
    n = d.draw(st.integers(4, 24))
    image = d.draw(st.booleans())
    shape = (d.draw(st.integers(1, 2)), d.draw(st.integers(1, 6)), d.draw(st.integers(1, 6))) if image else (d.draw(st.integers(1, 6)),)
    rng = np.random.default_rng(d.draw(st.integers(0, 2**32)))
    X = rng.normal(size=(n, *shape)).astype(np.float32)
    y = np.arange(n) % classes  # every class present
    layers = _valid_cnn(d, shape, classes) if image else _valid_mlp(d, shape[0], classes)
    raw = d.draw(st.booleans())
    request = training_pb2.CreateTrainingJobRequest(
        network=nw.NetworkSpec(layers=layers), training=_valid_training(d, n), validate_only=True,
        inline_dataset=datasets_pb2.InlineDataset(features=_tensor(X, raw), labels=_tensor(y, raw),
                                                  label_kind=datasets_pb2.LABEL_KIND_CLASSES,
                                                  class_names=[f"c{i}" for i in range(classes)]))
    broken = _break(d, request) if d.draw(st.integers(0, 2**32)) % 3 == 0 else None  # a third invalid
    return request, broken


def test_fuzz_live_server(channel):
    jobs = training_pb2_grpc.TrainingJobServiceStub(channel)
    count = [0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cases())
    def check(case):
        request, broken = case
        count[0] += 1
        create = count[0] % 10 == 0
        if create:
            request.validate_only = False
        try:
            job = jobs.CreateTrainingJob(request, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code, job = error.code(), None
            message = error.details()
        ANSWERS[(code.name, broken or "valid")] += 1
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (broken, message)
        if broken is None:
            assert code == grpc.StatusCode.OK, f"valid request refused: {message}\n{request.network}\n{request.training}"
            if create:
                assert job.state == State.QUEUED
                try:
                    jobs.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(name=job.name), timeout=10)
                except grpc.RpcError as error:  # it may have finished already: then FAILED_PRECONDITION
                    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            else:
                assert job.name == "" and job.parameter_count > 0
        else:
            assert code in REFUSALS, (broken, code, job)
            assert "Traceback" not in message and "/tmp" not in message and "/work" not in message, message
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert ": " in message, message  # names a field path

    check()
    by_code = collections.Counter()
    for (code, _), n in ANSWERS.items():
        by_code[code] += n
    print(f"fuzz: {sum(by_code.values())} examples; answers by status code: {dict(by_code)}; by case: {dict(ANSWERS)}")
    assert sum(by_code.values()) >= EXAMPLES and by_code["OK"] > 0 and by_code["INVALID_ARGUMENT"] > 0
    assert not by_code["UNKNOWN"] and not by_code["INTERNAL"]
    # healthy afterwards, and still trains
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    X, y = iris(60)
    job = jobs.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(inline_dataset=inline(X, y), network=mlp(4, 3), training=config(epochs=1)), timeout=10)
    assert watch_to_end(jobs, job.name)[-1].state == State.SUCCEEDED


# Pieces a name, a version or a page token may be made of: what a parser could trip on.
NAME_PIECES = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),  # any text but lone surrogates
    st.sampled_from(["models/", "registeredModels/", "datasets/", "trainingJobs/", "@", "/", "latest", "production",
                     "..", "%00", "\x00", " ", "\u00b2", "\u0661", "-1", "0", "1e3", "0x10", "99999999999999999999",
                     str(2**63), str(2**63 - 1), "9" * 400]),
)
NAMES = st.lists(NAME_PIECES, max_size=5).map("".join)


def test_fuzz_names_versions_and_page_tokens(channel):
    """Every RPC that takes a resource name, a version, an alias or a page token answers arbitrary
    ones with a status a client can act on (NOT_FOUND, INVALID_ARGUMENT, ...), never INTERNAL or
    UNKNOWN, and never with a traceback."""
    from gradwire.kserve import grpc_service_pb2 as kpb
    from gradwire.kserve import grpc_service_pb2_grpc
    from gradwire.v1 import datasets_pb2_grpc, models_pb2, models_pb2_grpc

    models = models_pb2_grpc.ModelServiceStub(channel)
    datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
    jobs = training_pb2_grpc.TrainingJobServiceStub(channel)
    kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    row = tensor_pb2.Tensor(shape=[1, 4], dtype=tensor_pb2.DATA_TYPE_FLOAT32, raw_data=np.zeros(4, np.float32).tobytes())
    infer_input = kpb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 4])
    calls = {
        "GetModel": lambda n, v: models.GetModel(models_pb2.GetModelRequest(name=n), timeout=10),
        "Predict": lambda n, v: models.Predict(models_pb2.PredictRequest(name=n, features=row), timeout=10),
        "Predict@": lambda n, v: models.Predict(models_pb2.PredictRequest(name=f"registeredModels/{n}@{v}", features=row), timeout=10),
        "GetRegisteredModel": lambda n, v: models.GetRegisteredModel(models_pb2.GetRegisteredModelRequest(name=n), timeout=10),
        "ListModelVersions": lambda n, v: models.ListModelVersions(models_pb2.ListModelVersionsRequest(parent=n, page_token=v), timeout=10),
        "ListModels": lambda n, v: models.ListModels(models_pb2.ListModelsRequest(page_token=v), timeout=10),
        "SetModelAlias": lambda n, v: models.SetModelAlias(models_pb2.SetModelAliasRequest(name=f"registeredModels/nope-{len(n)}", alias=v, version=1), timeout=10),
        "GetDataset": lambda n, v: datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=n), timeout=10),
        "ListDatasets": lambda n, v: datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(page_token=v), timeout=10),
        "GetTrainingJob": lambda n, v: jobs.GetTrainingJob(training_pb2.GetTrainingJobRequest(name=n), timeout=10),
        "ListTrainingJobs": lambda n, v: jobs.ListTrainingJobs(training_pb2.ListTrainingJobsRequest(page_token=v), timeout=10),
        "ModelMetadata": lambda n, v: kserve.ModelMetadata(kpb.ModelMetadataRequest(name=n, version=v), timeout=10),
        "ModelReady": lambda n, v: kserve.ModelReady(kpb.ModelReadyRequest(name=n, version=v), timeout=10),
        "ModelConfig": lambda n, v: kserve.ModelConfig(kpb.ModelConfigRequest(name=n, version=v), timeout=10),
        "ModelStatistics": lambda n, v: kserve.ModelStatistics(kpb.ModelStatisticsRequest(name=n, version=v), timeout=10),
        "RepositoryModelLoad": lambda n, v: kserve.RepositoryModelLoad(kpb.RepositoryModelLoadRequest(
            repository_name=v[:1], model_name=n, parameters={v: kpb.ModelRepositoryParameter(string_param=n)} if v else {}),
            timeout=10),
        "RepositoryModelUnload": lambda n, v: kserve.RepositoryModelUnload(kpb.RepositoryModelUnloadRequest(model_name=n), timeout=10),
        "ModelInfer": lambda n, v: kserve.ModelInfer(kpb.ModelInferRequest(
            model_name=n, model_version=v, inputs=[infer_input], raw_input_contents=[np.zeros(4, np.float32).tobytes()]), timeout=10),
    }
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(NAMES, NAMES)
    def check(name, version):
        for rpc, call in calls.items():
            try:
                call(name, version)
                code, message = grpc.StatusCode.OK, ""
            except grpc.RpcError as error:
                code, message = error.code(), error.details() or ""
            seen[code.name] += 1
            assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (rpc, name, version, message)
            assert "Traceback" not in message, (rpc, message)

    check()
    print(f"names fuzz: answers by status code: {dict(seen)}")
    assert seen["NOT_FOUND"] > 0 and seen["INVALID_ARGUMENT"] > 0


# ---- inference requests: Predict, ModelInfer and ModelStreamInfer with any tensors and parameters --

SHAPES = st.lists(st.sampled_from([-(2**63), -1, 0, 1, 2, 3, 4, 5, 2**31, 2**62]), max_size=4)
KSERVE_DATATYPES = ["FP32", "FP16", "BF16", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16",
                    "UINT32", "UINT64", "BOOL", "BYTES", "fp32", "", "FP32 ", "\u0000"]
CONTENTS = {  # typed contents field -> the values it may carry
    "bool_contents": st.booleans(), "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1), "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(), "bytes_contents": st.binary(max_size=8),
}
PARAM_NAMES = ["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "classification",
               "binary_data", "binary_data_size", "sequence_id", "priority", "timeout", "triton_enable_empty_final_response", "x"]


@st.composite
def _parameters(draw, message) -> None:
    """Fills a KServe parameters map with names a server may look at, of any parameter type."""
    from gradwire.kserve import grpc_service_pb2 as kpb

    for name in draw(st.lists(st.sampled_from(PARAM_NAMES), max_size=3)):
        kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]))
        value = {"bool_param": st.booleans(), "int64_param": st.sampled_from([-(2**63), -1, 0, 1, 2, 3, 4, 2**40]),
                 "string_param": st.sampled_from(["", "2", "region", "../x", "\u00b2"]),
                 "double_param": st.sampled_from([0.5, 2.0, float("nan"), -1.0]),
                 "uint64_param": st.sampled_from([0, 1, 3, 2**64 - 1])}[kind]
        message[name].CopyFrom(kpb.InferParameter(**{kind: draw(value)}))


@st.composite
def _infer_requests(draw, model_name: str, rows: np.ndarray):
    """A ModelInferRequest for an iris classifier: valid, then changed in up to three ways that a
    client could get wrong."""
    from gradwire.kserve import grpc_service_pb2 as kpb

    n = draw(st.integers(1, 3))
    request = kpb.ModelInferRequest(model_name=model_name, id=draw(st.text(max_size=4)), inputs=[
        kpb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[n, 4])],
        raw_input_contents=[rows[:n].tobytes()])
    if draw(st.booleans()):
        out = request.outputs.add(name="probabilities")
        if draw(st.booleans()):  # the classification extension: top K, K of any type and value
            out.parameters["classification"].CopyFrom(draw(st.one_of(
                st.integers(-1, 4).map(lambda k: kpb.InferParameter(int64_param=k)),
                st.sampled_from([kpb.InferParameter(uint64_param=2**64 - 1), kpb.InferParameter(string_param="2"),
                                 kpb.InferParameter(bool_param=True), kpb.InferParameter(double_param=2.0),
                                 kpb.InferParameter(int64_param=-(2**63)), kpb.InferParameter()]))))
    for change in draw(st.lists(st.integers(0, 11), max_size=3)):
        t = request.inputs[0] if request.inputs else request.inputs.add(name="features", datatype="FP32")
        if change == 0:
            t.datatype = draw(st.sampled_from(KSERVE_DATATYPES))
        elif change == 1:
            t.shape[:] = draw(SHAPES)
        elif change == 2:
            t.name = draw(st.sampled_from(["", "x", "probabilities", "features\u0000"]))
        elif change == 3:  # typed contents, beside or instead of the raw ones
            field = draw(st.sampled_from(sorted(CONTENTS)))
            getattr(t.contents, field).extend(draw(st.lists(CONTENTS[field], max_size=12)))
            if draw(st.booleans()):
                del request.raw_input_contents[:]
        elif change == 4:
            request.raw_input_contents[:] = draw(st.lists(st.binary(max_size=40), max_size=2))
        elif change == 5:
            request.raw_input_contents[:] = [np.array(draw(st.lists(st.floats(width=32), min_size=4 * n, max_size=4 * n)),
                                                      np.float32).tobytes()]
        elif change == 6:
            request.inputs.add().CopyFrom(t)
        elif change == 7:
            del request.inputs[:]
        elif change == 8:
            draw(_parameters(t.parameters))
        elif change == 9:
            out = request.outputs.add(name=draw(st.sampled_from(["probabilities", "probabilities", "values", ""])))
            draw(_parameters(out.parameters))
        elif change == 10:
            draw(_parameters(request.parameters))
        else:
            request.model_version = draw(st.sampled_from(["", "1", "0", "latest", "production", "-1", "2"]))
    return request


@st.composite
def _predict_requests(draw, model: str, rows: np.ndarray):
    """A PredictRequest with features of any dtype, shape and contents, and any read mask."""
    from gradwire.v1 import models_pb2

    n = draw(st.integers(1, 3))
    features = tensor_pb2.Tensor(shape=[n, 4], dtype=tensor_pb2.DATA_TYPE_FLOAT32, raw_data=rows[:n].tobytes())
    for change in draw(st.lists(st.integers(0, 5), max_size=3)):
        if change == 0:
            features.dtype = draw(st.sampled_from(list(tensor_pb2.DataType.values()) + [99, -1]))
        elif change == 1:
            features.shape[:] = draw(SHAPES)
        elif change == 2:
            features.raw_data = draw(st.binary(max_size=40))
        elif change == 3:
            features.float_values.extend(draw(st.lists(st.floats(width=32), max_size=12)))
        elif change == 4:
            features.int_values.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12)))
        else:
            features.ClearField("raw_data")
    request = models_pb2.PredictRequest(name=model, features=features)
    request.read_mask.paths.extend(draw(st.lists(st.sampled_from(
        ["probabilities", "predicted_classes", "predicted_class_names", "values", "predicted_label_sets", "x", "", "probabilities.shape"]),
        max_size=2)))
    return request


def _answer(call) -> tuple[grpc.StatusCode, str, object]:
    try:
        return grpc.StatusCode.OK, "", call()
    except grpc.RpcError as error:
        return error.code(), error.details() or "", None


def test_fuzz_inference_requests(channel, target):
    """Predict, ModelInfer and ModelStreamInfer with any tensors, datatypes, shapes, contents,
    parameters and outputs: each answers OK, with as many rows as were sent, or a client error
    naming its field, never INTERNAL or UNKNOWN and never a traceback; a stream answers every
    request in order, in band, and carries on; and the model answers as before afterwards."""
    from conftest import train_iris
    from gradwire.kserve import grpc_service_pb2_grpc
    from gradwire.v1 import models_pb2, models_pb2_grpc

    model = train_iris(target, mlp(8, 3))
    model_name = model.split("/", 1)[1]
    rows, _ = iris()
    models = models_pb2_grpc.ModelServiceStub(channel)
    kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    before = models.Predict(models_pb2.PredictRequest(name=model, features=tensor_pb2.Tensor(
        shape=[150, 4], dtype=tensor_pb2.DATA_TYPE_FLOAT32, raw_data=rows.tobytes())), timeout=10)
    seen: collections.Counter = collections.Counter()

    def judge(rpc: str, code: grpc.StatusCode, message: str, request) -> None:
        seen[(rpc, code.name)] += 1
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (rpc, message, request)
        assert "Traceback" not in message and "/work" not in message and "/tmp" not in message, (rpc, message)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert ": " in message, (rpc, message)  # names its field

    def rows_sent(request) -> int:
        return request.inputs[0].shape[0]

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_infer_requests(model_name, rows), _predict_requests(model, rows), st.lists(_infer_requests(model_name, rows), min_size=1, max_size=4))
    def check(infer, predict, streamed):
        code, message, response = _answer(lambda: kserve.ModelInfer(infer, timeout=10))
        judge("ModelInfer", code, message, infer)
        if response is not None:
            assert len(response.raw_output_contents) == len(response.outputs) >= 1
            for out, data in zip(response.outputs, response.raw_output_contents):
                assert out.shape[0] == rows_sent(infer)
                seen[("ModelInfer", f"OK {out.datatype}")] += 1
                if out.datatype == "FP32":
                    assert list(out.shape) == [rows_sent(infer), 3] and len(data) == 4 * 3 * rows_sent(infer)
        code, message, response = _answer(lambda: models.Predict(predict, timeout=10))
        judge("Predict", code, message, predict)
        if response is not None and response.HasField("probabilities"):
            assert list(response.probabilities.shape)[1:] == [3]
        ids = [f"s{i}" for i in range(len(streamed))]
        for request, id_ in zip(streamed, ids):
            request.id = id_
        code, message, answers = _answer(lambda: list(kserve.ModelStreamInfer(iter(streamed), timeout=10)))
        judge("ModelStreamInfer", code, message, streamed)
        assert code == grpc.StatusCode.OK, message  # a bad request is answered in band; the stream goes on
        assert [a.infer_response.id for a in answers] == ids
        for a in answers:
            if a.error_message:
                kind = a.error_message.split(":", 1)[0]
                seen[("ModelStreamInfer in band", kind)] += 1
                assert kind not in ("INTERNAL", "UNKNOWN") and "Traceback" not in a.error_message, a.error_message

    check()
    print(f"inference fuzz: {dict(seen)}")
    for rpc in ("ModelInfer", "Predict"):
        assert seen[(rpc, "OK")] > 20 and seen[(rpc, "INVALID_ARGUMENT")] > 20, seen
    assert seen[("ModelInfer", "OK BYTES")] > 5, seen  # the classification extension answered, too
    after = models.Predict(models_pb2.PredictRequest(name=model, features=tensor_pb2.Tensor(
        shape=[150, 4], dtype=tensor_pb2.DATA_TYPE_FLOAT32, raw_data=rows.tobytes())), timeout=10)
    assert after.probabilities.raw_data == before.probabilities.raw_data
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


# ---- dataset uploads: any header, any bytes, any order --------------------------------------------

DTYPES = list(tensor_pb2.DataType.values()) + [99]


UPLOAD_FAULTS = ["kind", "names", "features_shape", "labels_shape", "features_dtype", "labels_dtype", "label", "feature",
                 "bytes", "header again", "reversed", "no header"]


@st.composite
def _uploads(draw):
    """An UploadDataset stream: a valid one (header, feature bytes, label bytes, in chunks) with
    none, one or two faults: a label kind, class names, shape or dtype the server must refuse or
    that the bytes do not fit, a label or feature value the kind does not allow, bytes too many or
    too few, a second header, the parts out of order, no header. Returns the messages and the
    bytes sent (features, labels)."""
    faults = set(draw(st.lists(st.sampled_from(UPLOAD_FAULTS), max_size=2))) if draw(st.integers(0, 2)) else set()
    n, f = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from([datasets_pb2.LABEL_KIND_CLASSES, datasets_pb2.LABEL_KIND_CLASSES,
                                 datasets_pb2.LABEL_KIND_REGRESSION, datasets_pb2.LABEL_KIND_MULTI_LABEL]))
    labels_shape = [n, 2] if kind == datasets_pb2.LABEL_KIND_MULTI_LABEL else [n]
    names = {datasets_pb2.LABEL_KIND_CLASSES: draw(st.sampled_from([[], ["a", "b", "c"]])),
             datasets_pb2.LABEL_KIND_MULTI_LABEL: draw(st.sampled_from([[], ["a", "b"]]))}.get(kind, [])
    header = datasets_pb2.DatasetUploadHeader(
        display_name=draw(st.text(max_size=8)), features_shape=[n, f], features_dtype=tensor_pb2.DATA_TYPE_FLOAT32,
        labels_shape=labels_shape, labels_dtype=tensor_pb2.DATA_TYPE_INT64 if kind == datasets_pb2.LABEL_KIND_CLASSES
        else tensor_pb2.DATA_TYPE_FLOAT32, label_kind=kind, class_names=names)
    x = np.array(draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n * f, max_size=n * f)), "<f4")
    count = int(np.prod(labels_shape))
    if kind == datasets_pb2.LABEL_KIND_CLASSES:  # both classes present, so that a dataset without names has 2
        y = np.array([i % 2 for i in range(count)], "<i8")
        odd = [-1, 3, 2**31 - 2, 2**31 - 1, 2**63 - 1]
    elif kind == datasets_pb2.LABEL_KIND_MULTI_LABEL:
        y = np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=count, max_size=count)), "<f4")
        odd = [2.0, -1.0, 0.5]
    else:
        y = np.array(draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=count, max_size=count)), "<f4")
        odd = [float("nan"), float("inf")]
    if "kind" in faults:
        header.label_kind = draw(st.sampled_from([datasets_pb2.LABEL_KIND_UNSPECIFIED, 99, datasets_pb2.LABEL_KIND_REGRESSION,
                                                  datasets_pb2.LABEL_KIND_CLASSES, datasets_pb2.LABEL_KIND_MULTI_LABEL]))
    if "names" in faults:
        header.class_names[:] = draw(st.sampled_from([["a", "a"], ["", "b"], ["x"], ["a", "b", "c", "d"]]))
    if "features_shape" in faults:
        header.features_shape[:] = draw(SHAPES)
    if "labels_shape" in faults:
        header.labels_shape[:] = draw(SHAPES)
    if "features_dtype" in faults:
        header.features_dtype = draw(st.sampled_from(DTYPES))
    if "labels_dtype" in faults:
        header.labels_dtype = draw(st.sampled_from(DTYPES))
    if "label" in faults:
        y[np.unravel_index(draw(st.integers(0, count - 1)), y.shape)] = draw(st.sampled_from(odd))
    if "feature" in faults:
        x[draw(st.integers(0, n * f - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    features, labels = x.tobytes(), y.tobytes()
    if "bytes" in faults:
        features = features[:draw(st.integers(0, len(features)))] + draw(st.binary(max_size=5))
    parts = []
    for part, data in (("features_chunk", features), ("labels_chunk", labels)):
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=2)))
        parts += [datasets_pb2.UploadDatasetRequest(**{part: data[a:b]}) for a, b in zip([0, *cuts], [*cuts, len(data)])]
    if "header again" in faults:
        parts.insert(draw(st.integers(0, len(parts))), datasets_pb2.UploadDatasetRequest(header=header))
    if "reversed" in faults:
        parts.reverse()
    messages = parts if "no header" in faults else [datasets_pb2.UploadDatasetRequest(header=header), *parts]
    return messages, features, labels


def test_fuzz_dataset_uploads(channel, server):
    """UploadDataset with any header and any bytes in any order: a dataset is stored, holding
    exactly the bytes sent, or the upload is refused with a client error naming its field; never
    INTERNAL, and a refused upload leaves no dataset and no file behind."""
    import hashlib
    import os

    from gradwire.v1 import datasets_pb2_grpc

    stub = datasets_pb2_grpc.DatasetServiceStub(channel)
    data_dir = server.state.settings.data_dir
    stored = lambda: set(os.listdir(data_dir / "datasets")) if (data_dir / "datasets").exists() else set()  # noqa: E731
    scratch = lambda: {p for p in os.listdir(data_dir / "tmp") if p.startswith(f"{os.getpid()}-")} if (data_dir / "tmp").exists() else set()  # noqa: E731
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_uploads())
    def check(upload):
        messages, features, labels = upload
        before = stored()
        try:
            dataset = stub.UploadDataset(iter(messages), timeout=10)
            code, message = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, message, dataset = error.code(), error.details() or "", None
        seen[code.name] += 1
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (message, messages[:1])
        assert "Traceback" not in message and str(data_dir) not in message, message
        assert not scratch(), "an upload's scratch files were left behind"
        if dataset is None:
            assert code in REFUSALS, (code, message)
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert ": " in message, message
            assert stored() == before, f"a refused upload stored something: {message}"
        else:
            assert dataset.sha256 == hashlib.sha256(features + labels).hexdigest() and dataset.size_bytes == len(features) + len(labels)
            assert stored() == before | {dataset.name.split("/", 1)[1]}
            stub.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=dataset.name), timeout=10)

    check()
    print(f"upload fuzz: {dict(seen)}")
    assert seen["OK"] > 20 and seen["INVALID_ARGUMENT"] > 20, seen
