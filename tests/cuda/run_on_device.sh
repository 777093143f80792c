#!/usr/bin/env bash
# The CUDA kernels on a GPU, in one go (well under 8 minutes on an H200):
#   1. build tests/cuda/check_cuda_kernels (CMake, nvcc; for this GPU's compute capability);
#   2. compare every kernel with the CPU kernels on 300 random geometries each, extreme
#      attributes and real layers at batches 1 and 8, and time the real layers;
#   3. the same on one tensor over 2^31 elements per kernel (int64 indexing, grid-stride loops);
#   4. a smaller set under compute-sanitizer: memcheck, racecheck, initcheck, synccheck;
#   5. time PyTorch's route for the same math on the same layers (tests/cuda/time_torch_routes.py).
# Writes log.txt, timing.jsonl and table.md to $OUT (default build-cuda/out); exits 0 only when
# every step passed.
#
#   bash tests/cuda/run_on_device.sh                    # a machine with an NVIDIA GPU, nvcc, CMake, PyTorch
#   OSAL_CUDA_EMULATE=1 bash tests/cuda/run_on_device.sh  # a dry run anywhere: the host-emulation
#                                                        # build, small sets, PyTorch on the CPU
# OSAL_CUDA_STEPS picks steps (default "build check large sanitize torch").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-build-cuda/out}
BUILD=${OSAL_CUDA_BUILD:-build-cuda}
STEPS=${OSAL_CUDA_STEPS:-build check large sanitize torch}
PYTHON=${PYTHON:-python3}
EMULATE=${OSAL_CUDA_EMULATE:-0}
DEADLINE=$((SECONDS + ${OSAL_CUDA_BUDGET:-450}))   # every step's limit ends by this
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
failed=""

# step NAME LIMIT_S COMMAND...: runs COMMAND under the smaller of LIMIT_S and the time left.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit <= 0)); then
    echo "== $name: skipped, no time left"
    failed+=" $name"
    return 1
  fi
  echo "== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  ((rc == 0)) || failed+=" $name"
  return $rc
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

echo "== $(date -u +%FT%TZ) on $(uname -n)"
if [[ $EMULATE == 1 ]]; then
  BIN=$BUILD/check_cuda_kernels_host
  CASES=40 BATCHES=1 REPEAT=2
  CONFIGURE=(-DOSAL_CUDA=OFF -DOSAL_BUILD_TESTS=ON)
  TARGET=check_cuda_kernels_host
else
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || exit 2
  nvcc --version | tail -1
  CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
  BIN=$BUILD/check_cuda_kernels
  CASES=300 BATCHES=1,8 REPEAT=20
  CONFIGURE=(-DOSAL_CUDA_TESTS=ON "-DCMAKE_CUDA_ARCHITECTURES=${CAP:-90}")
  TARGET=check_cuda_kernels
fi
cmake --version | head -1

if wants build; then
  step configure 120 cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DOSAL_ORT_LIB=OFF \
    "${CONFIGURE[@]}" || exit 1
  step build 180 cmake --build "$BUILD" -j "$(nproc)" --target "$TARGET" || exit 1
fi
if wants check; then
  step check 150 "$BIN" --cases "$CASES" --batches "$BATCHES" --timing "$OUT/timing.jsonl" \
    --repeat "$REPEAT"
fi
if wants large && [[ $EMULATE != 1 ]]; then
  step large 150 "$BIN" --cases 0 --batches none --large
fi
if wants sanitize; then
  SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer \
    /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
  if [[ $EMULATE == 1 ]]; then
    echo "== sanitize: skipped in the host emulation"
  elif [[ -z $SANITIZER ]]; then
    echo "== sanitize: compute-sanitizer not found"
    failed+=" sanitize"
  else
    for tool in memcheck racecheck initcheck synccheck; do
      step "$tool" 60 "$SANITIZER" --tool "$tool" --error-exitcode 9 --print-limit 20 \
        "$BIN" --cases 12 --seed 1 --batches 1
    done
  fi
fi
if wants torch; then
  if [[ -s $OUT/timing.jsonl ]]; then
    DEVICE=cuda
    [[ $EMULATE == 1 ]] && DEVICE=cpu
    step torch 120 "$PYTHON" tests/cuda/time_torch_routes.py "$OUT/timing.jsonl" \
      --out "$OUT/table.md" --repeat "$REPEAT" --device "$DEVICE"
  else
    echo "== torch: no timing.jsonl (the check step did not write it)"
    failed+=" torch"
  fi
fi

if [[ -n $failed ]]; then
  echo "== FAILED:$failed"
  exit 1
fi
echo "== all steps passed"
