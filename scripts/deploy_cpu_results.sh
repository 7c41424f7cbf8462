#!/bin/sh
# Chainer vs ONNX Runtime side by side (docs/deploy.md): per network a small runner results
# folder, its ONNX export (checked against Chainer) and one interleaved timing of both
# runtimes at batch size 1. Needs the deploy extra: pip install -e ".[deploy]".
# The converged networks (lenet-paper, alexnet-converged, resnet-converged: the default)
# take the weights, exit outputs and timing record of their results/cpu-* folder (copied,
# not retrained), and are also timed per exit subset and profiled per layer
# (docs/benchmarks.md). The first two took 534 s on the quiet 2-core machine of
# docs/deploy.md (2026-12-03).
# Usage: BRANCHYNET_DATA=../shared/data scripts/deploy_cpu_results.sh \
#            [lenet-paper|alexnet-converged|resnet-converged|lenet|alexnet|resnet]...
set -eu
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg
deploy() { .venv/bin/python -m experiments.deploy "$@"; }
# A converged folder's deploy copy: everything but its README and its runs' output (the
# same weights and exit outputs, so results/cpu-* and results/deploy-* derive the same
# tables).
converged() {
    mkdir -p "$2"
    for f in "$1"/*; do
        case $(basename "$f") in README.md|run-*.log) ;; *) cp -r "$f" "$2"/ ;; esac
    done
}
# A converged network: its results/cpu-* folder copied, exported, timed at the knee, Table
# I's T and an exit mix, timed per exit subset and profiled per layer. Arguments: the cpu-*
# folder, the deploy folder, samples and rounds of the timing, samples of the subsets and
# the profile (5 rounds each), then the exit mix's fractions.
deploy_converged() {
    out=$2 samples=$3 rounds=$4 few=$5
    converged "$1" "$out"
    shift 5
    deploy export --results $out
    deploy time --results $out --samples $samples --rounds $rounds --max-points 3 --paper-t \
        --exit-mix "$@" --no-progress
    deploy subsets --results $out --samples $few --rounds 5
    .venv/bin/python -m benchmarks.head_cost --results $out --samples $few --rounds 5
}
for network in ${*:-lenet-paper alexnet-converged resnet-converged}; do
    case $network in
        # B-LeNet at the paper's settings: the knee, Table I's T and every sample at exit 1.
        lenet-paper) deploy_converged results/cpu-lenet_mnist-paper \
                         results/deploy-lenet_mnist-paper 300 7 200 1 0 ;;
        # The converged B-AlexNet (--recipe fast): the knee, Table I's T, all at exit 1.
        alexnet-converged) deploy_converged results/cpu-alexnet_cifar10-converged \
                               results/deploy-alexnet_cifar10-converged 150 5 100 1 0 0 ;;
        # The converged B-ResNet-110 (two cycles of --recipe fast): the knee, Table I's T
        # and the exit mix of the paper's Table I row (41.5 / 13.8 / 44.7%).
        resnet-converged) deploy_converged results/cpu-resnet110_cifar10-converged-cycle2 \
                              results/deploy-resnet110_cifar10-converged 100 5 60 \
                              0.415 0.138 0.447 ;;
        # The demo's B-LeNet (mnist-5k, quick settings); also timed at the exit mix of the
        # benchmark weights' knee (91.3 / 8.7%, FLOP-ideal gain 3.8x there).
        lenet) out=results/deploy-lenet_mnist
               ./dev.sh run --no-progress --network lenet_mnist --out $out
               deploy export --results $out
               deploy time --results $out --samples 400 --rounds 9 --exit-mix 0.913 0.087 \
                   --no-progress ;;
        # 2,000 training / 1,000 test images, 2 + 2 epochs; its knee sends every sample out
        # at exit 1, so the paper's knee mix (65.6 / 25.2 / 9.2%) is timed as well.
        alexnet) out=results/deploy-alexnet_cifar10
                 ./dev.sh run --no-progress --network alexnet_cifar10 --train-limit 2000 \
                     --test-limit 1000 --baseline-epochs 2 --branchy-epochs 2 \
                     --timing-samples 200 --timing-rounds 3 --out $out
                 deploy export --results $out
                 deploy time --results $out --samples 150 --rounds 7 --max-points 4 \
                     --exit-mix 0.656 0.252 0.092 --no-progress ;;
        # 500 training / 300 test images, 1 + 1 epoch (ResNet-110 trains at ~10 images/s
        # here); the paper's knee mix is 41.5 / 13.8 / 44.7%.
        resnet) out=results/deploy-resnet110_cifar10
                ./dev.sh run --no-progress --network resnet110_cifar10 --train-limit 500 \
                    --test-limit 300 --baseline-epochs 1 --branchy-epochs 1 \
                    --timing-samples 30 --timing-rounds 3 --out $out
                deploy export --results $out
                deploy time --results $out --samples 30 --rounds 7 --max-points 3 \
                    --exit-mix 0.415 0.138 0.447 --no-progress ;;
        *) echo "unknown network $network (lenet-paper, alexnet-converged, resnet-converged," \
                "lenet, alexnet or resnet)" >&2; exit 2 ;;
    esac
done
