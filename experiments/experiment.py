"""One BranchyNet experiment as named stages over one object.

    data -> train -> exit outputs -> sweep -> measure (per device) -> report

``Experiment(settings)`` holds the run's settings (the namespace ``experiments.run``
parses, or one rebuilt from a results folder by ``Experiment.from_results``) and its
state; each stage reads what the ones before it left and writes its files atomically into
the results folder. Caches (weights, exit outputs, timings) are reused only when the key
they carry (hashes of the weights and inputs, the machine and BLAS settings) matches.

Everything after ``measure`` is derived from two kinds of files alone: the exit outputs
(``exit_outputs*.npz``: every exit's logits, from which scores and predictions derive) and
the timing record (``timing_<device>.json``). ``derive``
rebuilds the sweep, frontier, knee, choices on validation and Table I rows from them, so
``recompute`` re-derives a committed folder without training or timing.
"""
import dataclasses
import glob
import json
import os
import shutil
import tempfile
import time

import numpy as np

from branchynet import distributed
from branchynet.datasets import (DatasetError, info_differences, load_dataset, recorded_data_dir,
                                 split_validation)
from branchynet.flops import exit_path_costs, expected_macs
from branchynet.frontier import inc_points, knee, pareto_points, spread_over_runtime
from branchynet.io import atomic_path, read_json, write_json
from branchynet.net import BranchyNet
from branchynet.paper import PAPER_T, paper_rows, paper_thresholds
from branchynet.provenance import (array_sha256, canonical_key, differences, exit_outputs_key,
                                   file_sha256, machine_key)
from branchynet.report import device_label, machine_info, plot_tradeoff, write_csv
from branchynet.selection import AccuracyFloor, InfeasibleBudget, LatencyBudget, choose
from branchynet.threads import thread_count, training_step, training_threads
from branchynet.sweep import (ExitOutputs, collect_exit_outputs, evaluate_grid, exit_indices,
                              predict_runtime, threshold_grid)
from branchynet.timing import (Interleaved, check_point, check_trunks, interval_coverage,
                               measure_latency, path_name, path_summary, rounds_vs_blocks)
from branchynet.training import PAPER_RECIPE, Recipe, load_weights, train_or_load
from experiments import folder_checks
from experiments.compare import first_difference
from experiments.errors import SettingsError
from networks import get_network
from experiments import guarantee


# Settings that determine the trained weights: a results folder holds one such setting.
# batch_size is per process; ranks is the number of data-parallel processes (1 without MPI).
# ("recipe": optimizer, momentum, weight decay, schedule, warm-up, augmentation, joint-stage
# rate factor: everything of branchynet.training.Recipe but lr, which is its own key.)
TRAINING_KEYS = ("network", "dataset", "dataset_options", "train_limit", "val_size", "seed",
                 "batch_size", "baseline_epochs", "branchy_epochs", "lr", "loss_weights",
                 "ranks", "recipe", "baseline_from")
# Values of training keys that folders written before the key existed implicitly had.
TRAINING_DEFAULTS = {"val_size": 0, "ranks": 1, "baseline_from": None,
                     "recipe": {k: v for k, v in PAPER_RECIPE.to_dict().items() if k != "lr"}}
# What was read and built, compared when the folder recorded it (older folders did not).
RECORD_KEYS = ("data_record", "network_structure")
# Settings of the threshold choice, recorded with each timing so ``derive`` needs no more.
SELECTION_KEYS = ("criterion", "grid", "inc_amt", "search", "latency_budget_ms",
                  "latency_budget_fraction", "accuracy_floor", "accuracy_drop")
# Relative distance to a threshold within which a score may fall on either side of it,
# depending on the batch size the logits were computed at (float32 rounding).
BORDERLINE = 1e-5


