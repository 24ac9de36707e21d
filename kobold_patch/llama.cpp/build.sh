#!/usr/bin/env bash
# Build current llama.cpp's libllama with Halo Weave's attention export, from the llama.cpp that the
# PyPI sdist of llama-cpp-python (pinned below, checked by hash) vendors.
#
#   BACKEND=cpu|cuda [RPC=1] kobold_patch/llama.cpp/build.sh DIR
#
#   DIR           where the llama.cpp tree goes (make: build/llama.cpp-0.3.36); the library ends up
#                 in DIR/build-$BACKEND[-rpc]/bin/libllama.so
#   BACKEND       cpu (default here) or cuda
#   RPC           1: also build ggml's RPC backend and ggml-rpc-server (layers spread over hosts)
#   JOBS          parallel compile jobs (default: the number of CPUs)
#   LLAMA_CPP_SDIST  a local copy of the sdist (checked by the same hash) instead of pip download
#   PYTHON        the python whose pip downloads the sdist (default: python3)
#   CUDA_ARCH, CUDA_PATH, CUBLAS_ROOT   as for the KoboldCPP build (kobold_patch/build.sh)
#   CMAKE_ARGS    more CMake options for llama.cpp (e.g. -DGGML_CUDA_FA=OFF: no flash-attention kernels)
#
# Nothing else is fetched: CMake builds llama.cpp offline (LLAMA_OPENSSL=OFF, no downloads).
# GGML_NATIVE=OFF: code for any x86-64 with AVX2, not this machine's CPU (a VM may report
# instructions it does not allow; native builds then die with "Illegal instruction").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(cd "$HERE/../src" && pwd)"
HOOKS="$HERE/halo-weave-llama.cpp.patch"
PACKAGE=llama-cpp-python
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SDIST_NAME="llama_cpp_python-$VERSION.tar.gz"
NEW_FILES=("$SRC/halo_capture.h" "$SRC/halo_capture.cpp" "$HERE/halo_hooks.h" "$HERE/halo_engine.h" "$HERE/halo_engine.cpp")

say() { printf '\033[1m[halo-weave]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[halo-weave] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: BACKEND=cpu|cuda [RPC=1] $0 DIR"
DIR="$1"
BACKEND="${BACKEND:-cpu}"
RPC="${RPC:-0}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PYTHON="${PYTHON:-python3}"
for tool in cmake ninja git g++ tar; do
    command -v "$tool" >/dev/null || die "$tool is needed (apt-get install cmake ninja-build git g++)"
done
for f in "${NEW_FILES[@]}" "$HOOKS"; do [ -f "$f" ] || die "missing $f"; done

# ---- the llama.cpp tree, from the pinned sdist
if [ ! -f "$DIR/.halo-llama-version" ]; then
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    if [ -n "${LLAMA_CPP_SDIST:-}" ]; then
        [ -f "$LLAMA_CPP_SDIST" ] || die "LLAMA_CPP_SDIST=$LLAMA_CPP_SDIST does not exist"
        sdist="$LLAMA_CPP_SDIST"
    else
        say "downloading $PACKAGE==$VERSION (the sdist, 77 MB) from the package index"
        printf '%s==%s --hash=sha256:%s\n' "$PACKAGE" "$VERSION" "$SHA256" > "$WORK/requirements.txt"
        "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
            -r "$WORK/requirements.txt" -d "$WORK" \
            || die "could not download $PACKAGE==$VERSION with pip (no package index? pass LLAMA_CPP_SDIST=PATH of $SDIST_NAME)"
        sdist="$WORK/$SDIST_NAME"
    fi
    got="$(sha256sum "$sdist" | cut -d' ' -f1)"
    [ "$got" = "$SHA256" ] || die "$sdist has sha256 $got, not the pinned $SHA256"
    say "unpacking llama.cpp (vendor/llama.cpp of $SDIST_NAME) into $DIR"
    tar -xzf "$sdist" -C "$WORK" "llama_cpp_python-$VERSION/vendor/llama.cpp"
    rm -rf "$DIR"
    mkdir -p "$(dirname "$DIR")"
    mv "$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DIR"
    rm -f "$DIR/.git"  # the sdist's submodule pointer, to a repository that is not there
    echo "$PACKAGE $VERSION $SHA256" > "$DIR/.halo-llama-version"
fi
grep -q " $SHA256\$" "$DIR/.halo-llama-version" \
    || die "$DIR holds another llama.cpp ($(cat "$DIR/.halo-llama-version")); remove it (make llama-clean)"

# ---- the patch: its files into src/, the hooks into llama.cpp's files (once; a newer Halo Weave
# swaps its hooks in). Files that end as they were keep their time, so the build stays incremental.
abs_dir="$(cd "$DIR" && pwd)"
export GIT_CEILING_DIRECTORIES="$(dirname "$abs_dir")"
for f in "${NEW_FILES[@]}"; do
    cmp -s "$f" "$abs_dir/src/$(basename "$f")" || cp "$f" "$abs_dir/src/"
done
APPLIED="$abs_dir/.halo-weave-applied.patch"
if (cd "$abs_dir" && git apply --reverse --check "$HOOKS" 2>/dev/null); then
    : # already there
elif [ -f "$APPLIED" ] && (cd "$abs_dir" && git apply --reverse --check "$APPLIED" 2>/dev/null); then
    (cd "$abs_dir" && git apply --reverse "$APPLIED" && git apply "$HOOKS") \
        || die "the hooks do not fit $DIR any more; remove it (make llama-clean) and build again"
    cp "$HOOKS" "$APPLIED"
    say "the Halo Weave hooks in $DIR were updated"
elif (cd "$abs_dir" && git apply --check "$HOOKS" 2>/dev/null); then
    (cd "$abs_dir" && git apply "$HOOKS")
    cp "$HOOKS" "$APPLIED"
    say "hooks applied to $DIR"
else
    (cd "$abs_dir" && git apply --check "$HOOKS") || true
    die "the hooks do not apply to $DIR (a modified tree?); remove it (make llama-clean) and build again"
fi

# ---- configure and build libllama (and ggml-rpc-server with RPC=1)
build="$abs_dir/build-$BACKEND"
[ "$RPC" = 1 ] && build="$build-rpc"
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF)
targets=(llama)
if [ "$RPC" = 1 ]; then
    cmake_args+=(-DGGML_RPC=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON)
    targets+=(ggml-rpc-server)
