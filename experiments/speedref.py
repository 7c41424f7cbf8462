"""A per-thread speed reference of this machine, to set its timings beside another's.

    python -m experiments.speedref

prints three figures, each the best of 5 repeats of a fixed amount of work on one thread
(one BLAS thread per library), in about 3 seconds:

* Python: ``sum(range(10000))``, in µs per loop (what ``python3 -m timeit
  "sum(range(10000))"`` reports);
* GEMM: a 512 x 512 by 512 x 512 float32 matrix product, in GFLOP/s;
* LeNet: the baseline LeNet (``networks.lenet_mnist``, seeded random weights) end to end at
  batch size 1 on 100 MNIST-shaped inputs, in ms per sample, as the runner times it, with
  Chainer's own CPU kernels (``branchynet.cpu_kernels`` off: the same work whichever
  version of this project runs it).

A machine where these are k times slower will show the README's times about k times
slower; a gap far larger than that points at something else (load, thread settings).
"""
import argparse
import os
import time
import timeit

import numpy as np

import branchynet  # noqa: F401  (compatibility fixes before chainer)
from branchynet.threads import blas_info, describe, timing_threads

REPEATS = 5
GEMM_SIZE = 512
LENET_SAMPLES = 100


def python_us(repeats=REPEATS, number=1000):
    """µs per ``sum(range(10000))``, the best of ``repeats`` runs of ``number`` loops."""
    return 1e6 * min(timeit.repeat("sum(range(10000))", repeat=repeats, number=number)) / number


def gemm_gflops(size=GEMM_SIZE, repeats=REPEATS, number=10):
    """GFLOP/s of a ``size``-square float32 matrix product on one BLAS thread (the best of
    ``repeats`` runs of ``number`` products, after one untimed product)."""
    rng = np.random.RandomState(0)
    a, b = rng.rand(size, size).astype(np.float32), rng.rand(size, size).astype(np.float32)
    with timing_threads():
        a @ b
        best = min(timeit.repeat(lambda: a @ b, repeat=repeats, number=number)) / number
    return 2 * size ** 3 / best / 1e9


def lenet_ms(samples=LENET_SAMPLES, repeats=REPEATS):
    """ms per sample of the baseline LeNet end to end at batch size 1 (the best of
    ``repeats`` interleaved rounds over ``samples`` seeded random inputs)."""
    from branchynet import cpu_kernels
    from branchynet.net import BranchyNet
    from branchynet.timing import EndToEnd, interleave
    from networks import get_network
    np.random.seed(0)
    net = BranchyNet(get_network("lenet_mnist").build(), main_only=True)
    x = np.random.RandomState(0).rand(samples, 1, 28, 28).astype(np.float32)
    with timing_threads(), cpu_kernels.enabled(False):
        t = interleave({"lenet": EndToEnd(net, x, [])}, samples, rounds=repeats)
    return float(t.rounds_ms["lenet"].min())


def reference():
    """The three figures and where they were taken: a dict."""
    from branchynet.report import machine_info
    import chainer
    machine = machine_info(chainer.get_device("@numpy"))
    with timing_threads():
        blas = blas_info()
    return {"cpu": machine["cpu"], "cores": machine["cpu_count"], "python": machine["python"],
            "numpy": machine["numpy"], "blas": blas, "load": _load(),
            "python_us": python_us(), "gemm_gflops": gemm_gflops(), "lenet_ms": lenet_ms()}


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def format_reference(ref):
    return (f"Speed reference ({ref['cpu']}, {ref['cores']} cores, Python {ref['python']}, "
            f"NumPy {ref['numpy']}; {describe(ref['blas'])}; load average {ref['load']}): "
            f"sum(range(10000)) {ref['python_us']:.0f} µs, float32 GEMM {GEMM_SIZE}^3 "
            f"{ref['gemm_gflops']:.1f} GFLOP/s, LeNet at batch size 1 (Chainer's kernels) "
            f"{ref['lenet_ms']:.3f} ms per sample (each the best of {REPEATS}; python -m experiments.speedref)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.speedref", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    start = time.perf_counter()
    ref = reference()
    print(format_reference(ref))
    return ref, time.perf_counter() - start


if __name__ == "__main__":
    main()
