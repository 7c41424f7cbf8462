#!/bin/sh
# One-step set-up and the project's everyday commands. Idempotent: the virtual
# environment is created once and reinstalled only when setup.py or a constraint changes.
#
#   ./dev.sh demo [ARGS]   set up, print the speed reference, then run the B-LeNet experiment
#                          on the embedded mnist-5k
#   ./dev.sh test [ARGS]   set up, then run the test suite (pytest ARGS)
#   ./dev.sh test-numpy1   the core tests again in a second environment with NumPy 1.26
#   ./dev.sh setup         only set up (.venv, with the test and distributed extras)
#   ./dev.sh setup-distributed   the same: mpi4py + MPICH wheels for mpiexec (docs/distributed.md)
#   ./dev.sh run ARGS      set up, then python -m experiments.run ARGS
#   ./dev.sh notebooks     set up (+ JupyterLab, once), then open JupyterLab on notebooks/
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

# chainer 7.8.1 builds from source with a setup.py that needs setuptools<82 (pkg_resources).
# pip 23 reads PIP_CONSTRAINT for build environments, pip >= 26 only PIP_BUILD_CONSTRAINT.
setup() {  # setup VENV CONSTRAINTS [EXTRAS]
    venv=$1
    constraints="$(pwd)/$2"
    extras=${3:-test,distributed}
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))." >&2
        echo "Set PYTHON=/path/to/python3.11 and run again." >&2
        exit 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
        "$PYTHON" -m venv "$venv" || {
            echo "error: could not create a virtual environment; on Debian: apt-get install python3-venv" >&2
            exit 1
        }
    fi
    stamp="$venv/.installed"
    if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ "$constraints" -nt "$stamp" ]; then
        echo "Installing into $venv (one time; about a minute) ..."
        PIP_CONSTRAINT="$constraints" PIP_BUILD_CONSTRAINT="$constraints" \
            "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
        touch "$stamp"
    fi
    # `import chainer` before `import branchynet` works too: a start-up hook applies the
    # NumPy-2 fixes when chainer is imported (branchynet_startup.py; costs nothing before).
    pth="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-branchynet-startup.pth"
    [ -f "$pth" ] || echo "import branchynet_startup; branchynet_startup.install()" > "$pth"
}

command=${1:-demo}
[ $# -gt 0 ] && shift
case "$command" in
    setup|setup-distributed) setup .venv constraints/build.txt ;;
    demo) setup .venv constraints/build.txt
          .venv/bin/python -m experiments.speedref  # this machine against the README's
          exec .venv/bin/python -m experiments.run --network lenet_mnist "$@" ;;
    run) setup .venv constraints/build.txt
         exec .venv/bin/python -m experiments.run "$@" ;;
    test) setup .venv constraints/build.txt
          exec .venv/bin/python -m pytest "$@" ;;
    test-numpy1) setup .venv-numpy1 constraints/numpy1.txt test
                 .venv-numpy1/bin/python -c 'import numpy; assert numpy.__version__.startswith("1.26"), numpy.__version__'
                 exec .venv-numpy1/bin/python -m pytest -q tests/test_routing.py tests/test_sweep.py tests/test_branchynet.py tests/test_cpu_kernels.py "$@" ;;
    notebooks) setup .venv constraints/build.txt
               if [ ! -x .venv/bin/jupyter-lab ]; then
                   echo "Installing JupyterLab into .venv (one time) ..."
                   PIP_CONSTRAINT="$(pwd)/constraints/build.txt" \
                   PIP_BUILD_CONSTRAINT="$(pwd)/constraints/build.txt" \
                       .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[notebooks]"
               fi
               exec .venv/bin/jupyter lab notebooks/ "$@" ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
esac
