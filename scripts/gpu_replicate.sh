#!/bin/bash
# Replicate Table I on one GPU in one time-boxed command (TOTAL_S, default about 9
# minutes), resumable: run it again until it exits 0 (docs/gpu.md section 6).
#
#   scripts/gpu_replicate.sh run [OUTDIR]       on the GPU machine
#   scripts/gpu_replicate.sh dry-run [OUTDIR]   the same steps on a CPU, tiny settings
#
# Steps:
#   1. (run) with carried call folders .gpu-carry/callK (a machine without network:
#      scripts/gpu_pack_data.py pack), take them in and rebuild CIFAR-10, MNIST, the wheels
#      and any earlier state (sha256 and the official md5s checked), and install the wheels
#      into /tmp (never the machine's packages); without them, use $BRANCHYNET_DATA and the
#      packages of $PYTHON (a machine with the project installed);
#   2. in parallel: the GPU checks (NVRTC kernels, tests/test_gpu.py, test_compat.py,
#      test_routing.py, test_training_recipe.py) and the three trainings, each with
#      --train-only and a --time-budget that ends by TRAIN_END:
#        B-LeNet       --paper         (MNIST, batch 512, 50 + 100 epochs, Adam)
#        B-AlexNet     --paper         (CIFAR-10, batch 512, 50 + 100 epochs, Adam)
#        B-ResNet-110  --recipe fast   (CIFAR-10, batch 256, 20 + 4 epochs, SGD + cosine)
#      a training stopped by its budget exits with status 3 and leaves a snapshot;
#   3. once all trainings have stopped (the GPU is quiet), for each network trained to the
#      end: the runner again on the GPU (exit outputs, exact sweep, synchronised batch-1
#      timings, Table I rows, plots), one after another, each cut at the time left;
#   3b. with LATENCY, where a batch-size-1 millisecond goes (benchmarks/latency.py);
#   4. OUTDIR (default $OUT, else ./gpu-replicate-out) gets logs.tar.gz
#      (env, checks, every log), summary.txt, and the results folders with the weights and
#      the snapshots needed to continue as state.tar.gz.part-NN (<= 9.5 MiB each, <= 5)
#      with state.sha256; `scripts/gpu_pack_data.py collect FILES_AT` rebuilds and unpacks
#      them into results/, and `pack --resume results/gpu-h200-*` carries the folders
#      to the next run. RESULTS_DIR (default /tmp/branchynet-results) is where the
#      results folders live on the GPU machine (e.g. RESULTS_DIR=results on your own),
#      RESULTS_PREFIX (default gpu-h200) the start of their names.
#
# NETS (environment, default "lenet alexnet resnet"): which networks to train and time;
# resnet-converged times the CPU-trained B-ResNet-110 (results/cpu-resnet110_cifar10-converged,
# carried with `pack --resume`) on the GPU and trains nothing; resnet-cycle2 does the same for
# its second cycle (results/cpu-resnet110_cifar10-converged-cycle2: carry both folders, the
# first holds the baseline it started from).
# LATENCY (environment, e.g. "lenet alexnet"; default none): after the sweeps, where a
# batch-size-1 millisecond goes on this device (benchmarks/latency.py on each named
# network's trained folder: exit paths alone, routing overhead, Chainer's cost per call),
# OUTDIR/latency_<net>_<tag>.json; a folder trained in an earlier run comes along with
# `pack --resume`.
# Time (seconds, environment): TOTAL_S (default 525 on the GPU: the command ends by then),
# SWEEP_S (time kept for step 3, default 150), PACK_S (default 25). Exit status 0 when the
# checks passed and every training ran to the end, 3 when a training stopped at its
# budget (run again to continue), 1 when something failed (see summary.txt). Checks cut at
# the trainings' end are reported as cut, not failed.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
OUTDIR=${2:-${OUT:-gpu-replicate-out}}
START=$(date +%s)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# setuptools 80 warns at Chainer's import of pkg_resources (it is there, pinned <81)
export PYTHONWARNINGS=${PYTHONWARNINGS:-"ignore:pkg_resources is deprecated:UserWarning"}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}
case "$MODE" in
    run)
        PYTHON=${PYTHON:-python3}
        TOTAL_S=${TOTAL_S:-525}; SWEEP_S=${SWEEP_S:-150}; PACK_S=${PACK_S:-25}
        BASE=/tmp; RESULTS=${RESULTS_DIR:-$BASE/branchynet-results}
        DEVICE=@cupy:0; TAG=gpu0; PREFIX=${RESULTS_PREFIX:-gpu-h200}; TINY=() ;;
    dry-run)
        PYTHON=${PYTHON:-python3}
        TOTAL_S=${TOTAL_S:-240}; SWEEP_S=${SWEEP_S:-90}; PACK_S=${PACK_S:-15}
        BASE=$(pwd)/gpu-replicate-dry; RESULTS=$BASE/results
        DEVICE=@numpy; TAG=cpu; PREFIX=dry
        # The same runner steps on 200 training images: minutes on a CPU, not results.
        TINY=(--train-limit 200 --test-limit 100 --timing-samples 20 --batch-size 50
              --baseline-epochs 2 --branchy-epochs 1) ;;
    *) awk 'NR > 1 && /^set /{exit} NR > 1' "$0"; exit 2 ;;  # the comments above
