#!/bin/sh
# Regenerate the replication notebooks from notebooks/make_notebooks.py and execute them in
# place with papermill (stored outputs = this run). Extra arguments go to papermill, e.g.
#   BRANCHYNET_DATA=../shared/data scripts/run_notebooks.sh              # quick setting
#   scripts/run_notebooks.sh -p setting paper -p data_dir /data           # authors' settings
#   BRANCHYNET_DATA=../shared/data scripts/run_notebooks.sh --on-results  # the replication:
# each notebook loads the weights, settings and timing record of its committed results
# folder (RESULTS below) instead of training and timing: the stored outputs are then the
# folders' rows. (A folder without a matching timing record is timed by the notebook:
# then run it on a quiet machine.)
set -eu
cd "$(dirname "$0")/.."
RESULTS="lenet_mnist=cpu-lenet_mnist-paper alexnet_cifar10=cpu-alexnet_cifar10-converged
         resnet110_cifar10=cpu-resnet110_cifar10-converged-cycle2"
on_results=
if [ "${1:-}" = --on-results ]; then on_results=1; shift; fi
./dev.sh setup
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python notebooks/make_notebooks.py
for name in lenet_mnist alexnet_cifar10 resnet110_cifar10; do
    tmp="notebooks/.$name.running.ipynb"
    if [ -n "$on_results" ]; then
        folder=$(echo "$RESULTS" | tr ' ' '\n' | sed -n "s/^$name=//p")
        set -- -p results_dir "results/$folder" "$@"  # from the repository root
    fi
    .venv/bin/papermill --cwd notebooks --no-progress-bar "notebooks/$name.ipynb" "$tmp" "$@"
    mv "$tmp" "notebooks/$name.ipynb"
    if [ -n "$on_results" ]; then shift 3; fi  # the results_dir parameter added above
done
