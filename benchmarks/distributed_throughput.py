"""Data-parallel training throughput (images/s) with ChainerMN, for 1, 2, ... processes.

    python -m benchmarks.distributed_throughput --network lenet_mnist --ranks 1 2

Launches ``mpiexec -n R`` (the one beside this Python, from the MPICH wheel, else on PATH)
for every R in --ranks, each process on --device (``{local_rank}`` allowed, e.g.
``@cupy:{local_rank}``) with --communicator (naive on CPUs). Every process runs what
``branchynet.training.train`` runs per step with a communicator: joint B-net training
(``JointLoss`` forward and backward on its own shard, gradients averaged over processes by
ChainerMN's multi-node Adam). After --warmup steps, --iterations steps are timed between
two barriers; images/s = global batch x steps / seconds. Every setting is measured in each
of --repeats rounds, the settings interleaved within a round (so a change of machine load
hits them alike); figures are medians over rounds, with every value kept. Two settings per R:

* strong scaling: the global batch fixed at --batch-size, split over the R processes;
* weak scaling: --batch-size per process, so the global batch grows R-fold.

``no MPI`` is the same loop with plain Adam in this process, without any communicator.
The time inside the gradient all-reduce is recorded separately. On a machine with fewer
free cores than processes, R processes share the cores and little or no gain is possible.

--stage baseline times the baseline (main branch only) instead of joint training.
--compare-previous replaces ``no MPI`` by four in-process settings, interleaved with the
rest: the current ``cpu_kernels`` and the previous default (the ``conv`` group alone), each
at 1 BLAS thread and at every core (``experiments.run --blas-threads auto`` trains in one
process at the faster of these two), and reports each R's speed-up over the faster
previous one: what training with R processes gains over the runner's previous default.

    python -m benchmarks.distributed_throughput --network resnet110_cifar10 --stage joint \
        --batch-size 128 --ranks 2 --compare-previous
"""
import json
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file (and so under mpiexec): repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)
import chainer  # noqa: E402
import numpy as np  # noqa: E402
from chainer import optimizers  # noqa: E402

from benchmarks import _common as C  # noqa: E402
from branchynet import cpu_kernels, distributed  # noqa: E402
from branchynet.datasets import load_dataset  # noqa: E402
from branchynet.net import BranchyNet, JointLoss  # noqa: E402
from branchynet.threads import blas_threads, cores  # noqa: E402
from branchynet.timing import synchronize  # noqa: E402
from networks import get_network  # noqa: E402

DEFAULTS = {
    "lenet_mnist": {"batch_size": 128, "iterations": 40, "warmup": 5, "samples": 4000},
    "alexnet_cifar10": {"batch_size": 128, "iterations": 6, "warmup": 2, "samples": 2000},
    "resnet110_cifar10": {"batch_size": 64, "iterations": 3, "warmup": 1, "samples": 512},
}


def parse_args(argv=None):
    p = C.parser(__doc__, DEFAULTS)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2],
                   help="process counts to launch (default: %(default)s)")
    p.add_argument("--communicator", default="naive", choices=distributed.COMMUNICATORS,
                   help="ChainerMN communicator (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help="global batch (strong scaling) and "
                   "per-process batch (weak scaling)")
    p.add_argument("--iterations", type=int, help="timed steps")
    # --warmup (untimed steps first) comes from the common parser.
    p.add_argument("--samples", type=int, help="training images (rank 0 scatters them)")
    p.add_argument("--stage", choices=("joint", "baseline"), default="joint",
                   help="joint B-net training or the baseline (main branch only) "
                   "(default: %(default)s)")
    p.add_argument("--compare-previous", action="store_true",
                   help="in-process settings with the current and the previous cpu_kernels "
                   "default at 1 BLAS thread and at every core, instead of 'no MPI'")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved rounds; figures are medians (default: %(default)s)")
    p.add_argument("--dataset", help="dataset (default: the network's quick one, e.g. mnist-5k)")
    p.add_argument("--worker", metavar="JSON", help=argparse_hidden())
    p.add_argument("--per-rank-batch", type=int, help=argparse_hidden())
    device = next((a for a in (argv or sys.argv[1:]) if "{local_rank}" in a), None)
    args = p.parse_args(argv)
    if device:  # resolved per process; the driver's own figure runs on local rank 0
        args.device_template = args.device
        args.device = distributed.local_devices([args.device], None)[0]
    else:
        args.device_template = args.device
    args = C.finish_args(args, "distributed_throughput")
    args.dataset = args.dataset or get_network(args.network).quick_dataset
    return args


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


def _data(args, root):
    if not root:
        return None
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    return chainer.datasets.TupleDataset(data.train_x[:args.samples], data.train_y[:args.samples])


