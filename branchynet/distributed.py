"""Data-parallel training over MPI with ChainerMN (``chainermn``, shipped with Chainer 7).

One process per device, launched by ``mpiexec``; every process builds the same network,
rank 0's parameters are broadcast before the first step, each process trains on its shard
of the training set (``chainermn.scatter_dataset``) and the gradients are averaged over
all processes after every step (``chainermn.create_multi_node_optimizer``), so every rank
holds the same weights throughout. A step of ``ranks`` processes with ``b`` samples each
is one step of batch ``b x ranks`` (the global batch). Only rank 0 writes files.

Nothing here imports ``mpi4py`` before ``create`` is called: a single-process run needs no
MPI. See docs/distributed.md for the launch recipes.
"""
import io
import os
import sys
import time

# Communicators that run on CPU arrays; the others need CUDA GPUs (and NCCL or a
# CUDA-aware MPI). ChainerMN 7 knows exactly these names.
CPU_COMMUNICATORS = ("naive",)
GPU_COMMUNICATORS = ("pure_nccl", "non_cuda_aware", "flat")
COMMUNICATORS = CPU_COMMUNICATORS + GPU_COMMUNICATORS
INSTALL_HINT = ("install the optional extra: ./dev.sh setup-distributed "
                "(or pip install -e '.[distributed]': mpi4py and the MPICH wheel)")
RECORD = "distributed.json"  # beside the snapshots: how many ranks wrote them


class DistributedError(ValueError):
    """MPI or a communicator that cannot work here (the runner: exit status 2)."""


def create(name):
    """The ChainerMN communicator ``name`` over ``MPI.COMM_WORLD``; clear errors when MPI,
    mpi4py or (for the NCCL ones) CUDA is missing."""
    if name not in COMMUNICATORS:
        raise DistributedError(f"--communicator {name!r} is not one of {', '.join(COMMUNICATORS)} "
                               f"(naive on CPUs, pure_nccl on GPUs)")
    try:
        from mpi4py import MPI  # noqa: F401  (initialises MPI)
    except ImportError as err:
        raise DistributedError(f"--communicator {name} needs mpi4py and an MPI library "
                               f"({err}): {INSTALL_HINT}") from None
    except RuntimeError as err:  # mpi4py present, its MPI library missing or broken
        raise DistributedError(f"--communicator {name}: mpi4py cannot load an MPI library "
                               f"({err}): {INSTALL_HINT}") from None
    if name in GPU_COMMUNICATORS:
        from branchynet._compat import cuda_status
        gpus, reason = cuda_status()
        if not gpus:
            raise DistributedError(f"--communicator {name} needs CUDA GPUs ({reason}); "
                                   f"on CPUs use --communicator naive")
    import chainermn
    try:
        comm = chainermn.create_communicator(name)
    except Exception as err:  # e.g. CuPy without NCCL for pure_nccl
        raise DistributedError(f"--communicator {name} cannot start: "
                               f"{type(err).__name__}: {err}") from None
    if comm.size > 1 and sys.excepthook is sys.__excepthook__:
        # An uncaught exception on one rank would leave the others waiting in a collective
        # for ever: ChainerMN's hook prints it and calls MPI_Abort instead.
        chainermn.global_except_hook.add_hook()
    return comm


def is_root(comm):
    """True on rank 0, and in a single-process run (``comm`` None)."""
    return comm is None or comm.rank == 0


def local_devices(specifiers, comm):
    """``--device`` values with ``{local_rank}`` and ``{rank}`` filled in for this process
    (``@cupy:{local_rank}``: GPU N for the N-th process on each machine)."""
    rank, local = (0, 0) if comm is None else (comm.rank, comm.intra_rank)
    try:
        return [spec.format(local_rank=local, rank=rank) for spec in specifiers]
    except (KeyError, IndexError, ValueError) as err:
        raise DistributedError(f"--device {specifiers}: only {{local_rank}} and {{rank}} may "
                               f"appear in braces ({err})") from None


def record(comm, batch_size):
    """What config.json records of a data-parallel run (None for a single process)."""
    if comm is None:
        return None
    return {"communicator": type(comm).__name__, "ranks": comm.size,
            "per_rank_batch_size": batch_size, "global_batch_size": batch_size * comm.size,
            "machines": comm.inter_size}


def on_root(comm, stage, errors=()):
    """Run ``stage()`` on rank 0 only; an exception of a type in ``errors`` there is raised
    again, with the same message, on every rank (so no rank waits for a failed one)."""
    if comm is None:
        return stage()
    failure = None
    if comm.rank == 0:
        try:
            stage()
        except errors as err:
            failure = (type(err), str(err))
    failure = _bcast(comm, failure)
    if failure is not None:
        kind, message = failure
        error = kind(message)
        error.on_every_rank = True  # every rank stops with it: no MPI_Abort needed
        raise error


def agree(comm, value):
    """Rank 0's ``value`` on every rank (a decision all ranks must share)."""
    return value if comm is None else _bcast(comm, value)


