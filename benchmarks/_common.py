"""What the benchmark scripts share: arguments, weights, the knee, timing helpers, JSON.

Weights come either from a results folder of ``python -m experiments.run`` (``--results
DIR``: baseline.npz, branchynet.npz, exit_outputs.npz and, when present, timing_<dev>.json)
or from a short training run inside the script, cached under
``<cache>/benchmark-weights/<network>-<hash of the settings>/`` so that the four scripts
and reruns train each setting once. Timing barely depends on the weights, except through
the exit fractions at the knee; every JSON records which weights were used.
"""
import argparse
import contextlib
import hashlib
import json
import os
import time

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import chainer.links as L
import numpy as np
from chainer import backend

from branchynet.datasets import cache_dir, load_dataset
from branchynet.frontier import inc_points, knee
from branchynet.io import read_json, write_json
from branchynet.net import BranchyNet
from branchynet.report import device_label, machine_info
from branchynet.sweep import (ExitOutputs, collect_exit_outputs, evaluate_grid,
                              predict_runtime, threshold_grid)
from branchynet.timing import exit_path_latency, synchronize
from branchynet.training import load_weights, save_weights, train
from networks import REGISTRY, get_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")

# Quick in-script training (when no --results folder is given): enough for exit
# entropies to spread over the grid; not the paper's accuracy. Batch sizes are the
# networks' quick ones (the paper's 512/512/64 are for full training runs).
QUICK_TRAINING = {
    "lenet_mnist": {"dataset": "mnist", "train_limit": 10000, "epochs": 2, "batch_size": 64},
    "alexnet_cifar10": {"dataset": "cifar10", "train_limit": 1024, "epochs": 1, "batch_size": 128},
    "resnet110_cifar10": {"dataset": "cifar10", "train_limit": 128, "epochs": 1, "batch_size": 64},
}


def parser(description, defaults):
    """An argument parser with the options every benchmark script takes.

    ``defaults`` maps each network to its quick per-script settings; options left at
    None are filled from it by ``finish_args``.
    """
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default="lenet_mnist", choices=sorted(REGISTRY),
                   help="registered network (default: %(default)s)")
    p.add_argument("--device", default="@numpy",
                   help="Chainer device specifier, e.g. @numpy or @cupy:0 (default: %(default)s)")
    p.add_argument("--out", help="JSON file to write (default: benchmarks/results/"
                   "<benchmark>_<network>_<device>.json)")
    p.add_argument("--results", metavar="DIR",
                   help="use the weights (and cached exit outputs) of this experiments.run "
                   "results folder instead of training briefly here")
    p.add_argument("--data-dir", help="dataset folder (default: $BRANCHYNET_DATA, then the cache)")
    p.add_argument("--train-limit", type=int,
                   help="quick training: first N training images (default: per network)")
    p.add_argument("--epochs", type=int,
                   help="quick training: epochs of baseline and of joint training (default: per network)")
    p.add_argument("--train-batch-size", type=int,
                   help="quick training: batch size (default: per network)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--weights-cache", default=os.path.join(cache_dir(), "benchmark-weights"),
                   help="where quickly trained weights are kept (default: %(default)s)")
    p.add_argument("--blas-threads", type=int,
                   help="limit the BLAS library's threads (threadpoolctl); default: as the "
                   "library starts (OPENBLAS_NUM_THREADS etc. apply)")
    p.set_defaults(_defaults=defaults)
    return p


