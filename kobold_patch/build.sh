#!/usr/bin/env bash
# Build the patched KoboldCPP tree in DIR (apply.sh first).
#
#   BACKEND=cpu|cuda  kobold_patch/build.sh DIR
#
#   BACKEND      cuda (default): koboldcpp_cublas.so; cpu: koboldcpp_default.so
#   JOBS         parallel compile jobs (default: the number of CPUs)
#   CUDA_ARCH    GPU architecture for nvcc, e.g. sm_90 (H100), 89, 8.6, native, all;
#                default: the local GPU's (nvidia-smi); needed on a machine without a GPU
#   CUDA_PATH    CUDA toolkit root (default: from nvcc on PATH, else /usr/local/cuda)
#   CUBLAS_ROOT  a cuBLAS that is not in the toolkit, with include/ and lib/ (e.g. the PyPI wheel
#                nvidia-cublas: .../site-packages/nvidia/cu13)
#   PORTABLE     1: CPU code for any x86-64 with AVX2 instead of this machine's CPU (-march=native);
#                for a library that runs elsewhere (the Docker image). CUDA_ARCH=all/all-major imply it
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf '\033[1m[halo-weave]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[halo-weave] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: BACKEND=cpu|cuda $0 DIR"
DIR="$(cd "$1" && pwd)"
BACKEND="${BACKEND:-cuda}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
portable_args=()
[ "${PORTABLE:-}" = 1 ] && portable_args=("LLAMA_PORTABLE=1")
grep -q "halo_attn_graph_hook" "$DIR/src/llama.cpp" 2>/dev/null || die "$DIR is not patched: run kobold_patch/apply.sh $1 first (make patch-and-build does both)"
command -v make >/dev/null || die "make is needed (apt-get install build-essential)"
command -v g++ >/dev/null || die "a C++ compiler is needed (apt-get install build-essential)"

case "$BACKEND" in
cpu)
    say "building the CPU server (koboldcpp_default.so) with $JOBS jobs in $DIR"
    make -C "$DIR" koboldcpp_default "${portable_args[@]}" -j"$JOBS" || die "the CPU build failed (see above); it needs g++ >= 9 and make (apt-get install build-essential)"
    say "built $DIR/koboldcpp_default.so"
    ;;
