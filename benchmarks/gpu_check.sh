#!/usr/bin/env bash
# The GPU check, run as one command on a machine with an NVIDIA GPU (H100/H200 here: torch
# and nvcc installed, no network): build the extension for this card, run the whole test
# suite (the CUDA tests included), the stress tests, every operator under compute-sanitizer,
# and the benchmarks, and leave logs plus a summary in OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#   STAGES="build tests" bash benchmarks/gpu_check.sh OUTDIR    # a rerun of some stages only
#
# Stages: build tests stress sanitize bench_float32 bench_train bench_whole_step bench_compiled
# bench_bfloat16 bench_large (STAGES, default all, in this order; a rerun without build reuses the build in
# the tree). Each stage has its own time limit so that one slow stage cannot eat the
# others'; a stage that fails is recorded in the summary and the next one still runs. Exit
# status: 0 when every correctness stage that ran (build, tests, stress, sanitize) passed.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
# Build for the card that is here (e.g. 9.0 on Hopper) unless told otherwise.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($python -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
summary="$out/summary.md"

{
  echo "# pyae GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
  nvcc --version | tail -n 2
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  echo '```'
} > "$summary" 2>&1

all_stages="build tests stress sanitize bench_float32 bench_train bench_whole_step bench_compiled bench_bfloat16 bench_large"
stages=" ${STAGES:-$all_stages} "
status=0

stage() {  # stage NAME SECONDS COMMAND...: run if selected, log to $out/NAME.log, record the outcome
  local name=$1 limit=$2
  shift 2
  [[ $stages == *" $name "* ]] || return 0
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local code=$?
  echo "- $name: exit $code in $((SECONDS - start)) s" >> "$summary"
  return $code
}

sanitize() {  # every operator under each compute-sanitizer tool; no caching allocator, so
  # that memcheck sees each buffer's own bounds and initcheck each buffer's first write
  local tool code=0
  for tool in memcheck racecheck synccheck initcheck; do
    echo "== compute-sanitizer --tool $tool"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      $python benchmarks/gpu_sanitize.py || code=1
  done
  return $code
}

stage build 300 $python -m pip install --no-build-isolation --no-deps --no-index -e . || { cat "$summary"; exit 1; }
stage tests 200 $python -m pytest -q -rs -p no:cacheprovider -m "not gpu_stress" --junitxml="$out/junit.xml" || status=1
[ -f "$out/tests.log" ] && tail -n 3 "$out/tests.log" | sed 's/^/    /' >> "$summary"
stage stress 150 $python -m pytest -q -rs -p no:cacheprovider -m gpu_stress tests/test_cuda_stress.py || status=1
[ -f "$out/stress.log" ] && tail -n 3 "$out/stress.log" | sed 's/^/    /' >> "$summary"
stage sanitize 240 sanitize || status=1
[ -f "$out/sanitize.log" ] && grep -E '^== |ERROR SUMMARY|gpu_sanitize:' "$out/sanitize.log" | sed 's/^/    /' >> "$summary"

# The benchmarks, in stages that each print their own table: the peers that need no compiler
# first, then the training loop (eager against --cuda-graph), then the torch.compile peers
# (tens of seconds to compile each), then bfloat16 and the large size.
stage bench_float32 90 $python benchmarks/bench_step.py --device cuda --dtype float32 \
  --sizes 256x784x1000 4096x784x1000 --peers gemm plain eager graph jacrev pyae pyae_all pyae_graph \
  --json "$out/bench_float32.json"
stage bench_train 60 $python benchmarks/bench_train.py --device cuda --batch-sizes 256 4096 \
  --json "$out/bench_train.json"
stage bench_whole_step 90 $python benchmarks/bench_step.py --device cuda --dtype float32 --whole-step \
  --sizes 20x784x2000 256x784x1000 --peers plain eager graph pyae pyae_all pyae_fused pyae_all_fused pyae_plain_fused pyae_graph \
  --json "$out/bench_whole_step.json"
stage bench_compiled 240 $python benchmarks/bench_step.py --device cuda --dtype float32 \
  --sizes 256x784x1000 4096x784x1000 --peers plain compiled compiled_ro pyae_compiled pyae_compiled_ro \
  --json "$out/bench_compiled.json"
stage bench_bfloat16 90 $python benchmarks/bench_step.py --device cuda --dtype bfloat16 \
  --sizes 256x784x1000 4096x784x1000 --peers gemm plain eager graph pyae pyae_all pyae_graph --json "$out/bench_bfloat16.json"
stage bench_large 90 $python benchmarks/bench_step.py --device cuda --dtype float32 bfloat16 \
  --sizes 16384x4096x4096 --peers gemm plain eager pyae pyae_graph --warmup 5 --repeat 20 --json "$out/bench_large.json"
for log in bench_float32 bench_train bench_whole_step bench_compiled bench_bfloat16 bench_large; do
  [ -f "$out/$log.log" ] && { echo; echo "## $log"; echo; grep '^|\|^device' "$out/$log.log"; } >> "$summary"
done
cat "$summary"
exit $status
