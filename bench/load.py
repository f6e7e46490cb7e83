"""Load run: 16 concurrent predicting clients while a job trains, against the same clients on an idle server.

    python bench/load.py                    # 60 s while training (the issue's run), 20 s idle first
    python bench/load.py --seconds 10 --idle-seconds 5
    python bench/load.py --target host:50051 --token ...

Each client is its own process (no shared GIL) with its own channel, calling
Predict with one digits image per call through the SDK, back to back. The
server starts on a free port unless --target is given. Prints requests, errors,
p50/p99 latency for both phases and the ratio p99(training) / p99(idle); the
target is zero errors and a ratio <= 2.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import numpy as np
from sklearn.datasets import load_digits

import gradwire as gw
from _server import local_server


def client_loop(target: str, token: str | None, model: str, start_at: float, seconds: float, seed: int, out) -> None:
    X = load_digits().data.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    rng = np.random.default_rng(seed)
    latencies, errors, first_error = [], 0, ""
    with gw.Client(target, token=token, timeout=10) as client:
        client.predict(model, X[:1])  # connect and cache the input shape before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            i = int(rng.integers(len(X)))
            t = time.perf_counter()
            try:
                client.predict(model, X[i : i + 1])
                latencies.append(time.perf_counter() - t)
            except gw.APIError as exc:
                errors += 1
                first_error = first_error or str(exc)
    out.put((latencies, errors, first_error))


def phase(target: str, token: str | None, model: str, clients: int, seconds: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # every client connected and warm first
    procs = [ctx.Process(target=client_loop, args=(target, token, model, start_at, seconds, i, out)) for i in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    latencies = np.array([x for r in results for x in r[0]]) * 1000
    return {
        "requests": int(latencies.size),
        "errors": sum(r[1] for r in results),
        "first_error": next((r[2] for r in results if r[2]), ""),
        "rps": latencies.size / seconds,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
    }


def run(target: str, token: str | None, clients: int, seconds: float, idle_seconds: float) -> None:
    digits = load_digits()
    X = digits.data.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    y = digits.target
    with gw.Client(target, token=token, timeout=60) as client:
        data = client.upload_dataset(X, y, name="digits", class_names=[str(d) for d in range(10)])
        cnn = [gw.Conv2d(8, kernel_size=3, padding="same"), gw.ReLU(), gw.MaxPool2d(2), gw.Flatten(), gw.Dense(10)]
        model = client.train(cnn, data, optimizer=gw.Adam(1e-3), epochs=3, batch_size=32, seed=0).wait()
        print(f"model {model.name} trained; idle phase: {clients} clients x {idle_seconds:g} s", flush=True)
        idle = phase(target, token, model.name, clients, idle_seconds)

        # a job that outlasts the phase: a wider CNN, small batches, many epochs
        wide = [gw.Conv2d(16, kernel_size=3, padding="same"), gw.ReLU(), gw.Flatten(), gw.Dense(64), gw.ReLU(), gw.Dense(10)]
        job = client.train(wide, data, optimizer=gw.Adam(1e-3), epochs=10_000, batch_size=32, seed=0)
        deadline = time.monotonic() + 60
        while job.refresh().state.name != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.2)
        epochs_before = len(job.refresh().history)
        print(f"training {job.name}; training phase: {clients} clients x {seconds:g} s", flush=True)
        busy = phase(target, token, model.name, clients, seconds)
        job = job.refresh()
        still_training = job.state.name == "RUNNING"
        epochs_during = len(job.history) - epochs_before
        client.cancel_job(job)

    print()
    print(f"{'phase':<10}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, r in (("idle", idle), ("training", busy)):
        print(f"{name:<10}{r['requests']:>10}{r['errors']:>8}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
        if r["first_error"]:
            print(f"  first error: {r['first_error']}")
    ratio = busy["p99_ms"] / idle["p99_ms"]
    print(f"\nerrors: {idle['errors'] + busy['errors']}; p99 training / idle: {ratio:.2f}x (target <= 2x); "
          f"the job trained {epochs_during} epochs during the phase and was {'still' if still_training else 'NOT'} running at its end; "
          f"{os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", help="a running server (default: start one)")
    parser.add_argument("--token", help="bearer token, if the server requires one")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the training phase")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="length of the idle phase")
    parser.add_argument("--worker-nice", type=int, default=0, help="GRADWIRE_WORKER_NICE of the server it starts")
    args = parser.parse_args()
    if args.target:
        run(args.target, args.token, args.clients, args.seconds, args.idle_seconds)
    else:
        with local_server({"GRADWIRE_WORKER_NICE": str(args.worker_nice)}) as target:
            run(target, args.token, args.clients, args.seconds, args.idle_seconds)


if __name__ == "__main__":
    main()