cuda)
    if [ -n "${CUDA_PATH:-}" ] && [ -x "$CUDA_PATH/bin/nvcc" ]; then NVCC_BIN="$CUDA_PATH/bin/nvcc"
    elif command -v nvcc >/dev/null; then NVCC_BIN="$(command -v nvcc)"
    elif [ -x /usr/local/cuda/bin/nvcc ]; then NVCC_BIN=/usr/local/cuda/bin/nvcc
    else die "nvcc not found: install the CUDA toolkit (12 or 13) and put nvcc on PATH, or pass CUDA_PATH=DIR; or build BACKEND=cpu"
    fi
    if [ -z "${CUDA_PATH:-}" ]; then  # the toolkit root, as nvcc itself reports it (nvcc may be a wrapper)
        top="$("$NVCC_BIN" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)"
        CUDA_PATH="$(cd "${top:-$(dirname "$(readlink -f "$NVCC_BIN")")/..}" && pwd -P)"
    fi
    [ -f "$CUDA_PATH/include/cuda_runtime.h" ] || [ -f "$CUDA_PATH/targets/x86_64-linux/include/cuda_runtime.h" ] \
        || die "no CUDA headers under $CUDA_PATH: pass CUDA_PATH=the toolkit root (the directory with bin/nvcc and include/)"
    cuda_major="$("$NVCC_BIN" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p' | head -1)"
    [ -n "$cuda_major" ] || die "could not read the CUDA version from $NVCC_BIN --version"
    arch="${CUDA_ARCH:-}"
    if [ -z "$arch" ]; then
        cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)"
        [ -n "$cap" ] || die "no GPU found to build for: pass CUDA_ARCH=sm_XX (e.g. CUDA_ARCH=sm_90 for an H100, sm_89 for an RTX 40xx)"
        arch="sm_$cap"
    fi
    case "$arch" in
        sm_*|compute_*|native|all|all-major) ;;
        [0-9]*.[0-9]*) arch="sm_${arch/./}" ;;
        [0-9]*) arch="sm_$arch" ;;
        *) die "CUDA_ARCH=$arch: use sm_XX, XX, X.Y, native or all" ;;
    esac
    shim="$DIR/.halo-cuda-shim"
    rm -rf "$shim" && mkdir -p "$shim/lib" "$shim/include"
    cpath="$CUDA_PATH/include"
    libpath="$CUDA_PATH/lib64"
    if [ -n "${CUBLAS_ROOT:-}" ]; then
        [ -f "$CUBLAS_ROOT/include/cublas_v2.h" ] || die "CUBLAS_ROOT=$CUBLAS_ROOT has no include/cublas_v2.h"
        cpath="$CUBLAS_ROOT/include:$cpath"
        for lib in cublas cublasLt; do
            real="$(ls "$CUBLAS_ROOT"/lib/lib$lib.so* 2>/dev/null | head -1 || true)"
            [ -n "$real" ] || die "CUBLAS_ROOT=$CUBLAS_ROOT has no lib/lib$lib.so*"
            ln -sf "$real" "$shim/lib/lib$lib.so"   # the wheel ships only lib$lib.so.13
        done
        libpath="$shim/lib:$CUBLAS_ROOT/lib:$libpath"
    elif [ ! -f "$CUDA_PATH/include/cublas_v2.h" ] && [ ! -f "$CUDA_PATH/targets/x86_64-linux/include/cublas_v2.h" ]; then
        die "cuBLAS headers not found under $CUDA_PATH: install the toolkit's cuBLAS (apt-get install libcublas-dev-12-x or cuda-libraries-dev), or pip install nvidia-cublas (CUDA 13) / nvidia-cublas-cu12 into a directory and pass CUBLAS_ROOT=.../nvidia/cu13 (or .../nvidia/cublas)"
    fi
    if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\b' && [ ! -f "$CUDA_PATH/lib64/stubs/libcuda.so" ] && [ ! -f "$CUDA_PATH/targets/x86_64-linux/lib/stubs/libcuda.so" ]; then
        say "no libcuda.so (the NVIDIA driver) on this machine: linking against a stub, as CUDA's own lib64/stubs do; the library loads the real driver (libcuda.so.1) at run time"
        # the stub defines the driver API functions the CUDA sources call, so that the linker
        # (with --as-needed) records libcuda.so.1 as needed
        grep -rhoE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$DIR"/ggml/src/ggml-cuda.cu "$DIR"/ggml/src/ggml-cuda "$DIR"/otherarch/*.cu 2>/dev/null \
            | tr -d ' (' | sort -u | sed 's/.*/void &(void) {}/' > "$shim/libcuda_stub.c"
        gcc -shared -fPIC "$shim/libcuda_stub.c" -o "$shim/lib/libcuda.so" -Wl,-soname,libcuda.so.1
        libpath="$shim/lib:$libpath"
    fi
    nvcc_cmd="$NVCC_BIN"
    if [ "$cuda_major" -ge 13 ]; then
        say "CUDA $cuda_major: its headers need C++17, compiling the .cu files with -std=c++17"
        nvcc_cmd="$HERE/nvcc-cxx17.sh"
        export HALO_REAL_NVCC="$NVCC_BIN"
    fi
    export CPATH="$cpath${CPATH:+:$CPATH}"
    export LIBRARY_PATH="$libpath${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export PATH="$CUDA_PATH/bin:$PATH"
    arch_args=("${portable_args[@]}")
    [ "$arch" = native ] || arch_args+=("CUDA_DOCKER_ARCH=$arch")
    [ "$arch" = all ] && arch_args=("LLAMA_PORTABLE=1")
    [ "$arch" = all-major ] && arch_args=("LLAMA_PORTABLE=1" "LLAMA_COLAB=1")
    say "building the CUDA server (koboldcpp_cublas.so): CUDA $cuda_major at $CUDA_PATH, arch $arch, $JOBS jobs; the .cu files take a while"
    make -C "$DIR" koboldcpp_cublas LLAMA_CUBLAS=1 "${arch_args[@]}" NVCC="$nvcc_cmd" CUDA_PATH="$CUDA_PATH" -j"$JOBS" \
        || die "the CUDA build failed (see above). It needs the CUDA toolkit (nvcc, cudart) and cuBLAS headers and libraries (CUBLAS_ROOT=... for a pip-installed nvidia-cublas); a GPU-less machine needs CUDA_ARCH=sm_XX"
    say "built $DIR/koboldcpp_cublas.so"
    ;;
*)
    die "BACKEND=$BACKEND: use cpu or cuda"
    ;;
esac
