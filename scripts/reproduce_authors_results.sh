#!/bin/sh
# The side-by-side results under results/authors-*/ (docs/authors.md): our implementation
# against the authors' code on a 2-core machine, one BLAS thread.
# Usage: AUTHORS_REPO=~/src/branchynet BRANCHYNET_DATA=../shared/data \
#            scripts/reproduce_authors_results.sh [lenet|clocks|epochs|ours|paper|alexnet|resnet-init|resnet]...
# 'lenet' trains their B-LeNet with their code (1 + 1 epochs) and writes the CI fixture;
# 'clocks', 'epochs' and 'ours' reuse the model it saved (results/authors-lenet_mnist/theirs_trained.bn);
# 'ours' needs our weights in results/cpu-lenet_mnist/ (scripts/reproduce_cpu_results.sh lenet);
# 'paper' those of results/cpu-lenet_mnist-paper (committed).
set -eu
cd "$(dirname "$0")/.."
: "${AUTHORS_REPO:?set AUTHORS_REPO to your checkout of github.com/kunglab/branchynet}"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
PY=${PYTHON:-.venv/bin/python}
run() { "$PY" -m experiments.authors --authors-repo "$AUTHORS_REPO" "$@"; }
THEIRS=results/authors-lenet_mnist/theirs_trained.bn
for what in ${*:-lenet clocks epochs ours paper alexnet resnet-init resnet}; do
    case $what in
        lenet) run --network lenet_mnist --authors-train 1 1 --test-samples 1000 \
                   --write-fixture tests/fixtures/authors_lenet --out results/authors-lenet_mnist ;;
        clocks) run --network lenet_mnist --model "$THEIRS" --test-samples 1000 \
                    --timing-samples 1000 --rounds 7 --out results/authors-lenet_mnist-clocks ;;
        epochs) run --network lenet_mnist --model "$THEIRS" --test-samples 100 --train-steps 0 \
                    --epoch-rounds 3 --out results/authors-lenet_mnist-epochs ;;
        ours) run --network lenet_mnist --weights results/cpu-lenet_mnist/branchynet.npz \
                  --baseline-weights results/cpu-lenet_mnist/baseline.npz --test-samples 1000 \
                  --out results/authors-lenet_mnist-ours ;;
        # The converged B-LeNet (paper settings) in their code and on both clocks.
        paper) run --network lenet_mnist --weights results/cpu-lenet_mnist-paper/branchynet.npz \
                   --baseline-weights results/cpu-lenet_mnist-paper/baseline.npz --train-steps 0 \
                   --test-samples 1000 --timing-samples 500 --rounds 5 --epoch-rounds 0 \
                   --out results/authors-lenet_mnist-paper ;;
        alexnet) run --network alexnet_cifar10 --test-samples 200 --route-samples 50 \
                     --out results/authors-alexnet_cifar10 ;;
        # Their initialisation as it is: Chainer 1.17's BatchNorm variance starts at 0.
        resnet-init) run --network resnet110_cifar10 --test-samples 20 --route-samples 5 \
                         --out results/authors-resnet110_cifar10-init || true ;;
        resnet) run --network resnet110_cifar10 --authors-train-steps 20 --test-samples 50 \
                    --route-samples 10 --train-steps 2 --train-batch 16 \
                    --out results/authors-resnet110_cifar10 ;;
        *) echo "unknown target $what (lenet, clocks, epochs, ours, paper, alexnet, resnet-init" \
                "or resnet)" >&2
           exit 2 ;;
    esac
done
