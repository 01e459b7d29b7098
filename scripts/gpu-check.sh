#!/usr/bin/env bash
# gpu-check.sh: the cuda-shim checks against a real NVIDIA GPU (the CI tests use
# a fake driver; this is for a machine that has one).
#
# It builds the shim, installs its SONAME builds as libcuda.so.1 and
# libnvidia-ml.so.1 in a private directory, and runs a PyTorch (default) or CuPy
# matmul loop in a venv with that directory first on LD_LIBRARY_PATH (plus
# LD_PRELOAD of both SONAME builds), flipping the state file with
# faultline-gpu-state:
#
#   1. nvidia-smi sees the GPU; the real driver and NVML are found
#   2. baseline: matmuls succeed through the shim, no fault
#   3. a running matmul loop gets errors while device_unavailable is set and
#      succeeds again after clear (same process)
#   4. a new process with no_device set sees no usable GPU
#   5. NVML (nvidia-smi and ctypes) sees GPU_IS_LOST while set
#   6. a fault held by a writer that is SIGKILLed lapses with its lease
#   7. gpu.slow: launches and syncs are delayed, results stay correct
#   8. matmul loop time with and without the shim (informational)
#   9. gpu.memory_hog takes the memory it was asked for and gives it back;
#      gpu.compute_hog raises utilisation and stops on revert (the agent's
#      faults, crates/faults/src/gpu/hog.rs, through examples/gpu_hog.rs)
#
# Usage: scripts/gpu-check.sh [--framework torch|cupy] [--venv DIR] [--keep]
# Environment: GPU_CHECK_PIP_ARGS (extra pip args, e.g. an index URL),
#              FAULTLINE_REAL_LIBCUDA / FAULTLINE_REAL_LIBNVML (driver paths,
#              found with ldconfig otherwise).
# Exit status: 0 when every check passed, 1 when one failed, 2 on setup errors.
set -euo pipefail

framework=torch
venv=""
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --framework) framework="$2"; shift 2 ;;
        --venv) venv="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/faultline-gpu-check.XXXXXX)"
cleanup() {
    [ -n "${holder_pid:-}" ] && kill -9 "$holder_pid" 2>/dev/null || true
    [ -n "${hog_pid:-}" ] && kill "$hog_pid" 2>/dev/null || true
    [ -n "${loop_pid:-}" ] && kill "$loop_pid" 2>/dev/null || true
    if [ "$keep" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

failed=0
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; failed=1; }
die() { echo "gpu-check: $*" >&2; exit 2; }

# --- 1. the GPU, the real libraries ---------------------------------------
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script needs a machine with an NVIDIA GPU and driver"
nvidia-smi -L || die "nvidia-smi -L failed: is the driver loaded?"
find_lib() { ldconfig -p | awk -v n="$1" '$1 == n && /x86-64|AArch64|64bit/ { print $NF; exit }'; }
real_cuda="${FAULTLINE_REAL_LIBCUDA:-$(find_lib libcuda.so.1)}"
real_nvml="${FAULTLINE_REAL_LIBNVML:-$(find_lib libnvidia-ml.so.1)}"
[ -e "$real_cuda" ] || die "real libcuda.so.1 not found (set FAULTLINE_REAL_LIBCUDA)"
[ -e "$real_nvml" ] || die "real libnvidia-ml.so.1 not found (set FAULTLINE_REAL_LIBNVML)"
echo "real driver: $real_cuda; real NVML: $real_nvml"
pass "1 nvidia-smi lists the GPU; real libraries found"

# --- build and install the shim --------------------------------------------
(cd "$root" && cargo build --quiet --release -p faultline-cuda-shim \
    -p faultline-cuda-shim-soname -p faultline-nvml-shim-soname)
target="${CARGO_TARGET_DIR:-$root/target}/release"
shim="$target/libfaultline_cuda_shim_soname.so"
nvml_shim="$target/libfaultline_nvml_shim_soname.so"
state_tool="$target/faultline-gpu-state"
mkdir -p "$work/lib"
ln -s "$shim" "$work/lib/libcuda.so.1"
ln -s "$shim" "$work/lib/libcuda.so"
ln -s "$nvml_shim" "$work/lib/libnvidia-ml.so.1"
# The SONAME builds' dependencies (next to them, $ORIGIN): the real libraries,
# so entry points the shim does not wrap still resolve.
ln -s "$real_cuda" "$work/lib/libfaultline-real-cuda.so.1"
ln -s "$real_nvml" "$work/lib/libfaultline-real-nvml.so.1"
preload="$work/lib/libcuda.so.1 $work/lib/libnvidia-ml.so.1"
state="$work/gpu.state"
"$state_tool" init "$state"

# --- the venv --------------------------------------------------------------
if [ -z "$venv" ]; then
    venv="$work/venv"
    python3 -m venv "$venv"
    case "$framework" in
        torch) pkgs=(torch) ;;
        cupy) pkgs=("cupy-cuda12x[ctk]") ;;
        *) die "--framework must be torch or cupy" ;;
    esac
    # shellcheck disable=SC2086 # GPU_CHECK_PIP_ARGS is a list of words
    "$venv/bin/pip" install --quiet ${GPU_CHECK_PIP_ARGS:-} "${pkgs[@]}"