esac
# NETS (environment): the networks to train and time, e.g. NETS=alexnet gives one the GPU.
read -ra NETS <<< "${NETS:-lenet alexnet resnet}"
read -ra LATENCY <<< "${LATENCY:-}"
for variable in NETS LATENCY; do
    declare -n names=$variable
    for net in "${names[@]}"; do
        case $net in lenet|alexnet|resnet|resnet-converged|resnet-cycle2) ;;
            *) echo "error: $variable has '$net': choose from lenet, alexnet, resnet," \
                    "resnet-converged, resnet-cycle2" >&2; exit 2 ;; esac
    done
    unset -n names
done
DATA=$BASE/branchynet-data; WHEELS=$BASE/branchynet-wheels; SITE=$BASE/branchynet-site
export BRANCHYNET_CARRY_DIR=$BASE/branchynet-carry
mkdir -p "$OUTDIR" "$RESULTS"
LOGS=$(mktemp -d /tmp/branchynet-logs.XXXXXX)
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( START + TOTAL_S - $(date +%s) )); }
TRAIN_END=$(( START + TOTAL_S - SWEEP_S - PACK_S ))

# 1. Data, wheels and state: take in the call folders here (the last transfer sends one;
# earlier parts' chunks are already in $BRANCHYNET_CARRY_DIR), rebuild and check all.
calls=$(ls -d .gpu-carry/call* 2>/dev/null | sed 's/.*call//' | sort -n)
if [ -e "$BRANCHYNET_CARRY_DIR/assembled" ]; then
    note "data already assembled on this machine (an earlier call): reusing $DATA, $RESULTS"
elif [ -n "$calls" ]; then
    for k in $calls; do "$PYTHON" scripts/gpu_pack_data.py receive "$k" || exit 2; done
    "$PYTHON" scripts/gpu_pack_data.py assemble --data "$DATA" --wheels "$WHEELS" \
        --state "$RESULTS" || exit 2
    touch "$BRANCHYNET_CARRY_DIR/assembled"
elif [ "$MODE" = run ] && [ -z "${BRANCHYNET_DATA:-}" ]; then
    echo "error: no data: set BRANCHYNET_DATA to a folder holding mnist/ and cifar10/, or" \
         "carry them in parts (.gpu-carry/callK from scripts/gpu_pack_data.py pack;" \
         "docs/gpu.md section 6)" >&2; exit 2
fi
if [ -e "$BRANCHYNET_CARRY_DIR/assembled" ]; then
    # What the GPU image lacks, into a folder of its own (never the image's packages).
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || exit 2
    export PYTHONPATH="$SITE:$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
