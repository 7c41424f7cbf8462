"""Training with Chainer's Trainer: joint (B-net) or main-branch-only (baseline).

Snapshots are written after every epoch (Chainer writes them to a temporary file and moves
them into place) and loaded back automatically, so an interrupted run resumes at the last
finished epoch. With a wall-clock budget (``time_budget_s`` / ``deadline``) training stops
cleanly mid-epoch with a snapshot of everything the next iterations depend on (weights,
optimizer state, iterator position and order, the shuffling and NumPy random states), so
a second run continues exactly where the first stopped; ``train`` then raises
``TimeBudgetExhausted``. With a ChainerMN communicator the budget is collective: rank 0's
clock decides and every rank stops at the same iteration. ``save_weights``/``load_weights``
store the trained network as npz.

Learning curves: given test data, Chainer's ``Evaluator`` runs every exit over it after
every ``eval_every`` epochs in inference mode (dropout off, BatchNorm's running averages,
nothing updated, no random numbers drawn, so the training is the same with or without it)
and the log gets ``test/main/accuracy/exitK`` beside the training-mode
``main/accuracy/exitK``, and ``test/seconds`` (the evaluation's own time).

A ``Recipe`` says how to train: the optimizer, learning rate, momentum, weight decay,
learning-rate schedule and data augmentation. ``PAPER_RECIPE`` is the authors' (Adam,
step 0.001, Chainer's other defaults, nothing else); ``FAST_RECIPE`` a standard CIFAR
schedule (SGD with momentum, weight decay, warm-up + cosine, crop + flip, see its note).
Everything random in a recipe (augmentation) is a function of the seed and the
iteration (and of the rank, in a data-parallel run), so a resumed run draws the same as
an uninterrupted one; on a GPU so are the dropout masks (CuPy's generator is seeded per
iteration), on the CPU NumPy's global state travels in the snapshot (``_RecipeUpdater``).
"""
import dataclasses
import math
import os
import time

import chainer
import numpy as np
from chainer import iterators, optimizer_hooks, optimizers, serializers, training
from chainer.dataset import concat_examples
from chainer.datasets import TupleDataset
from chainer.training import extensions, triggers

from branchynet.io import atomic_path
from branchynet.net import JointLoss