class Experiment:
    """One run: settings, data, networks, results folder; stages called in order by ``run``.

    Args:
        settings: a namespace with the runner's options (see ``experiments.run``).
        log: where progress lines go.

    Example::

        exp = Experiment(experiments.run.parse_args(["--network", "lenet_mnist"]))
        exp.run()                      # or the stages one by one, as run() does
    """

    def __init__(self, settings, log=print):
        self.s, self.log = settings, log
        # A ChainerMN communicator (mpiexec ... --communicator NAME), else None.
        self.comm = getattr(settings, "comm", None)
        self.spec = get_network(settings.network)
        if getattr(settings, "name", None):  # --name: the network's name in tables and plots
            self.spec = dataclasses.replace(self.spec, title=settings.name)
        self.out = settings.out
        self.suffix = "" if settings.criterion == "entropy" else f"_{settings.criterion}"
        self.data = self.config = self.baseline = self.branchy = None
        self.outputs = self.baseline_outputs = self.val_outputs = self.val_baseline = None
        self.sweep = self.costs = None

    def path(self, name):
        return os.path.join(self.out, name)

    # -- 1. data ---------------------------------------------------------------------------

    def dataset_options(self):
        options = dict(self.spec.dataset_options)
        if getattr(self.s, "preprocess", None):
            options["preprocess"] = self.s.preprocess
        return options

    def load_data(self):
        """Read the dataset, apply the limits and carve the validation split."""
        s = self.s
        options = self.dataset_options()
        data = load_dataset(s.dataset, s.data_dir, seed=s.seed, **options)
        if s.train_limit:
            data.train_x, data.train_y = data.train_x[:s.train_limit], data.train_y[:s.train_limit]
        if s.test_limit:
            data.test_x, data.test_y = data.test_x[:s.test_limit], data.test_y[:s.test_limit]
        if s.val_size:
            # Carved after --train-limit: val_index are positions in the original training set.
            try:
                data = split_validation(data, s.val_size, s.seed)
            except ValueError as err:
                raise SettingsError(f"--val-size: {err}") from None
        self.log(data.summary())
        self.data = data
        self.check_against_data()
        self.config = self._config(options)
        return data

    def check_against_data(self):
        """Refuse settings this data cannot serve, before any training."""
        s, d = self.s, self.data
        ranks = 1 if self.comm is None else self.comm.size
        if s.batch_size * ranks > len(d.train_y):
            per_rank = "" if ranks == 1 else f" per rank x {ranks} ranks"
            raise SettingsError(f"--batch-size {s.batch_size}{per_rank} is larger than the "
                                f"training set ({len(d.train_y)} samples): use a batch of at "
                                f"most {len(d.train_y) // ranks}, or more training data")
        if s.timing_samples is None:  # the default: 1000, or every test sample if fewer
            s.timing_samples = min(1000, len(d.test_y))
        if s.timing_samples > len(d.test_y):
            raise SettingsError(f"--timing-samples {s.timing_samples} is more than the "
                                f"{len(d.test_y)} test samples: use at most {len(d.test_y)}, "
                                f"or 0 for all of them")
        shape = tuple(d.test_x.shape[1:])
        probe = BranchyNet(self.spec.build())
        try:
            outputs = probe.predict_all_exits(d.test_x[:1])  # also sizes the lazy layers
        except Exception as err:
            raise SettingsError(f"{self.spec.name} cannot run on {s.dataset} inputs of shape "
                                f"{shape}: {type(err).__name__}: {err}") from None
        labels = int(max(d.train_y.max(), d.test_y.max())) + 1
        if any(o.shape[1] < labels for o in outputs):
            raise SettingsError(f"{self.spec.name}'s exits give {[o.shape[1] for o in outputs]} "
                                f"classes, but {s.dataset} has labels up to {labels - 1}")
        # Parameter names and shapes of the B-net, recorded in config.json.
        self.structure = {name: list(p.shape) for name, p in sorted(probe.namedparams())}

    def _config(self, options):
        s, data = self.s, self.data
        config = {"network": self.spec.name, "title": self.spec.title,
                  "dataset": s.dataset, "data_name": data.name,
                  "dataset_options": options,
                  "dataset_info": {k: v for k, v in data.info.items() if k != "files"},
                  "data_record": data.info,
                  "network_structure": self.structure,
                  "train_limit": s.train_limit, "test_limit": s.test_limit,
                  "samples": {"train": len(data.train_y), "test": len(data.test_y),
                              "val": 0 if data.val_y is None else len(data.val_y)},
                  "input_shape": list(data.test_x.shape[1:]),
                  "val_size": s.val_size, "seed": s.seed,
                  "batch_size": s.batch_size, "ranks": 1 if self.comm is None else self.comm.size,
                  "global_batch_size": s.batch_size * (1 if self.comm is None else self.comm.size),
                  "distributed": distributed.record(self.comm, s.batch_size),
                  "baseline_epochs": s.baseline_epochs,
                  "branchy_epochs": s.branchy_epochs, "lr": s.lr,
                  "recipe": {k: v for k, v in self.recipe().to_dict().items() if k != "lr"},
                  "recipe_preset": getattr(s, "recipe", None) or "paper",
                  # --baseline-from: the sha256 of the weights the baseline started from
                  "baseline_from": (getattr(s, "baseline_from_record", None) or {}).get("sha256"),
                  "baseline_from_record": getattr(s, "baseline_from_record", None),
                  "loss_weights": s.loss_weights, "paper_preset": s.paper,
                  "criterion": s.criterion, "grid": list(s.grid), "inc_amt": s.inc_amt,
                  "timing_samples": s.timing_samples, "timing_rounds": s.timing_rounds,
                  "devices": [str(d) for d in s.devices],
                  "learning_curve": self._curve_record()}
        if data.val_y is not None:
            config["validation"] = {
                "samples": len(data.val_y), "seed": s.seed,
                **({"index_file": "val_index.npy",
                    "index_sha256": array_sha256(data.val_index.astype("<i8")),
                    "carved_from": f"{len(data.train_y) + len(data.val_index)} training samples"
                                   + (" (after --train-limit)" if s.train_limit else "")}
                   if data.val_index is not None else {"carved_from": "the dataset's own split"}),
                "search": s.search,
                "budgets": {"latency_budget_ms": s.latency_budget_ms,
                            "latency_budget_fraction": s.latency_budget_fraction,
                            "accuracy_floor_percent": s.accuracy_floor,
                            "accuracy_drop_pp": s.accuracy_drop}}
        return config

    def _curve_record(self):
        """What config.json says of the learning-curve evaluation (not a training key: it
        does not change the training)."""
        test = self.curve_test_set()
        return {"eval_every": getattr(self.s, "eval_every", 0),
                "test_samples": 0 if test is None else len(test[1])}

    def check_folder(self):
        """Refuse to mix settings: a results folder holds the run of one training setting."""
        os.makedirs(self.out, exist_ok=True)
        path = self.path("config.json")
        if os.path.exists(path):
            old = read_json(path)
            self.config.setdefault("blas", old.get("blas"))  # the BLAS threads chosen before
            changed = [k for k in TRAINING_KEYS
                       if old.get(k, TRAINING_DEFAULTS.get(k)) != self.config.get(k)]
            if changed == ["ranks"] and self.trained():
                # How many processes trained it is no setting of what follows, which trains
                # nothing: e.g. a 2-rank CPU training timed on a GPU by one process.
                self.log(f"note: {self.out} was trained by {old['ranks']} processes and its "
                         f"training is complete; this run trains nothing (its record stays)")
                for key in ("ranks", "global_batch_size", "distributed"):
                    self.config[key] = old.get(key)
                changed = []
            if changed:
                raise SettingsError(
                    f"{self.out} holds a run with other settings ({', '.join(changed)}: "
                    f"{[old.get(k, TRAINING_DEFAULTS.get(k)) for k in changed]} there, "
                    f"{[self.config.get(k) for k in changed]} now). "
                    f"Use another --out, or delete {self.out} to start over.")
            for key in RECORD_KEYS:
                new = json.loads(json.dumps(self.config[key]))
                what = (info_differences(old[key], new) if key == "data_record"
                        else differences(old[key], new)) if key in old else []
                if what:
                    kind = "data" if key == "data_record" else "network parameters"
                    raise SettingsError(
                        f"{self.out} holds a run on other {kind} under the same names: "
                        f"{'; '.join(what[:6])}{' ...' if len(what) > 6 else ''}. Use another "
                        f"--out, or delete {self.out} to start over.")
        write_json(path, self.config)
        if self.data.val_index is not None:
            with atomic_path(self.path("val_index.npy")) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, self.data.val_index)

    def trained(self):
        """Whether both networks' final weights are in the folder (nothing left to train)."""
        return all(os.path.exists(self.path(n)) for n in ("baseline.npz", "branchynet.npz"))

    def set_blas_threads(self, device):
        """BLAS threads for training and batched work (``--blas-threads``; 'auto': the
        faster of 1 thread and every core for one training step of the B-net on the first
        batch, or the folder's earlier choice); returns the record kept in config.json."""
        def make_step():
            net = BranchyNet(self.spec.build())
            net.to_device(device)
            n = self.s.batch_size
            return training_step(net, self.data.train_x[:n], self.data.train_y[:n],
                                 self.s.loss_weights)
        cpu_alone = self.comm is None and device.xp is np
        return training_threads(
            getattr(self.s, "blas_threads", "auto"), make_step if cpu_alone else None,
            "one process per device (--communicator)" if self.comm is not None
            else "training on a GPU", (self.config or {}).get("blas"), self.log)

    # -- 2. training -----------------------------------------------------------------------

    def build_networks(self):
        np.random.seed(self.s.seed)  # Chainer's initialisers draw from NumPy's global generator
        self.baseline = BranchyNet(self.spec.build(), main_only=True)
        self.branchy = BranchyNet(self.spec.build())

    def train(self, device):
        """Train the baseline, then the B-net from it (each skipped when its npz exists);
        whenever training stops (finished, budget, error), rank 0 redraws the learning curve."""
        try:
            self.build_networks()
            start = getattr(self.s, "baseline_from_record", None)
            if start and not os.path.exists(self.path("baseline.npz")):
                # A snapshot in the folder, when there is one, replaces these weights.
                load_weights(start["file"], self.baseline)
            self._train_one("baseline", self.baseline, device)
            if not distributed.agree(self.comm, os.path.exists(self.path("branchynet.npz"))):
                self.branchy.init_from_baseline(self.baseline)
            self._train_one("branchynet", self.branchy, device)
        finally:
            if distributed.is_root(self.comm):
                self.draw_learning_curve()

    def draw_learning_curve(self):
        """``learning_curve.png`` from the training logs (``experiments.learning_curve``);
        a failure to draw is reported, never raised over the training's own outcome."""
        from experiments.learning_curve import plot_learning_curve
        try:
            path = plot_learning_curve(self.out)
        except Exception as err:  # e.g. a log being written by another process
            self.log(f"warning: no learning curve drawn: {type(err).__name__}: {err}")
            return
        if path:
            self.log(f"learning curve: {path}")

    def curve_test_set(self):
        """The test samples evaluated after every ``--eval-every`` epochs (the first
        ``--eval-limit``), or None (no evaluation, or a rank without the data)."""
        every = getattr(self.s, "eval_every", 0)
        if not every or self.data is None:
            return None
        limit = getattr(self.s, "eval_limit", 0) or len(self.data.test_y)
        return self.data.test_x[:limit], self.data.test_y[:limit]

    def recipe(self):
        """The training recipe: the runner's (``recipe_obj``), else the paper's at ``lr``."""
        return getattr(self.s, "recipe_obj", None) or Recipe(lr=self.s.lr)

    def _train_one(self, name, net, device):
        """Train one stage; ``TimeBudgetExhausted`` propagates when the settings' deadline
        (``deadline``, a ``clock`` value) stops it, leaving a snapshot to continue from."""
        s = self.s
        epochs = s.baseline_epochs if name == "baseline" else s.branchy_epochs
        # With MPI only rank 0 holds the data; train() scatters it to the other ranks.
        x, y = (None, None) if self.data is None else (self.data.train_x, self.data.train_y)
        train_or_load(net, self.path(f"{name}.npz"), x, y,
                      epochs, s.batch_size, device, log=self.log, seed=s.seed,
                      weights=s.loss_weights if name == "branchynet" else None,
                      recipe=self.recipe(), stage=name,
                      deadline=getattr(s, "deadline", None),
                      clock=getattr(s, "clock", time.monotonic),
                      progress=not s.no_progress, comm=self.comm,
                      test=self.curve_test_set(), eval_every=getattr(s, "eval_every", 0) or 1)

    def weights_key(self):
        return {name: file_sha256(self.path(f"{name}.npz")) for name in ("baseline", "branchynet")}

    # -- 3. exit outputs -------------------------------------------------------------------

    def exit_outputs(self, device):
        """Every exit's logits (scores and predictions derive from them) on the test (and
        validation) samples, and the baseline's, each cached in the folder with the key of
        its weights and inputs."""
        self.outputs = self._cached("branchynet", "test", device)
        self.baseline_outputs = self._cached("baseline", "test", device)
        if self.data.val_x is not None:
            self.val_outputs = self._cached("branchynet", "val", device)
            self.val_baseline = self._cached("baseline", "val", device)
        self._log_accuracies()

    def _cached(self, weights, split, device):
        """Exit outputs of the ``weights`` ('baseline' or 'branchynet') network on the
        ``split`` ('test' or 'val') samples, from the folder when their key matches."""
        net = self.baseline if weights == "baseline" else self.branchy
        criterion = "entropy" if weights == "baseline" else self.s.criterion
        x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        name = "exit_outputs" + ("_val" if split == "val" else "") + (
            "_baseline" if weights == "baseline" else self.suffix) + ".npz"
        key = exit_outputs_key(self.path(f"{weights}.npz"), x, y, criterion)
        path = self.path(name)
        cached = ExitOutputs.cached(path, key)
        if cached is not None:
            if cached.logits is None and weights == "branchynet" and getattr(
                    self.s, "calibrate", False):
                return self._add_logits(cached, path, x, device)
            return cached
        if os.path.exists(path):
            self.log(f"[{name}] made with other weights or inputs: computing it again")
        self.log(f"[{name}] running {len(y)} samples through every exit")
        net.to_device(device)
        outputs = collect_exit_outputs(net, x, y, device=device, criterion=criterion,
                                       progress=not self.s.no_progress)
        outputs.key = key
        outputs.save(path)
        return outputs

    def _add_logits(self, outputs, path, x, device):
        """B-net exit outputs read from a file without logits (written before December
        2026), with the logits its weights give on ``x`` now, saved beside its scores;
        those stay as stored."""
        self.branchy.to_device(device)
        fresh = collect_exit_outputs(self.branchy, x, outputs.labels, device=device,
                                     progress=not self.s.no_progress)
        try:
            outputs = outputs.with_logits(fresh.logits)
        except ValueError as err:
            raise SettingsError(f"{path}: {err}") from None
        outputs.save(path)
        self.log(f"{path}: every exit's logits on {len(outputs)} samples added (for "
                 f"--calibrate); its scores and predictions kept as they were")
        return outputs

    def add_missing_logits(self):
        """``--from-results --calibrate`` on a folder whose B-net exit outputs hold no logits:
        compute them from its weights on the CPU (inference only; needs the data), checking
        the inputs are those the outputs were made from."""
        import chainer
        missing = [(split, outputs) for split, outputs in (("test", self.outputs),
                                                           ("val", self.val_outputs))
                   if outputs is not None and outputs.logits is None]
        if not missing:
            return
        config, self.s.timing_samples = self.config, 0
        self.load_data()
        self.config = config  # as committed: the derived files are compared with it
        self.build_networks()
        load_weights(self.path("branchynet.npz"), self.branchy)
        for split, outputs in missing:
            x = getattr(self.data, f"{split}_x")
            made_from = json.loads(outputs.key)["inputs"] if outputs.key else None
            if made_from and made_from != array_sha256(x):
                raise SettingsError(f"the {split} inputs read now are not those of the "
                                    f"committed exit outputs (another data folder or "
                                    f"version?): logits not computed")
            name = "exit_outputs" + ("_val" if split == "val" else "") + self.suffix + ".npz"
            setattr(self, "outputs" if split == "test" else "val_outputs",
                    self._add_logits(outputs, self.path(name), x, chainer.get_device("@numpy")))

    def load_cached_outputs(self):
        """The folder's exit outputs as they are (``recompute``: no data, no networks)."""
        def load(name):
            path = self.path(name)
            if not os.path.exists(path):
                raise SettingsError(f"{path} is missing; a results folder needs its exit "
                                    f"outputs to be re-derived (run experiments.run there first)")
            return ExitOutputs.load(path)
        self.outputs = load(f"exit_outputs{self.suffix}.npz")
        self.baseline_outputs = load("exit_outputs_baseline.npz")
        if os.path.exists(self.path(f"exit_outputs_val{self.suffix}.npz")):
            self.val_outputs = load(f"exit_outputs_val{self.suffix}.npz")
            self.val_baseline = load("exit_outputs_val_baseline.npz")

    def _log_accuracies(self):
        def line(name, outputs, baseline):
            return (f"accuracy on {len(outputs)} {name} samples: baseline "
                    f"{100 * baseline.exit_accuracies()[0]:.2f}%, exits if taken alone "
                    f"{', '.join(f'{100 * a:.2f}%' for a in outputs.exit_accuracies())}")
        self.log(line("test", self.outputs, self.baseline_outputs))
        if self.val_outputs is not None:
            self.log(line("validation", self.val_outputs, self.val_baseline))

    # -- 4. sweep --------------------------------------------------------------------------

    def evaluate(self):
        """The exact sweep of the grid on the test outputs, and the cost of each exit path."""
        self.sweep = evaluate_grid(self.outputs, threshold_grid(self.s.grid, self.outputs.n_exits))
        shape = tuple(self.config["input_shape"])
        branchy = self.branchy or BranchyNet(self.spec.build())
        baseline = self.baseline or BranchyNet(self.spec.build(), main_only=True)
        costs = exit_path_costs(branchy, shape)
        base = exit_path_costs(baseline, shape)
        costs.update(baseline_macs=base["path_macs"][0], baseline_params=base["params"][0])
        self.costs = costs

    # -- 5. measure ------------------------------------------------------------------------

    def tag(self, device):
        label = device_label(device)
        return label if self.s.criterion == "entropy" else f"{label}-{self.s.criterion}"

    def measure(self, device):
        """Time on ``device`` what the report needs; returns the timing record.

        First a profile of the baseline and every exit path (on validation inputs when
        there is a split: choosing T then reads no test data), from which the frontier,
        the knee and the choices on validation follow; then one interleaved measurement,
        on the test samples, of the baseline, every exit path and every chosen point.
        Both are reused from ``timing_<tag>.json`` when their keys match.
        """
        s, d = self.s, self.data
        tag = self.tag(device)
        count = s.timing_samples or len(d.test_y)
        timed_x = d.test_x[:count]
        validation = d.val_x is not None
        path_x = d.val_x[:count] if validation else timed_x
        path = self.path(f"timing_{tag}.json")
        old = read_json(path) if os.path.exists(path) and not getattr(s, "remeasure", False) else {}
        settings = {k: getattr(s, k) for k in SELECTION_KEYS}
        settings["grid"] = list(settings["grid"])
        base_key = {"weights": self.weights_key(), "machine": machine_key(device),
                    "criterion": s.criterion, "rounds": s.timing_rounds, "block": TIMING_BLOCK}
        self.branchy.to_device(device)
        self.baseline.to_device(device)
        show = not s.no_progress

        profile_key = {**base_key, "inputs": array_sha256(path_x), "samples": len(path_x)}
        if canonical_key(old.get("profile_key")) == profile_key:
            profile_key = old["profile_key"]  # kept as written
            profile = Interleaved.from_json(old["profile"])
        else:
            if old:
                self.log(f"[{tag}] timings in {path} were made with "
                         f"{', '.join(differences(old.get('profile_key', {}), profile_key)) or 'an older format'} "
                         f"different: measuring again")
            self.log(f"[{tag}] exit-path profile: {len(path_x)} "
                     f"{'validation' if validation else 'test'} samples at batch size 1, "
                     f"{s.timing_rounds} interleaved rounds, on {device}")
            profile, _ = measure_latency(self.branchy, self.baseline, path_x, device,
                                         rounds=s.timing_rounds, block=TIMING_BLOCK,
                                         criterion=s.criterion, progress=show)
            old = {}
        record = {"settings": settings, "profile_key": profile_key,
                  "profile_inputs": "validation" if validation else "test",
                  "profile": profile.to_json()}
        points = self._points(record)

        measurement_key = {**base_key, "inputs": array_sha256(timed_x), "samples": len(timed_x),
                           "points": sorted(points)}
        old_key = dict(canonical_key(old.get("measurement_key")) or {})
        if old_key.pop("points", None) is not None and set(points) <= set(
                old.get("points", {})) and old_key == {k: v for k, v in measurement_key.items()
                                                         if k != "points"}:
            # Timed before with these points and maybe more (e.g. --time-all-points): kept.
            record.update({k: old[k] for k in ("measurement", "points")})
            measurement_key = old["measurement_key"]
        else:
            self.log(f"[{tag}] measuring the baseline, {self.branchy.n_exits} exit paths and "
                     f"{len(points)} threshold vector(s) on {len(timed_x)} test samples at batch "
                     f"size 1, {s.timing_rounds} interleaved rounds, on {device}: "
                     + self.estimate(record, points, len(timed_x)))
            timings, variants = measure_latency(
                self.branchy, self.baseline, timed_x, device, points=points,
                rounds=s.timing_rounds, block=TIMING_BLOCK, criterion=s.criterion,
                progress=show)
            outputs = self.outputs.take(slice(0, count))
            record["measurement"] = timings.to_json()
            record["points"] = {name: self._point_record(thresholds, variants[name], outputs)
                                for name, thresholds in points.items()}
        record["measurement_key"] = measurement_key
        record["measured_on"] = {"inputs": "test", "samples": len(timed_x)}
        record["machine"] = machine_info(device)
        write_json(path, record)
        return record

    def _points(self, record):
        """Name -> thresholds of every point to measure: the knee, the choices on
        validation, and the non-dominated frontier points spread over predicted runtime,
        at most ``--timed-points`` of them (``--time-all-points``: the whole frontier)."""
        selection = self.select(record)
        chosen = [self.sweep.thresholds[i] for i in self.timed_indices(selection)]
        chosen += [c.thresholds for _, c in selection["validation"]
                   if not isinstance(c, InfeasibleBudget)]
        if self.paper_point() is not None:
            chosen.append(self.paper_point())
        return {point_name(t): [float(v) for v in t] for t in chosen}

    def paper_point(self):
        """Table I's thresholds, for the paper's own networks with the entropy criterion
        (timed and tabulated beside the knee: "paper's T"), else None."""
        thresholds = paper_thresholds(self.spec.name)
        if self.s.criterion != "entropy" or thresholds is None:
            return None
        return thresholds if len(thresholds) == self.outputs.n_exits - 1 else None

    def timed_indices(self, selection):
        """Grid indices of the frontier points to time (the knee always among them)."""
        frontier, k = selection["frontier"], int(selection["knee"])
        if getattr(self.s, "time_all_points", False):
            return [int(i) for i in frontier]
        cap = getattr(self.s, "timed_points", None) or TIMED_POINTS
        pareto = pareto_points(self.sweep.accuracy, selection["predicted"], among=frontier)
        thinned = spread_over_runtime(pareto, selection["predicted"], cap, keep=[k])
        return sorted(set(int(i) for i in thinned) | {k})

    def estimate(self, record, points, samples):
        """How long the measurement will take, from the profile's per-sample path times:
        every variant's predicted ms x samples x rounds (and one warm-up call per block)."""
        paths = path_summary(Interleaved.from_json(record["profile"]), self.outputs.n_exits)
        fractions = evaluate_grid(self.outputs, list(points.values())).exit_fractions
        per_sample = (paths["baseline_ms"] + paths["baseline_trunk_ms"] + sum(paths["path_ms"])
                      + sum(paths["trunk_ms"])
                      + float(predict_runtime(fractions, paths["path_ms"]).sum()))
        seconds = per_sample * samples * self.s.timing_rounds * (1 + 1 / TIMING_BLOCK) / 1e3
        return (f"about {_duration(seconds)} ({per_sample:.2f} ms per sample for all "
                f"{2 + 2 * len(paths['path_ms']) + len(points)} variants, predicted from "
                f"the profile; more on a busy machine)")

    @staticmethod
    def _point_record(thresholds, variant, outputs):
        exits, labels = variant.exits, variant.labels
        other, borderline = compare_with_sweep(outputs, thresholds, exits)
        return {"thresholds": thresholds,
                "exit_fractions": (np.bincount(exits, minlength=outputs.n_exits)
                                   / len(exits)).tolist(),
                "accuracy": float((labels == outputs.labels).mean()),
                "other_exit": other, "other_exit_borderline": borderline}

    # -- 6. selection and report (from exit outputs and the timing record only) -------------

    def select(self, record):
        """Frontier and knee of the test sweep, and the choices on validation, from the
        profile in ``record`` (predicted runtime = exit fractions x exit-path medians)."""
        settings = record["settings"]
        profile = Interleaved.from_json(record["profile"])
        paths = path_summary(profile, self.outputs.n_exits)
        predicted = predict_runtime(self.sweep.exit_fractions, paths["path_ms"])
        frontier = inc_points(self.sweep.accuracy, predicted, settings["inc_amt"])
        chosen = []
        if self.val_outputs is not None:
            chosen = select_on_validation(settings, self.val_outputs, paths,
                                          self.val_baseline.exit_accuracies()[0])
        return {"paths": paths, "predicted": predicted,
                "predicted_trunk": predict_runtime(self.sweep.exit_fractions, paths["trunk_ms"]),
                "frontier": frontier, "knee": knee(self.sweep.accuracy, predicted, frontier),
                "validation": chosen}

    def derive(self, tag, record):
        """Table I rows, sweep CSV rows, checks and plot data for one timing record."""
        selection = self.select(record)
        timings = Interleaved.from_json(record["measurement"])
        n_exits = self.outputs.n_exits
        base = timings.stats("baseline")
        baseline_row = _row(self.spec.title, None, accuracy=100 * self.baseline_accuracy(),
                            time=base, trunk_ms=timings.median("baseline_trunk"),
                            macs=self.costs["baseline_macs"])
        baseline_row["network"] = self.spec.title
        measured = {name: self._measured(timings, name, point)
                    for name, point in record["points"].items()}
        warnings = [f"[{tag}] {flag}" for flag in check_trunks(timings, n_exits)]
        for name, m in measured.items():
            if m["flags"]:
                warnings.append(f"[{tag}] {name}: {', '.join(m['flags'])} (measured "
                                f"{m['stats']['median_ms']:.3f} ms; per-round ratio to the "
                                f"prediction {_interval(m['checks']['vs_prediction'])}, to the "
                                f"fastest path it mixes {_interval(m['checks']['vs_fastest_path'])})")
        k = selection["knee"]
        criterion = record["settings"]["criterion"]
        knee_point = measured[point_name(self.sweep.thresholds[k])]
        rows = [baseline_row, self._point_row(
            "test knee (as paper)" if criterion == "entropy" else "test knee", knee_point,
            100 * self.sweep.accuracy[k], self.sweep.exit_fractions[k])]
        marks, selections = [], []
        paper = self.paper_point()
        if paper is not None and point_name(paper) in measured:  # older records lack it
            on_test = evaluate_grid(self.outputs, [paper])
            point = measured[point_name(paper)]
            rows.append(self._point_row(PAPER_T, point, 100 * on_test.accuracy[0],
                                        on_test.exit_fractions[0]))
            marks.append((f"this run at the paper's T = {', '.join(f'{t:g}' for t in paper)}",
                          point["stats"]["median_ms"], 100 * on_test.accuracy[0]))
        for rule, chosen in selection["validation"]:
            name = f"val {rule} ({record['settings']['search']})"
            if isinstance(chosen, InfeasibleBudget):
                rows.append(_row(f"B-{self.spec.title}", name + ": INFEASIBLE", note=str(chosen)))
                selections.append({"rule": rule, "infeasible": str(chosen)})
                continue
            on_test = evaluate_grid(self.outputs, [chosen.thresholds])
            point = measured[point_name(chosen.thresholds)]
            row = self._point_row(name, point, 100 * on_test.accuracy[0],
                                  on_test.exit_fractions[0])
            row.update(val_accuracy=100 * chosen.accuracy, val_predicted_ms=chosen.runtime_ms)
            rows.append(row)
            marks.append((name, point["stats"]["median_ms"], 100 * on_test.accuracy[0]))
            selections.append({
                "rule": rule, "thresholds": list(chosen.thresholds),
                "val_accuracy": chosen.accuracy, "val_predicted_ms": chosen.runtime_ms,
                "val_exit_fractions": chosen.exit_fractions,
                "candidates": len(chosen.candidates),
                "evaluations": chosen.candidates.evaluations,
                "test_accuracy": on_test.accuracy[0],
                "test_exit_fractions": on_test.exit_fractions[0]})
        return {"tag": tag, "rows": rows, "selection": selection, "measured": measured,
                "marks": marks, "selections": selections, "warnings": warnings,
                "timings": timings, "record": record,
                "infeasible": [f"[{tag}] {c}" for _, c in selection["validation"]
                               if isinstance(c, InfeasibleBudget)]}

    def baseline_accuracy(self):
        return float(self.baseline_outputs.exit_accuracies()[0])

    def _measured(self, timings, name, point):
        fractions = np.asarray(point["exit_fractions"])
        checks, flags = check_point(timings, name, fractions)
        trunk = timings.combine({path_name(n) + "_trunk": f for n, f in enumerate(fractions)})
        return {**point, "stats": timings.stats(name), "checks": checks, "flags": flags,
                "gain": timings.ratio("baseline", name),
                "trunk_gain": timings.ratio("baseline_trunk", trunk),
                "predicted_ms": float(np.median(timings.combine(
                    {path_name(n): f for n, f in enumerate(fractions)}))),
                "predicted_trunk_ms": float(np.median(trunk))}

    def _point_row(self, selection, point, accuracy, exit_fractions):
        return _row(f"B-{self.spec.title}", selection, accuracy=accuracy, time=point["stats"],
                    gain=point["gain"], thresholds=list(point["thresholds"]),
                    exit_percent=[100 * f for f in exit_fractions],
                    timed_exit_percent=[100 * f for f in point["exit_fractions"]],
                    predicted_ms=point["predicted_ms"], trunk_ms=point["predicted_trunk_ms"],
                    trunk_gain=point["trunk_gain"]["median"],
                    macs=expected_macs(np.asarray(exit_fractions), self.costs["macs"]),
                    checks="; ".join(point["flags"]))

    def sweep_rows(self, result):
        """One CSV row per grid point: exact results, predictions, and what was measured."""
        selection, sweep = result["selection"], self.sweep
        frontier = set(int(i) for i in selection["frontier"])
        paper = self.paper_point()
        shown = {point_name(paper)} if paper is not None else set()
        rows = []
        for i in range(len(sweep.accuracy)):
            name = point_name(sweep.thresholds[i])
            m = result["measured"].get(name) if i in frontier or name in shown else None
            row = {f"T{n + 1}": sweep.thresholds[i, n] for n in range(sweep.thresholds.shape[1])}
            row.update({f"exit{n + 1}_fraction": f for n, f in enumerate(sweep.exit_fractions[i])})
            row.update(accuracy=sweep.accuracy[i], predicted_ms=selection["predicted"][i],
                       predicted_trunk_ms=selection["predicted_trunk"][i],
                       frontier=int(i in frontier), knee=int(i == selection["knee"]))
            if m:
                row.update(measured_ms=m["stats"]["median_ms"], measured_q1_ms=m["stats"]["q1_ms"],
                           measured_q3_ms=m["stats"]["q3_ms"], gain=m["gain"]["median"],
                           gain_low=m["gain"]["low"], gain_high=m["gain"]["high"],
                           measured_other_exit=m["other_exit"], consistency="; ".join(m["flags"]))
            rows.append(row)
        return rows

    def write_report(self, result):
        """Write the table, sweep CSV, selection JSON and plot of one device's result."""
        tag, out = result["tag"], self.out
        n = self.outputs.n_exits
        write_csv(os.path.join(out, f"table_{tag}.csv"), result["rows"], list(TABLE_KEYS))
        title = self.table_title(result)
        write_json(os.path.join(out, f"table_{tag}.json"),
                   {"title": title, "rows": result["rows"], "warnings": result["warnings"],
                    "machine": result["record"]["machine"],
                    "criterion": result["record"]["settings"]["criterion"],
                    "knee_rule": "Kneedle: max of scaled accuracy minus scaled runtime on the frontier",
                    "frontier_rule": f"inc points, inc_amt={result['record']['settings']['inc_amt']}",
                    "timing_rule": TIMING_RULE})
        columns = ([f"T{k + 1}" for k in range(n - 1)] + ["accuracy"]
                   + [f"exit{k + 1}_fraction" for k in range(n)] + list(SWEEP_MEASURED))
        write_csv(os.path.join(out, f"sweep_{tag}.csv"), self.sweep_rows(result), columns)
        if self.val_outputs is not None:
            write_json(os.path.join(out, f"selection_{tag}.json"),
                       {"settings": result["record"]["settings"],
                        "validation_samples": len(self.val_outputs),
                        "val_baseline_accuracy": self.val_baseline.exit_accuracies()[0],
                        "path_ms": result["selection"]["paths"]["path_ms"],
                        "selections": result["selections"]})
            for rule, chosen in result["selection"]["validation"]:
                if rule == "knee" and not isinstance(chosen, InfeasibleBudget):
                    write_candidates_csv(os.path.join(out, f"candidates_val_{tag}.csv"), chosen,
                                         result["record"]["settings"]["inc_amt"])

    def plot(self, result):
        selection, sweep, timings = result["selection"], self.sweep, result["timings"]
        frontier = [int(i) for i in selection["frontier"]]
        front = [i for i in frontier if point_name(sweep.thresholds[i]) in result["measured"]]
        points = [result["measured"][point_name(sweep.thresholds[i])] for i in front]
        base = timings.stats("baseline")
        knee_point = result["measured"][point_name(sweep.thresholds[selection["knee"]])]
        machine = result["record"]["machine"]
        plot_tradeoff(
            os.path.join(self.out, f"tradeoff_{result['tag']}"),
            f"{self.spec.title} ({self.config.get('data_name', self.config['dataset'])}), {result['tag']}: "
            f"{machine.get('gpu') or machine['cpu']}",
            selection["predicted"], 100 * sweep.accuracy,
            [p["stats"]["median_ms"] for p in points], [100 * sweep.accuracy[i] for i in front],
            (base["median_ms"], 100 * self.baseline_accuracy()),
            (knee_point["stats"]["median_ms"], 100 * sweep.accuracy[selection["knee"]]),
            labels=(f"B-{self.spec.title}", self.spec.title), marks=result["marks"],
            frontier_err=[_err(p["stats"]) for p in points], baseline_err=_err(base),
            predicted_frontier=(selection["predicted"][frontier],
                                100 * sweep.accuracy[frontier]),
            gain_panel=self.gain_panel(result, front, knee_point))

    def gain_panel(self, result, front, knee_point):
        """The plot's right panel: the measured frontier points' gains, end to end and
        trunk-only, this run at the paper's T, and the paper's own Table I points."""
        accuracy = [100 * self.sweep.accuracy[i] for i in front]
        points = [result["measured"][point_name(self.sweep.thresholds[i])] for i in front]
        marks, paper_points = [], []
        paper = self.paper_point()
        if paper is not None and point_name(paper) in result["measured"]:
            point = result["measured"][point_name(paper)]
            on_test = 100 * evaluate_grid(self.outputs, [paper]).accuracy[0]
            marks = [(f"this run at the paper's T, {how}", point[key]["median"], on_test)
                     for how, key in (("end to end", "gain"), ("trunk-only", "trunk_gain"))]
        if paper is not None:
            for row in paper_rows(self.spec.title, result["tag"]):
                paper_points.append((f"paper, Table I ({row['selection'][7:-1]}): "
                                     f"{row['network']}" + (", trunk-only" if row["gain"] else ""),
                                     row["gain"] or 1.0, row["accuracy"]))
        return {"title": "the same frontier as a gain over the baseline",
                "frontiers": {"end to end (measured)": ([p["gain"]["median"] for p in points], accuracy),
                              "trunk-only (the authors' accounting)":
                                  ([p["trunk_gain"]["median"] for p in points], accuracy)},
                "baseline_accuracy": 100 * self.baseline_accuracy(),
                "knee": (knee_point["gain"]["median"],
                         100 * self.sweep.accuracy[result["selection"]["knee"]]),
                "marks": marks, "paper": paper_points,
                "labels": (f"B-{self.spec.title}", self.spec.title)}

    def table_title(self, result):
        record = result["record"]
        machine = record["machine"]
        m = record["measurement"]
        data = self.config.get("data_name", self.config["dataset"])
        return (f"Table I rows: {self.spec.title} on {data}, {result['tag']} "
                f"({machine.get('gpu') or machine['cpu']}); accuracy and exits over all "
                f"{len(self.outputs)} test samples; time = ms per sample at batch size 1, median "
                f"of {m['rounds']} interleaved rounds over the first {m['samples']} test samples, "
                f"whose exits are the timed exits "
                f"(spread: quartiles of the rounds; gain interval: range of the per-round gains, "
                f"{100 * interval_coverage(m['rounds']):.1f}% coverage; n.s. = includes 1)"
                + (f"; {thread_count(m['blas'])}" if m.get("blas") else "")
                + ("" if record["settings"]["criterion"] == "entropy"
                   else f"; exit criterion {record['settings']['criterion']}"))

    # -- the whole run ---------------------------------------------------------------------

    def run(self, devices):
        """All stages; returns the summary written to summary.json.

        With a communicator every rank trains, and only rank 0 reads the data, writes the
        folder and does the rest; the other ranks return ``(None, [])`` after training.
        """
        from branchynet.report import format_table

        # Training runs on the first GPU requested, else on the CPU.
        train_device = next((d for d in devices if d.xp is not np), devices[0])

        def prepare():
            self.load_data()
            self.check_folder()
            self.config["blas"] = self.set_blas_threads(train_device)
            write_json(self.path("config.json"), self.config)
        distributed.on_root(self.comm, prepare, (SettingsError, DatasetError))
        if not distributed.is_root(self.comm):
            self.set_blas_threads(train_device)
        self.train(train_device)
        if not distributed.is_root(self.comm):
            return None, []
        if getattr(self.s, "train_only", False):
            self.log(f"--train-only: both networks are trained ({self.out}/baseline.npz, "
                     f"branchynet.npz); stopping before the exit outputs and the sweep")
            return {"config": self.config, "trained_only": True}, []
        self.exit_outputs(train_device)
        guarantee_settings = guarantee.settings_of(self.s)
        self.evaluate()
        self.log(format_costs(self.spec, self.costs))
        results, infeasible = [], []
        for device in devices:
            result = self.derive(self.tag(device), self.measure(device))
            self.log(format_table(result["rows"], self.table_title(result)))
            for row in result["rows"]:
                if row.get("note"):
                    self.log(f"  note: {row['selection']}: {row['note']}")
            self._log_warnings(result)
            self._log_other_exits(result)
            self.write_report(result)
            self.plot(result)
            if guarantee_settings:
                doc = guarantee.run_stage(self, result["tag"], result["record"], guarantee_settings)
                if doc and not doc["feasible"]:
                    infeasible.append(f"[{result['tag']}] {doc['rows'][-1]['note']}")
            results.append(result)
            infeasible += result["infeasible"]
        results += self.earlier_devices({r["tag"] for r in results})
        summary = self.summary(results)
        write_json(self.path("summary.json"), summary)
        self.log(f"results in {self.out}/")
        return summary, infeasible

    def earlier_devices(self, done):
        """Devices timed by earlier runs on these weights, derived from their records as
        written, so that the summary keeps them (e.g. the CPU rows of a folder timed on a
        GPU later); a record made with other weights is left out, and said."""
        results = []
        for path in self.timing_records():
            if _tag_of(path) in done:
                continue
            record = read_json(path)
            if canonical_key(record["measurement_key"]).get("weights") != self.weights_key():
                self.log(f"note: {path} was made with other weights: not in summary.json "
                         f"(time that device again to include it)")
                continue
            results.append(self.derive(_tag_of(path), record))
        return results

    def timing_records(self):
        """The folder's timing_<tag>.json of this criterion, one per device timed."""
        return [p for p in sorted(glob.glob(self.path("timing_*.json")))
                if _criterion_of(_tag_of(p)) == self.s.criterion]

    def summary(self, results):
        """What summary.json holds: accuracies, costs, training records and every device's
        rows, from the exit outputs, the training logs and the ``derive`` results."""
        n_train = (self.config.get("samples") or {}).get("train")
        summary = {"config": self.config, "baseline_accuracy": self.baseline_accuracy(),
                   "exit_accuracies": self.outputs.exit_accuracies(), "costs": self.costs,
                   "training": {name: training_record(self.path(os.path.join(name, "log")),
                                                      n_train)
                                for name in ("baseline", "branchynet")},
                   "devices": {}}
        if self.val_outputs is not None:
            summary.update(val_baseline_accuracy=self.val_baseline.exit_accuracies()[0],
                           val_exit_accuracies=self.val_outputs.exit_accuracies())
        for result in results:
            summary["devices"][result["tag"]] = {
                "rows": result["rows"], "knee": int(result["selection"]["knee"]),
                "frontier": [int(i) for i in result["selection"]["frontier"]],
                "paths": result["selection"]["paths"], "warnings": result["warnings"],
                "selections": result["selections"], "machine": result["record"]["machine"]}
        return summary

    def _log_warnings(self, result, shown=5):
        """The self-consistency warnings (the first few; all are in the table JSON)."""
        warnings = result["warnings"]
        for line in warnings[:shown]:
            self.log(f"warning: {line}")
        if warnings:
            load = result["timings"].load
            self.log(f"warning: {len(warnings)} self-consistency check(s) failed in all "
                     f"({len(warnings) - min(shown, len(warnings))} more in table_{result['tag']}.json, "
                     f"flags in sweep_{result['tag']}.csv); load average "
                     f"{load.get('before')} before, {load.get('after')} after the measurement: "
                     f"on a busy machine, measure again when it is quiet")

    def _log_other_exits(self, result):
        points = list(result["measured"].values())
        tag = result["tag"]
        if any(m["other_exit"] > m["other_exit_borderline"] for m in points):
            self.log(f"[{tag}] warning: real early-exit inference and the cached sweep disagree "
                     f"on exits for some frontier points (see sweep_{tag}.csv)")
        elif any(m["other_exit"] for m in points):
            self.log(f"[{tag}] note: at {sum(m['other_exit'] > 0 for m in points)} measured "
                     f"point(s) a few samples ({max(m['other_exit'] for m in points)} at most) "
                     f"took another exit at batch size 1 than in the batched sweep; all score "
                     f"within {BORDERLINE:g} (relative) of the threshold, where float32 logits "
                     f"computed at different batch sizes differ in the last bits")

    # -- recompute a committed folder -------------------------------------------------------

    @classmethod
    def from_results(cls, folder, criterion="entropy", log=print):
        """An experiment rebuilt from a results folder's config.json (nothing trained)."""
        path = os.path.join(folder, "config.json")
        if not os.path.exists(path):
            raise SettingsError(f"{folder} is not a results folder (no config.json)")
        config = read_json(path)
        settings = _namespace(config, folder, criterion)
        exp = cls(settings, log)
        exp.config = config
        return exp

    def recompute(self, verify_outputs=0, rewrite=False):
        """Re-derive every file ``derive`` makes from the committed exit outputs, timing
        records and training logs, and compare each with the committed one (``DERIVED``);
        returns the problems, each naming the file and its first differing field.

        With ``verify_outputs`` N (> 0, or -1 for all) the committed weights are also run on
        the first N test and validation samples and must reproduce the exit outputs. With
        ``rewrite`` a differing derived file is replaced by the re-derived one (after a
        change of what the runner derives), not reported.
        """
        if verify_outputs:
            self.locate_recorded_data()
        self.load_cached_outputs()
        if getattr(self.s, "calibrate", False):
            self.add_missing_logits()
        self.evaluate()
        problems = []
        if verify_outputs:
            problems += self.verify_outputs(verify_outputs)
        records = self.timing_records()
        if not records:
            raise SettingsError(f"{self.out} has no timing_<device>.json to derive from")
        results = [self.derive(_tag_of(p), read_json(p)) for p in records]
        names = [name for r in results for name in derived_files(r["tag"], self.val_outputs)]
        # summary.json holds every device timed in the folder (one criterion); folders
        # written before it did hold the devices of the run that wrote them last.
        committed_summary = self.path("summary.json")
        tags = set(read_json(committed_summary).get("devices", {})) if os.path.exists(
            committed_summary) else {r["tag"] for r in results}
        summary = None
        if tags and tags <= {r["tag"] for r in results}:
            summary = self.summary([r for r in results if r["tag"] in tags])
            names.append("summary.json")
        committed_folder = self.out
        with tempfile.TemporaryDirectory() as tmp:
            self.out = tmp
            try:
                for result in results:
                    self.write_report(result)
                if summary is not None:
                    write_json(self.path("summary.json"), summary)
            finally:
                self.out = committed_folder
            for name in names:
                committed = os.path.join(committed_folder, name)
                found = first_difference(committed, os.path.join(tmp, name))
                if found and rewrite:
                    with atomic_path(committed) as out:
                        shutil.copyfile(os.path.join(tmp, name), out)
                    self.log(f"{committed}: rewritten with what its exit outputs, timing records "
                             f"and training logs give (it differed: {found})")
                elif found:
                    problems.append(f"{committed}: {found} (re-derived from the exit outputs, "
                                    f"timing records and training logs)")
                else:
                    self.log(f"{committed}: identical to what its exit outputs and timing "
                             f"records give")
        for path in records:  # each round's mean is its blocks' mean
            record = read_json(path)
            for part, key in (("profile", "profile_key"), ("measurement", "measurement_key")):
                found = rounds_vs_blocks(record[part], record[key].get("block", TIMING_BLOCK))
                if found:
                    problems.append(f"{path}: {part}: {found} (the rounds are the means of "
                                    f"the blocks; nothing else derives them)")
        problems += folder_checks.curve_problems(self)
        problems += folder_checks.readme_problems(
            self.out, [row for r in results for row in r["rows"]],
            [100 * a for a in [self.baseline_accuracy(), *self.outputs.exit_accuracies()]])
        for path in records:  # guarantee_<tag>*.json, calibration.json
            problems += guarantee.recompute(self, _tag_of(path), read_json(path),
                                            guarantee.settings_of(self.s))
        return problems

    def locate_recorded_data(self):
        """For ``--verify-outputs`` without ``--data-dir``: the data folder config.json
        records, when it exists here; else ``$BRANCHYNET_DATA``; else a SettingsError that
        names the recorded folder and the fix, before any data is read or downloaded."""
        if self.s.data_dir:
            return
        recorded = recorded_data_dir(self.config["dataset"], self.config.get("data_record"))
        if recorded is None:
            return
        if os.path.exists(recorded):
            self.s.data_dir = recorded
        elif os.environ.get("BRANCHYNET_DATA"):
            self.log(f"note: the data {self.out} was made from were in {recorded}, which is "
                     f"not on this machine; looking in $BRANCHYNET_DATA "
                     f"({os.environ['BRANCHYNET_DATA']}; other data shows as differing outputs)")
        else:
            raise SettingsError(
                f"--verify-outputs: {self.out} was made from the data in {recorded}, which is "
                f"not on this machine. To fix: pass --data-dir the folder holding the same "
                f"files, or set $BRANCHYNET_DATA to it")

    def verify_outputs(self, samples):
        """Run the committed weights on the first ``samples`` test samples (and as many
        validation samples, when the folder has a split; -1: all of them) and compare
        with the committed exit outputs of both networks."""
        import chainer
        self.locate_recorded_data()
        if samples > 0:
            self.s.test_limit = min(samples, self.s.test_limit or samples)
        self.s.timing_samples = 0  # nothing is timed here
        config = self.config
        self.load_data()
        self.config = config  # as committed: the derived files are compared with it
        self.build_networks()
        load_weights(self.path("baseline.npz"), self.baseline)
        load_weights(self.path("branchynet.npz"), self.branchy)
        cpu = chainer.get_device("@numpy")
        splits = [("test", self.data.test_x, self.data.test_y, self.outputs, self.baseline_outputs)]
        if self.val_outputs is not None:
            n = len(self.data.val_y) if samples < 0 else min(samples, len(self.data.val_y))
            splits.append(("validation", self.data.val_x[:n], self.data.val_y[:n],
                           self.val_outputs, self.val_baseline))
        problems = []
        for split, x, y, branchy_outputs, baseline_outputs in splits:
            for net, committed, criterion in ((self.branchy, branchy_outputs, self.s.criterion),
                                              (self.baseline, baseline_outputs, "entropy")):
                fresh = collect_exit_outputs(net, x, y, device=cpu, criterion=criterion)
                what = f"{'B-net' if net is self.branchy else 'baseline'} ({split})"
                found = _outputs_difference(fresh, committed.take(slice(0, len(y))))
                if found:
                    problems.append(f"{what}: the weights do not reproduce the committed exit "
                                    f"outputs on the first {len(y)} {split} samples: {found}")
                else:
                    self.log(f"{what}: the weights reproduce the committed exit outputs on "
                             f"{len(y)} {split} samples (largest score difference "
                             f"{np.abs(fresh.scores - committed.scores[:len(y)]).max():.2g})")
        return problems