def steps_per_second(args, batch, comm=None):
    """Run the timed loop; returns (seconds, seconds inside the all-reduce) on this rank."""
    device = chainer.get_device(distributed.local_devices([args.device_template], comm)[0])
    dataset = _data(args, distributed.is_root(comm))
    if comm is not None:
        dataset = distributed.scatter(dataset, comm, args.seed)
    np.random.seed(args.seed)
    net = BranchyNet(get_network(args.network).build(), main_only=args.stage == "baseline")
    net.predict_all_exits(dataset[0][0][None])
    model = JointLoss(net)
    model.to_device(device)
    optimizer = optimizers.Adam(alpha=0.001)
    reduce_seconds = []
    if comm is not None:
        optimizer = distributed.multi_node_optimizer(optimizer, comm)
        mean_grad = comm.multi_node_mean_grad

        def timed_mean_grad(*a, **k):
            start = time.perf_counter()
            mean_grad(*a, **k)
            synchronize(device)
            reduce_seconds.append(time.perf_counter() - start)
        comm.multi_node_mean_grad = timed_mean_grad
    optimizer.setup(model)
    if comm is not None:
        optimizer.update()  # the broadcast of rank 0's parameters, as train() does
    iterator = chainer.iterators.SerialIterator(dataset, batch, shuffle=True)
    for i in range(args.warmup + args.iterations):
        if i == args.warmup:
            synchronize(device)
            if comm is not None:
                comm.mpi_comm.Barrier()
            reduce_seconds.clear()
            start = time.perf_counter()
        x, y = chainer.dataset.concat_examples(iterator.next(), device)
        optimizer.update(model, x, y)
    synchronize(device)
    if comm is not None:
        comm.mpi_comm.Barrier()
    return time.perf_counter() - start, float(np.sum(reduce_seconds))


def worker(args):
    comm = distributed.create(args.communicator)
    seconds, reduce = steps_per_second(args, args.per_rank_batch, comm)
    reduces = comm.gather_obj(reduce)
    if comm.rank == 0:
        with open(args.worker, "w") as f:
            json.dump({"seconds": seconds, "allreduce_seconds_per_rank": reduces,
                       "ranks": comm.size, "machines": comm.inter_size}, f)


def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    import shutil
    found = shutil.which("mpiexec")
    if not found:
        raise SystemExit(f"error: no mpiexec: {distributed.INSTALL_HINT}")
    return found


def launch(args, ranks, per_rank_batch):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "worker.json")
        command = [_mpiexec(), "-n", str(ranks), sys.executable, os.path.abspath(__file__),
                   "--worker", out, "--per-rank-batch", str(per_rank_batch)]
        for key in ("network", "communicator", "iterations", "warmup", "samples", "seed",
                    "dataset", "data_dir", "stage"):
            value = getattr(args, key)
            if value is not None:
                command += [f"--{key.replace('_', '-')}", str(value)]
        command += ["--device", args.device_template]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


# --compare-previous: name -> (cpu_kernels groups, None: as the ranks run (the environment's);
# BLAS threads, 0: every core)
IN_PROCESS = {
    "previous_1thread": ({"conv": True, "fused": False}, 1),
    "previous_all_cores": ({"conv": True, "fused": False}, 0),
    "current_1thread": (None, 1),
    "current_all_cores": (None, 0),
}


def in_process(args, batch, key):
    """``steps_per_second`` in this process with the kernels and threads ``key`` names."""
    groups, threads = IN_PROCESS[key]
    current = {group: group in cpu_kernels.enabled_groups() for group in cpu_kernels.GROUPS}
    with cpu_kernels.enabled(groups or current), blas_threads(threads or cores()):
        return steps_per_second(args, batch)