def _bcast(comm, value):
    # ChainerMN's bcast_obj wants an object on the root, None elsewhere.
    return comm.bcast_obj((value,) if comm.rank == 0 else None)[0]


def wait(comm, poll=0.05):
    """A barrier that sleeps instead of spinning, so ranks done with their part leave the
    CPU to rank 0 (whose latency timings would otherwise share cores with busy waits)."""
    if comm is None or comm.size == 1:
        return
    request = comm.mpi_comm.Ibarrier()
    while not request.Test():
        time.sleep(poll)


def abort(comm, err, code=1):
    """End every process of the job after an error on this rank: print which rank failed
    and why, then ``MPI_Abort`` (the other ranks may be waiting in a collective)."""
    print(f"error: rank {comm.rank} of {comm.size} failed: {type(err).__name__}: {err}; "
          f"ending all {comm.size} processes (files are written atomically: nothing "
          f"half-written is left)", file=sys.stderr, flush=True)
    # MPI_Abort makes the launcher kill every process, its output forwarders too: give the
    # message time to reach the terminal first (it was lost now and then in CI).
    time.sleep(1.0)
    comm.mpi_comm.Abort(code)
    os._exit(code)  # MPICH may return from MPI_Abort before the launcher kills us


# -- used by branchynet.training ---------------------------------------------------------

def check_resume(out, comm):
    """Refuse to resume snapshots in ``out`` written by another number of processes.

    The snapshot holds one iterator position and one Adam state; with another number of
    ranks the shards, the global batch and so the steps per epoch differ, so continuing
    would silently train another schedule.
    """
    ranks = 1 if comm is None else comm.size
    found = snapshots(out)
    path = os.path.join(out, RECORD)
    written = 1
    if os.path.exists(path):
        from branchynet.io import read_json
        written = read_json(path)["ranks"]
    if found and written != ranks:
        raise DistributedError(
            f"{out} holds snapshots of a training with {written} process(es); this run has "
            f"{ranks}. Resume with mpiexec -n {written}"
            + (" and the same --communicator" if written > 1 else " (no --communicator)")
            + f", or delete {out} to train from the start.")


def write_record(out, comm, batch_size):
    """Record (rank 0) how many processes write the snapshots in ``out``."""
    if comm is not None:
        from branchynet.io import write_json
        write_json(os.path.join(out, RECORD), record(comm, batch_size))


def snapshots(out):
    """The snapshots in ``out``, oldest first: ``snapshot_epoch_E`` (the end of epoch E)
    before ``snapshot_epoch_E_iter_I`` (a time-budget stop during epoch E + 1)."""
    if not os.path.isdir(out):
        return []
    names = [n for n in os.listdir(out) if n.startswith("snapshot_epoch_")]

    def order(name):
        epoch, _, iteration = name[len("snapshot_epoch_"):].partition("_iter_")
        return int(epoch), int(iteration or -1)
    return sorted(names, key=order)


def load_latest_snapshot(trainer, out, comm=None):
    """Load the latest snapshot in ``out`` (by ``snapshots``' order, not by file times,
    which a copy or checkout reorders) into ``trainer``; with ``comm``, rank 0 reads it and
    sends it to every rank (other machines need no copy of the folder). Returns its name,
    or None when ``out`` holds none."""
    from chainer import serializers
    blob = name = None
    if comm is None or comm.rank == 0:
        found = snapshots(out)
        if found:
            name = found[-1]
            with open(os.path.join(out, name), "rb") as f:
                blob = f.read()
    if comm is not None:
        name, blob = _bcast(comm, (name, blob))
    if blob is not None:
        serializers.load_npz(io.BytesIO(blob), trainer)
    return name


def aggregators(comm, keys):
    """Trainer extensions replacing each observation in ``keys`` by its mean over ranks at
    every iteration, so rank 0's log reports the whole global batch."""
    from chainermn.extensions import ObservationAggregator

    class HostObservationAggregator(ObservationAggregator):
        # ChainerMN 7 moves a Variable with to_device("native"), which fails when Chainer
        # is built without ChainerX (the PyPI build): hand it the value as a host array.
        def __call__(self, trainer):
            value = trainer.observation.get(self.original_key)
            if value is not None and hasattr(value, "array"):
                from chainer.backends import cuda
                trainer.observation[self.original_key] = cuda.to_cpu(value.array)
            super().__call__(trainer)

    return [HostObservationAggregator(comm, key) for key in keys]


def scatter(dataset, comm, seed):
    """Rank 0's ``dataset`` split into equal shards after a seeded permutation; this
    rank's shard (the other ranks pass None for ``dataset``)."""
    import chainermn
    return chainermn.scatter_dataset(dataset, comm, shuffle=True, seed=seed)


def multi_node_optimizer(optimizer, comm):
    import chainermn
    return chainermn.create_multi_node_optimizer(optimizer, comm)