def _outputs_difference(fresh, committed):
    """Where freshly computed exit outputs differ from committed ones (None: they agree:
    the same labels and predictions, and scores within float32 rounding of other batch sizes
    and other CPU kernels, rtol 1e-3, atol 1e-5: outputs made with Chainer's own convolution
    drift from ``branchynet.cpu_kernels``' by up to ~4e-4 relative after ResNet-110's 110
    layers, by ~3e-6 on LeNet and AlexNet)."""
    if not np.array_equal(fresh.labels, committed.labels):
        return f"labels differ at sample {int(np.flatnonzero(fresh.labels != committed.labels)[0])}"
    for name in ("predictions", "scores"):
        a, b = getattr(fresh, name), getattr(committed, name)
        same = (a == b) if name == "predictions" else np.isclose(a, b, rtol=1e-3, atol=1e-5)
        if not same.all():
            sample, exit_ = np.argwhere(~same)[0]
            return (f"{name} differ at sample {sample}, exit {exit_ + 1}: committed "
                    f"{b[sample, exit_]}, re-computed {a[sample, exit_]}")
    return None


# Frontier points timed by default (non-dominated, spread over predicted runtime); the rest
# of the frontier is predicted from the exit paths (--timed-points, --time-all-points).
TIMED_POINTS = 25


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# How the timing figures are made (stored with every table).
TIMING_BLOCK = 10
TIMING_RULE = ("end to end at batch size 1; every figure is the median over interleaved "
               "rounds of the per-round mean; within a round, blocks of 10 samples see "
               "every variant in a random order, each after one untimed warm-up call; "
               "gains are paired per round")

