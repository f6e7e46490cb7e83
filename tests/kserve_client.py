"""Runs in its own virtual environment with tritonclient[grpc] (it registers `inference.*`
protobuf symbols and pins protobuf<7): talks to a live gradwire server over KServe v2 and
prints what it saw as one JSON object. Used by tests/test_kserve.py and bench/inference.py.

    python tests/kserve_client.py HOST:PORT MODEL_NAME MODEL_VERSION FEATURES.npy [--bench N] [--bench-shm N]

--bench N: N one-row requests, their latencies. --bench-shm N: N requests of every row in
FEATURES.npy, alternately through system shared memory and over the wire, in blocks.
--bench-stream N: N requests of every row in FEATURES.npy on one ModelStreamInfer stream (sent
back to back, several in progress at once), against N one after the other, alternating blocks.

    python tests/kserve_client.py HOST:PORT MODEL_NAME MODEL_VERSION ROW.npy --clients THREADS START_AT SECONDS

--clients: THREADS clients (each its own InferenceServerClient) send ROW.npy's one-row request
one after the other from START_AT (a time.time()) for SECONDS; prints every latency (a JSON list).
"""

import json
import os
import queue
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from proto_shapes import enum_values, message_fields  # beside this file (tests/)
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import triton_to_np_dtype


class ShmRequests:
    """Requests of ``X`` whose input and output cross system shared memory regions, made and
    registered with tritonclient's own utilities."""

    def __init__(self, client, model, version, inp, out, X, rows_out):
        self.client, self.model, self.version = client, model, version
        tag = f"{os.getpid()}-{time.time_ns()}"
        in_bytes, self.out_bytes = X.nbytes, rows_out * 4
        self.names = (f"gw-in-{tag}", f"gw-out-{tag}")
        self.handles = [shm.create_shared_memory_region(self.names[0], f"/{self.names[0]}", in_bytes),
                        shm.create_shared_memory_region(self.names[1], f"/{self.names[1]}", self.out_bytes)]
        shm.set_shared_memory_region(self.handles[0], [np.ascontiguousarray(X)])
        client.register_system_shared_memory(self.names[0], f"/{self.names[0]}", in_bytes)
        client.register_system_shared_memory(self.names[1], f"/{self.names[1]}", self.out_bytes)
        self.input = grpcclient.InferInput(inp.name, list(X.shape), inp.datatype)
        self.input.set_shared_memory(self.names[0], in_bytes)
        self.output = grpcclient.InferRequestedOutput(out.name)
        self.output.set_shared_memory(self.names[1], self.out_bytes)
        self.out_name = out.name

    def infer(self):
        return self.client.infer(self.model, [self.input], model_version=self.version, outputs=[self.output])

    def result(self, answer) -> np.ndarray:
        o = answer.get_output(self.out_name)
        return shm.get_contents_as_numpy(self.handles[1], triton_to_np_dtype(o.datatype), list(o.shape))

    def close(self):
        for name in self.names:
            self.client.unregister_system_shared_memory(name)
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


def streamed(client, model, version, requests) -> list:
    """(id, result or None, error message or None) of each of ``requests`` ((request id, inputs))
    sent on one stream (tritonclient's start_stream and async_stream_infer), in the order answered."""
    answers: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id, inputs, *options in requests:  # options: a dict of async_stream_infer's keywords
            keywords = options[0] if options else {}
            client.async_stream_infer(model, inputs, model_version=version, request_id=request_id, **keywords)
        got = [answers.get(timeout=60) for _ in requests]
    finally:
        client.stop_stream()
    return [(result.get_response().id if result is not None else None, result, str(error) if error is not None else None)
            for result, error in got]


def status(client) -> list:
    regions = client.get_system_shared_memory_status().regions
    return sorted([r.name, r.key, r.offset, r.byte_size] for r in regions.values())


def clients(target, model, version, row, threads, start_at, seconds) -> list:
    """bench/inference.py's (c) through tritonclient: every request's latency, in seconds."""
    latencies = [[] for _ in range(threads)]

    def run(k):
        client = grpcclient.InferenceServerClient(url=target)
        one = grpcclient.InferInput("features", list(row.shape), "FP32")
        one.set_data_from_numpy(row)
        client.infer(model, [one], model_version=version)
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < start_at + seconds:
            t0 = time.perf_counter()
            client.infer(model, [one], model_version=version)
            latencies[k].append(time.perf_counter() - t0)
        client.close()

    pool = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return [x for lat in latencies for x in lat]