else  # no .gpu-carry/callK: the data folder and packages of this machine
    DATA=${BRANCHYNET_DATA:-../shared/data}
    note "$MODE without .gpu-carry/callK: data from $DATA, packages of $PYTHON"
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
export BRANCHYNET_DATA="$DATA"
note "gpu_replicate.sh $MODE: $(date -u +%FT%TZ), $(left) s left, trainings end by +$(( TRAIN_END - START )) s"

"$PYTHON" - <<'EOF' > "$LOGS/env.txt" 2>&1
import platform, sys
import branchynet, chainer, numpy
from branchynet._compat import cuda_status
print("python", sys.version.split()[0], platform.platform())
print("chainer", chainer.__version__, "numpy", numpy.__version__)
gpus, why = cuda_status()
print("cuda_status:", gpus, "GPU(s)", why)
if gpus:
    import cupy
    rt = cupy.cuda.runtime
    name = rt.getDeviceProperties(0)["name"]
    print("cupy", cupy.__version__, "| GPU 0:", name.decode() if isinstance(name, bytes) else name,
          "| CUDA runtime", rt.runtimeGetVersion(), "| driver", rt.driverGetVersion())
EOF
cat "$LOGS/env.txt" | tee -a "$SUMMARY"

# 2. Checks and trainings in parallel.
checks() {  # checks SECONDS: 0 passed, 1 failed, 124 cut at the time limit
    local nvrtc=0 tests=0
    if "$PYTHON" -c "import cupy" 2>/dev/null; then
        timeout "$1" "$PYTHON" scripts/nvrtc_chainer_kernels.py > "$LOGS/nvrtc.log" 2>&1 &
    else
        echo "no CuPy here: NVRTC kernel check not run" > "$LOGS/nvrtc.log"; true &
    fi
    local nvrtc_pid=$!
    timeout "$1" "$PYTHON" -m pytest -q -ra -p no:cacheprovider tests/test_gpu.py \
        tests/test_compat.py tests/test_routing.py tests/test_training_recipe.py \
        > "$LOGS/pytest.log" 2>&1 || tests=$?
    wait $nvrtc_pid || nvrtc=$?
    if [ "$MODE" = run ] && grep -q "SKIPPED.*test_gpu" "$LOGS/pytest.log"; then
        echo "error: GPU tests were skipped on the GPU machine" >> "$LOGS/pytest.log"; tests=1
    fi
    if [ $tests = 124 ] || [ $nvrtc = 124 ]; then return 124; fi
    [ $tests = 0 ] && [ $nvrtc = 0 ]
}

declare -A FLAGS=(
    [lenet]="--network lenet_mnist --paper"
    [alexnet]="--network alexnet_cifar10 --paper"
    [resnet]="--network resnet110_cifar10 --recipe fast"
    # scripts/reproduce_cpu_results.sh resnet-converged: 2 ranks of 64 there, trained there
    [resnet-converged]="--network resnet110_cifar10 --recipe fast --lr 0.05 --baseline-epochs 12
                        --branchy-epochs 2 --eval-limit 5000 --batch-size 64"
    # scripts/reproduce_cpu_results.sh resnet-cycle2: the second cycle from the first's baseline
    [resnet-cycle2]="--network resnet110_cifar10 --recipe fast --lr 0.05 --baseline-epochs 12
                     --baseline-from $RESULTS/cpu-resnet110_cifar10-converged/baseline.npz
                     --branchy-epochs 4 --eval-limit 5000 --batch-size 64")
# Timing flags (not training settings), sized to the minutes left after training: 3
# interleaved rounds (the runner's default is 5) of the baseline, every exit path and every
# frontier point, on 1,000 test samples for B-LeNet, 500 for B-AlexNet and 300 for
# B-ResNet-110 (about 10 ms each at batch size 1 on a GPU: Python and kernel launches).
declare -A SWEEP_FLAGS=([lenet]="--timing-rounds 3"
                        [alexnet]="--timing-rounds 3 --timing-samples 500"
                        [resnet]="--timing-rounds 3 --timing-samples 300"
                        [resnet-converged]="--timing-rounds 3 --timing-samples 200 --timed-points 10"
                        [resnet-cycle2]="--timing-rounds 3 --timing-samples 200 --timed-points 10")
if [ "$MODE" = dry-run ]; then  # the tiny setting's 20 samples
    for net in alexnet resnet resnet-converged resnet-cycle2; do
        SWEEP_FLAGS[$net]="--timing-rounds 3"
    done
fi
declare -A FOLDER=(
    [lenet]="$PREFIX-lenet-mnist-paper"
    [alexnet]="$PREFIX-alexnet-cifar10-paper"
    [resnet]="$PREFIX-resnet110-cifar10-fast"
    [resnet-converged]="cpu-resnet110_cifar10-converged"
    [resnet-cycle2]="cpu-resnet110_cifar10-converged-cycle2")
for net in "${NETS[@]}"; do  # trained elsewhere: its weights must have come along
    case $net in
        resnet-converged) needed=("${FOLDER[$net]}/branchynet.npz") ;;
        resnet-cycle2) needed=("${FOLDER[$net]}/branchynet.npz"
                               "${FOLDER[resnet-converged]}/baseline.npz") ;;
        *) needed=() ;;
    esac
    for file in "${needed[@]}"; do
        if [ ! -e "$RESULTS/$file" ]; then
            note "error: NETS=$net needs $file in $RESULTS: carry its folder with" \
                 "'python scripts/gpu_pack_data.py pack --resume results/${file%/*}'" \
                 "(docs/gpu.md section 6)"; exit 2
        fi
    done