ROW_KEYS = ("network", "selection", "accuracy", "time_ms", "time_q1_ms", "time_q3_ms", "gain",
            "gain_low", "gain_high", "gain_significant", "thresholds", "exit_percent",
            "predicted_ms", "trunk_ms", "trunk_gain", "macs", "val_accuracy", "val_predicted_ms",
            "checks", "note")
# The runner's rows also show the exits of the samples the time is measured on (the first
# --timing-samples test samples) beside the exits over the whole test set.
TABLE_KEYS = ROW_KEYS[:ROW_KEYS.index("exit_percent") + 1] + ("timed_exit_percent",) \
    + ROW_KEYS[ROW_KEYS.index("exit_percent") + 1:]
SWEEP_MEASURED = ("predicted_ms", "predicted_trunk_ms", "frontier", "knee", "measured_ms",
                  "measured_q1_ms", "measured_q3_ms", "gain", "gain_low", "gain_high",
                  "measured_other_exit", "consistency")


def derived_files(tag, val_outputs=None):
    """The files ``write_report`` derives for one device tag (``recompute`` checks them)."""
    names = [f"sweep_{tag}.csv", f"table_{tag}.csv", f"table_{tag}.json"]
    if val_outputs is not None:
        names += [f"selection_{tag}.json", f"candidates_val_{tag}.csv"]
    return names


