"""What onnxruntime's CUDA provider does with gradwire's two benchmark networks, on the GPU at hand.

    python bench/gpu_probe.py [--json FILE]

For the digits CNN and the 4096-wide MLP of bench/inference.py (random weights, exported the way
the service exports), and for each set of CUDA provider options tried:
- which provider the session really ran on;
- the largest difference from the CPU provider on 1,024 rows (TF32 shows here);
- whether a row's answer depends on the batch it runs in: each of 64 rows run alone against the
  same rows inside batches of 2 to 1,024 (what dynamic batching would change), bit for bit; and
  at one fixed batch size, the same row beside other rows or beside zeros;
- the time of one call for 1, 64 and 1,024 rows, and of the first call at each new batch size
  (cuDNN's exhaustive algorithm search runs there).
Needs onnxruntime-gpu and a CUDA GPU; without them it says so and exits 2.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent / "service"), str(ROOT.parent / "client")]

VARIANTS = {
    "onnxruntime's defaults": {},
    "use_tf32=0": {"use_tf32": "0"},
    "use_tf32=0, heuristic conv search": {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"},
}  # and gradwire's own options, from gradwire_server.inference.providers()
SIZES = (1, 2, 3, 7, 16, 33, 64, 256, 1024)


def networks():
    import torch
    from inference import digits, torch_cnn, torch_wide_mlp

    torch.manual_seed(0)
    X, _ = digits()
    rng = np.random.default_rng(0)
    return [("digits CNN", torch_cnn(), np.resize(X, (1024, 1, 8, 8))),
            ("4096-wide MLP", torch_wide_mlp(), rng.normal(size=(1024, 512)).astype(np.float32))]


def onnx_bytes(net, example: np.ndarray) -> bytes:
    import torch
    from gradwire_server.export import OPSET_VERSION

    wrapped = torch.nn.Sequential(net, torch.nn.Softmax(dim=-1)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(wrapped, (torch.from_numpy(example[:2]),), buffer, dynamo=False, opset_version=OPSET_VERSION,
                      input_names=["features"], output_names=["probabilities"],
                      dynamic_axes={"features": {0: "batch"}, "probabilities": {0: "batch"}})
    return buffer.getvalue()


def timed(fn, n: int) -> float:
    """The median of n calls, in ms (no warm-up: the first calls were timed on their own)."""
    from inference import timed as timings

    return statistics.median(timings(fn, n, warmup=0)) * 1e3


def probe(session, cpu, X: np.ndarray) -> dict:
    run = lambda x: session.run(None, {"features": x})[0]
    out: dict = {"providers": session.get_providers()}
    first = {}
    for n in SIZES:  # the first call at each batch size: where a per-shape algorithm search runs
        t = time.perf_counter()
        run(X[:n])
        first[n] = round((time.perf_counter() - t) * 1e3, 2)
    out["first_call_ms"] = first
    out["max_abs_diff_vs_cpu"] = float(np.abs(run(X) - cpu.run(None, {"features": X})[0]).max())
    alone = np.concatenate([run(X[i:i + 1]) for i in range(64)])
    differs = {}
    for n in SIZES[1:]:
        got = run(X[:n])[:64]
        differs[n] = int((got != alone[:len(got)]).any(axis=1).sum())
    out["rows_differing_from_alone_by_batch_size"] = differs  # 0 everywhere: batching is bit-identical
    padded = np.zeros_like(X[:64])
    padded[0] = X[5]
    beside_zeros, beside_rows = run(padded)[0], run(X[:64])[5]
    out["fixed_64_rows_same_beside_zeros_or_rows"] = bool((beside_zeros == beside_rows).all())
    out["call_ms"] = {n: round(timed(lambda n=n: run(X[:n]), 50 if n < 1024 else 20), 3) for n in (1, 64, 1024)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    import onnxruntime as ort
    import torch
    from gradwire_server.inference import providers

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
        print(f"no CUDA provider here: onnxruntime {ort.__version__} has {ort.get_available_providers()}, "
              f"torch sees CUDA: {torch.cuda.is_available()}")
        return 2
    ours = providers("cuda")
    variants = {**VARIANTS, "gradwire's options": ours[0][1]}
    print(f"onnxruntime {ort.__version__}, {torch.cuda.get_device_name()}; gradwire's CUDA options {ours[0][1]}")
    report: dict = {}
    for name, net, X in networks():
        data = onnx_bytes(net, X)
        cpu = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        cpu_ms = {n: round(timed(lambda n=n, cpu=cpu, X=X: cpu.run(None, {"features": X[:n]}), 20), 3) for n in (1, 64, 1024)}
        report[name] = {"cpu_call_ms": cpu_ms}
        print(f"\n{name}: CPU provider, one call: {cpu_ms} ms")
        for label, options in variants.items():
            options = {"device_id": 0, **options}
            try:
                session = ort.InferenceSession(data, providers=[("CUDAExecutionProvider", options), "CPUExecutionProvider"])
                seen = probe(session, cpu, X)
            except Exception as exc:  # noqa: BLE001 (an option this onnxruntime refuses: say which)
                seen = {"error": f"{type(exc).__name__}: {exc}"}
            report[name][label] = seen
            print(f"  {label}: {json.dumps(seen)}")
            if args.json:
                args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