done
# The checks use the GPU too: they end by the trainings' end (+30 s), before any timing.
if [ $(( TRAIN_END - $(date +%s) )) -lt 30 ]; then
    note "error: only $(( TRAIN_END - $(date +%s) )) s left for training after the set-up:" \
         "raise TOTAL_S or lower SWEEP_S"; exit 2
fi
checks $(( TRAIN_END - $(date +%s) + 30 )) & CHECKS_PID=$!
runner() {  # runner NET: CMD = the runner with the network's training flags
    # shellcheck disable=SC2206
    CMD=("$PYTHON" -m experiments.run ${FLAGS[$1]} "${TINY[@]}" --device "$DEVICE"
         --data-dir "$DATA" --no-progress --out "$RESULTS/${FOLDER[$1]}")
}
declare -A PID STATUS
budget_min=$(awk "BEGIN {printf \"%.3f\", ($TRAIN_END - $(date +%s)) / 60}")
for net in "${NETS[@]}"; do
    runner $net
    # timeout: a backstop in case a stop at the budget never comes (a hung iteration)
    timeout $(( TRAIN_END - $(date +%s) + 60 )) "${CMD[@]}" --train-only \
        --time-budget "$budget_min" > "$LOGS/train-$net.log" 2>&1 &
    PID[$net]=$!
done
for net in "${NETS[@]}"; do
    wait "${PID[$net]}"; STATUS[$net]=$?
    case ${STATUS[$net]} in
        0) note "train $net: trained to the end (${FOLDER[$net]})" ;;
        3) note "train $net: $(grep 'stopped at the time budget' "$LOGS/train-$net.log" | tail -1)" ;;
        *) note "train $net: FAILED with status ${STATUS[$net]} (train-$net.log):"
           tail -n 15 "$LOGS/train-$net.log" | tee -a "$SUMMARY" ;;
    esac
done
wait $CHECKS_PID; CHECKS=$?
case $CHECKS in
    0) verdict=passed ;; 124) verdict="CUT at the time limit (not a failure; run again)" ;;
    *) verdict=FAILED ;;
esac
note "checks: $verdict; pytest: $(tail -n 1 "$LOGS/pytest.log")"
pattern="^(FAILED|ERROR)"; [ "$MODE" = run ] && pattern="^(FAILED|ERROR)|SKIPPED"
grep -E "$pattern" "$LOGS/pytest.log" | head -n 20 | tee -a "$SUMMARY"
tail -n 2 "$LOGS/nvrtc.log" | tee -a "$SUMMARY"

