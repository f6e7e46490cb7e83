"""Inference, upload and training speed, each as a ratio against a baseline measured in this same run.

    python bench/inference.py                    # all of (a)-(f), about 2 minutes on 2 CPU cores
    python bench/inference.py --only a,b,e       # a subset (the GPU run)
    python bench/inference.py --scale 5          # 5x more requests / bytes / epochs
    python bench/inference.py --server-cpus 0-7 --client-cpus 8-15   # (c)'s clients on their own cores
    python bench/inference.py --only a,c --rpc-processes 4           # the server with 4 RPC processes

It starts its own `gradwire serve` (and a bare gRPC echo server as a baseline) on free ports.

  (a) 1-row Predict latency through the SDK, p50 and p99, against a bare gRPC echo of the same
      request bytes plus in-process onnxruntime on the same model (the digits CNN); the SDK and
      the echo are timed in alternating blocks (ABBA), so both see the same stretch of a noisy
      machine                                                                 target <= 1.3x
  (b) rows/s for 1,024-row Predict requests against in-process onnxruntime, for the digits CNN
      and for a 4096-wide MLP; each with its ceiling, ORT / (ORT + a bare echo of the same
      request), the most any gRPC transport could reach                      target >= 0.8x
  (c) 32 concurrent one-row clients (4 client processes), dynamic batching on vs off:
      throughput and p99, for the 4096-wide MLP (its one-row call streams 76 MB of weights,
      so merging pays) and, for reference, the digits CNN                   target >= 3x
  (d) dataset upload MB/s against a bare gRPC client stream of the same bytes target >= 0.7x
  (e) training samples/s through the service (job start to end) against a plain PyTorch loop
      with the same network, data and hyperparameters in this process, for the digits CNN
      and for the 4096-wide MLP (whose per-epoch checkpoints and export weigh) target >= 0.9x
  (f) the KServe v2 endpoint through tritonclient (its own venv), 1-row latency against (a)'s
      baseline, and its probabilities against Predict's; and (b) through tritonclient, the
      1,024-row tensors in system shared memory (client and server on one host: the request
      carries the region's name, not the 256 KB) and over the wire, against in-process
      onnxruntime timed just before and after                                 target >= 0.8x;
      the same 1,024-row requests sent back to back on one ModelStreamInfer stream, against one
      call at a time; and (c) through tritonclient: 32 one-row tritonclient clients, KServe
      ModelInfer, batching on vs off                                          target >= 3x
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # triton_env: the tritonclient venv

import gradwire as gw  # noqa: E402
from _server import free_port  # noqa: E402
from gradwire.v1 import models_pb2, models_pb2_grpc  # noqa: E402

ECHO = "/bench.Echo/Echo"
SINK = "/bench.Echo/Sink"


# ---------------------------------------------------------------------------------------------
# servers


def echo_server(port: int) -> None:
    """The baseline transport: grpcio's Python server with no work in the handler."""
    identity = lambda b: b  # noqa: E731

    def sink(requests, context):
        return len(b"".join(r for r in requests)).to_bytes(8, "little")

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req, identity, identity),
        "Sink": grpc.stream_unary_rpc_method_handler(sink, identity, identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(16), options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


@contextlib.contextmanager
def process(args: list[str], env: dict | None = None):
    """A child process for the run's length; its stderr's tail is printed if the run fails."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield proc
        except BaseException:
            log.seek(0)
            print(f"--- stderr of {' '.join(args[-2:])} ---\n{log.read().decode(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_ready(target: str, proc: subprocess.Popen, health: bool = False) -> None:
    """Until ``target`` accepts a connection; with ``health``, until its health check says SERVING
    (gradwire says so once all its RPC processes listen)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        ready = grpc.channel_ready_future(ch)
        check = health_pb2_grpc.HealthStub(ch).Check
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"{target}: the process exited with status {proc.returncode} before serving")
            with contextlib.suppress(grpc.FutureTimeoutError):
                ready.result(timeout=0.5)
                if not health or check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
                    return
                time.sleep(0.2)
        raise TimeoutError(f"{target}: not serving after 120 s")


# ---------------------------------------------------------------------------------------------
# figures


def pct(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times), q))


