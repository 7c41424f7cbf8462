"""The measured process of ``experiments.cache_study``: load the networks, predict samples.

    python -m experiments._cache_child SPEC.json

``SPEC.json`` (written by ``experiments.cache_study``) names the runtime (``chainer`` or
``onnx``), the network, the weights or the ONNX export, a ``.npz`` of input samples (the
first ``count`` are measured, the rest warm up) and the jobs: each job predicts the
``count`` samples one at a time (batch size 1) on the baseline or on the B-net at a
threshold vector; the samples from ``warmup_from`` on only warm up. The exits and labels of every job go to ``spec["out"]`` (JSON).

Under callgrind (``spec["callgrind"]``), instrumentation starts after the imports and the
loading, the warm-up runs every layer once, and each job's events are zeroed before it and
dumped after it with a client request (``callgrind_requests``), so every dump holds exactly
one job. Without it (the ``perf`` method) the process runs the one job ``spec["job"]``:
the caller times the process with ``count`` samples against the same with none.
"""
import ctypes
import json
import mmap
import os
import platform
import sys

import numpy as np

# Callgrind's client requests (valgrind/callgrind.h: VG_USERREQ_TOOL_BASE('C', 'T') + k).
_BASE = (ord("C") << 24) | (ord("T") << 16)
ZERO_STATS, DUMP_STATS_AT = _BASE + 1, _BASE + 3
START_INSTRUMENTATION, STOP_INSTRUMENTATION = _BASE + 4, _BASE + 5

# Valgrind's client-request instruction sequence on x86-64 (valgrind.h): rotations of rdi
# by 3, 13, 61 and 51 bits (128 in all: rdi is unchanged), then ``xchg rbx, rbx``; rax
# points at the request and its arguments, rdx holds the default result. Run natively it
# does nothing and returns the default; under Valgrind the tool carries out the request.
_CODE = bytes.fromhex(
    "4889f8"        # mov rax, rdi   (the request block)
    "4889f2"        # mov rdx, rsi   (the default result)
    "48c1c703" "48c1c70d" "48c1c73d" "48c1c733"  # rol rdi, 3 / 13 / 61 / 51
    "4887db"        # xchg rbx, rbx  (the request)
    "4889d0"        # mov rax, rdx
    "c3")           # ret


class ClientRequests:
    """Valgrind client requests from Python: the instruction sequence in an executable
    page, called through ctypes (x86-64 Linux only; no compiler or headers needed)."""

    def __init__(self):
        if platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux":
            raise RuntimeError(f"callgrind client requests are implemented for x86-64 Linux "
                               f"only, not {sys.platform} {platform.machine()}")
        self._page = mmap.mmap(-1, mmap.PAGESIZE,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._page.write(_CODE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self._call = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)(address)

    def __call__(self, request, arg1=0):
        block = (ctypes.c_uint64 * 6)(request, arg1, 0, 0, 0, 0)
        return self._call(ctypes.addressof(block), 0)

    def start_instrumentation(self):
        self(START_INSTRUMENTATION)

    def stop_instrumentation(self):
        self(STOP_INSTRUMENTATION)

    def zero(self):
        self(ZERO_STATS)

    def dump(self, label):
        text = ctypes.create_string_buffer(label.encode())
        self(DUMP_STATS_AT, ctypes.addressof(text))


def _predictors(spec):
    """``{'baseline': f, 'branchynet': f}`` with ``f(x, thresholds) -> (label, exit)``."""
    if spec["runtime"] == "onnx":
        from branchynet.deploy import OnnxBranchyNet
        runtime = OnnxBranchyNet(spec["onnx"], threads=1)
        return {"baseline": lambda x, t: (runtime.predict_baseline(x), np.zeros(1, np.int32)),
                "branchynet": lambda x, t: runtime.predict(x, t)}
    from branchynet.net import BranchyNet
    from branchynet.threads import set_blas_threads
    from branchynet.training import load_weights
    from networks import get_network
    set_blas_threads(1)
    spec_net = get_network(spec["network"])
    nets = {"baseline": BranchyNet(spec_net.build(), main_only=True),
            "branchynet": BranchyNet(spec_net.build())}
    for name, net in nets.items():
        load_weights(spec["weights"][name], net)
    return {name: (lambda x, t, net=net: net.predict(x, t)) for name, net in nets.items()}


def run_job(predict, job, x, requests, label):
    """Predict every sample of ``x`` alone with the job's network and thresholds; under
    callgrind, the job's events are zeroed before and dumped after (as ``label``)."""
    run, thresholds = predict[job["net"]], job.get("thresholds", ())
    labels, exits = [], []
    if requests:
        requests.zero()
    for i in range(len(x)):
        label_, exit_ = run(x[i:i + 1], thresholds)
        labels.append(label_)
        exits.append(exit_)
    if requests:
        requests.dump(label)
    return {"name": label, "labels": [int(v[0]) for v in labels],
            "exits": [int(v[0]) for v in exits]}


def main(path):
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    with np.load(spec["samples"]) as data:
        x = np.ascontiguousarray(data["x"], np.float32)
    count = spec["count"]
    predict = _predictors(spec)
    requests = ClientRequests() if spec.get("callgrind") else None
    if requests:
        requests.start_instrumentation()
    n_early = spec["n_exits"] - 1
    jobs = spec["jobs"] if requests else [spec["jobs"][spec["job"]]]
    measured = x[:count]
    float(measured.sum())  # the inputs are in memory before any job, as for every job
    # Warm-up on samples that are not measured: every layer of both networks once
    # (threshold 0 keeps every sample to the last exit), then every job once, so one-time
    # costs (first calls, allocations, compulsory misses on the weights) stay out of the jobs.
    for i in range(spec["warmup_from"], len(x)):
        predict["baseline"](x[i:i + 1], ())
        predict["branchynet"](x[i:i + 1], [0.0] * n_early)
        for job in jobs:
            predict[job["net"]](x[i:i + 1], job.get("thresholds", ()))
    results = [run_job(predict, job, measured, requests, job["name"]) for job in jobs]
    if requests and spec.get("cold_jobs"):
        # Each of these from a cold cache: a buffer twice the last level is read first,
        # evicting the weights and the inputs (the one-time cost of bringing a path in).
        flush = np.ones(2 * spec["ll_size"] // 8)
        for job in spec["cold_jobs"]:
            float(flush.sum())
            results.append(run_job(predict, job, measured, requests, "cold: " + job["name"]))
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump(results, f)
    if requests:
        # Nothing after the last job is counted: the interpreter's teardown would run
        # simulated for minutes, so it runs uninstrumented and is skipped.
        requests.stop_instrumentation()
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m experiments._cache_child SPEC.json")
    main(sys.argv[1])
