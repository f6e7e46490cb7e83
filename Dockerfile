# gradwire server image: the gRPC server and its training worker, on a CUDA GPU when the host
# lends one (docker-compose.yml reserves it), else on the CPU.
#
#   docker build -t gradwire:latest .
#   docker run --init --gpus all -p 50051:50051 -v gradwire-data:/data gradwire:latest
#
# The base ships torch 2.13.0 built for CUDA 12.6 and cuDNN 9: the same torch release that CI
# tests (its CPU build), inside pyproject's range, and CUDA 12.6 runs on any driver >= 560
# (>= 525 through CUDA's minor-version compatibility), so older GPU hosts work too. For a
# newer driver and GPU, build with e.g. --build-arg BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, so a bind-mounted data directory can be chowned to it on the host.
ARG GRADWIRE_UID=10001
RUN groupadd --system --gid ${GRADWIRE_UID} gradwire \
 && useradd --system --uid ${GRADWIRE_UID} --gid gradwire --create-home --home-dir /home/gradwire \
        --shell /usr/sbin/nologin gradwire \
 && mkdir -p /data \
 && chown gradwire:gradwire /data

WORKDIR /opt/gradwire
COPY . .

# Pin torch to the build the base image ships, so resolving '.[server]' can never swap in
# another torch (a CPU-only or a multi-GB different CUDA build); the build fails instead.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-constraint.txt \
 && pip install --no-cache-dir --constraint /tmp/torch-constraint.txt '.[server]' \
 && rm -rf /tmp/torch-constraint.txt build *.egg-info \
 && python -c "import torch; assert torch.version.cuda, 'torch lost its CUDA build'; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && python -c "import gradwire, gradwire_server" \
 && command -v gradwire

# Inference on the GPU too: onnxruntime-gpu in place of onnxruntime (the same `onnxruntime` module,
# plus the CUDA execution provider), built for the base image's CUDA: PyPI's onnxruntime-gpu is
# built for CUDA 12 up to 1.26 and for CUDA 13 from 1.27. Its CUDA and cuDNN libraries are the
# nvidia-* wheels torch brought, which the server loads first. With no GPU at run time, or a
# provider that does not load, a session runs on the CPU and the server's log says so.
RUN cuda_major="$(python -c 'import torch; print(torch.version.cuda.split(".")[0])')" \
 && case "$cuda_major" in \
        12) ort_gpu='onnxruntime-gpu>=1.18,<1.27' ;; \
        13) ort_gpu='onnxruntime-gpu>=1.27' ;; \
        *) echo "no onnxruntime-gpu build known for CUDA $cuda_major" >&2; exit 1 ;; \
    esac \
 && pip uninstall --yes onnxruntime \
 && pip install --no-cache-dir "$ort_gpu" \
 && python -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p; print('onnxruntime', o.__version__, p)"

# Every setting is a GRADWIRE_* variable (service/gradwire_server/config.py); compose adds more.
ENV GRADWIRE_DATA_DIR=/data \
    GRADWIRE_HOST=[::] \
    GRADWIRE_PORT=50051

USER gradwire
VOLUME ["/data"]
EXPOSE 50051

# The server answers SIGTERM itself: it stops taking RPCs and gives in-flight ones
# GRADWIRE_GRACE_PERIOD_S to finish. The orchestrator's stop timeout must be longer than that
# (docker-compose.yml: stop_grace_period).
STOPSIGNAL SIGTERM

# A standard grpc.health.v1 Check through the SDK's CLI (no curl in the image). The target's
# port is written out here: change it together with GRADWIRE_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["gradwire", "health", "--target", "localhost:50051"]

# Exec form: the server is the container's main process and gets SIGTERM itself, not a shell.
CMD ["gradwire", "serve"]