def point_name(thresholds):
    """The name of a threshold vector in timing records, e.g. ``T=0.5`` or ``T=1,0.01``."""
    return "T=" + ",".join(repr(float(t)) for t in thresholds)


def _row(network, selection, time=None, gain=None, **values):
    """A table row (every key of TABLE_KEYS; missing values are None)."""
    row = dict.fromkeys(TABLE_KEYS)
    row.update(network=network, selection=selection, **values)
    if time:
        row.update(time_ms=time["median_ms"], time_q1_ms=time["q1_ms"], time_q3_ms=time["q3_ms"])
    if gain:
        row.update(gain=gain["median"], gain_low=gain["low"], gain_high=gain["high"],
                   gain_significant=gain["significant"])
    return row


def _interval(r):
    return f"{r['median']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _err(stats):
    return (stats["median_ms"] - stats["q1_ms"], stats["q3_ms"] - stats["median_ms"])


def _tag_of(path):
    return os.path.basename(path)[len("timing_"):-len(".json")]


def _criterion_of(tag):
    """'entropy' for a tag like 'cpu' or 'gpu0', else the part after the device label."""
    return tag.split("-", 1)[1] if "-" in tag else "entropy"


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _namespace(config, folder, criterion):
    import argparse
    budgets = (config.get("validation") or {}).get("budgets") or {}
    return argparse.Namespace(
        network=config["network"], name=config.get("title"), dataset=config["dataset"],
        data_dir=None,
        preprocess=(config.get("dataset_options") or {}).get("preprocess"),
        train_limit=config.get("train_limit", 0), test_limit=config.get("test_limit", 0),
        val_size=config.get("val_size", 0), seed=config.get("seed", 0),
        batch_size=config["batch_size"], baseline_epochs=config["baseline_epochs"],
        branchy_epochs=config["branchy_epochs"], lr=config.get("lr", 0.001),
        loss_weights=config.get("loss_weights"), paper=config.get("paper_preset", False),
        criterion=criterion, grid=tuple(config["grid"]), inc_amt=config["inc_amt"],
        search=(config.get("validation") or {}).get("search", "grid"),
        latency_budget_ms=budgets.get("latency_budget_ms"),
        latency_budget_fraction=budgets.get("latency_budget_fraction"),
        accuracy_floor=budgets.get("accuracy_floor_percent"),
        accuracy_drop=budgets.get("accuracy_drop_pp"),
        timing_samples=config.get("timing_samples", 0),
        timing_rounds=config.get("timing_rounds", 5), devices=[], out=folder, no_progress=True)