else
    cmake_args+=(-DGGML_RPC=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_COMMON=OFF)
fi
case "$BACKEND" in
cpu) cmake_args+=(-DGGML_CUDA=OFF) ;;
cuda)
    if [ -n "${CUDA_PATH:-}" ] && [ -x "$CUDA_PATH/bin/nvcc" ]; then NVCC_BIN="$CUDA_PATH/bin/nvcc"
    elif command -v nvcc >/dev/null; then NVCC_BIN="$(command -v nvcc)"
    elif [ -x /usr/local/cuda/bin/nvcc ]; then NVCC_BIN=/usr/local/cuda/bin/nvcc
    else die "nvcc not found: install the CUDA toolkit (12 or 13), or pass CUDA_PATH=DIR; or build BACKEND=cpu"
    fi
    arch="${CUDA_ARCH:-}"
    if [ -z "$arch" ]; then
        arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)"
        [ -n "$arch" ] || die "no GPU found to build for: pass CUDA_ARCH=sm_XX (e.g. CUDA_ARCH=sm_90 for an H100)"
    fi
    case "$arch" in
        sm_*) arch="${arch#sm_}" ;;
        [0-9]*.[0-9]*) arch="${arch/./}" ;;
        [0-9]*|native|all|all-major) ;;
        *) die "CUDA_ARCH=$arch: use sm_XX, XX, X.Y, native or all" ;;
    esac
    toolkit="$(cd "$(dirname "$(readlink -f "$NVCC_BIN")")/.." && pwd)"
    cmake_args+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_COMPILER=$NVCC_BIN" "-DCMAKE_CUDA_ARCHITECTURES=$arch"
                 "-DCUDAToolkit_ROOT=$toolkit")
    shim="$abs_dir/.halo-cuda-shim"
    mkdir -p "$shim"
    if [ -n "${CUBLAS_ROOT:-}" ]; then  # a cuBLAS outside the toolkit (the PyPI wheel nvidia-cublas)
        [ -f "$CUBLAS_ROOT/include/cublas_v2.h" ] || die "CUBLAS_ROOT=$CUBLAS_ROOT has no include/cublas_v2.h"
        for lib in cublas cublasLt; do
            real="$(ls "$CUBLAS_ROOT"/lib/lib$lib.so* 2>/dev/null | head -1 || true)"
            [ -n "$real" ] || die "CUBLAS_ROOT=$CUBLAS_ROOT has no lib/lib$lib.so*"
            cmake_args+=("-DCUDA_${lib}_LIBRARY=$real")
        done
        cmake_args+=("-DCMAKE_CUDA_FLAGS=-I$CUBLAS_ROOT/include" "-DCMAKE_CXX_FLAGS=-I$CUBLAS_ROOT/include")
    fi
    if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\b' && ! ls "$toolkit"/lib64/stubs/libcuda.so "$toolkit"/targets/*/lib/stubs/libcuda.so >/dev/null 2>&1; then
        say "no libcuda.so (the NVIDIA driver) here: linking against a stub with its soname; the driver is loaded at run time"
        grep -rhoE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$abs_dir"/ggml/src/ggml-cuda 2>/dev/null \
            | tr -d ' (' | sort -u | sed 's/.*/void &(void) {}/' > "$shim/libcuda_stub.c"
        gcc -shared -fPIC "$shim/libcuda_stub.c" -o "$shim/libcuda.so" -Wl,-soname,libcuda.so.1
        cmake_args+=("-DCUDA_cuda_driver_LIBRARY=$shim/libcuda.so")
    fi
    ;;
*) die "BACKEND=$BACKEND: use cpu or cuda" ;;
esac
# shellcheck disable=SC2206  # (words, as CMake options are given)
[ -n "${CMAKE_ARGS:-}" ] && cmake_args+=(${CMAKE_ARGS})
if [ ! -f "$build/build.ninja" ] || ! grep -qF -- "${cmake_args[*]}" "$build/.halo-cmake-args" 2>/dev/null; then
    say "configuring $build"
    cmake -S "$abs_dir" -B "$build" "${cmake_args[@]}" > "$build.configure.log" 2>&1 \
        || { tail -30 "$build.configure.log" >&2; die "cmake could not configure llama.cpp (log: $build.configure.log)"; }
    printf '%s\n' "${cmake_args[*]}" > "$build/.halo-cmake-args"
fi
say "building ${targets[*]} ($BACKEND, $JOBS jobs) in $build"
cmake --build "$build" --target "${targets[@]}" -j "$JOBS" || die "the build failed (see above)"
lib="$build/bin/libllama.so"
[ -f "$lib" ] || lib="$(find "$build" -name 'libllama.so' | head -1)"
[ -f "$lib" ] || die "the build made no libllama.so under $build"
say "built $lib"
say "serve it: halo-client serve --engine llama.cpp --llama-lib $lib --model MODEL.gguf"