# 3. Sweeps and batch-size-1 timings on the quiet GPU, for what finished training.
SWEPT=0; SWEEP_FAILED=0
for net in "${NETS[@]}"; do
    [ "${STATUS[$net]}" = 0 ] || continue
    if [ -e "$RESULTS/${FOLDER[$net]}/table_$TAG.json" ]; then
        note "sweep $net: already done (table_$TAG.json from an earlier run)"; continue
    fi
    limit=$(( $(left) - PACK_S ))
    if [ $limit -lt 20 ]; then
        note "sweep $net: not started ($limit s left): run again to measure it"; continue
    fi
    runner $net
    # shellcheck disable=SC2086
    timeout "$limit" "${CMD[@]}" ${SWEEP_FLAGS[$net]} > "$LOGS/sweep-$net.log" 2>&1
    status=$?
    if [ $status = 0 ]; then
        SWEPT=$((SWEPT + 1))
        note "sweep $net: done"
        sed -n '/^Table I rows/,/^$/p' "$LOGS/sweep-$net.log" | head -n 8 | tee -a "$SUMMARY"
    else
        [ $status = 124 ] || SWEEP_FAILED=1
        note "sweep $net: $([ $status = 124 ] && echo "cut at the time limit (resumes next run)" \
            || echo "FAILED with status $status"):"; tail -n 8 "$LOGS/sweep-$net.log" | tee -a "$SUMMARY"
    fi
done

# 3b. Where a batch-size-1 millisecond goes, for the networks named in LATENCY.
declare -A NETWORK=([lenet]=lenet_mnist [alexnet]=alexnet_cifar10 [resnet]=resnet110_cifar10
                    [resnet-converged]=resnet110_cifar10 [resnet-cycle2]=resnet110_cifar10)
LATENCY_FLAGS=(--timing-rounds 3 --timing-samples 200); LATENCY_FAILED=0
[ "$MODE" = dry-run ] && LATENCY_FLAGS=(--timing-rounds 2 --timing-samples 20
                                        --routing-samples 50 --profile-samples 5)
for net in "${LATENCY[@]}"; do
    folder=$RESULTS/${FOLDER[$net]}
    if [ ! -e "$folder/branchynet.npz" ]; then
        note "latency $net: not run (no trained B-net in $folder: train it, or carry it" \
             "with pack --resume)"; continue
    fi
    limit=$(( $(left) - PACK_S ))
    if [ $limit -lt 30 ]; then
        note "latency $net: not started ($limit s left)"; continue
    fi
    timeout "$limit" "$PYTHON" -m benchmarks.latency --network "${NETWORK[$net]}" \
        --device "$DEVICE" --results "$folder" --data-dir "$DATA" "${LATENCY_FLAGS[@]}" \
        --out "$OUTDIR/latency_${net}_$TAG.json" > "$LOGS/latency-$net.log" 2>&1
    status=$?
    case $status in
        0) note "latency $net: done (latency_${net}_$TAG.json)"
           grep '^\[latency\]' "$LOGS/latency-$net.log" | tee -a "$SUMMARY" ;;
        124) note "latency $net: cut at the time limit" ;;
        *) LATENCY_FAILED=1; note "latency $net: FAILED with status $status:"
           tail -n 8 "$LOGS/latency-$net.log" | tee -a "$SUMMARY" ;;
    esac
done

# 4. What comes back.
tar -czf "$OUTDIR/logs.tar.gz" -C "$LOGS" .
"$PYTHON" scripts/gpu_pack_data.py pack-state "$RESULTS" --out "$OUTDIR" | tee -a "$SUMMARY"
note "done in $(( $(date +%s) - START )) s; $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
result=0
for net in "${NETS[@]}"; do
    case ${STATUS[$net]} in 0) ;; 3) [ $result = 0 ] && result=3 ;; *) result=1 ;; esac
done
case $CHECKS in 0|124) ;; *) result=1 ;; esac
[ $SWEEP_FAILED = 0 ] && [ $LATENCY_FAILED = 0 ] || result=1
exit $result