def select_on_validation(settings, val_outputs, paths, val_baseline_accuracy):
    """Choose T on validation data only: the knee, then one choice per budget given.

    Reads the validation exit outputs, the exit-path and baseline latencies of the profile
    (timed on validation inputs) and the baseline's validation accuracy; nothing from the
    test set. Returns ``(rule, Selection or InfeasibleBudget)`` pairs.
    """
    rules = ["knee"]
    if settings["latency_budget_ms"] is not None:
        rules.append(LatencyBudget(settings["latency_budget_ms"]))
    if settings["latency_budget_fraction"] is not None:
        f = settings["latency_budget_fraction"]
        rules.append(LatencyBudget(f * paths["baseline_ms"],
                                   f"{f:g} x baseline {paths['baseline_ms']:.3f} ms"))
    if settings["accuracy_floor"] is not None:
        rules.append(AccuracyFloor(settings["accuracy_floor"] / 100))
    if settings["accuracy_drop"] is not None:
        rules.append(AccuracyFloor(
            val_baseline_accuracy - settings["accuracy_drop"] / 100,
            f"baseline {100 * val_baseline_accuracy:.2f}% - {settings['accuracy_drop']:g} pp"))
    results = []
    for rule in rules:
        try:
            chosen = choose(val_outputs, paths["path_ms"], rule, method=settings["search"],
                            values=settings["grid"], inc_amt=settings["inc_amt"])
        except InfeasibleBudget as err:
            chosen = err
        results.append((rule if rule == "knee" else rule.describe(), chosen))
    return results


