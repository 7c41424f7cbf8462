#!/bin/sh
# The CPU results committed under results/cpu-*/ (weights, exit outputs, Table I rows,
# sweeps, plots, timing records): one runner command per network, on a 2-core machine, one
# BLAS thread, timing in 5 interleaved rounds (the runner's default). Resumable: run it
# again after an interruption; add --remeasure (REMEASURE=1) to time again with the same
# weights. Usage:
#   scripts/reproduce_cpu_results.sh [lenet|alexnet|resnet|alexnet-val|lenet-paper|lenet-seeds|alexnet-converged|resnet-converged|resnet-cycle2]...
#   BRANCHYNET_DATA=../shared/data scripts/reproduce_cpu_results.sh
# The long ones (lenet-paper, alexnet-converged, resnet-converged, resnet-cycle2) take hours:
# TIME_BUDGET=MINUTES stops training cleanly with a snapshot after that long (exit status 3;
# learning_curve.png is drawn) and the same command continues exactly. RANKS=N trains
# alexnet-converged, resnet-converged or resnet-cycle2 on N MPI processes (ChainerMN,
# --communicator naive, the global batch 128 split over them); the folder is keyed to its
# rank count, so choose it before the first epoch. TRAIN_ONLY=1 (lenet-seeds and the
# converged ones) stops once the networks are trained, before the exit outputs, sweep and
# timing: run the same command again without it when the machine is quiet, for the
# batch-size-1 timings. Do not edit this script while it runs (sh reads it as it goes).
set -eu
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg
# --blas-threads 1: training with one thread, as the committed weights were (timing always is).
run() { ./dev.sh run --no-progress --blas-threads 1 ${REMEASURE:+--remeasure} "$@"; }
budget() { echo ${TIME_BUDGET:+--time-budget "$TIME_BUDGET"}; }
# converged DEFAULT_RANKS GLOBAL_BATCH FLAGS...: one process, or RANKS MPI processes
# (ChainerMN, --communicator naive) with GLOBAL_BATCH / RANKS images each.
converged() {
    ranks=${RANKS:-$1} global=$2
    shift 2
    case $ranks in
        ''|*[!0-9]*|0) echo "RANKS must be a positive whole number of processes, not '$ranks'" >&2; exit 2 ;;
    esac
    if [ "$ranks" -gt 1 ]; then
        [ $((global % ranks)) = 0 ] || { echo "RANKS=$ranks does not divide the batch $global" >&2; exit 2; }
        ./dev.sh setup
        .venv/bin/mpiexec -n "$ranks" .venv/bin/python -m experiments.run --no-progress \
            ${REMEASURE:+--remeasure} "$@" --communicator naive --batch-size $((global / ranks))
    else
        run "$@" --batch-size "$global"
    fi
}
for network in ${*:-lenet alexnet resnet}; do
    case $network in
        # Full MNIST: 10 baseline + 3 joint epochs of batch 32 (the paper: 50 + 100 of 512).
        lenet) run --network lenet_mnist --dataset mnist --batch-size 32 \
                   --baseline-epochs 10 --branchy-epochs 3 --out results/cpu-lenet_mnist ;;
        # 10,000 of the 50,000 CIFAR-10 training images, all 10,000 test images, 3 + 3
        # epochs of batch 32.
        alexnet) run --network alexnet_cifar10 --train-limit 10000 --test-limit 0 --batch-size 32 \
                     --baseline-epochs 3 --branchy-epochs 3 --timing-samples 500 \
                     --out results/cpu-alexnet_cifar10 ;;
        # ResNet-110 trains at ~10 images/s on 2 cores: 2,000 images, 2 + 2 epochs, 2,000 test.
        resnet) run --network resnet110_cifar10 --train-limit 2000 --test-limit 2000 \
                    --batch-size 64 --baseline-epochs 2 --branchy-epochs 2 \
                    --timing-samples 100 --out results/cpu-resnet110_cifar10 ;;
        # B-AlexNet with 2,000 of 12,000 training images held out for choosing T
        # (docs/selection.md: the searches compared on a real 3-exit network).
        alexnet-val) run --network alexnet_cifar10 --train-limit 12000 --val-size 2000 \
                         --test-limit 0 --batch-size 32 --baseline-epochs 3 --branchy-epochs 3 \
                         --timing-samples 500 --latency-budget-fraction 0.9 --accuracy-drop 1 \
                         --out results/cpu-alexnet_cifar10-val ;;
        # The paper's settings on a CPU: batch 512, 50 + 100 epochs, all of MNIST (hours;
        # resumable from the per-epoch snapshots).
        lenet-paper) run --network lenet_mnist --paper $(budget) --out results/cpu-lenet_mnist-paper ;;
        # Five seeds (0-4) of B-LeNet on all of MNIST at its quick setting (batch 64, 5 + 5
        # epochs), each in results/cpu-lenet_mnist-seeds/seed-<s>/, and the mean, std and
        # range over them (seeds_accuracy.*, seeds_cpu.*). TRAIN_ONLY=1 trains all seeds (and
        # writes seeds_accuracy.*) without timing; run again without it to time them.
        lenet-seeds) run --network lenet_mnist --dataset mnist --batch-size 64 \
                         --baseline-epochs 5 --branchy-epochs 5 --seeds 5 ${TRAIN_ONLY:+--train-only} \
                         --out results/cpu-lenet_mnist-seeds ;;
        # B-AlexNet converged on the CPU: the fast recipe (networks/alexnet_cifar10.py: SGD,
        # warm-up + cosine, weight decay, crop + flip, batch 128, 30 + 10 epochs), all of
        # CIFAR-10, timing on the first 500 test images; the learning curve's test accuracy
        # on the first 5,000 test images (all 10,000 would add 11-14% to every epoch:
        # benchmarks/curve_cost.py).
        alexnet-converged)
            converged 1 128 --network alexnet_cifar10 --recipe fast --timing-samples 500 \
                --eval-limit 5000 $(budget) ${TRAIN_ONLY:+--train-only} --out results/cpu-alexnet_cifar10-converged ;;
        # B-ResNet-110 converged on the CPU: the fast recipe (SGD with momentum 0.9, weight
        # decay 5e-4, crop + flip, one warm-up epoch then cosine decay) at the CPU settings the
        # pilot chose (scripts/recipe_pilot.py on held-out training images, docs/replication.md):
        # global batch 128, peak rate 0.05, 12 + 2 epochs, all of
        # CIFAR-10, sized to about 10 hours of 2 cores; 2 processes by default (RANKS=1: one),
        # measured at 1.85x (baseline) and 1.74x (joint) the images/s of the previous default
        # (one process) on the 2-core machine, 1.85-1.90x / 1.69-1.88x that of one process
        # at one BLAS thread with the current kernels (docs/benchmarks.md).
        # Timing on the first 500 test images, the curve on the first 5,000.
        resnet-converged)
            converged 2 128 --network resnet110_cifar10 --recipe fast --lr 0.05 \
                --baseline-epochs 12 --branchy-epochs 2 --timing-samples 500 \
                --eval-limit 5000 $(budget) ${TRAIN_ONLY:+--train-only} --out results/cpu-resnet110_cifar10-converged ;;
        # A second cosine cycle of the same recipe for ResNet-110, its baseline started
        # from resnet-converged's (85.03%, training accuracy 87.3%: under-trained): 12 more
        # baseline epochs, then 4 joint epochs (resnet-converged's 2 left exits 1 and 2 at
        # 56.65 / 67.65%, their test accuracy still rising 7.5 and 5.5 pt in the last epoch).
        resnet-cycle2)
            converged 2 128 --network resnet110_cifar10 --recipe fast --lr 0.05 \
                --baseline-from results/cpu-resnet110_cifar10-converged/baseline.npz \
                --baseline-epochs 12 --branchy-epochs 4 --timing-samples 500 \
                --eval-limit 5000 $(budget) ${TRAIN_ONLY:+--train-only} \
                --out results/cpu-resnet110_cifar10-converged-cycle2 ;;
        *) echo "unknown network $network (lenet, alexnet, resnet, alexnet-val, lenet-paper, lenet-seeds, alexnet-converged, resnet-converged or resnet-cycle2)" >&2; exit 2 ;;
    esac
done