def timed(fn, n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ort_session(path: pathlib.Path, *, off_workers: bool = False):
    """The baseline's session, on the provider the server serves with (GRADWIRE_INFERENCE_DEVICE
    when set, else CUDA when onnxruntime-gpu and a GPU are present). ``off_workers`` (for large
    calls): on the CPU provider its calls run as the server runs a long one, with the calling
    thread off the CPUs onnxruntime pinned its workers to. A caller that sits on a worker's CPU
    waits for that CPU (1,024 digits rows: 1.85-1.99 ms against 0.93 here), and where this
    process's thread sat changed the baseline from run to run; this way the baseline is
    onnxruntime at its best."""
    import onnxruntime as ort

    from gradwire_server.inference import _worker_threads, providers

    chosen = providers(os.environ.get("GRADWIRE_INFERENCE_DEVICE") or "auto")
    if not off_workers or chosen[0] != "CPUExecutionProvider":
        return ort.InferenceSession(str(path), providers=chosen)
    with _worker_threads(idle=False, pinning=True) as workers:
        session = ort.InferenceSession(str(path), providers=chosen)
    if workers.unsettled():  # pinned after the load stopped waiting: a busy moment of the machine
        time.sleep(0.2)
        workers.read_cpus()
    return OffWorkers(session, workers.caller_cpus())


class OffWorkers:
    """An onnxruntime session whose calls run with the calling thread on ``cpus`` (None: where it
    is), as the server's long calls do (gradwire_server.inference.on_cpus)."""

    def __init__(self, session, cpus: frozenset[int] | None) -> None:
        from gradwire_server.inference import on_cpus

        self.session, self.cpus, self._on_cpus = session, cpus, on_cpus

    def run(self, names, feeds):
        with self._on_cpus(self.cpus):
            return self.session.run(names, feeds)


def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X.reshape(-1, 1, 8, 8).astype(np.float32), y.astype(np.int64)


def cnn() -> gw.Sequential:
    return gw.Sequential([
        gw.Conv2d(16, kernel_size=3, padding="same"), gw.BatchNorm(), gw.ReLU(), gw.MaxPool2d(2),
        gw.Conv2d(32, kernel_size=3, padding="same"), gw.ReLU(), gw.MaxPool2d(2),
        gw.Flatten(), gw.Dropout(0.25), gw.Dense(10),
    ])


def interleaved(fns: dict, n: int, block: int = 100, warmup: int = 20) -> dict[str, list[float]]:
    """Times each function n times in blocks of `block` calls that take turns (ABBA order), so
    that every one of them is measured warm, in a steady stream, and across the same stretch of
    a noisy machine's time."""
    names = list(fns)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(-(-n // block)):
        for k in names if r % 2 == 0 else reversed(names):
            out[k] += timed(fns[k], min(block, n - r * block), warmup)
    return out


def bench_a(client, target, echo_target, model, onnx_path, X, n):
    session = ort_session(onnx_path)
    row = X[:1]
    request = models_pb2.PredictRequest(name=model.name, features=gw._tensors.to_tensor(row)).SerializeToString()
    before = model_statistics(target, model)
    with grpc.insecure_channel(echo_target) as ch:
        echo = ch.unary_unary(ECHO)
        seen = interleaved({"sdk": lambda: client.predict(model, row), "echo": lambda: echo(request)}, n)
    handler = handler_us(before, model_statistics(target, model))
    sdk, bare = seen["sdk"], seen["echo"]
    ort_t = timed(lambda: session.run(None, {"features": row}), n)
    base50, base99 = pct(bare, 50) + pct(ort_t, 50), pct(bare, 99) + pct(ort_t, 99)
    return {"sdk_p50_ms": pct(sdk, 50) * 1e3, "sdk_p99_ms": pct(sdk, 99) * 1e3, "base_p50_ms": base50 * 1e3,
            "base_p99_ms": base99 * 1e3, "ratio_p50": pct(sdk, 50) / base50, "ratio_p99": pct(sdk, 99) / base99,
            "ort_p50_ms": pct(ort_t, 50) * 1e3, "handler_us": handler,
            "sdk_slow": slow_share(sdk), "echo_slow": slow_share(bare)}


def slow_share(seconds: list[float]) -> float:
    """The share of calls that took more than three times the median: what moves a p99 here."""
    return float(np.mean(np.asarray(seconds) > 3 * np.median(seconds)))


def bench_b(client, target, echo_target, model, onnx_path, X, n):
    """1,024-row requests: rows/s through the SDK against in-process onnxruntime. Also the most
    any transport could reach: onnxruntime's time plus a bare echo of the same request bytes;
    and the server's own time per request, by stage."""
    session = ort_session(onnx_path, off_workers=True)
    rows = np.ascontiguousarray(np.resize(X, (1024, *X.shape[1:])))
    request = models_pb2.PredictRequest(name=model.name, features=gw._tensors.to_tensor(rows)).SerializeToString()
    before = model_statistics(target, model)
    with grpc.insecure_channel(echo_target, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        echo = ch.unary_unary(ECHO)
        seen = interleaved({"sdk": lambda: client.predict(model, rows), "echo": lambda: echo(request),
                            "ort": lambda: session.run(None, {"features": rows})}, n, block=max(1, n // 4), warmup=3)
    handler = handler_us(before, model_statistics(target, model))
    sdk, bare, local = (float(np.median(seen[k])) for k in ("sdk", "echo", "ort"))
    return {"model": model.name, "request_kb": rows.nbytes / 1024, "service_rows_s": 1024 / sdk, "ort_rows_s": 1024 / local,
            "ratio": local / sdk, "ceiling": local / (local + bare), "sdk_ms": sdk * 1e3, "echo_ms": bare * 1e3,
            "ort_ms": local * 1e3, "handler_us": handler}


def wide_net(width: int = 4096) -> list:
    """An MLP of 512 inputs and 18.9M parameters (76 MB of float32 weights)."""
    return [gw.Dense(width), gw.ReLU(), gw.Dense(width), gw.ReLU(), gw.Dense(10)]


def wide_data(rows: int = 256):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 512)).astype(np.float32), rng.integers(0, 10, rows)


def wide_model(client):
    """The wide MLP, whose one-row call streams its 76 MB of weights from memory: where merging
    requests pays, as it does for most models on a GPU."""
    X, y = wide_data()
    return client.train(wide_net(), (X, y), optimizer=gw.SGD(0.01), epochs=1, batch_size=128, seed=0, name="wide-4096").wait(), X


def cpu_list(text: str) -> set[int]:
    """"0-3,8" -> {0, 1, 2, 3, 8}"""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def clients_worker(target: str, name: str, threads: int, start_at: float, seconds: float, row_file: str) -> None:
    """One client process: `threads` threads, each its own channel, one-row Predicts from
    `start_at` for `seconds`; prints its latencies as JSON. BENCH_CLIENT_CPUS pins it."""
    if os.environ.get("BENCH_CLIENT_CPUS"):
        os.sched_setaffinity(0, cpu_list(os.environ["BENCH_CLIENT_CPUS"]))
    request = models_pb2.PredictRequest(name=name, features=gw._tensors.to_tensor(np.load(row_file)))
    latencies: list[list[float]] = [[] for _ in range(threads)]

    # Channels in one process share one connection, unless each has its own subchannel pool. With
    # several RPC processes the kernel spreads connections, not calls, across them: each client
    # then gets a connection of its own (which costs a single RPC process about 20% of its
    # throughput for the digits CNN here, so it is not done for one).
    options = [("grpc.use_local_subchannel_pool", 1)] if os.environ.get("BENCH_OWN_CONNECTIONS") else []

    def run(k):
        with grpc.insecure_channel(target, options=options) as ch:
            stub = models_pb2_grpc.ModelServiceStub(ch)
            stub.Predict(request)
            time.sleep(max(0.0, start_at - time.time()))
            while time.time() < start_at + seconds:
                t0 = time.perf_counter()
                stub.Predict(request)
                latencies[k].append(time.perf_counter() - t0)

    pool = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps([x for lat in latencies for x in lat]))


def sdk_clients(target, name, row_file, threads, start_at, seconds) -> list[str]:
    """The command of one (c) client process: gradwire's Predict."""
    return [sys.executable, __file__, "--clients-worker", target, name, str(threads), repr(start_at), repr(seconds), row_file]


def tritonclient_clients(python):
    """The command of one (c) client process: KServe ModelInfer through tritonclient, in its venv."""
    import triton_env

    def command(target, name, row_file, threads, start_at, seconds) -> list[str]:
        model_id = name.split("/", 1)[1]  # a bare model id is a KServe model name, version ""
        return [str(python), str(triton_env.CLIENT), target, model_id, "", row_file, "--clients", str(threads), repr(start_at), repr(seconds)]

    return command


def concurrent_clients(target, name, row, clients, seconds, processes=4, command=sdk_clients):
    """`clients` one-row clients in `processes` client processes (threads within each, one channel
    per client) for `seconds`: (requests/s, p99 s)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/row.npy", row)
        start_at = time.time() + 3.0  # every process connected and warmed up by then
        per = [clients // processes + (k < clients % processes) for k in range(processes)]
        procs = [subprocess.Popen(command(target, name, f"{tmp}/row.npy", n, start_at, seconds), stdout=subprocess.PIPE, text=True)
                 for n in per if n]
        every = [x for p in procs for x in json.loads(p.communicate(timeout=seconds + 120)[0])]
    return len(every) / seconds, pct(every, 99)


def model_statistics(target, model):
    """`model`'s statistics extension (KServe ModelStatistics). With several RPC processes each
    writes its counts every 0.5 s: wait for the last ones."""
    from gradwire.kserve import grpc_service_pb2 as kpb
    from gradwire.kserve import grpc_service_pb2_grpc

    if os.environ.get("BENCH_OWN_CONNECTIONS"):  # several RPC processes
        time.sleep(1.0)
    with grpc.insecure_channel(target) as ch:
        (m,) = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
            kpb.ModelStatisticsRequest(name=model.name.split("/", 1)[1]), timeout=30).model_stats
    return m


def executions(target, model) -> tuple[int, int]:
    """(rows answered, onnxruntime calls) of `model`, from the statistics extension."""
    m = model_statistics(target, model)
    return m.inference_count, m.execution_count


def handler_us(before, after) -> dict[str, float]:
    """Per request between two ModelStatistics of a model, in µs: the server's handler from the
    call's arrival to its response (success), and its stages."""
    out = {}
    for stage in ("success", "compute_input", "queue", "compute_infer", "compute_output"):
        b, a = getattr(before.inference_stats, stage), getattr(after.inference_stats, stage)
        out[stage] = (a.ns - b.ns) / max(1, a.count - b.count) / 1e3
    return out


def stages(h: dict[str, float]) -> str:
    """handler_us's figures, as the report prints them."""
    return (f"{h['success']:.0f} us = decoding {h['compute_input']:.0f} + queue {h['queue']:.0f} + onnxruntime "
            f"{h['compute_infer']:.0f} + response {h['compute_output']:.0f}")


def bench_c(client, target, seconds, model, row, processes=4, command=sdk_clients):
    rows0, calls0 = executions(target, model)
    on = concurrent_clients(target, model.name, row, 32, seconds, processes, command)
    rows1, calls1 = executions(target, model)
    client.set_batching(model, enabled=False)
    try:
        off = concurrent_clients(target, model.name, row, 32, seconds, processes, command)
    finally:
        client.set_batching(model, clear=True)
    return {"model": model.name, "processes": processes, "on_req_s": on[0], "off_req_s": off[0], "on_p99_ms": on[1] * 1e3, "off_p99_ms": off[1] * 1e3,
            "ratio": on[0] / off[0], "on_rows_per_call": (rows1 - rows0) / max(1, calls1 - calls0)}


def bench_d(client, echo_target, megabytes):
    n = megabytes * (1 << 20) // (64 * 4)
    X = np.random.default_rng(0).normal(size=(n, 64)).astype(np.float32)
    y = np.arange(n) % 10
    t0 = time.perf_counter()
    ds = client.upload_dataset(X, y, name="upload-bench")
    service = time.perf_counter() - t0
    ds.delete()
    payload = memoryview(X).cast("B")
    with grpc.insecure_channel(echo_target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        sink = ch.stream_unary(SINK)
        t0 = time.perf_counter()
        got = sink(bytes(payload[i:i + (1 << 20)]) for i in range(0, len(payload), 1 << 20))
        bare = time.perf_counter() - t0
    assert int.from_bytes(got, "little") == len(payload)
    mb = (X.nbytes + y.astype(np.int64).nbytes) / 1e6
    return {"mb": mb, "service_mb_s": mb / service, "bare_mb_s": X.nbytes / 1e6 / bare, "ratio": (mb / service) / (X.nbytes / 1e6 / bare)}


def torch_cnn():
    """cnn(), as plain torch modules."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding="same"), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 2 * 2, 10),
    )


def torch_wide_mlp(inputs: int = 512, width: int = 4096):
    """wide_net(), as plain torch modules."""
    from torch import nn

    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def plain_loop(make_net, X, y, epochs, batch, device, lr):
    """The oracle: the same network, data and hyperparameters (Adam) as a plain PyTorch loop in this
    process, written as a tutorial writes it: torch.optim.Adam's default implementation (the
    service's jobs use torch's fused one, which is part of what the service adds). Timed, as a
    job's time is, from the data in memory and the network not yet built (for the 4096-wide MLP,
    building it takes 0.09 s) to the trained network."""
    import torch
    from torch import nn

    dev = torch.device(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    net = make_net().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    for _ in range(epochs):
        perm = torch.randperm(len(yt), device=dev)
        for i in range(0, len(yt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss_fn(net(xt[idx]), yt[idx]).backward()
            opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return len(y) * epochs / (time.perf_counter() - t0)


def bench_e(client, net, make_net, X, y, epochs, batch, device, lr=1e-3):
    """Best of two runs each, in ABBA order (plain, service, service, plain): a noisy machine's
    slow moments then hit both sides alike. The service's job saves a checkpoint every epoch
    (and reports it) and ends with evaluation, ONNX export and the parity check; the plain loop
    does none of these."""
    def service_run():
        job = client.train(net, (X, y), optimizer=gw.Adam(lr), epochs=epochs, batch_size=batch, seed=0, name="train-bench")
        job.wait()
        job.refresh()
        stepping = sum(len(y) / h.samples_per_second for h in job.history)
        return len(y) * epochs / (job.end_time - job.start_time).total_seconds(), len(y) * epochs / stepping, job.device

    local = [plain_loop(make_net, X, y, epochs, batch, device, lr)]
    runs = [service_run(), service_run()]
    local.append(plain_loop(make_net, X, y, epochs, batch, device, lr))
    service, stepping, where = max(runs)
    return {"service_samples_s": service, "service_stepping_samples_s": stepping,
            "plain_samples_s": max(local), "ratio": service / max(local), "device": where}


def bench_f(target, model_name, version, X, n, base_p50_ms, base_p99_ms, client):
    import triton_env

    py, why = triton_env.ensure()
    if py is None:
        return {"skipped": why}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", X[:8])
        run = subprocess.run([str(py), str(triton_env.CLIENT), target, model_name, version, f"{tmp}/x.npy", "--bench", str(n)],
                             capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        return {"skipped": f"tritonclient failed: {run.stderr[-500:]}"}
    seen = json.loads(run.stdout)
    lat = seen["latency_s"][20:]
    ours = client.predict(f"registeredModels/{model_name}@{version}" if version else f"registeredModels/{model_name}", X[:8])
    same = np.array_equal(np.asarray(seen["probabilities"], dtype=np.float32), ours)
    return {"p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "ratio_p50": pct(lat, 50) * 1e3 / base_p50_ms,
            "ratio_p99": pct(lat, 99) * 1e3 / base_p99_ms, "same_as_predict": same}


def _triton_rows(target, model_name, version, onnx_path, X, flag: str, n: int) -> dict:
    """tests/kserve_client.py run with ``flag`` (--bench-shm or --bench-stream) on 1,024-row
    requests, between two timings of in-process onnxruntime on the same rows (the faster is the
    baseline, `ort_s`), and an empty call's round trip (`empty_s`, the server's ServerLive)."""
    import triton_env

    py, why = triton_env.ensure()
    if py is None:
        return {"skipped": why}
    session = ort_session(onnx_path, off_workers=True)
    rows = np.ascontiguousarray(np.resize(X, (1024, *X.shape[1:])))
    # 30 calls of warm-up: for 20-50 ms after a client process ends, calls here take 2-6x longer;
    # and the faster block is the baseline (a slow moment of the machine does not flatter the ratio)
    local = timed(lambda: session.run(None, {"features": rows}), max(10, n // 2), warmup=30)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", rows)
        run = subprocess.run([str(py), str(triton_env.CLIENT), target, model_name, version, f"{tmp}/x.npy", flag, str(n)],
                             capture_output=True, text=True, timeout=600, check=False)
    after = timed(lambda: session.run(None, {"features": rows}), max(10, n // 2), warmup=30)
    with grpc.insecure_channel(target) as ch:
        live = ch.unary_unary("/inference.GRPCInferenceService/ServerLive")
        empty = float(np.median(timed(lambda: live(b""), 300)))
    if run.returncode != 0:
        return {"skipped": f"tritonclient failed: {run.stderr[-500:]}"}
    return {"seen": json.loads(run.stdout), "ort_s": min(float(np.median(local)), float(np.median(after))), "empty_s": empty}


def bench_f_shm(target, model_name, version, onnx_path, X, n):
    """(b) through tritonclient: 1,024-row requests with the tensors in system shared memory, and
    over the wire, in alternating blocks, against in-process onnxruntime.
    Also the most any RPC could reach, one call at a time, whatever it carries: ORT / (ORT + an
    empty call's round trip)."""
    got = _triton_rows(target, model_name, version, onnx_path, X, "--bench-shm", n)
    if "skipped" in got:
        return got
    ort, empty, seen = got["ort_s"], got["empty_s"], got["seen"]["bench_shm_s"]
    shm, wire = (float(np.median(t)) for t in (seen["shm"], seen["wire"]))
    return {"shm_rows_s": 1024 / shm, "wire_rows_s": 1024 / wire, "ort_rows_s": 1024 / ort,
            "ratio_shm": ort / shm, "ratio_wire": ort / wire, "empty_call_ms": empty * 1e3, "ceiling": ort / (ort + empty)}


def bench_f_stream(target, model_name, version, onnx_path, X, n):
    """(b) through tritonclient's streaming API: 1,024-row requests sent back to back on one
    ModelStreamInfer stream (several in progress at once, so the round trip overlaps the model's
    runs), against the same requests one call at a time, in alternating blocks; both against
    in-process onnxruntime."""
    got = _triton_rows(target, model_name, version, onnx_path, X, "--bench-stream", n)
    if "skipped" in got:
        return got
    ort, seen = got["ort_s"], got["seen"]["bench_stream"]
    rate = {k: sum(c for _, c in blocks) * 1024 / sum(t for t, _ in blocks) for k, blocks in seen.items()}
    return {"stream_rows_s": rate["stream"], "calls_rows_s": rate["calls"], "ort_rows_s": 1024 / ort,
            "ratio_stream": rate["stream"] * ort / 1024, "ratio_calls": rate["calls"] * ort / 1024}


# ---------------------------------------------------------------------------------------------


def machine() -> str:
    import onnxruntime as ort
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())}), grpcio {grpc.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="a,b,c,d,e,f", help="which figures, e.g. a,b,e")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts, bytes and epochs")
    parser.add_argument("--device", default="auto", help="training device for the server and the plain loop")
    parser.add_argument("--server-cpus", help="pin the server, the echo server and the in-process baselines to these CPUs, e.g. 0-7")
    parser.add_argument("--client-cpus", help="pin (c)'s client processes to these CPUs, e.g. 8-15")
    parser.add_argument("--client-processes", type=int, default=4, help="(c): how many processes its 32 clients run in")
    parser.add_argument("--rpc-processes", type=int, default=1,
                        help="the server's GRADWIRE_RPC_PROCESSES; above 1, each of (c)'s clients has a connection of its own")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures to this file, after each one")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients-worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        return echo_server(args.echo_server)
    if args.clients_worker:
        target, name, threads, start_at, seconds, row_file = args.clients_worker
        return clients_worker(target, name, int(threads), float(start_at), float(seconds), row_file)
    only = set(args.only.split(","))
    s = args.scale
    if args.server_cpus:  # the server and echo processes inherit it
        os.sched_setaffinity(0, cpu_list(args.server_cpus))
    if args.client_cpus:
        os.environ["BENCH_CLIENT_CPUS"] = args.client_cpus
    if args.rpc_processes > 1:
        os.environ["BENCH_OWN_CONNECTIONS"] = "1"  # (c)'s clients, so that they spread over the RPC processes
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    port, echo_port = free_port(), free_port()
    target, echo_target = f"127.0.0.1:{port}", f"127.0.0.1:{echo_port}"
    started = time.perf_counter()
    results: dict[str, dict] = {}
    if args.json:
        results = Saved(args.json, machine=machine(), server_cpus=args.server_cpus, client_cpus=args.client_cpus,
                        rpc_processes=args.rpc_processes)
    with tempfile.TemporaryDirectory(prefix="gradwire-bench-") as data_dir, \
            process([sys.executable, "-c", "import sys; from gradwire.cli import main; sys.exit(main(sys.argv[1:]))", "serve"],
                    {"GRADWIRE_HOST": "127.0.0.1", "GRADWIRE_PORT": str(port), "GRADWIRE_DATA_DIR": data_dir,
                     "GRADWIRE_DEVICE": args.device, "GRADWIRE_LOG_LEVEL": "WARNING",
                     "GRADWIRE_RPC_PROCESSES": str(args.rpc_processes)}) as server, \
            process([sys.executable, __file__, "--echo-server", str(echo_port)]) as echo:
        wait_ready(target, server, health=True)
        wait_ready(echo_target, echo)
        X, y = digits()
        with gw.Client(target, timeout=300) as client:
            if only & {"a", "b", "f"}:
                model = client.train(cnn(), (X, y), optimizer=gw.Adam(1e-3), epochs=2, batch_size=64, seed=0,
                                     registered_model="digits", aliases=["production"]).wait()
                onnx_path = model.download(pathlib.Path(data_dir) / "digits.onnx")
            if "a" in only:
                results["a"] = bench_a(client, target, echo_target, model, onnx_path, X, int(1000 * s))
            if only & {"b", "c"}:
                wide, wide_X = wide_model(client)
            if "b" in only:
                results["b"] = bench_b(client, target, echo_target, model, onnx_path, X, int(60 * s))
                wide_path = wide.download(pathlib.Path(data_dir) / "wide.onnx")
                results["b_wide"] = bench_b(client, target, echo_target, wide, wide_path, wide_X, max(4, int(8 * s)))
            if "c" in only:
                results["c"] = bench_c(client, target, 4.0 * s, wide, wide_X[:1], args.client_processes)
                if "a" in results or "b" in results:  # the digits CNN too, for reference
                    results["c_digits"] = bench_c(client, target, 4.0 * s, model, X[:1], args.client_processes)
            if "d" in only:
                results["d"] = bench_d(client, echo_target, int(64 * s))
            if "e" in only:
                results["e"] = bench_e(client, cnn(), torch_cnn, X, y, max(1, int(10 * s)), 32, device)
                # A bigger network, where each epoch's checkpoint (227 MB with Adam's moments) and the final
                # export weigh: 6 epochs of 4 steps.
                wide_X, wide_y = wide_data(512)
                results["e_wide"] = bench_e(client, wide_net(), torch_wide_mlp, wide_X, wide_y, max(1, int(6 * s)), 128, device, lr=1e-4)
            if "f" in only:
                base = results.get("a") or bench_a(client, target, echo_target, model, onnx_path, X, 300)
                results["f"] = bench_f(target, "digits", "production", X, int(500 * s), base["base_p50_ms"], base["base_p99_ms"], client)
                results["f_shm"] = bench_f_shm(target, "digits", "production", onnx_path, X, int(60 * s))
                results["f_stream"] = bench_f_stream(target, "digits", "production", onnx_path, X, int(200 * s))
                if "c" in only:  # (c) through tritonclient: the same 32 clients, KServe ModelInfer
                    import triton_env

                    py, why = triton_env.ensure()
                    results["f_c"] = (bench_c(client, target, 4.0 * s, wide, wide_X[:1], args.client_processes, tritonclient_clients(py))
                                      if py is not None else {"skipped": why})
    pinned = f"; server pinned to CPUs {args.server_cpus}, (c)'s clients to {args.client_cpus}" if args.server_cpus or args.client_cpus else ""
    if args.rpc_processes > 1:
        pinned += f"; {args.rpc_processes} RPC processes"
    report(results, machine() + pinned, time.perf_counter() - started)


