#!/usr/bin/env bash
# Packs onnxruntime-gpu for bench/gpu_check.sh on a lent GPU machine, where one call carries at most
# 64 MiB and the wheel is 247 MB: its installed files without what the Python module does not load
# (libonnxruntime.so, the TensorRT provider, the tools), as a .tar.xz of 186 MB in pieces of 62 MiB,
# in .ortgpu/ (ignored by git). Then, one call per piece to the same warm
# machine (it is given back 30 s after a call), each carrying .ortgpu/ holding that piece alone:
#   calls 1 and 2: mkdir -p /tmp/ortparts && cp .ortgpu/* /tmp/ortparts/
#   call 3, carrying .ortgpu and .whl (without .whl/bin/grpcurl, which would pass 64 MiB):
#     cp .ortgpu/* /tmp/ortparts/ && bash bench/gpu_check.sh 2>&1 | tee $OUT/run.log
set -eu
version=${1:-1.30.0}  # the GPU machine's image has onnxruntime 1.30.0 and CUDA 13 (onnxruntime-gpu >= 1.27)
work=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$work" "onnxruntime-gpu==$version"
mkdir "$work/site"
(cd "$work/site" && unzip -q "$work"/onnxruntime_gpu-*.whl)
rm -rf "$work"/site/onnxruntime/{transformers,quantization,tools,backend,datasets,ThirdPartyNotices.txt} \
    "$work"/site/onnxruntime/capi/libonnxruntime.so.* "$work"/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
tar -C "$work/site" -cf - . | xz -T0 -9 > "$work/ortgpu.tar.xz"
mkdir -p .ortgpu
rm -f .ortgpu/ortgpu.*
(cd "$work" && sha256sum ortgpu.tar.xz) > .ortgpu/ortgpu.sha256
split -b 62M -a 1 "$work/ortgpu.tar.xz" .ortgpu/ortgpu.part.
rm -rf "$work"
ls -l .ortgpu
