#!/bin/bash
# Verify BranchyNet on a CUDA GPU, offline. Run on the GPU machine from a copy of the working
# tree that holds .gpu-carry/ (made here by scripts/gpu_wheelhouse.sh). See docs/gpu.md.
#
#   scripts/gpu_verify.sh check [OUTDIR]   environment report, NVRTC compile check of
#                                          Chainer's kernels, the GPU and compatibility
#                                          tests, routing tests (about 5 minutes)
#   scripts/gpu_verify.sh quick [OUTDIR]   `check`, then the runner with --device all on a
#                                          tiny mnist-5k setting (CPU and GPU tables/plots)
#   scripts/gpu_verify.sh paper [OUTDIR]   the runner with --paper --device all on MNIST
#                                          (B-LeNet as in Table I); resumable, rerun if cut
#
# OUTDIR (default: $OUT if set, else ./gpu-verify-out) receives at most 8 files, one
# folder deep: env.txt, nvrtc.log, pytest.log, and run-<mode>.tar.gz holding the results
# folder (without training snapshots) to unpack into results/gpu-<name>/ and commit.
# Uses python3 (override with PYTHON=...); installs nothing outside /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-quick}
OUTDIR=${2:-${OUT:-gpu-verify-out}}
PYTHON=${PYTHON:-python3}
SITE=/tmp/branchynet-site
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export BRANCHYNET_DATA="${BRANCHYNET_DATA:-$(pwd)/.gpu-carry/data}"

# What the GPU image lacks, from the carried wheels, into a folder of its own: never
# touches the image's packages (its setuptools may be >= 82, which Chainer cannot use).
if ls .gpu-carry/wheels/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .gpu-carry/wheels/*.whl
    export PYTHONPATH="$SITE:$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "note: no .gpu-carry/wheels (scripts/gpu_wheelhouse.sh): using what $PYTHON has" >&2
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi

"$PYTHON" - <<'EOF' 2>&1 | tee "$OUTDIR/env.txt"
import platform, sys
import branchynet, chainer, numpy
from branchynet._compat import cuda_status
print("python", sys.version.split()[0], platform.platform())
print("chainer", chainer.__version__, "numpy", numpy.__version__)
gpus, why = cuda_status()
print("cuda_status:", gpus, "GPU(s)", why)
if gpus:
    import cupy
    from chainer.backends import cuda
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print("cupy", cupy.__version__, "| GPU 0:", name, "| compute capability",
          cupy.cuda.Device(0).compute_capability, "| CUDA runtime", rt.runtimeGetVersion(),
          "| driver", rt.driverGetVersion(), "| chainer cuDNN enabled:", cuda.cudnn_enabled)
EOF

run_checks() {
    local status=0
    "$PYTHON" scripts/nvrtc_chainer_kernels.py > "$OUTDIR/nvrtc.log" 2>&1 || status=1
    tail -n 3 "$OUTDIR/nvrtc.log"
    # -ra prints every skip's reason: a skipped GPU test here is a failure to look at.
    "$PYTHON" -m pytest -q -ra -p no:cacheprovider tests/test_gpu.py tests/test_compat.py \
        tests/test_routing.py > "$OUTDIR/pytest.log" 2>&1 || status=1
    tail -n 25 "$OUTDIR/pytest.log"
    if grep -q "SKIPPED.*test_gpu" "$OUTDIR/pytest.log"; then
        echo "error: the GPU tests were skipped (see the reasons above)" >&2
        status=1
    fi
    return $status
}

pack() {  # pack FOLDER NAME: the results without training snapshots
    tar -czf "$OUTDIR/$2.tar.gz" --exclude='*/snapshot_epoch_*' -C "$(dirname "$1")" "$(basename "$1")"
    echo "results packed in $OUTDIR/$2.tar.gz"
}

case "$MODE" in
    check) run_checks ;;
    quick) checks=0; run_checks || checks=1
           dir=/tmp/branchynet-results/gpu-quick-lenet-mnist-5k
           "$PYTHON" -m experiments.run --network lenet_mnist --dataset mnist-5k \
               --device all --no-progress --out "$dir" 2>&1 | tee "$OUTDIR/run-quick.log"
           pack "$dir" run-quick
           exit $checks ;;
    paper) dir=/tmp/branchynet-results/gpu-lenet-mnist-paper
           "$PYTHON" -m experiments.run --network lenet_mnist --paper --device all \
               --data-dir "$BRANCHYNET_DATA" --no-progress --out "$dir" 2>&1 \
               | tee "$OUTDIR/run-paper.log"
           pack "$dir" run-paper ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
