"""GPU paths: training on CUDA through the service, and serving on onnxruntime-gpu's CUDA provider.
Skipped (visibly) without a CUDA GPU, and the serving test without onnxruntime-gpu."""

from __future__ import annotations

import threading

import gradwire as gw
import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import start
from gradwire.kserve import grpc_service_pb2 as kpb
from gradwire.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from helpers import on_threads
from sklearn.datasets import load_digits

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory):
    running, pool = start(tmp_path_factory.mktemp("gpu-data"), device="cuda")
    yield running
    pool.stop(timeout=5)
    running.stop(grace=1)


@pytest.fixture(scope="module")
def gpu_target(gpu_server):
    return f"127.0.0.1:{gpu_server.port}"


def test_trains_on_the_gpu_and_serves_the_same_answers(gpu_target):
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    net = gw.Sequential([gw.Conv2d(16, kernel_size=3, padding="same"), gw.BatchNorm(), gw.ReLU(), gw.MaxPool2d(2),
                         gw.Flatten(), gw.Dense(10)])
    with gw.Client(gpu_target, timeout=60) as client:
        job = client.train(net, (X[:600], y[:600]), optimizer=gw.Adam(learning_rate=1e-2), loss="cross_entropy",
                           batch_size=32, epochs=5, validation_split=0.2, seed=0)
        model = job.wait(timeout=300)
        job.refresh()
        assert job.proto.device.startswith("cuda"), job.proto.device
        assert model.parity_max_abs_diff <= 1e-4
        probs = client.predict(model, X[600:700])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert (probs.argmax(1) == y[600:700]).mean() > 0.8


@pytest.mark.parametrize("net", [
    gw.Sequential([gw.PatchEmbedding(2, embedding_dim=32), gw.ClassToken(), gw.PositionEmbedding(),
                   gw.TransformerEncoder(depth=2, heads=4, dropout=0.1), gw.TokenPooling("class_token"), gw.Dense(10)]),
    gw.Sequential([gw.Conv2d(16, 3, padding="same", activation="relu"),
                   gw.ResidualBlock([gw.Conv2d(32, 3, stride=2, padding=1), gw.GroupNorm(4), gw.SiLU()],
                                    activation="relu"),
                   gw.SpatialDropout(0.1), gw.GlobalAvgPool(), gw.Dense(10)]),
], ids=["vit", "residual"])
def test_lecture_networks_train_on_the_gpu_and_export(gpu_target, net):
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    with gw.Client(gpu_target, timeout=60) as client:
        job = client.train(net, (X[:800], y[:800]), optimizer=gw.AdamW(3e-3), batch_size=64, epochs=30,
                           schedule=gw.CosineDecay(warmup_epochs=1), gradient_clip_norm=1.0,
                           input_normalization="standardize", validation_split=0.2, seed=0,
                           test_data=(X[800:1000], y[800:1000]))
        model = job.wait(timeout=300)
        job.refresh()
        assert job.proto.device.startswith("cuda"), job.proto.device
        assert model.parity_max_abs_diff <= 1e-4  # trained on the GPU, exported and checked on the CPU
        assert len({m.learning_rate for m in job.history}) > 1
        probs = client.predict(model, X[800:1000])
        assert (probs.argmax(1) == y[800:1000]).mean() == pytest.approx(model.test_evaluation.accuracy, abs=0.01)
        assert model.test_evaluation.accuracy > 0.7