def _figure(args, ranks, per_rank, results):
    """Medians over the rounds' ``results`` (and every round's value)."""
    steps = args.iterations
    global_batch = per_rank * ranks
    seconds = [r["seconds"] for r in results]
    fractions = [float(np.mean(r["allreduce_seconds_per_rank"])) / r["seconds"]
                 for r in results]
    return {"ranks": ranks, "per_rank_batch": per_rank, "global_batch": global_batch,
            "steps": steps, "rounds": len(results), "seconds": seconds,
            "images_per_s": float(np.median([global_batch * steps / s for s in seconds])),
            "images_per_s_rounds": [global_batch * steps / s for s in seconds],
            "allreduce_fraction": float(np.median(fractions)),
            "allreduce_seconds_per_rank": [r["allreduce_seconds_per_rank"] for r in results]}


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return None
    report = C.Report("distributed_throughput", args)
    report.doc["timing_method"] = (f"per setting the median over {args.repeats} "
                                   "interleaved rounds of (global batch x steps) / wall "
                                   "seconds between two barriers; every round's value kept")
    steps = ("baseline training steps (main branch only" if args.stage == "baseline"
             else "joint B-net training steps (every exit")
    report.doc["note"] = (f"images/s of {steps}: forward, backward, "
                          "gradient all-reduce, Adam) between barriers; strong = global "
                          "batch fixed, weak = per-process batch fixed. With R processes on "
                          "a machine with fewer than R idle cores no gain is possible.")
    tag = f"[distributed_throughput] {args.network} {report.doc['device']}"
    in_process_keys = list(IN_PROCESS) if args.compare_previous else ["no_mpi"]
    settings = [(key, None, args.batch_size) for key in in_process_keys]
    for mode in ("strong", "weak"):
        for ranks in args.ranks:
            if mode == "strong" and args.batch_size % ranks:
                C.log(f"{tag}: skip strong scaling at {ranks} ranks: batch {args.batch_size} "
                      f"does not split evenly")
                continue
            per_rank = args.batch_size // ranks if mode == "strong" else args.batch_size
            settings.append((f"{mode}_{ranks}", ranks, per_rank))
    results = {key: [] for key, _, _ in settings}
    loads = []
    for round_ in range(args.repeats):
        for key, ranks, per_rank in settings:
            loads.append(C.loadavg())
            if ranks is None:
                seconds, _ = (in_process(args, per_rank, key) if key in IN_PROCESS
                              else steps_per_second(args, per_rank))
                results[key].append({"seconds": seconds, "allreduce_seconds_per_rank": [0.0]})
            else:
                results[key].append(launch(args, ranks, per_rank))
    report.doc["load_during"] = loads
    for key, ranks, per_rank in settings:
        # Rounds interleave the settings: the load of each is in load_during, not per figure.
        fig = report.doc["figures"][key] = _figure(args, ranks or 1, per_rank, results[key])
        if ranks is None:
            fig["allreduce_fraction"] = None
            C.log(f"{tag}: {key.replace('_', ' ')}, batch {per_rank}: "
                  f"{fig['images_per_s']:.1f} images/s (rounds "
                  f"{', '.join(f'{v:.1f}' for v in fig['images_per_s_rounds'])})")
        else:
            C.log(f"{tag}: {key.split('_')[0]}, {ranks} rank(s) x batch {per_rank} = "
                  f"{fig['global_batch']}: {fig['images_per_s']:.1f} images/s (rounds "
                  f"{', '.join(f'{v:.0f}' for v in fig['images_per_s_rounds'])}), all-reduce "
                  f"{100 * fig['allreduce_fraction']:.1f}% of the time")
    C.log(f"{tag}: 1-minute load average during the rounds "
          f"{min(l[0] for l in loads if l):.2f}-{max(l[0] for l in loads if l):.2f} on "
          f"{os.cpu_count()} cores")
    figures = report.doc["figures"]
    if len(args.ranks) > 1:
        report.doc["speedup"] = scaling(figures, args.ranks)
        C.log(f"{tag}: speed-up over {args.ranks[0]} rank(s): "
              + "; ".join(f"{mode} " + ", ".join(f"{r}: {s:.2f}x" for r, s in v.items())
                          for mode, v in report.doc["speedup"].items()))
    if args.compare_previous:
        report.doc["speedup_over_previous_default"] = over_previous(figures)
        for key, v in report.doc["speedup_over_previous_default"].items():
            C.log(f"{tag}: {key.replace('_', ' ')} over the faster previous default "
                  f"({v['previous']}): {v['median']:.2f}x, per round {v['min']:.2f}-{v['max']:.2f}x")
    return report.write()


def scaling(figures, ranks):
    """Strong and weak scaling: each rank count's images/s over the first one's."""
    return {mode: {str(r): figures[f"{mode}_{r}"]["images_per_s"]
                   / figures[f"{mode}_{ranks[0]}"]["images_per_s"]
                   for r in ranks if f"{mode}_{r}" in figures and f"{mode}_{ranks[0]}" in figures}
            for mode in ("strong", "weak")}


def over_previous(figures):
    """Each setting's images/s over the faster of the two previous-default settings (the
    runner's 'auto' threads pick the faster), as the median and range of per-round ratios."""
    previous = max(("previous_1thread", "previous_all_cores"),
                   key=lambda k: figures[k]["images_per_s"])
    base = figures[previous]["images_per_s_rounds"]
    out = {}
    for key, fig in figures.items():
        if key != previous:
            ratios = [a / b for a, b in zip(fig["images_per_s_rounds"], base)]
            out[key] = {"previous": previous, "median": float(np.median(ratios)),
                        "min": min(ratios), "max": max(ratios), "rounds": ratios}
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