fi
py="$venv/bin/python"

cat > "$work/probe.py" <<'PY'
"""Matmul probe: `once` (init + one matmul, exit 0/1) or `loop SECONDS`
(a matmul + synchronize every 50 ms, one line per iteration: ok or err)."""
import sys, time
fw = sys.argv[1]
if fw == "torch":
    import torch
    def step(n=1024):
        a = torch.randn(n, n, device="cuda")
        c = a @ a
        torch.cuda.synchronize()
        return float(c[0, 0])
    def count():
        return torch.cuda.device_count()
else:
    import cupy
    def step(n=1024):
        a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
        c = a @ a
        cupy.cuda.runtime.deviceSynchronize()
        return float(c[0, 0])
    def count():
        return cupy.cuda.runtime.getDeviceCount()
mode = sys.argv[2]
if mode == "once":
    try:
        print("devices", count(), "value", step(), flush=True)
    except Exception as e:  # the point is to see the error
        print("err", type(e).__name__, str(e).splitlines()[0], flush=True)
        sys.exit(1)
elif mode == "loop":
    end = time.time() + float(sys.argv[3])
    while time.time() < end:
        try:
            step()
            print("ok", flush=True)
        except Exception as e:
            print("err", str(e).splitlines()[0], flush=True)
        time.sleep(0.05)
elif mode == "time":
    step()
    t = time.time()
    for _ in range(int(sys.argv[3])):
        step(2048)
    print("seconds", time.time() - t, flush=True)
PY

shimmed() {
    env LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        LD_PRELOAD="$preload" \
        FAULTLINE_GPU_STATE="$state" \
        FAULTLINE_REAL_LIBCUDA="$real_cuda" \
        FAULTLINE_REAL_LIBNVML="$real_nvml" "$@"
}
probe() { shimmed "$py" "$work/probe.py" "$framework" "$@"; }

# --- 2. baseline -----------------------------------------------------------
if out="$(probe once)"; then pass "2 baseline through the shim: $out"; else fail "2 baseline: $out"; fi
attached="$("$state_tool" show "$state" | awk '/^attached/ { print $2 }')"
if [ "${attached:-0}" -ge 1 ]; then pass "2 the process mapped the state file (attached=$attached)"; else fail "2 the shim did not map the state file: is libcuda.so.1 the shim?"; fi

# --- 3. live flip ----------------------------------------------------------
# Waits (up to $2 seconds) until the loop's output has at least $1 lines matching $3.
wait_lines() {
    local want="$1" secs="$2" pattern="$3" i
    for ((i = 0; i < secs * 10; i++)); do
        [ "$(grep -c "$pattern" "$work/loop.out" || true)" -ge "$want" ] && return 0
        sleep 0.1
    done
    return 1
}
probe loop 300 > "$work/loop.out" 2>&1 &
loop_pid=$!
if wait_lines 3 120 '^ok'; then
    "$state_tool" set "$state" --error device_unavailable --lease-ms 60000
    if wait_lines 3 20 '^err'; then
        "$state_tool" clear "$state"
        oks_before="$(grep -c '^ok' "$work/loop.out" || true)"
        if wait_lines $((oks_before + 3)) 20 '^ok'; then
            shape="$(awk '{ print $1 }' "$work/loop.out" | uniq | tr '\n' ' ')"
            pass "3 running process: $shape($(grep -m1 '^err' "$work/loop.out"))"
        else
            fail "3 running process did not recover after clear (sticky error in the runtime?): see $work/loop.out, rerun with --keep"
        fi
    else
        fail "3 running process saw no errors while device_unavailable was set"
    fi
else
    fail "3 the matmul loop never succeeded: $(head -3 "$work/loop.out")"
fi
"$state_tool" clear "$state"
kill "$loop_pid" 2>/dev/null || true
wait "$loop_pid" 2>/dev/null || true
loop_pid=""

# --- 4. new process, no device ---------------------------------------------
"$state_tool" set "$state" --error no_device --lease-ms 60000
if out="$(probe once)"; then fail "4 no_device: the process still computed: $out"; else pass "4 no_device: $out"; fi
"$state_tool" clear "$state"
if out="$(probe once)"; then pass "4 after clear: $out"; else fail "4 after clear: $out"; fi