def compare_with_sweep(outputs, thresholds, exits):
    """How many samples took another exit than the cached sweep says, and how many of those
    score within ``BORDERLINE`` of the threshold at the first exit where the two differ."""
    expected = exit_indices(outputs, [thresholds])[0]
    differ = np.flatnonzero(expected != exits)
    first = np.minimum(expected[differ], exits[differ])
    limits = np.asarray(thresholds, np.float64)[first]
    scores = outputs.scores[differ, first].astype(np.float64)
    near = np.abs(scores - limits) <= BORDERLINE * np.maximum(1.0, limits)
    return int(len(differ)), int(near.sum())


def format_costs(spec, costs):
    """Multiply-adds and parameters of the baseline and of each exit path, as a text table."""
    lines = [f"Multiply-adds (MACs) and parameters per sample, {spec.title} and each exit path of "
             f"B-{spec.title} (MACs with earlier heads: what a sample leaving there really runs)",
             f"  {'path':<10}{'MACs':>14}{'+ earlier heads':>18}{'params':>12}",
             f"  {'baseline':<10}{costs['baseline_macs']:>14,}{'':>18}{costs['baseline_params']:>12,}"]
    for n, (m, mh, p) in enumerate(zip(costs["path_macs"], costs["macs"], costs["params"])):
        lines.append(f"  {'exit ' + str(n + 1):<10}{m:>14,}{mh:>18,}{p:>12,}")
    return "\n".join(lines)