def test_data_too_big_for_the_gpu_stays_in_host_memory(monkeypatch):
    """Training data that would not fit the GPU stays in (pinned) host memory and is copied a batch
    at a time; the run matches the one whose data lives on the GPU."""
    from gradwire_server import train
    from test_training import MLP, blobs, cfg, net

    cuda = torch.device("cuda")
    config = cfg("loss { cross_entropy {} } optimizer { sgd { learning_rate: 0.1 } } "
                 "batching { mini_batch { batch_size: 8 } } epochs: 3 validation_split: 0.25")
    data = blobs(80)
    assert train.data_device(data.features.nbytes, cuda) == cuda
    on_gpu = train.train(net(MLP), config, data, seed=0, device=cuda, on_epoch=lambda r: None)
    monkeypatch.setattr(train, "DATA_ON_DEVICE_FRACTION", 0.0)  # nothing fits: the host path
    assert train.data_device(1, cuda).type == "cpu"
    on_host = train.train(net(MLP), config, data, seed=0, device=cuda, on_epoch=lambda r: None)
    for a, b in zip(on_gpu.model.state_dict().values(), on_host.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert [r.train_loss for r in on_host.history] == pytest.approx([r.train_loss for r in on_gpu.history], rel=1e-4)


@pytest.mark.parametrize("text, reference", [
    ("sgd { learning_rate: 0.1 momentum: 0.9 weight_decay: 0.01 }", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("adam { learning_rate: 0.01 }", lambda p: torch.optim.Adam(p, lr=0.01)),
    ("adamw { learning_rate: 0.01 weight_decay: 0.1 }", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
], ids=["sgd", "adam", "adamw"])
def test_gpu_optimizers_are_fused_and_match_torch_optim(text, reference):
    """On CUDA, SGD / Adam / AdamW take torch's fused kernels; their steps match torch.optim's
    default (foreach) implementation to float32 rounding."""
    from gradwire_server import train
    from test_options import cfg, same_steps

    config = cfg(f"optimizer {{ {text} }}").optimizer
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(64, 32, device="cuda")), torch.nn.Parameter(torch.randn(32, device="cuda"))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_a, opt_b = train.make_optimizer(config, ours), reference(theirs)
    assert opt_a.defaults["fused"] is True and not opt_b.defaults.get("fused")
    same_steps(ours, opt_a, theirs, opt_b, steps=5, rtol=1e-5, atol=1e-6)


def test_checkpoints_of_a_cuda_run_hold_its_weights_and_resume_it(tmp_path):
    """A CUDA run's checkpoint snapshots go through pinned host buffers on the writer thread: the
    file holds exactly the run's final weights (on the CPU), and a run cancelled in epoch 3 and
    resumed from its checkpoint reports epochs 3 and 4 and ends close to an uninterrupted run
    (cuDNN and fused kernels need not be bit-exact, so not to the bit)."""
    from gradwire_server import errors, train
    from test_training import RESUMABLE_NET, RESUMABLE_TRAINING, blobs, cfg, net

    cuda = torch.device("cuda")
    data, config = blobs(), cfg(RESUMABLE_TRAINING)
    checkpoint = tmp_path / "full" / "checkpoint.pt"
    full = train.train(net(RESUMABLE_NET), config, data, seed=7, device=cuda, on_epoch=lambda r: None,
                       checkpoint_path=checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 4 and all(t.device.type == "cpu" for t in saved["model"].values())
    if full.best_epoch == 4:  # else the kept weights are the best epoch's, not the last
        for key, value in full.model.state_dict().items():
            torch.testing.assert_close(saved["model"][key], value, rtol=0, atol=0)

    steps, seen = [], []
    cut = tmp_path / "cut" / "checkpoint.pt"
    with pytest.raises(errors.Cancelled):
        train.train(net(RESUMABLE_NET), config, data, seed=7, device=cuda, on_epoch=lambda r: None,
                    checkpoint_path=cut, should_stop=lambda: steps.append(1) or len(steps) == 11)
    resumed = train.train(net(RESUMABLE_NET), config, data, seed=7, device=cuda, on_epoch=seen.append,
                          checkpoint_path=cut)
    assert [r.epoch for r in seen] == [3, 4]
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="onnxruntime-gpu is not installed: no CUDA execution provider to serve on")
def test_served_on_the_cuda_provider_with_batching_bit_identical(gpu_server, gpu_target):
    """The server's sessions run on onnxruntime-gpu's CUDA provider, agree with the CPU provider
    (TF32 off: see inference.CUDA_OPTIONS), and dynamic batching still gives every caller its own
    rows bit for bit as when its request runs alone. (The CUDA provider's answers depend on the
    number of rows run together, so the server runs small executions at a fixed number of rows;
    without that, 238 of these 256 rows differed on an H100.)"""
    from gradwire_server.inference import model_path

    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    net = gw.Sequential([gw.Conv2d(16, kernel_size=3, padding="same"), gw.BatchNorm(), gw.ReLU(), gw.MaxPool2d(2),
                         gw.Conv2d(32, kernel_size=3, padding="same"), gw.ReLU(), gw.MaxPool2d(2),
                         gw.Flatten(), gw.Dense(256), gw.ReLU(), gw.Dense(10)])
    with gw.Client(gpu_target, timeout=60) as client:
        model = client.train(net, (X, y), optimizer=gw.Adam(learning_rate=1e-2), batch_size=64, epochs=2,
                             seed=0).wait(timeout=300)
        model_id = model.name.split("/", 1)[1]
        session = gpu_server.state.sessions.get(model_id)
        assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()
        with grpc.insecure_channel(gpu_target) as channel:  # KServe's model configuration says so too
            config = GRPCInferenceServiceStub(channel).ModelConfig(kpb.ModelConfigRequest(name=model_id)).config
        assert [(g.kind, list(g.gpus), g.count) for g in config.instance_group] == [(kpb.ModelInstanceGroup.KIND_GPU, [0], 1)]
        cpu = ort.InferenceSession(str(model_path(gpu_server.state.settings.data_dir, model_id)),
                                   providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(client.predict(model, X[:512]), cpu.run(None, {"features": X[:512]})[0],
                                   rtol=0, atol=1e-5)
        rows = X[:256]
        alone = np.concatenate([client.predict(model, rows[i:i + 1]) for i in range(len(rows))])  # one at a time
        before = gpu_server.state.sessions.stats(model_id)
        got: dict[int, np.ndarray] = {}
        barrier = threading.Barrier(32)

        def caller(k: int) -> None:
            with gw.Client(gpu_target, timeout=60) as own:
                barrier.wait()
                for i in range(k, len(rows), 32):
                    got[i] = own.predict(model, rows[i:i + 1])

        on_threads(caller, 32)
        after = gpu_server.state.sessions.stats(model_id)
        assert after.calls - before.calls < len(rows) and after.max_requests > 1, after  # some were merged
        merged = np.concatenate([got[i] for i in range(len(rows))])
        differ = int((merged != alone).any(axis=1).sum())
        assert differ == 0, f"{differ} of {len(rows)} rows differ from the same row run alone"


def test_the_quick_start_job_trains_on_the_gpu(gpu_target):
    """bench/digits_quickstart.py's job: an uploaded dataset, a validation split, early stopping.
    On the H100 machines that script's job did not finish within 60-75 s, three times, where the
    tests above (inline data) and bench/inference.py's (e) trained at once. This is the same job
    against the test's server: it tells the next GPU run whether the job or the script is at fault.
    Last in this file, with a short deadline, so that a hang costs the GPU run little."""
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    net = gw.Sequential([gw.Conv2d(16, kernel_size=3, padding="same"), gw.BatchNorm(), gw.ReLU(), gw.MaxPool2d(2),
                         gw.Conv2d(32, kernel_size=3, padding="same"), gw.ReLU(), gw.MaxPool2d(2),
                         gw.Flatten(), gw.Dropout(0.25), gw.Dense(10)])
    with gw.Client(gpu_target, timeout=60) as client:
        data = client.upload_dataset(X[:1400], y[:1400], name="digits-gpu", class_names=[str(d) for d in range(10)])
        job = client.train(net, data, optimizer=gw.Adam(learning_rate=1e-3, weight_decay=1e-4), loss="cross_entropy",
                           batch_size=32, epochs=30, validation_split=0.2, early_stopping=gw.EarlyStopping(patience=5),
                           seed=0)
        try:
            model = job.wait(timeout=30)  # about 3 s on an H100
        except gw.DeadlineExceededError:
            job.refresh()
            pytest.fail(f"the job did not end within 30 s: {job.state}, {len(job.proto.history)} epochs reported")
        job.refresh()
        assert job.proto.device.startswith("cuda"), job.proto.device
        assert (client.predict(model, X[1400:]).argmax(1) == y[1400:]).mean() > 0.9
