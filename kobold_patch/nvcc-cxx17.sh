#!/usr/bin/env bash
# nvcc, with KoboldCPP v1.76's -std=c++11 raised to -std=c++17: CUDA 13's CCCL headers (Thrust,
# CUB, libcu++) refuse anything older. Used by build.sh for the .cu files only when nvcc >= 13.
args=()
for a in "$@"; do
    [ "$a" = "-std=c++11" ] && a="-std=c++17"
    args+=("$a")
done
exec "${HALO_REAL_NVCC:-nvcc}" "${args[@]}"