OPTIMIZERS = ("adam", "momentum-sgd")
SCHEDULES = ("constant", "cosine", "step")
AUGMENTATIONS = ("none", "crop-flip")
# Step schedule: the rate is multiplied by STEP_FACTOR at these fractions of the epochs
# (the ResNet paper's 0.1 at about 50% and 75% of its 164 epochs).
STEP_AT = (0.5, 0.75)
STEP_FACTOR = 0.1


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to train: optimizer and its settings, schedule and augmentation.

    Attributes:
        optimizer: ``'adam'`` (the paper's; ``lr`` is Adam's step ``alpha``) or
            ``'momentum-sgd'`` (Chainer's ``MomentumSGD``).
        lr: initial learning rate (Adam: alpha).
        momentum: momentum of ``momentum-sgd`` (ignored by Adam).
        weight_decay: L2 penalty rate (Chainer's ``WeightDecay`` hook on every parameter);
            0 for none.
        schedule: ``'constant'``, ``'cosine'`` (from ``lr`` to 0 over the stage's epochs,
            per iteration) or ``'step'`` (x ``STEP_FACTOR`` at ``STEP_AT`` of the epochs).
        warmup_epochs: linear warm-up from ``lr / 10`` to ``lr`` over this many epochs
            before the schedule (the ResNet paper warms ResNet-110 up); 0 for none.
        augment: ``'none'`` or ``'crop-flip'``: each training image is padded by
            ``pad`` pixels of zeros (the mean, on standardised data), randomly cropped
            back to its size and mirrored left-right with probability 1/2, on the fly.
        pad: padding of ``crop-flip``.
        joint_lr_factor: the joint (B-net) stage starts from the trained baseline at
            ``lr * joint_lr_factor``, with the same schedule over its own epochs.
    """
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    augment: str = "none"
    pad: int = 4
    joint_lr_factor: float = 1.0

    def __post_init__(self):
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment {self.augment!r} is not one of {', '.join(AUGMENTATIONS)}")
        for name in ("lr", "joint_lr_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive number, not {value!r}")
        for name in ("momentum", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be >= 0, not {value!r}")
        if self.momentum >= 1:
            problems.append(f"momentum must be below 1, not {self.momentum!r}")
        if not (isinstance(self.pad, int) and self.pad >= 0):
            problems.append(f"pad must be an integer >= 0, not {self.pad!r}")
        if problems:
            raise ValueError("invalid training recipe: " + "; ".join(problems))

    def to_dict(self):
        """The recipe as a plain dict (for config.json)."""
        return dataclasses.asdict(self)

    def stage_lr(self, stage):
        """The initial rate of ``stage`` (``'baseline'`` or ``'branchynet'``)."""
        return self.lr * (self.joint_lr_factor if stage == "branchynet" else 1.0)

    def learning_rate(self, progress, epochs, lr=None):
        """The rate after ``progress`` epochs (a float) of a stage of ``epochs`` epochs."""
        lr = self.lr if lr is None else lr
        warmup = min(self.warmup_epochs, epochs)
        if warmup and progress < warmup:
            return lr * (0.1 + 0.9 * progress / warmup)
        if self.schedule == "constant" or epochs <= warmup:
            return lr
        fraction = min(1.0, (progress - warmup) / (epochs - warmup))
        if self.schedule == "cosine":
            return lr * 0.5 * (1.0 + math.cos(math.pi * fraction))
        return lr * STEP_FACTOR ** sum(fraction >= at for at in STEP_AT)


# The authors' recipe (their code: Adam, alpha 0.001, Chainer's other defaults).
PAPER_RECIPE = Recipe()
# A standard fast CIFAR recipe (e.g. the ResNet paper's SGD + momentum + weight decay +
# crop/flip, with a cosine schedule instead of its 164-epoch steps; batch and rate in the
# network presets). The joint stage starts from the trained baseline at a tenth of the rate.
FAST_RECIPE = Recipe(optimizer="momentum-sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                     schedule="cosine", warmup_epochs=1.0, augment="crop-flip", pad=4,
                     joint_lr_factor=0.1)
RECIPES = {"paper": PAPER_RECIPE, "fast": FAST_RECIPE}


def crop_flip(x, rng, pad=4):
    """Random ``pad``-pixel-padded crops and left-right flips of a batch ``x`` (N, C, H, W).

    Zero padding; one crop offset and one coin per image, drawn from ``rng`` (a
    ``numpy.random.Generator``). Returns a new array of ``x``'s shape and dtype.
    """
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    flip = rng.random(n) < 0.5
    rows = dy[:, None] + np.arange(h)
    cols = dx[:, None] + np.arange(w)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def _entropy(seed, iteration, rank):
    # Rank 0 keeps the entropy of single-process runs, so their snapshots resume exactly.
    return [int(seed), int(iteration)] + ([int(rank)] if rank else [])


def _iteration_seed(seed, iteration, rank=0):
    """A 32-bit seed for batch ``iteration`` of rank ``rank`` in a run seeded by ``seed``."""
    entropy = _entropy(seed, iteration, 0) + [1] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def augmentation_rng(seed, iteration, rank=0):
    """The generator of the augmentation of batch ``iteration`` on rank ``rank`` (the
    same on every resume, another one on every rank)."""
    return np.random.default_rng(_entropy(seed, iteration, rank))


class TimeBudgetExhausted(Exception):
    """Training stopped at its wall-clock budget; a snapshot lets a later run continue.

    Attributes: ``epoch_detail`` (epochs done, a float), ``epochs`` (the stage's total),
    ``snapshot`` (the path of the snapshot written, or None when no iteration ran),
    ``stage`` (``'baseline'`` or ``'branchynet'``).
    """

    def __init__(self, epoch_detail, epochs, snapshot, stage="baseline"):
        self.epoch_detail, self.epochs, self.snapshot = epoch_detail, epochs, snapshot
        self.stage = stage
        super().__init__(f"stopped at the time budget after epoch {epoch_detail:.2f} of "
                         f"{epochs}" + (f"; snapshot {snapshot}" if snapshot else
                                        "; no iteration ran"))


class _RecipeUpdater(training.updaters.StandardUpdater):
    """``StandardUpdater`` that sets the scheduled rate before each update and augments
    each batch on the host with a generator seeded by (seed, iteration, rank).

    Every rank of a data-parallel run draws its own augmentation and dropout masks (its
    own samples deserve their own noise): on a GPU CuPy's generator is seeded per
    iteration and rank; on the CPU rank 0 draws from NumPy's global generator (whose
    state travels in the snapshot), the other ranks from it seeded per iteration and
    rank (their state is in no snapshot).
    """

    def __init__(self, iterator, optimizer, device, recipe, stage_lr, epochs, n_train, seed,
                 rank=0):
        super().__init__(iterator, optimizer, device=device)
        self.recipe, self.stage_lr, self.epochs = recipe, stage_lr, epochs
        self.n_train, self.seed, self.rank = n_train, seed, rank
        self.rate_name = "alpha" if recipe.optimizer == "adam" else "lr"

    def update_core(self):
        iterator = self._iterators["main"]
        optimizer = self._optimizers["main"]
        progress = self.iteration * iterator.batch_size / self.n_train
        setattr(optimizer, self.rate_name,
                self.recipe.learning_rate(progress, self.epochs, self.stage_lr))
        if self.input_device.xp is not np or self.rank:
            # A generator no snapshot holds (CuPy's; NumPy's on ranks other than 0): seeded
            # from (seed, iteration, rank), so a resumed run draws the masks an
            # uninterrupted one does.
            self.input_device.xp.random.seed(_iteration_seed(self.seed, self.iteration,
                                                             self.rank))
        x, y = concat_examples(iterator.next())
        if self.recipe.augment == "crop-flip":
            x = crop_flip(x, augmentation_rng(self.seed, self.iteration, self.rank),
                          self.recipe.pad)
        optimizer.update(optimizer.target, self.input_device.send(x), self.input_device.send(y))
        if self.auto_new_epoch and iterator.is_new_epoch:
            optimizer.new_epoch(auto=True)


class _RandomStates(training.Extension):
    """Stores the shuffling generator's and NumPy's global random states in snapshots
    (Chainer's iterator keeps only the current order; CPU dropout draws from NumPy's
    global generator), so a resumed run shuffles and drops out as an uninterrupted one.
    Snapshots written before this extension existed load without them."""
    trigger = None
    name = "random_states"

    def __init__(self, order_rng):
        self.order_rng = order_rng

    def __call__(self, trainer):
        pass

    def serialize(self, serializer):
        for key, rng in (("order", self.order_rng), ("numpy", None)):
            state = (rng or np.random).get_state()
            if isinstance(serializer, chainer.serializer.Serializer):
                serializer(key + "_keys", state[1])
                serializer(key + "_rest", np.array([state[2], state[3], state[4]], np.float64))
                continue
            try:
                keys = serializer(key + "_keys", np.empty_like(state[1]))
                rest = serializer(key + "_rest", np.zeros(3, np.float64))
            except KeyError:
                continue  # an older snapshot: keep the fresh state
            (rng or np.random).set_state(("MT19937", keys, int(rest[0]), int(rest[1]),
                                          float(rest[2])))


class _StopTrigger(triggers.IntervalTrigger):
    """Stops after ``epochs`` epochs, or at the first iteration boundary past ``deadline``
    (a value of ``clock``, ``time.monotonic`` by default).

    With a communicator ``comm`` the budget is collective: before every iteration rank 0
    compares its own clock with its own ``deadline`` and broadcasts the decision (one
    small ``bcast_obj``), so every rank stops at the same iteration; the other ranks'
    ``deadline`` and ``clock`` are not read.
    """

    def __init__(self, epochs, deadline=None, clock=time.monotonic, comm=None):
        super().__init__(epochs, "epoch")
        self.deadline, self.clock, self.comm, self.budget_hit = deadline, clock, comm, False
        self.start_iteration = None  # after any snapshot was loaded

    def __call__(self, trainer):
        from branchynet import distributed
        if self.start_iteration is None:
            self.start_iteration = trainer.updater.iteration
        if super().__call__(trainer):  # the same iteration on every rank
            return True
        if self.comm is not None:
            self.budget_hit = distributed.agree(
                self.comm, self.comm.rank == 0 and self.clock() >= self.deadline)
        elif self.deadline is not None:
            self.budget_hit = self.clock() >= self.deadline
        return self.budget_hit


class CurveEvaluator(extensions.Evaluator):
    """Chainer's ``Evaluator`` over a test set, for learning curves.

    Runs in inference mode (``Evaluator`` sets ``train`` False: dropout off, BatchNorm
    normalises with its running averages and does not update them) over a non-shuffling,
    non-repeating iterator, so it draws no random numbers and changes nothing the training
    depends on. Means are weighted by batch size (exact over the whole set, a short last
    batch included), and ``test/seconds`` reports the evaluation's own time. It stores
    nothing in snapshots: a snapshot made without it loads with it, and vice versa.
    """
    default_name = "test"

    def __init__(self, x, y, target, device, batch_size=500):
        iterator = iterators.SerialIterator(TupleDataset(x, y), min(batch_size, len(x)),
                                            repeat=False, shuffle=False)
        super().__init__(iterator, target, device=device)

    def evaluate(self):
        start = time.perf_counter()
        iterator = self.get_iterator("main")
        iterator.reset()
        summary = chainer.DictSummary()
        for batch in iterator:
            observation = {}
            with chainer.reporter.report_scope(observation):
                x, t = concat_examples(batch, self.device)
                with chainer.no_backprop_mode():
                    self.get_target("main")(x, t)
            summary.add({key: (value, len(batch)) for key, value in observation.items()})
        result = summary.compute_mean()
        result[f"{self.name or self.default_name}/seconds"] = time.perf_counter() - start
        return result


def evaluation_trigger(every, epochs):
    """After every ``every``-th epoch and after the stage's last one (a stateless
    trigger: nothing of it goes into snapshots)."""
    def trigger(trainer):
        updater = trainer.updater
        return updater.is_new_epoch and (updater.epoch % every == 0 or updater.epoch >= epochs)
    return trigger


SNAPSHOT = "snapshot_epoch_{.updater.epoch}"


def make_optimizer(recipe, lr=None):
    """The Chainer optimizer of ``recipe`` at rate ``lr`` (default ``recipe.lr``)."""
    lr = recipe.lr if lr is None else lr
    if recipe.optimizer == "adam":
        return optimizers.Adam(alpha=lr)
    return optimizers.MomentumSGD(lr=lr, momentum=recipe.momentum)


def train(net, x, y, epochs, batch_size, out, device, seed=0, weights=None, lr=None,
          progress=True, log_name="log", recipe=None, stage="baseline", time_budget_s=None,
          deadline=None, clock=time.monotonic, comm=None, test=None, eval_every=1):
    """Train ``net`` on ``(x, y)`` for ``epochs`` epochs; resume from ``out``.

    Args:
        net: a ``BranchyNet`` (a ``main_only`` one trains the baseline).
        x, y: float32 inputs and int32 labels (host arrays).
        epochs, batch_size: as in the paper's scripts (e.g. 50 epochs of batch 512).
        out: folder for snapshots and the log; a finished or interrupted run there is
            picked up where it stopped.
        device: a Chainer device (``chainer.get_device('@numpy')``).
        seed: seeds the order of the minibatches and the augmentation.
        weights: per-exit loss weights (default 1 for every exit).
        lr: initial rate of this stage (default: the recipe's for ``stage``).
        recipe: a ``Recipe`` (default ``PAPER_RECIPE``: Adam, as the authors' code).
        stage: ``'baseline'`` or ``'branchynet'`` (the joint stage uses
            ``recipe.joint_lr_factor``).
        time_budget_s, deadline: stop at ``clock() + time_budget_s`` or at ``deadline``
            (a ``clock()`` value), whichever is first, after the iteration running then,
            with a snapshot; then ``TimeBudgetExhausted`` is raised. With ``comm``, rank 0's
            budget and clock decide for every rank.
        comm: a ChainerMN communicator for data-parallel training (``branchynet.distributed``):
            rank 0's ``(x, y)`` is scattered (other ranks may pass None), ``batch_size`` is
            per rank, gradients are averaged over ranks, only rank 0 writes to ``out``.
        test: ``(x_test, y_test)`` to evaluate every exit on after every ``eval_every``
            epochs and after the last (``CurveEvaluator``; rank 0 only), for learning
            curves; None for none.

    Returns the Chainer log (a list of per-epoch dicts; empty on ranks other than 0).
    """
    from branchynet import distributed
    root = distributed.is_root(comm)
    if root and len(x) < batch_size:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({len(x)})")
    distributed.on_root(comm, lambda: distributed.check_resume(out, comm),
                        (distributed.DistributedError,))
    recipe = PAPER_RECIPE if recipe is None else recipe
    stage_lr = recipe.stage_lr(stage) if lr is None else lr
    if time_budget_s is not None:
        ends = clock() + time_budget_s
        deadline = ends if deadline is None else min(deadline, ends)
    dataset = TupleDataset(x, y) if root else None
    if comm is not None:
        dataset = distributed.scatter(dataset, comm, seed)
        if len(dataset) < batch_size:
            raise ValueError(f"batch size {batch_size} per rank is larger than a rank's share "
                             f"of the training set ({len(dataset)} of {len(dataset) * comm.size})")
        net.predict_all_exits(dataset[0][0][None])  # sizes lazy layers before the broadcast
    model = JointLoss(net, weights)
    model.to_device(device)
    optimizer = make_optimizer(recipe, stage_lr)
    if comm is not None:
        optimizer = distributed.multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)
    if recipe.weight_decay:
        optimizer.add_hook(optimizer_hooks.WeightDecay(recipe.weight_decay))
    order_rng = np.random.RandomState(seed)
    order = chainer.iterators.ShuffleOrderSampler(order_rng)
    iterator = iterators.SerialIterator(dataset, batch_size, order_sampler=order)
    updater = _RecipeUpdater(iterator, optimizer, device, recipe, stage_lr, epochs,
                             len(dataset), seed, rank=0 if comm is None else comm.rank)
    # Whether rank 0 has a budget, known to every rank: then all take part in its decisions.
    collective = comm is not None and distributed.agree(comm, deadline is not None)
    stop = _StopTrigger(epochs, deadline, clock, comm if collective else None)
    trainer = training.Trainer(updater, stop, out=out)
    trainer.extend(_RandomStates(order_rng))
    keys = ["epoch", "main/loss"] + [f"main/accuracy/{name}" for name in net._exit_names]
    evaluated = root and test is not None
    if evaluated:
        trainer.extend(CurveEvaluator(test[0], test[1], model, device),
                       trigger=evaluation_trigger(eval_every, epochs))
    if comm is not None:
        for extension in distributed.aggregators(comm, keys[1:] + [
                f"main/loss/{name}" for name in net._exit_names]):
            trainer.extend(extension)
    if root:
        trainer.extend(extensions.snapshot(filename=SNAPSHOT, n_retains=1),
                       trigger=(1, "epoch"))
        trainer.extend(extensions.LogReport(log_name=log_name))
        if recipe != PAPER_RECIPE:
            trainer.extend(extensions.observe_value(
                "lr", lambda t: getattr(t.updater.get_optimizer("main"), updater.rate_name)),
                trigger=(1, "epoch"))
        test_keys = [f"test/main/accuracy/{name}" for name in net._exit_names] if evaluated else []
        trainer.extend(extensions.PrintReport(keys + test_keys + ["elapsed_time"]))
        if progress:
            steps = len(dataset) // batch_size
            trainer.extend(extensions.ProgressBar(update_interval=max(1, steps // 20)))
    distributed.load_latest_snapshot(trainer, out, comm)
    if comm is not None:
        if root:
            distributed.write_record(out, comm, batch_size)
        optimizer.update()  # no step: broadcasts rank 0's parameters to every rank
    trainer.run()
    if stop.budget_hit:
        path = None  # no iteration ran: the state is the one loaded, or the initial one
        if root and updater.iteration > stop.start_iteration:
            path = os.path.join(out, SNAPSHOT.format(trainer) + f"_iter_{updater.iteration}")
            with atomic_path(path) as tmp:
                serializers.save_npz(tmp, trainer)
        raise TimeBudgetExhausted(updater.epoch_detail, epochs, path, stage)
    return trainer.get_extension("LogReport").log if root else []


def train_or_load(net, path, x, y, epochs, batch_size, device, log=print, comm=None,
                  **train_options):
    """Load ``net`` from the npz file ``path`` if it exists, else train and save it there.

    Training resumes from the snapshots in the folder ``path`` without ``.npz`` (e.g.
    ``results/baseline/`` for ``results/baseline.npz``); ``train_options`` go to ``train``
    (``seed``, ``weights``, ``lr``, ``recipe``, ``stage``, ``time_budget_s``,
    ``deadline``, ``progress``, ``test``, ``eval_every``). Returns ``net``, on the CPU after training. When the time
    budget stops training, nothing is saved at ``path`` and ``TimeBudgetExhausted``
    propagates (the snapshot in the folder continues the training next time). With a
    communicator ``comm`` every rank trains (``batch_size`` per rank); rank 0 alone reads
    and writes ``path``, and the other ranks follow its decision.
    """
    from branchynet import distributed
    if distributed.agree(comm, os.path.exists(path)):
        log(f"[{_stem(path)}] reusing {path}")
        return load_weights(path, net) if distributed.is_root(comm) else net
    recipe = train_options.get("recipe")
    described = "" if recipe in (None, PAPER_RECIPE) else f", recipe {recipe}"
    ranks = "" if comm is None else (f" per rank x {comm.size} ranks = global batch "
                                     f"{batch_size * comm.size}")
    log(f"[{_stem(path)}] training {epochs} epoch(s), batch {batch_size}{ranks}, on "
        f"{device}{described}")
    folder = os.path.splitext(path)[0]
    latest = distributed.snapshots(folder)[-1:] if distributed.is_root(comm) else []
    if latest:
        log(f"[{_stem(path)}] continuing from {os.path.join(folder, latest[0])}")
    start = time.perf_counter()
    train(net, x, y, epochs, batch_size, folder, device, comm=comm, **train_options)
    net.to_device("@numpy")
    if distributed.is_root(comm):
        save_weights(path, net)
    log(f"[{_stem(path)}] done in {time.perf_counter() - start:.1f} s")
    return net


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def save_weights(path, net):
    """Save ``net``'s parameters (and BatchNorm statistics) as npz, atomically."""
    with atomic_path(path) as tmp:
        serializers.save_npz(tmp, net)


def load_weights(path, net):
    """Load npz weights into ``net``; a file for another network gets a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        serializers.load_npz(path, net)
    except (KeyError, ValueError) as err:
        with np.load(path) as data:
            stored = sorted(data.files)
        expected = sorted(name.lstrip("/") for name, _ in net.namedparams())
        missing = [k for k in expected if k not in stored]
        raise ValueError(
            f"{path} does not match this network: {err}. Parameters missing from the file: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}. Was it saved from another "
            f"network, or from the baseline instead of the B-net (or vice versa)?") from None
    return net


def recalibrate_batchnorm(net, x, batch_size=256):
    """Set BatchNorm running statistics to those of one training batch ("precise BN").

    After a few training iterations the running averages (decay 0.9) are still far from
    the batch statistics, and in inference mode the activations of a deep ResNet then grow
    without bound, which distorts timing (huge values, slow float paths). Only the
    running statistics change; returns whether the network has BatchNorm at all.
    """
    layers = [link for link in net.links() if isinstance(link, chainer.links.BatchNormalization)]
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