class Saved(dict):
    """The results dict, rewritten to a JSON file whenever a figure lands (a run cut short keeps
    what it measured)."""

    def __init__(self, path: pathlib.Path, **context):
        super().__init__()
        self.path, self.context = path, context

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.path.write_text(json.dumps({**self.context, **self}, indent=1, default=str))


def report(r: dict, where: str, wall: float) -> None:
    print(f"machine: {where}")
    print(f"{'figure':74}{'gradwire':>16}{'baseline':>16}{'ratio':>8}  target")
    row = lambda label, ours, base, ratio, target: print(f"{label:74}{ours:>16}{base:>16}{ratio:>8.2f}  {target}")  # noqa: E731
    if "a" in r:
        a = r["a"]
        row("(a) 1-row Predict p50, SDK vs echo + onnxruntime (ms)", f"{a['sdk_p50_ms']:.3f}", f"{a['base_p50_ms']:.3f}", a["ratio_p50"], "<= 1.3")
        row("(a) 1-row Predict p99 (ms)", f"{a['sdk_p99_ms']:.3f}", f"{a['base_p99_ms']:.3f}", a["ratio_p99"], "<= 1.3")
        if a.get("handler_us"):
            print(f"    the server's handler, mean per request (ModelStatistics): {stages(a['handler_us'])}; "
                  f"in-process onnxruntime p50 {a['ort_p50_ms'] * 1e3:.0f} us")
        if "sdk_slow" in a:
            print(f"    calls over 3x their median: SDK {a['sdk_slow']:.1%}, bare echo {a['echo_slow']:.1%}")
    for key in ("b", "b_wide"):
        if key in r:
            b = r[key]
            what = "digits CNN" if key == "b" else "4096-wide MLP"
            row(f"(b) rows/s, 1024-row requests vs in-process ORT, {what}", f"{b['service_rows_s']:,.0f}", f"{b['ort_rows_s']:,.0f}", b["ratio"], ">= 0.8")
            print(f"    ceiling: ORT / (ORT + a bare echo of the same {b['request_kb']:,.0f} KB request) = {b['ceiling']:.2f}")
            if b.get("handler_us"):
                print(f"    medians: SDK {b['sdk_ms']:.3f} ms, echo {b['echo_ms']:.3f} ms, in-process ORT {b['ort_ms']:.3f} ms; "
                      f"the server's handler, mean: {stages(b['handler_us'])}")
    def clients_rows(c: dict, label: str, target: str) -> None:
        row(f"{label} ({c['processes']} processes), req/s, batching on vs off", f"{c['on_req_s']:,.0f}", f"{c['off_req_s']:,.0f}", c["ratio"], target)
        row("    p99 latency, batching on vs off (ms)", f"{c['on_p99_ms']:.1f}", f"{c['off_p99_ms']:.1f}", c["on_p99_ms"] / c["off_p99_ms"], "(reported)")
        print(f"    batching on: {c['on_rows_per_call']:.1f} rows per onnxruntime call (the server's ModelStatistics)")

    if "c" in r:
        clients_rows(r["c"], "(c) 32 one-row clients, 4096-wide MLP", ">= 3")
    if "c_digits" in r:
        clients_rows(r["c_digits"], "(c) 32 one-row clients, digits CNN", "")
    if "d" in r:
        d = r["d"]
        row(f"(d) upload MB/s ({d['mb']:.0f} MB) vs bare gRPC stream", f"{d['service_mb_s']:.0f}", f"{d['bare_mb_s']:.0f}", d["ratio"], ">= 0.7")
    for key in ("e", "e_wide"):
        if key in r:
            e = r[key]
            what = "digits CNN" if key == "e" else "4096-wide MLP"
            row(f"(e) training samples/s, job start to end, {what} ({e['device']}) vs plain loop", f"{e['service_samples_s']:,.0f}", f"{e['plain_samples_s']:,.0f}", e["ratio"], ">= 0.9")
            row("    (stepping only, from the job's epoch history)", f"{e['service_stepping_samples_s']:,.0f}", f"{e['plain_samples_s']:,.0f}",
                e["service_stepping_samples_s"] / e["plain_samples_s"], "")
    def ran(key: str, what: str) -> dict | None:
        """A figure that ran, or None (and the reason it did not, printed)."""
        got = r.get(key)
        if got is not None and "skipped" in got:
            print(f"{what}: skipped: {got['skipped']}")
            return None
        return got

    if f := ran("f", "(f) KServe v2 via tritonclient"):
        row("(f) KServe ModelInfer 1-row p50, tritonclient vs (a) baseline (ms)", f"{f['p50_ms']:.3f}", "", f["ratio_p50"], "")
        row("(f) KServe ModelInfer 1-row p99 (ms)", f"{f['p99_ms']:.3f}", "", f["ratio_p99"], "")
        print(f"(f) tritonclient probabilities identical to Predict's: {f['same_as_predict']}")
    if f := ran("f_shm", "(f) 1024-row requests via tritonclient"):
        row("(f) rows/s, 1024-row ModelInfer, system shared memory vs in-process ORT, digits CNN", f"{f['shm_rows_s']:,.0f}",
            f"{f['ort_rows_s']:,.0f}", f["ratio_shm"], ">= 0.8")
        row("    the same requests over the wire (tritonclient)", f"{f['wire_rows_s']:,.0f}", f"{f['ort_rows_s']:,.0f}",
            f["ratio_wire"], "")
        print(f"    ceiling of any RPC, one call at a time: ORT / (ORT + an empty call's round trip, {f['empty_call_ms']:.3f} ms)"
              f" = {f['ceiling']:.2f}")
    if c := ran("f_c", "(f) (c) through tritonclient"):
        clients_rows(c, "(f) 32 one-row tritonclient clients, 4096-wide MLP", ">= 3")
    if f := ran("f_stream", "(f) 1024-row requests on a tritonclient stream"):
        row("(f) rows/s, 1024-row requests on one ModelStreamInfer stream vs in-process ORT", f"{f['stream_rows_s']:,.0f}",
            f"{f['ort_rows_s']:,.0f}", f["ratio_stream"], ">= 0.8")
        row("    the same requests, one ModelInfer call at a time (tritonclient)", f"{f['calls_rows_s']:,.0f}",
            f"{f['ort_rows_s']:,.0f}", f["ratio_calls"], "")
    print(f"total bench time {wall:.0f} s")


if __name__ == "__main__":
    main()
