#!/bin/sh
# Regenerate the replication notebooks from notebooks/make_notebooks.py and execute them in
# place with papermill (stored outputs = this run). Extra arguments go to papermill, e.g.
#   BRANCHYNET_DATA=../shared/data scripts/run_notebooks.sh              # quick setting
#   scripts/run_notebooks.sh -p setting paper -p data_dir /data           # authors' settings
set -eu
cd "$(dirname "$0")/.."
./dev.sh setup
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python notebooks/make_notebooks.py
for name in lenet_mnist alexnet_cifar10 resnet110_cifar10; do
    tmp="notebooks/.$name.running.ipynb"
    .venv/bin/papermill --cwd notebooks --no-progress-bar "notebooks/$name.ipynb" "$tmp" "$@"
    mv "$tmp" "notebooks/$name.ipynb"
done