def main() -> None:
    target, model, version, path = sys.argv[1:5]
    if "--clients" in sys.argv:
        at = sys.argv.index("--clients")
        threads, start_at, seconds = int(sys.argv[at + 1]), float(sys.argv[at + 2]), float(sys.argv[at + 3])
        print(json.dumps(clients(target, model, version, np.load(path), threads, start_at, seconds)))
        return
    bench = int(sys.argv[sys.argv.index("--bench") + 1]) if "--bench" in sys.argv else 0
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
                   if cfg.HasField("dynamic_batching") else None,
                   "instance_group": [[g.name, mc.ModelInstanceGroup.Kind.Name(g.kind), g.count, list(g.gpus)]
                                      for g in cfg.instance_group]},
    }
    # Compact datatypes: pixels-as-bytes style UINT8 (and FP16) answer as the same FP32 rows do.
    whole = np.round(X * 10)
    compact = {}
    for datatype, dtype in (("FP32", np.float32), ("UINT8", np.uint8), ("FP16", np.float16)):
        one = grpcclient.InferInput(inp.name, list(X.shape), datatype)
        one.set_data_from_numpy(whole.astype(dtype))
        compact[datatype] = client.infer(model, [one], model_version=version).as_numpy(out.name)
    report["compact_datatypes_equal"] = [k for k in ("UINT8", "FP16") if np.array_equal(compact[k], compact["FP32"])]
    report["repository_index"] = [[m.name, m.version, m.state] for m in client.get_model_repository_index().models]
    # Model control, and methods gradwire does not serve: tritonclient's own calls, and what each raised.
    report["model_control"] = {}
    for what, call in (("load", lambda: client.load_model(model)),
                       ("load_config", lambda: client.load_model(model, config='{"max_batch_size": 8}')),
                       ("unload", lambda: client.unload_model(model)),
                       ("log_settings", client.get_log_settings),
                       ("cuda_shared_memory", client.get_cuda_shared_memory_status)):
        try:
            call()
            report["model_control"][what] = None
        except grpcclient.InferenceServerException as exc:
            report["model_control"][what] = [exc.status(), exc.message()]
    report["model_control"]["ready_after"] = client.is_model_ready(model, model_version=version)
    # System shared memory: the same request, its tensors through regions tritonclient made.
    shared = ShmRequests(client, model, version, inp, out, X, probs.size)
    answer = shared.infer()
    report["shared_memory"] = {"probabilities": shared.result(answer).tolist(), "status": status(client),
                               "raw_output_contents": [len(b) for b in answer.get_response().raw_output_contents],
                               "output": [answer.get_output(out.name).datatype, list(answer.get_output(out.name).shape)]}
    shared.close()
    report["shared_memory"]["status_after"] = status(client)
    # Streaming inference: each row its own request on one stream, and a bad one among them.
    rows = []
    for i in range(len(X)):
        one = grpcclient.InferInput(inp.name, [1, *X.shape[1:]], inp.datatype)
        one.set_data_from_numpy(X[i:i + 1])
        rows.append((f"s{i}", [one]))
    bad = grpcclient.InferInput("not-the-input", [1, *X.shape[1:]], inp.datatype)
    bad.set_data_from_numpy(X[:1])
    answered = streamed(client, model, version, [*rows[:3], ("bad", [bad]), *rows[3:]])
    report["stream"] = {"ids": [a[0] for a in answered], "errors": [a[2] for a in answered if a[2] is not None],
                        "probabilities": [a[1].as_numpy(out.name)[0].tolist() for a in answered if a[1] is not None]}
    (flagged,) = streamed(client, model, version, [("f", rows[0][1], {"enable_empty_final_response": True})])
    report["stream"]["final_flag"] = flagged[1].get_response().parameters["triton_final_response"].bool_param
    from tritonclient.grpc import service_pb2

    report["protocol"] = {
        "messages": {**message_fields(mc), **message_fields(service_pb2)},
        "enums": {**enum_values(mc), **enum_values(service_pb2)},
        "methods": {m.name: [m.input_type.name, m.output_type.name]
                    for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods},
    }
    if "--bench-shm" in sys.argv:  # every row per request: shared memory and the wire, alternating blocks
        n = int(sys.argv[sys.argv.index("--bench-shm") + 1])
        shared = ShmRequests(client, model, version, inp, out, X, probs.size)
        wire = [grpcclient.InferInput(inp.name, list(X.shape), inp.datatype)]
        wire[0].set_data_from_numpy(X)
        calls = {"shm": shared.infer, "wire": lambda: client.infer(model, wire, model_version=version).as_numpy(out.name)}
        seen = {k: [] for k in calls}
        block = max(1, n // 4)
        for b in range(-(-n // block)):
            for k in calls if b % 2 == 0 else reversed(list(calls)):
                for _ in range(3):  # warm-up
                    calls[k]()
                for _ in range(min(block, n - b * block)):
                    t0 = time.perf_counter()
                    calls[k]()
                    seen[k].append(time.perf_counter() - t0)
        shared.close()
        report["bench_shm_s"] = seen
    if "--bench-stream" in sys.argv:  # every row per request: one stream against one call at a time
        n = int(sys.argv[sys.argv.index("--bench-stream") + 1])
        whole = grpcclient.InferInput(inp.name, list(X.shape), inp.datatype)
        whole.set_data_from_numpy(X)
        block = max(1, n // 4)
        seen = {"stream": [], "calls": []}  # seconds per block, requests per block
        for b in range(-(-n // block)):
            count = min(block, n - b * block)
            for k in ("stream", "calls") if b % 2 == 0 else ("calls", "stream"):
                streamed(client, model, version, [("w", [whole])] * 3)  # warm-up
                for _ in range(3):
                    client.infer(model, [whole], model_version=version)
                t0 = time.perf_counter()
                if k == "stream":
                    answered = streamed(client, model, version, [(str(i), [whole]) for i in range(count)])
                    assert all(a[2] is None for a in answered), answered[0][2]
                else:
                    for _ in range(count):
                        client.infer(model, [whole], model_version=version)
                seen[k].append([time.perf_counter() - t0, count])
        report["bench_stream"] = seen
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