def write_candidates_csv(path, selection, inc_amt):
    """The validation candidates of a knee selection, with frontier and knee flags."""
    c = selection.candidates
    frontier = set(int(i) for i in inc_points(c.accuracy, c.runtime_ms, inc_amt))
    n_thresholds = c.thresholds.shape[1]
    columns = ([f"T{n + 1}" for n in range(n_thresholds)] + ["val_accuracy"]
               + [f"exit{n + 1}_fraction" for n in range(n_thresholds + 1)]
               + ["predicted_ms", "frontier", "knee"])
    rows = []
    for i in range(len(c)):
        row = {f"T{n + 1}": c.thresholds[i, n] for n in range(n_thresholds)}
        row.update({f"exit{n + 1}_fraction": c.exit_fractions[i, n] for n in range(n_thresholds + 1)})
        row.update(val_accuracy=c.accuracy[i], predicted_ms=c.runtime_ms[i],
                   frontier=int(i in frontier), knee=int(i == selection.index))
        rows.append(row)
    write_csv(path, rows, columns)


def training_record(log_path, n_train):
    """Per-epoch seconds, images/s and final training metrics from a Chainer LogReport file
    (None if the weights came without their log)."""
    if not os.path.exists(log_path):
        return None
    log = read_json(log_path)
    if not log:
        return None
    # Chainer's elapsed_time continues across resumes; an epoch's time is the difference,
    # less the learning-curve evaluation after it (test/seconds), which is no training.
    evaluation = np.cumsum([entry.get("test/seconds", 0.0) for entry in log])
    elapsed = [entry["elapsed_time"] - done for entry, done in zip(log, evaluation)]
    epoch_seconds = np.diff([0.0] + elapsed).tolist()
    record = {"epochs": log[-1]["epoch"], "seconds": elapsed[-1], "epoch_seconds": epoch_seconds,
              "images_per_second": n_train * len(log) / elapsed[-1], "last_epoch": log[-1]}
    if any("test/seconds" in entry for entry in log):  # logs from before the curve have none
        record["evaluation_seconds"] = float(evaluation[-1])
    # The learning curve's plotted values (experiments.learning_curve), so that recompute
    # compares every point with the log.
    plotted = sorted({key for entry in log for key in entry
                      if key.startswith(("main/accuracy/", "test/main/accuracy/"))})
    record["curve"] = {"epoch": [entry["epoch"] for entry in log],
                       **{key: [entry.get(key) for entry in log] for key in plotted}}
    return record
