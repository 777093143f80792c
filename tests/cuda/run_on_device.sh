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
# Steps run under the smaller of their own limit and what is left of 470 s (OSAL_CUDA_BUDGET).
# OSAL_CUDA_STEPS picks steps (default "build check large sanitize torch").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-build-cuda/out}
BUILD=${OSAL_CUDA_BUILD:-build-cuda}
STEPS=${OSAL_CUDA_STEPS:-build check large sanitize torch}
PYTHON=${PYTHON:-python3}
EMULATE=${OSAL_CUDA_EMULATE:-0}
DEADLINE=$((SECONDS + ${OSAL_CUDA_BUDGET:-470}))   # every step's limit ends by this
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
TEE=$!
failed=""

# finish CODE: the last lines written and tee done before the exit.
finish() {
  exec >&- 2>&-
  wait "$TEE"
  exit "$1"
}

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

echo "== $(date -u +%FT%TZ) on $(uname -n), $(nproc) cores"
if [[ $EMULATE == 1 ]]; then
  BIN=$BUILD/check_cuda_kernels_host
  CASES=40 BATCHES=1 REPEAT=2 LARGE=(--large-divisor 64)
  CONFIGURE=(-DOSAL_CUDA=OFF -DOSAL_BUILD_TESTS=ON)
  TARGET=check_cuda_kernels_host
else
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || finish 2
  NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
  [[ -n $NVCC ]] || { echo "== nvcc not found"; finish 2; }
  "$NVCC" --version | tail -1
  CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
  BIN=$BUILD/check_cuda_kernels
  CASES=300 BATCHES=1,8 REPEAT=20 LARGE=()
  CONFIGURE=(-DOSAL_CUDA=ON -DOSAL_CUDA_TESTS=ON "-DCMAKE_CUDA_COMPILER=$NVCC"
             "-DCMAKE_CUDA_ARCHITECTURES=${CAP:-90}")
  TARGET=check_cuda_kernels
fi
cmake --version | head -1
"$PYTHON" -c "import torch; print('PyTorch', torch.__version__, 'CUDA', torch.cuda.is_available())" \
  || echo "== $PYTHON cannot import torch: the torch step will fail"

if wants build; then
  step configure 120 cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DOSAL_ORT_LIB=OFF \
    "${CONFIGURE[@]}" || finish 1
  step build 180 cmake --build "$BUILD" -j "$(nproc)" --target "$TARGET" || finish 1
fi
if wants check; then
  step check 150 "$BIN" --cases "$CASES" --batches "$BATCHES" --timing "$OUT/timing.jsonl" \
    --repeat "$REPEAT"
fi
if wants large; then
  step large 200 "$BIN" --cases 0 --batches none --large "${LARGE[@]}"
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
  finish 1
fi
echo "== all steps passed"
finish 0