def finish_args(args, name):
    """Fill per-network defaults (options left at None), the device and the output path."""
    for key, value in args._defaults.get(args.network, {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    quick = QUICK_TRAINING[args.network] if args.network in QUICK_TRAINING else \
        {"dataset": get_network(args.network).dataset, "train_limit": 1000, "epochs": 1,
         "batch_size": 64}
    args.train_limit = args.train_limit or quick["train_limit"]
    args.epochs = args.epochs if args.epochs is not None else quick["epochs"]
    args.train_batch_size = args.train_batch_size or quick["batch_size"]
    args.quick_dataset = quick["dataset"]
    if args.blas_threads:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            raise SystemExit("error: --blas-threads needs the threadpoolctl package") from None
        args._blas_limit = threadpool_limits(limits=args.blas_threads, user_api="blas")
    try:
        args.chainer_device = chainer.get_device(args.device)
    except Exception as err:
        raise SystemExit(f"error: --device {args.device!r} is not a usable Chainer device ({err})")
    args.out = args.out or os.path.join(
        RESULTS_DIR, f"{name}_{args.network}_{device_label(args.chainer_device)}.json")
    return args


def log(text):
    print(text, flush=True)


# ---------------------------------------------------------------------------------------
# Data and weights


class Setup:
    """Everything a benchmark needs about one network: spec, data, nets, weights info."""

    def __init__(self, spec, data, baseline, branchy, weights, results=None):
        self.spec, self.data, self.baseline, self.branchy = spec, data, baseline, branchy
        self.weights = weights          # a description for the JSON
        self.results = results          # the --results folder, if any

    def cached_outputs(self):
        """The results folder's cached exit outputs (its whole test set), or None."""
        path = self.results and os.path.join(self.results, "exit_outputs.npz")
        return ExitOutputs.load(path) if path and os.path.exists(path) else None

    def cached_path_ms(self, device):
        """Exit-path latencies (ms) the runner measured on this device, or None."""
        path = self.results and os.path.join(self.results, f"timing_{device_label(device)}.json")
        return read_json(path)["path_ms"] if path and os.path.exists(path) else None


def _dataset(name, data_dir, options, seed=0):
    from branchynet.datasets import DatasetError
    try:
        return load_dataset(name, data_dir, seed=seed, **options)
    except DatasetError as err:
        raise SystemExit(f"error: {err}")


def prepare(args, need_weights=True):
    """Load the data and the trained baseline and B-net for ``args.network`` (on the CPU)."""
    spec = get_network(args.network)
    if args.results:
        config = read_json(os.path.join(args.results, "config.json"))
        if config["network"] != spec.name:
            raise SystemExit(f"error: {args.results} holds a {config['network']} run, "
                             f"not {spec.name}")
        data = _dataset(config["dataset"], args.data_dir, config.get("dataset_options") or {},
                        config.get("seed", 0))
        if config.get("test_limit"):
            data.test_x = data.test_x[:config["test_limit"]]
            data.test_y = data.test_y[:config["test_limit"]]
        baseline = load_weights(os.path.join(args.results, "baseline.npz"),
                                BranchyNet(spec.build(), main_only=True))
        branchy = load_weights(os.path.join(args.results, "branchynet.npz"),
                               BranchyNet(spec.build()))
        weights = {"source": "results folder", "path": os.path.abspath(args.results),
                   "training": {k: config.get(k) for k in (
                       "dataset", "dataset_options", "train_limit", "batch_size",
                       "baseline_epochs", "branchy_epochs", "seed")}}
        return Setup(spec, data, baseline, branchy, weights, args.results)

    data = _dataset(args.quick_dataset, args.data_dir, dict(spec.dataset_options), args.seed)
    np.random.seed(args.seed)  # Chainer's initialisers draw from NumPy's global generator
    baseline = BranchyNet(spec.build(), main_only=True)
    branchy = BranchyNet(spec.build())
    settings = {"network": spec.name, "dataset": args.quick_dataset,
                "dataset_options": dict(spec.dataset_options), "train_limit": args.train_limit,
                "epochs": args.epochs, "batch_size": args.train_batch_size, "seed": args.seed}
    weights = {"source": "trained by the benchmark", "training": settings}
    if not need_weights:
        weights["source"] = "untrained (random initialisation)"
        return Setup(spec, data, baseline, branchy, weights)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    folder = os.path.join(args.weights_cache, f"{spec.name}-{key}")
    weights["cache"] = folder
    paths = [os.path.join(folder, f"{n}.npz") for n in ("baseline", "branchynet")]
    if all(os.path.exists(p) for p in paths):
        load_weights(paths[0], baseline)
        load_weights(paths[1], branchy)
        log(f"[weights] {spec.name}: reusing {folder}")
        return Setup(spec, data, baseline, branchy, weights)

    x, y = data.train_x[:args.train_limit], data.train_y[:args.train_limit]
    batch = min(args.train_batch_size, len(x))
    device = args.chainer_device
    start = time.perf_counter()
    for name, net in (("baseline", baseline), ("branchynet", branchy)):
        if name == "branchynet":
            branchy.init_from_baseline(baseline)
        train(net, x, y, args.epochs, batch, os.path.join(folder, name), device,
              seed=args.seed, progress=False)
        net.to_device("@numpy")
        recalibrated = recalibrate_batchnorm(net, x)
        save_weights(os.path.join(folder, f"{name}.npz"), net)
    weights["batchnorm_recalibrated"] = recalibrated
    log(f"[weights] {spec.name}: trained baseline and B-net on {len(x)} {args.quick_dataset} "
        f"images, {args.epochs}+{args.epochs} epoch(s), batch {batch}, in "
        f"{time.perf_counter() - start:.0f} s" + (
            "; BatchNorm statistics re-estimated on one batch" if recalibrated else ""))
    return Setup(spec, data, baseline, branchy, weights)


def recalibrate_batchnorm(net, x, batch_size=256):
    """Set BatchNorm running statistics to those of one training batch ("precise BN").

    After a few training iterations the running averages (decay 0.9) are still far from
    the batch statistics, and in inference mode the activations of a deep ResNet then grow
    without bound, which distorts timing (huge values, slow float paths). Only the
    running statistics change; returns whether the network has BatchNorm at all.
    """
    layers = [link for link in net.links() if isinstance(link, L.BatchNormalization)]
    if not layers:
        return False
    decays = [link.decay for link in layers]
    for link in layers:
        link.decay = 0.0
    try:
        with chainer.using_config("train", True), chainer.no_backprop_mode():
            net(net.xp.asarray(x[:batch_size]))
    finally:
        for link, decay in zip(layers, decays):
            link.decay = decay
    return True


# ---------------------------------------------------------------------------------------
# Knee selection, as the runner does it


def exit_outputs_for(setup, device, samples, batch_size=500):
    """Cached exit outputs of the first ``samples`` test images (the results folder's when
    given, else computed now); returns ``(outputs, x, y)``."""
    cached = setup.cached_outputs()
    if cached is not None:
        n = len(cached.labels)
        return cached, setup.data.test_x[:n], setup.data.test_y[:n]
    x, y = setup.data.test_x[:samples], setup.data.test_y[:samples]
    setup.branchy.to_device(device)
    return collect_exit_outputs(setup.branchy, x, y, batch_size, device), x, y


def select_knee(spec, outputs, path_ms):
    """Sweep the paper's grid exactly, predict runtimes, and pick the knee (runner's rule).

    Returns a dict with the grid, the sweep, predicted runtimes, frontier and knee index.
    """
    grid = threshold_grid(spec.grid, outputs.n_exits)
    sweep = evaluate_grid(outputs, grid)
    predicted = predict_runtime(sweep.exit_fractions, path_ms)
    frontier = inc_points(sweep.accuracy, predicted, spec.inc_amt)
    index = knee(sweep.accuracy, predicted, frontier)
    return {"grid": grid, "sweep": sweep, "predicted_ms": predicted, "frontier": frontier,
            "index": index, "thresholds": [float(t) for t in sweep.thresholds[index]],
            "accuracy": float(sweep.accuracy[index]),
            "exit_fractions": sweep.exit_fractions[index].tolist()}


def knee_for(setup, device, eval_samples, timing_x, warmup):
    """The knee of ``setup``'s B-net, with exit-path latencies from the results folder's
    timing file when there is one, else measured now on ``timing_x``."""
    outputs, _, _ = exit_outputs_for(setup, device, eval_samples)
    path_ms = setup.cached_path_ms(device)
    source = "results folder"
    if path_ms is None:
        setup.branchy.to_device(device)
        path_ms = (1e3 * exit_path_latency(setup.branchy, timing_x, device, warmup)).tolist()
        source = f"measured on {len(timing_x)} samples"
    point = select_knee(setup.spec, outputs, path_ms)
    point.update(path_ms=path_ms, path_ms_source=source, eval_samples=len(outputs.labels))
    return point


# ---------------------------------------------------------------------------------------
# Timing helpers that the library does not have


def _inference():
    return chainer.using_config("train", False), chainer.no_backprop_mode()


def time_plain_path(net, x, n, device, warmup=10, all_heads=False):
    """Per-sample seconds of a plain forward to exit ``n`` at batch size 1, no routing.

    Trunk segments up to exit ``n``, then head ``n`` and the argmax; the input is sent to
    the device and the label back, with the same inference-mode settings per call as
    ``BranchyNet.predict``, so only the exit decisions are missing. With ``all_heads``,
    the heads of the exits before ``n`` run as well (their outputs unused): the compute
    a sample leaving at exit ``n`` pays in early-exit inference, without the decisions.
    """
    cpu = backend.CpuDevice()

    def run(xi):
        train_off, no_grad = _inference()
        with train_off, no_grad:
            h = device.send(xi)
            for m in range(n + 1):
                h = net.run_trunk(h, m)
                if m < n and all_heads:
                    net.heads[m](h)
            label = chainer.as_array(net.heads[n](h)).argmax(axis=1)
        return cpu.send(label)

    for i in range(min(warmup, len(x))):
        run(x[i:i + 1])
    synchronize(device)
    seconds = np.empty(len(x))
    for i in range(len(x)):
        start = time.perf_counter()
        run(x[i:i + 1])
        synchronize(device)
        seconds[i] = time.perf_counter() - start
    return seconds


@contextlib.contextmanager
def batched_routing_only():
    """Route batch-size-1 inputs through the general batched loop of ``early_exit``.

    That loop is what every batch size ran before the batch-size-1 fast path was added,
    so this measures "before" side by side with "after". A no-op if there is no fast path.
    """
    import branchynet.routing as routing
    had = hasattr(routing, "SINGLE_SAMPLE_FAST_PATH")
    saved = getattr(routing, "SINGLE_SAMPLE_FAST_PATH", None)
    if had:
        routing.SINGLE_SAMPLE_FAST_PATH = False
    try:
        yield had
    finally:
        if had:
            routing.SINGLE_SAMPLE_FAST_PATH = saved


def per_call_overhead_us(device, calls=2000):
    """Microseconds of Chainer's fixed cost per call, on a 1x1 array in inference mode:
    ``F.identity`` (a FunctionNode) and a 1x1 ``L.Linear`` (a Link calling one function)."""
    import chainer.functions as F
    a = device.send(np.zeros((1, 1), np.float32))
    linear = L.Linear(1, 1)
    linear.to_device(device)
    result = {}
    train_off, no_grad = _inference()
    with train_off, no_grad:
        for name, fn in (("function_call_us", lambda: F.identity(a)),
                         ("link_call_us", lambda: linear(a)),
                         ("numpy_op_us", lambda: device.xp.maximum(a, 0))):
            for _ in range(100):
                fn()
            runs = []
            for _ in range(5):
                synchronize(device)
                start = time.perf_counter()
                for _ in range(calls // 5):
                    fn()
                synchronize(device)
                runs.append((time.perf_counter() - start) / (calls // 5))
            result[name] = 1e6 * float(np.median(runs))
    return result


def peak_gflops(device, size=1024, repeats=5):
    """Measured float32 matrix-multiply throughput (GFLOP/s) of ``device``: the rate at
    which the FLOP count of a network could be executed at best."""
    xp = device.xp
    a = xp.asarray(np.random.RandomState(0).rand(size, size).astype(np.float32))
    a @ a
    runs = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ a
        synchronize(device)
        runs.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(runs) / 1e9


# ---------------------------------------------------------------------------------------
# Results


def blas_info():
    """The BLAS library NumPy uses and its thread count (threadpoolctl, when installed),
    and the thread-count environment variables."""
    env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS") if k in os.environ}
    try:
        from threadpoolctl import threadpool_info
        pools = [{k: p.get(k) for k in ("internal_api", "version", "num_threads")}
                 for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        pools = None
    return {"environment": env, "blas": pools}


def loadavg():
    """The 1, 5 and 15 minute load averages (cores busy, including waiting ones)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class Report:
    """Collects the figures of one run, with the machine load around each, into JSON."""

    def __init__(self, benchmark, args, setup=None):
        self.path = args.out
        device = args.chainer_device
        self.doc = {"benchmark": benchmark, "network": args.network,
                    "device": device_label(device), "machine": machine_info(device),
                    "cpu_cores": os.cpu_count(), "threads": blas_info(),
                    "load_at_start": loadavg(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "settings": {k: v for k, v in vars(args).items()
                                 if not k.startswith("_") and k != "chainer_device"},
                    "weights": setup.weights if setup else None, "figures": {}}

    @contextlib.contextmanager
    def figure(self, key):
        """Record a figure: yields a dict to fill; load and wall time are added."""
        record = {"load_before": loadavg()}
        start = time.perf_counter()
        yield record
        record["wall_s"] = round(time.perf_counter() - start, 3)
        record["load_after"] = loadavg()
        self.doc["figures"][key] = record

    def write(self):
        self.doc["load_at_end"] = loadavg()
        self.doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(self.path, self.doc)
        log(f"wrote {self.path}")
        return self.doc


def load_note(record):
    """' (load 1.23)' from a figure record: the 1-minute load average after it."""
    load = record.get("load_after") or record.get("load_before")
    return f" (load {load[0]:.2f})" if load else ""
