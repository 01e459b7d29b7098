#!/usr/bin/env bash
# Measures ns per unfaulted driver call through the faultline CUDA shim against
# the fake driver called directly. Run from anywhere; prints a Markdown table
# for bench/RESULTS.md. Needs cargo and cc.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cargo build --quiet --release -p faultline-cuda-shim -p faultline-cuda-shim-soname -p faultline-fake-cuda
target_dir="${CARGO_TARGET_DIR:-$root/target}/release"
fake="$target_dir/libfaultline_fake_cuda.so"
shim="$target_dir/libfaultline_cuda_shim_soname.so"
state_tool="$target_dir/faultline-gpu-state"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cc -O2 -o "$tmp/bench" bench/cuda-shim/bench.c -ldl
# Installed as gpu-check.sh and docs/gpu.md do: libcuda.so.1 -> the SONAME build,
# its real-driver dependency -> the fake driver, side by side ($ORIGIN).
mkdir "$tmp/lib"
ln -s "$shim" "$tmp/lib/libcuda.so.1"
ln -s "$fake" "$tmp/lib/libfaultline-real-cuda.so.1"
shim="$tmp/lib/libcuda.so.1"
state="$tmp/gpu.state"
"$state_tool" init "$state"

echo "| path | ns/call (best of 7) | calls per run | errors |"
echo "|---|---|---|---|"
env -u FAULTLINE_GPU_STATE "$tmp/bench" "$fake" "fake driver, no shim"
FAULTLINE_REAL_LIBCUDA="$fake" env -u FAULTLINE_GPU_STATE \
    "$tmp/bench" "$shim" "shim, no state file (FAULTLINE_GPU_STATE unset)"
FAULTLINE_REAL_LIBCUDA="$fake" FAULTLINE_GPU_STATE="$state" \
    "$tmp/bench" "$shim" "shim, state file mapped, no fault (the unfaulted hot path)"
"$state_tool" set "$state" --error device_unavailable --devices 1 --lease-ms 600000
FAULTLINE_REAL_LIBCUDA="$fake" FAULTLINE_GPU_STATE="$state" \
    "$tmp/bench" "$shim" "shim, fault armed for device 1, calls on device 0 (slow path)" 2000000
