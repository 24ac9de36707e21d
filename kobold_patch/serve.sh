#!/usr/bin/env bash
# Run the patched KoboldCPP on 127.0.0.1 with attention export on.
#
#   kobold_patch/serve.sh DIR MODEL.gguf [PORT] [extra koboldcpp.py arguments...]
#
# BACKEND=cuda (default) uses koboldcpp_cublas.so with every layer on the GPU when it was built,
# the CPU library otherwise. Attention export turns flash attention off (logged at load).
set -euo pipefail
say() { printf '\033[1m[halo-weave]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[halo-weave] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: $0 DIR MODEL.gguf [PORT] [koboldcpp.py args...]  (make serve MODEL=PATH.gguf)"
DIR="$1"; MODEL="$2"; PORT="${3:-5001}"
shift 2; [ $# -gt 0 ] && shift
[ -n "$MODEL" ] || die "no model: make serve MODEL=PATH.gguf"
[ -f "$MODEL" ] || die "model file $MODEL not found"
[ -f "$DIR/koboldcpp.py" ] || die "no KoboldCPP in $DIR: run make patch-and-build first"
grep -q "halo_api_route" "$DIR/koboldcpp.py" || die "$DIR is not patched: run make patch-and-build"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python3 is needed to run koboldcpp.py"
MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"

backend_args=()
if [ "${BACKEND:-cuda}" = cuda ] && [ -f "$DIR/koboldcpp_cublas.so" ]; then
    backend_args=(--usecublas --gpulayers 999)
elif [ -f "$DIR/koboldcpp_default.so" ]; then
    backend_args=(--usecpu)
    [ "${BACKEND:-cuda}" = cuda ] && say "no CUDA build in $DIR: running on the CPU (make patch-and-build BACKEND=cuda to build it)"
else
    die "no built library in $DIR: run make patch-and-build (BACKEND=cpu for a CPU build)"
fi
say "serving $MODEL on http://127.0.0.1:$PORT (attention export on)"
cd "$DIR"
exec "$PYTHON" koboldcpp.py --model "$MODEL" --host 127.0.0.1 --port "$PORT" --skiplauncher --attentionexport \
    "${backend_args[@]}" "$@"