# --- 5. NVML ---------------------------------------------------------------
"$state_tool" set "$state" --error gpu_is_lost --lease-ms 60000
nvml_rc="$(shimmed "$py" -c 'import ctypes; l = ctypes.CDLL("libnvidia-ml.so.1"); print(l.nvmlInit_v2())')"
if [ "$nvml_rc" = 15 ]; then pass "5 NVML nvmlInit_v2 = 15 (GPU_IS_LOST)"; else fail "5 NVML nvmlInit_v2 = $nvml_rc, want 15"; fi
if smi="$(shimmed nvidia-smi -L 2>&1)"; then
    echo "note: nvidia-smi under the shim still listed GPUs (it may load NVML by absolute path): $smi"
else
    pass "5 nvidia-smi under the shim fails: $(echo "$smi" | head -1)"
fi
"$state_tool" clear "$state"
nvml_rc="$(shimmed "$py" -c 'import ctypes; l = ctypes.CDLL("libnvidia-ml.so.1"); print(l.nvmlInit_v2())')"
if [ "$nvml_rc" = 0 ]; then pass "5 NVML after clear = 0"; else fail "5 NVML after clear = $nvml_rc"; fi

# --- 6. lease lapse after SIGKILL of the writer ------------------------------
"$state_tool" hold "$state" --error ecc_uncorrectable --lease-ms 2000 --renew-ms 200 > /dev/null &
holder_pid=$!
sleep 1
if out="$(probe once)"; then fail "6 held fault not seen: $out"; else pass "6 held fault: $out"; fi
kill -9 "$holder_pid"
wait "$holder_pid" 2>/dev/null || true
holder_pid=""
sleep 3
if out="$(probe once)"; then pass "6 writer killed, lease lapsed: $out"; else fail "6 after lease lapse: $out"; fi

# --- 7. slow ----------------------------------------------------------------
"$state_tool" set "$state" --delay-ms 20 --lease-ms 60000
slow="$(probe time 20 | awk '{ print $2 }')"
"$state_tool" clear "$state"
fast="$(probe time 20 | awk '{ print $2 }')"
if "$py" -c "import sys; sys.exit(0 if $slow > $fast + 0.3 else 1)"; then
    pass "7 slow: 20 matmuls took ${slow}s with 20 ms delays vs ${fast}s without"
else
    fail "7 slow: ${slow}s vs ${fast}s, expected at least 0.3 s more"
fi

# --- 8. overhead (informational) ----------------------------------------------
plain="$("$py" "$work/probe.py" "$framework" time 50 | awk '{ print $2 }')"
through="$(probe time 50 | awk '{ print $2 }')"
echo "info  8 50 matmuls of 2048x2048: ${plain}s without the shim, ${through}s through it"

# --- 9. hogs (the agent's gpu.memory_hog and gpu.compute_hog) -------------------
(cd "$root" && cargo build --quiet --release -p faultline-faults --example gpu_hog)
hog="$target/examples/gpu_hog"
used_mib() { nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -d ' '; }
util() { nvidia-smi -i 0 --query-gpu=utilization.gpu --format=csv,noheader,nounits | head -1 | tr -d ' '; }
before="$(used_mib)"
"$hog" memory 0 2GiB 6 > "$work/hog.out" 2>&1 &
hog_pid=$!
for ((i = 0; i < 300; i++)); do grep -q '^held' "$work/hog.out" && break; sleep 0.1; done
during="$(used_mib)"
wait "$hog_pid" && hog_rc=0 || hog_rc=$?; hog_pid=""
after="$(used_mib)"
if [ "$hog_rc" = 0 ] && [ $((during - before)) -ge 1900 ] && [ $((during - after)) -ge 1900 ]; then
    pass "9 memory_hog 2GiB: ${before} -> ${during} -> ${after} MiB used"
else
    fail "9 memory_hog: rc=$hog_rc, ${before} -> ${during} -> ${after} MiB used: $(cat "$work/hog.out")"
fi
"$hog" compute 0 80% 8 > "$work/hog.out" 2>&1 &
hog_pid=$!
for ((i = 0; i < 300; i++)); do grep -q '^held' "$work/hog.out" && break; sleep 0.1; done
sleep 3
busy="$(util)"
wait "$hog_pid" && hog_rc=0 || hog_rc=$?; hog_pid=""
sleep 2
idle="$(util)"
if [ "$hog_rc" = 0 ] && [ "${busy:-0}" -ge 50 ] && [ "${idle:-100}" -lt "${busy:-0}" ]; then
    pass "9 compute_hog 80%: utilization ${busy}% while held, ${idle}% after ($(tr '\n' ' ' < "$work/hog.out"))"
else
    fail "9 compute_hog: rc=$hog_rc, utilization ${busy}% held, ${idle}% after: $(cat "$work/hog.out")"
fi
if "$hog" memory 0 100000TiB 1 > "$work/hog.out" 2>&1; then
    fail "9 memory_hog beyond the device's memory succeeded"
else
    pass "9 memory_hog beyond the device's memory: $(tail -1 "$work/hog.out")"
fi

"$state_tool" show "$state"
if [ "$failed" = 0 ]; then echo "gpu-check: all checks passed"; else echo "gpu-check: some checks FAILED"; fi
exit "$failed"
