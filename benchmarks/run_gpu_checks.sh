#!/usr/bin/env bash
# Issue 6's GPU checks in one run, for a lent GPU machine with CuPy and torch (CUDA) installed:
# the whole test suite (the `gpu`-marked tests included, float64 gradient checks among them), then
# the training-iteration benchmark and the per-layer benchmark against torch.cuda in the same run.
#
#     OUT=gpu_results REV=$(git rev-parse --short HEAD) bash benchmarks/run_gpu_checks.sh
#
# Optional: TEST_LIMIT, TRAIN_LIMIT, LAYERS_LIMIT, PROFILE_LIMIT (seconds per part), PER_TEST_LIMIT,
# TRAIN_REPEATS (20), TRAIN_RUNS (1: more timing runs on the same machine), PROFILE_DUMP (1).
#
# Logs and JSON land in $OUT. REV names the commit in gpu.txt: the working tree travels to the
# device machine without its git history, so `git rev-parse` there may name another commit.
#
# No install step: the repository is put on PYTHONPATH (the machine has no network); pytest-xdist
# spreads the suite over 8 workers when it is there. Each part has its own time limit so that one
# hang still leaves the others' results.
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import sys, numpy, cupy, torch; print('python', sys.version.split()[0], '| numpy', numpy.__version__, \
'| cupy', cupy.__version__, '| torch', torch.__version__, '| CUDA', torch.version.cuda, '|', torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt"
echo "commit ${REV:-unknown (pass REV=...)}" | tee -a "$OUT/gpu.txt"

workers=""
$PY -c "import xdist" 2>/dev/null && workers="-n 8"
per_test=""  # pytest-timeout turns one hanging test into a failure instead of losing the whole log
$PY -c "import pytest_timeout" 2>/dev/null && per_test="--timeout ${PER_TEST_LIMIT:-90}"
echo "== test suite ($workers $per_test)"
start=$SECONDS
timeout "${TEST_LIMIT:-220}" $PY -m pytest -q -p no:cacheprovider $workers $per_test -rfE --durations=15 \
    > "$OUT/tests.log" 2>&1
echo "pytest exit $? after $((SECONDS - start)) s"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -25

echo "== bench_train (GPU, with peak memory: torch.cuda's and CuPy's pool, each in its own process)"
timeout "${TRAIN_LIMIT:-180}" $PY benchmarks/bench_train.py --device gpu --repeats "${TRAIN_REPEATS:-20}" --warmup 3 \
    --json "$OUT/bench_train_gpu.json" > "$OUT/bench_train.log" 2>&1
echo "exit $?"; tail -8 "$OUT/bench_train.log"
# TRAIN_RUNS=k: k - 1 more timing runs on the same machine (no memory), bench_train_gpu_run<i>.json
for run in $(seq 2 "${TRAIN_RUNS:-1}"); do
    timeout "${TRAIN_LIMIT:-180}" $PY benchmarks/bench_train.py --device gpu --repeats "${TRAIN_REPEATS:-20}" \
        --warmup 3 --no-memory --json "$OUT/bench_train_gpu_run$run.json" >> "$OUT/bench_train.log" 2>&1
    echo "run $run exit $?"; tail -3 "$OUT/bench_train.log"
done

echo "== bench_layers (GPU)"
timeout "${LAYERS_LIMIT:-60}" $PY benchmarks/bench_layers.py --device gpu --repeats 20 \
    --json "$OUT/bench_layers_gpu.json" > "$OUT/bench_layers.log" 2>&1
echo "exit $?"; tail -16 "$OUT/bench_layers.log"

echo "== where the GPU step's time goes (cProfile of nnbox alone: host time, the step is launch-bound)"
# PROFILE_DUMP=0 keeps the statistics file out of $OUT (the device tool brings back at most 8 files)
dump=()
[ "${PROFILE_DUMP:-1}" != 0 ] && dump=(--profile-dump "$OUT/profile_dcgan64.pstats")
timeout "${PROFILE_LIMIT:-60}" $PY benchmarks/bench_train.py --device gpu --no-torch --no-memory --repeats 5 \
    --warmup 3 --profile 10 --models dcgan64 "${dump[@]}" > "$OUT/profile.log" 2>&1
echo "exit $?"; tail -20 "$OUT/profile.log"
