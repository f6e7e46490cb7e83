"""Runs in its own virtual environment with tritonclient[grpc] (it registers `inference.*`
protobuf symbols and pins protobuf<7): talks to a live gradwire server over KServe v2 and
prints what it saw as one JSON object. Used by tests/test_kserve.py and bench/inference.py.

    python tests/kserve_client.py HOST:PORT MODEL_NAME MODEL_VERSION FEATURES.npy [--bench N]
"""

import json
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc


def main() -> None:
    target, model, version, path = sys.argv[1:5]
    bench = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--bench" else 0
    X = np.load(path)
    client = grpcclient.InferenceServerClient(url=target)
    meta = client.get_server_metadata()
    mm = client.get_model_metadata(model, model_version=version)
    inp, out = mm.inputs[0], mm.outputs[0]
    infer_input = grpcclient.InferInput(inp.name, list(X.shape), inp.datatype)
    infer_input.set_data_from_numpy(X)
    result = client.infer(model, [infer_input], model_version=version, request_id="r1",
                          outputs=[grpcclient.InferRequestedOutput(out.name)])
    probs = result.as_numpy(out.name)
    top = client.infer(model, [infer_input], model_version=version,
                       outputs=[grpcclient.InferRequestedOutput(out.name, class_count=2)])
    classes = top.as_numpy(out.name)
    stats = client.get_inference_statistics(model, model_version=version).model_stats
    cfg = client.get_model_config(model, model_version=version).config
    report = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model, model_version=version),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server": {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)},
        "metadata": {"name": mm.name, "versions": list(mm.versions), "platform": mm.platform,
                     "inputs": [[t.name, t.datatype, list(t.shape)] for t in mm.inputs],
                     "outputs": [[t.name, t.datatype, list(t.shape)] for t in mm.outputs]},
        "response": {"model_version": result.get_response().model_version, "id": result.get_response().id},
        "probabilities": probs.tolist(),
        "probabilities_dtype": str(probs.dtype),
        "classification": [[c.decode() for c in row] for row in classes],
        "statistics": [{"name": m.name, "version": m.version, "inference_count": m.inference_count,
                        "execution_count": m.execution_count, "success": m.inference_stats.success.count,
                        "success_ns": m.inference_stats.success.ns, "compute_infer_ns": m.inference_stats.compute_infer.ns,
                        "last_inference": m.last_inference,
                        "batches": [[b.batch_size, b.compute_infer.count] for b in m.batch_stats]} for m in stats],
        "config": {"name": cfg.name, "platform": cfg.platform, "backend": cfg.backend,
                   "max_batch_size": cfg.max_batch_size, "all_versions": cfg.version_policy.HasField("all"),
                   "input": [[t.name, mc.DataType.Name(t.data_type), list(t.dims)] for t in cfg.input],
                   "output": [[t.name, mc.DataType.Name(t.data_type), list(t.dims)] for t in cfg.output],
                   "dynamic_batching": [list(cfg.dynamic_batching.preferred_batch_size),
                                        cfg.dynamic_batching.max_queue_delay_microseconds]
                   if cfg.HasField("dynamic_batching") else None},
    }
    if bench:  # one-row requests, sequential: latency percentiles in seconds
        one = grpcclient.InferInput(inp.name, [1, *X.shape[1:]], inp.datatype)
        one.set_data_from_numpy(X[:1])
        times = []
        for _ in range(bench):
            t0 = time.perf_counter()
            client.infer(model, [one], model_version=version)
            times.append(time.perf_counter() - t0)
        report["latency_s"] = times
    print(json.dumps(report))


if __name__ == "__main__":
    main()
