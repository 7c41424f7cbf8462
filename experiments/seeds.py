"""One training setting over several seeds: each seed's run, and every Table I column over them.

    python -m experiments.run --network lenet_mnist --dataset mnist --seeds 5 --out DIR
    python -m experiments.run ... --seeds 5 --out DIR --train-only   # train now, time later
    python -m experiments.run --from-results DIR     # every seed's folder, then the aggregate

``--seed B --seeds K`` runs the seeds B, B+1, ..., B+K-1. A seed seeds everything random
in a run: the weights' initialisation, the order of the minibatches (and augmentation),
the validation split (``--val-size``) and, on mnist-5k, the 4,000/1,000 train/test split.

The folder DIR holds:

* ``seeds.json``: the seeds and their folders;
* ``seed-<s>/``: seed s's complete runner folder (``--from-results DIR/seed-<s>`` on its own);
* ``seeds_accuracy.csv/.json/.md``: from the exit outputs alone, no timing: the baseline,
  each exit taken alone, and the B-net at the paper's thresholds (Table I of the paper,
  where it has the network), with each B-net row's accuracy minus the same seed's baseline;
* ``seeds_<tag>.csv/.json/.md``, per timed device: the runner's Table I rows (baseline,
  test knee, choices on validation), each seed selecting its own T by the same rule.

Every number is the mean, the sample standard deviation (ddof 1) and the range [min, max]
over the seeds; thresholds are listed per seed. All seeds are trained and their exit
outputs computed first (then ``seeds_accuracy`` is written), and only then is each seed
timed, so no timing runs while this process trains. Rerunning the same command resumes:
finished seeds are reused as they are, an interrupted one continues from its snapshot.
"""
import copy
import glob
import os
import re
import shutil
import tempfile

import numpy as np

from branchynet.flops import expected_macs
from branchynet.io import atomic_path, read_json, write_json, write_text
from branchynet.paper import paper_rows
from branchynet.report import write_csv
from branchynet.sweep import evaluate_grid
from experiments.experiment import (TRAINING_KEYS, Experiment, SettingsError,
                                    _criterion_of, _tag_of, training_record)

SEEDS_FILE = "seeds.json"
# Table I columns averaged over seeds (each row's exits are added as exit<n>_percent).
STATISTICS = ("accuracy", "accuracy_vs_baseline_pp", "time_ms", "gain", "predicted_ms",
              "trunk_ms", "trunk_gain", "macs", "val_accuracy", "val_predicted_ms")
SUMMARY = ("mean", "std", "min", "max")
# Stands for a number in a row's label that differs between seeds (e.g. a budget's ms).
VARIES = "*"


def seed_folder(out, seed):
    return os.path.join(out, f"seed-{seed}")


def is_seeds_folder(path):
    return os.path.exists(os.path.join(path, SEEDS_FILE))


# -- the command line --------------------------------------------------------------------

def check_count(parser, args):
    """Refuse a bad --seeds before any other work (exit status 2)."""
    if args.seeds is None:
        return
    if args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: give 2 or more seeds (a standard deviation needs "
                     f"two); for one run use --seed N without --seeds")
    if not 0 <= args.seed <= 2**32 - args.seeds:
        parser.error(f"--seed {args.seed} --seeds {args.seeds} would use seeds {args.seed}.."
                     f"{args.seed + args.seeds - 1}; seeds must lie in [0, 2**32 - 1]")
    if args.communicator:
        parser.error("--seeds runs the seeds one after another in one process and does not "
                     "work with --communicator; leave one of them out")


def check_out(parser, args, out_given):
    """--out and --seeds must agree on the kind of folder (call after the defaults are set).

    Without --out, a seeds run goes to the runner's default folder plus ``-seeds``.
    """
    if args.seeds is None:
        if is_seeds_folder(args.out):
            parser.error(f"--out {args.out!r} holds a --seeds run ({SEEDS_FILE}): add --seeds K "
                         f"to continue it, or choose another --out")
        return
    if not out_given:
        args.out += "-seeds"
    if os.path.exists(os.path.join(args.out, "config.json")):
        parser.error(f"--out {args.out!r} holds a single run (config.json); --seeds needs a "
                     f"folder of its own: choose another --out")


# -- the run ---------------------------------------------------------------------------------

def run(args, log=print):
    """Train and evaluate every seed, then time each (unless --train-only); write the
    aggregates. Returns ``(summary, infeasible)`` as ``Experiment.run`` does."""
    seeds = list(range(args.seed, args.seed + args.seeds))
    train_device = next((d for d in args.devices if d.xp is not np), args.devices[0])
    for k, seed in enumerate(seeds):
        log(f"== seed {seed} ({k + 1} of {len(seeds)}): train and evaluate, "
            f"{seed_folder(args.out, seed)}")
        exp = Experiment(_settings(args, seed), log)
        exp.load_data()
        exp.check_folder()
        if k == 0:  # the data and settings passed their checks: the folder is a seeds run
            write_json(os.path.join(args.out, SEEDS_FILE), {
                "seeds": seeds, "folders": [os.path.basename(seed_folder("", s)) for s in seeds],
                "rule": f"--seed {args.seed} --seeds {args.seeds}: seeds {seeds[0]}..{seeds[-1]}"})
        exp.train(train_device)
        exp.exit_outputs(train_device)
    infeasible = []
    if not getattr(args, "train_only", False):
        for k, seed in enumerate(seeds):
            log(f"== seed {seed} ({k + 1} of {len(seeds)}): sweep, time and report")
            _, missed = Experiment(_settings(args, seed), log).run(args.devices)
            infeasible += [f"seed {seed}: {line}" for line in missed]
    else:
        log(f"--train-only: {len(seeds)} seeds trained and evaluated; the same command without "
            f"--train-only times them")
    names = write_aggregates(args.out, seeds, args.criterion, args.out, log)
    _remove_stale(args.out, args.criterion, names, log)
    for name in names:
        if name.endswith(".md"):
            with open(os.path.join(args.out, name), encoding="utf-8") as f:
                log(f.read())
    log(f"seeds aggregated in {args.out}/ ({', '.join(names)})")
    return {"seeds": seeds, "aggregates": names}, infeasible


def _settings(args, seed):
    """The runner's settings for one seed: its seed and its own folder."""
    settings = copy.copy(args)
    settings.seed, settings.out, settings.seeds = seed, seed_folder(args.out, seed), None
    return settings


def _remove_stale(folder, criterion, names, log):
    """Aggregates of this criterion that the seeds no longer give (e.g. seeds added since)."""
    for path in _aggregate_files(folder, criterion):
        if os.path.basename(path) not in names:
            log(f"removing {path}: not every seed has its timing record now")
            os.remove(path)


def _aggregate_files(folder, criterion):
    return [p for ext in ("csv", "json", "md")
            for p in sorted(glob.glob(os.path.join(folder, f"seeds_*.{ext}")))
            if _criterion_of(os.path.basename(p)[len("seeds_"):-len(ext) - 1]) == criterion]


# -- re-deriving a seeds folder -------------------------------------------------------------

def recompute(folder, criterion="entropy", verify_outputs=0, data_dir=None, log=print,
              rewrite=False):
    """``--from-results`` of a seeds folder: every seed's folder on its own, then the
    aggregates from them; returns the list of problems (empty when all is identical)."""
    seeds = read_json(os.path.join(folder, SEEDS_FILE))["seeds"]
    problems = []
    for seed in seeds:
        path = seed_folder(folder, seed)
        log(f"== seed {seed}: {path}")
        exp = _load(path, criterion, log)
        exp.s.data_dir = data_dir
        if _timing_records(exp):
            problems += exp.recompute(verify_outputs, rewrite)
        else:
            log(f"{path}: no timing_<device>.json (trained with --train-only): its exit "
                f"outputs feed only {_accuracy_name(criterion)}")
            if verify_outputs:
                exp.load_cached_outputs()
                problems += exp.verify_outputs(verify_outputs)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_aggregates(folder, seeds, criterion, tmp, log=lambda *a, **k: None)
        for name in names:
            committed = os.path.join(folder, name)
            if not os.path.exists(committed):
                problems.append(f"{committed}: missing")
            elif _read(committed) != _read(os.path.join(tmp, name)) and rewrite:
                with atomic_path(committed) as out:
                    shutil.copyfile(os.path.join(tmp, name), out)
                log(f"{committed}: rewritten with what the seeds' folders give")
            elif _read(committed) != _read(os.path.join(tmp, name)):
                problems.append(f"{committed}: differs from what the seeds' folders give")
            else:
                log(f"{committed}: identical to what the seeds' folders give")
    for path in _aggregate_files(folder, criterion):
        if os.path.basename(path) not in names:
            problems.append(f"{path}: not every seed's folder has the timing record it needs")
    return problems


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _load(path, criterion, log):
    """A seed's experiment rebuilt from its folder; an unfinished folder is refused."""
    if not os.path.exists(os.path.join(path, "config.json")):
        raise SettingsError(f"{path} is missing or has not started: run the same --seeds "
                            f"command again to train it")
    exp = Experiment.from_results(path, criterion, log)
    if not os.path.exists(exp.path(f"exit_outputs{exp.suffix}.npz")):
        raise SettingsError(f"{path} has no exit outputs yet (training unfinished?): run the "
                            f"same --seeds command again to finish it")
    return exp


def _timing_records(exp):
    return [p for p in sorted(glob.glob(exp.path("timing_*.json")))
            if _criterion_of(_tag_of(p)) == exp.s.criterion]


def _accuracy_name(criterion):
    return "accuracy" if criterion == "entropy" else f"accuracy-{criterion}"


# -- the aggregates --------------------------------------------------------------------------

def write_aggregates(folder, seeds, criterion, target, log=print):
    """Derive every aggregate of the seeds in ``folder`` from their folders alone (exit
    outputs, timing records, configs, training logs); write them to ``target``; return
    the file names."""
    exps = []
    for seed in seeds:
        exp = _load(seed_folder(folder, seed), criterion, lambda *a, **k: None)
        exp.load_cached_outputs()
        exp.evaluate()
        exps.append(exp)
    _check_same_setting(exps)
    names = _write(target, _accuracy_name(criterion), accuracy_aggregate(exps, seeds))
    tags = [_tag_of(p) for p in _timing_records(exps[0])]
    for tag in tags:
        if all(os.path.exists(e.path(f"timing_{tag}.json")) for e in exps):
            names += _write(target, tag, timed_aggregate(exps, seeds, tag))
        else:
            log(f"note: not every seed has timing_{tag}.json: no seeds_{tag} aggregate")
    return names


def _check_same_setting(exps):
    """Every seed's folder must hold the same training setting but for its seed."""
    first = exps[0].config
    for exp in exps[1:]:
        changed = [k for k in TRAINING_KEYS + ("test_limit", "grid", "inc_amt")
                   if k != "seed" and exp.config.get(k) != first.get(k)]
        if changed:
            raise SettingsError(f"{exp.out} holds another setting than {exps[0].out} "
                                f"({', '.join(changed)}): the seeds of one aggregate must "
                                f"differ in their seed alone")


def _write(target, name, doc):
    """The aggregate ``doc`` as seeds_<name>.csv, .json and .md; returns the file names."""
    stem = os.path.join(target, f"seeds_{name}")
    write_csv(stem + ".csv", [_csv_row(row) for row in doc["rows"]], _csv_columns(doc))
    write_json(stem + ".json", doc)
    write_text(stem + ".md", format_markdown(doc) + "\n")
    return [f"seeds_{name}.{ext}" for ext in ("csv", "json", "md")]


def over_seeds(values):
    """Mean, sample standard deviation (ddof 1), minimum and maximum of per-seed values,
    and how many seeds had a value (None where none had)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
        return None
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "seeds": int(len(v))}


def aggregate_rows(per_seed, exits):
    """Aggregate rows from each seed's table rows (the same rules in the same order).

    A row's statistics are over the seeds where it is feasible; ``accuracy_vs_baseline_pp``
    is the row's accuracy minus the same seed's baseline (row 0) accuracy.
    """
    counts = {len(rows) for rows in per_seed}
    if len(counts) != 1:
        raise SettingsError(f"the seeds' tables have {sorted(counts)} rows: every seed must be "
                            f"run with the same selection settings")
    aggregated = []
    for i in range(counts.pop()):
        rows = [dict(seed_rows[i]) for seed_rows in per_seed]
        for row, seed_rows in zip(rows, per_seed):
            base = seed_rows[0].get("accuracy")
            if i and row.get("accuracy") is not None and base is not None:
                row["accuracy_vs_baseline_pp"] = row["accuracy"] - base
            for n, p in enumerate(row.get("exit_percent") or []):
                row[f"exit{n + 1}_percent"] = p
        labels = [str(r.get("selection") or "baseline") for r in rows]
        infeasible = [label.endswith(": INFEASIBLE") for label in labels]
        feasible = [r for r, bad in zip(rows, infeasible) if not bad]
        keys = STATISTICS + tuple(f"exit{n + 1}_percent" for n in range(exits))
        aggregated.append({
            "network": rows[0]["network"],
            "selection": _common_label([label.removesuffix(": INFEASIBLE") for label in labels]),
            "seeds": len(feasible), "infeasible_seeds": sum(infeasible),
            "thresholds": [r.get("thresholds") for r in rows],
            "stats": {k: s for k in keys if (s := over_seeds([r.get(k) for r in feasible]))},
            "gain_significant_seeds": sum(bool(r.get("gain_significant")) for r in feasible),
            "checks_flagged_seeds": sum(bool(r.get("checks")) for r in feasible)})
    return aggregated


def _common_label(labels):
    """One label for a row across seeds; numbers that differ between seeds become ``*``."""
    if len(set(labels)) == 1:
        return labels[0]
    number = r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
    parts = [re.split(number, label) for label in labels]
    if len({len(p) for p in parts}) != 1 or len({tuple(p[::2]) for p in parts}) != 1:
        return labels[0] + f" ({VARIES}: differs between seeds)"
    merged = [p[0] if k % 2 == 0 or len({q[k] for q in parts}) == 1 else VARIES
              for k, p in enumerate(zip(*parts))]
    return "".join(merged)


def paper_comparison(rows, title, index):
    """The paper's B-net-minus-baseline accuracy difference beside this one's per seed.

    ``rows`` are aggregate rows; ``rows[index]`` is the B-net row to compare.
    ``within_range``: the paper's difference lies in [min, max] of the per-seed differences;
    ``in_std``: the paper's difference over the per-seed standard deviation of the difference.
    """
    try:
        base, bnet = paper_rows(title, "cpu")
    except ValueError:
        return None
    paper = round(bnet["accuracy"] - base["accuracy"], 6)
    diff = rows[index]["stats"].get("accuracy_vs_baseline_pp")
    if diff is None:
        return None
    return {"paper_baseline_accuracy": base["accuracy"], "paper_bnet_accuracy": bnet["accuracy"],
            "paper_thresholds": bnet["thresholds"], "paper_difference_pp": paper,
            "row": rows[index]["selection"], "difference_pp": diff,
            "within_range": bool(diff["min"] <= paper <= diff["max"]),
            "in_std": paper / diff["std"] if diff["std"] else None}


def accuracy_aggregate(exps, seeds):
    """From the exit outputs alone: the baseline, each exit taken alone, and the B-net at
    the paper's thresholds (for a network in the paper's Table I, entropy criterion)."""
    first = exps[0]
    title, exits = first.spec.title, first.outputs.n_exits
    paper_t = first.paper_point()
    per_seed = []
    for exp in exps:
        alone = exp.outputs.exit_accuracies()
        rows = [{"network": title, "selection": None, "accuracy": 100 * exp.baseline_accuracy(),
                 "macs": exp.costs["baseline_macs"]}]
        for n in range(exits):
            fractions = np.eye(exits)[n]
            rows.append({"network": f"B-{title}", "selection": f"exit {n + 1} alone",
                         "accuracy": 100 * float(alone[n]),
                         "exit_percent": (100 * fractions).tolist(),
                         "macs": expected_macs(fractions, exp.costs["macs"])})
        if paper_t is not None:
            at = evaluate_grid(exp.outputs, [paper_t])
            rows.append({"network": f"B-{title}",
                         "selection": "paper T = " + ", ".join(f"{t:g}" for t in paper_t),
                         "thresholds": list(paper_t), "accuracy": 100 * float(at.accuracy[0]),
                         "exit_percent": (100 * at.exit_fractions[0]).tolist(),
                         "macs": expected_macs(at.exit_fractions[0], exp.costs["macs"])})
        per_seed.append(rows)
    rows = aggregate_rows(per_seed, exits)
    doc = _header(exps, seeds, exits, "accuracy over seeds, from the exit outputs alone (no "
                  "timing)")
    doc.update(rows=rows, per_seed=[{"seed": s, "rows": r} for s, r in zip(seeds, per_seed)],
               paper=paper_comparison(rows, title, len(rows) - 1) if paper_t else None,
               training_seconds=[_training_seconds(exp) for exp in exps])
    return doc


def timed_aggregate(exps, seeds, tag):
    """The runner's Table I rows of every seed on device ``tag``, aggregated."""
    first = exps[0]
    exits = first.outputs.n_exits
    results = [exp.derive(tag, read_json(exp.path(f"timing_{tag}.json"))) for exp in exps]
    per_seed = [result["rows"] for result in results]
    rows = aggregate_rows(per_seed, exits)
    machines = sorted({result["record"]["machine"].get("gpu") or result["record"]["machine"]["cpu"]
                       for result in results})
    measurement = results[0]["record"]["measurement"]
    doc = _header(exps, seeds, exits, f"Table I over seeds, {tag} ({', '.join(machines)}): each "
                  f"seed chooses its own T by the runner's rule; time = ms per sample at batch "
                  f"size 1, each seed's median of {measurement['rounds']} interleaved rounds "
                  f"over the first {measurement['samples']} test samples")
    doc.update(rows=rows, per_seed=[{"seed": s, "rows": r} for s, r in zip(seeds, per_seed)],
               paper=(paper_comparison(rows, first.spec.title, 1)
                      if first.s.criterion == "entropy" else None),
               load_average=[{"seed": s, **r["record"]["measurement"].get("load", {})}
                             for s, r in zip(seeds, results)],
               machine=results[0]["record"]["machine"])
    return doc


def _header(exps, seeds, exits, what):
    config = exps[0].config
    samples = config["samples"]
    setting = (f"{exps[0].spec.title} on {config.get('data_name', config['dataset'])} "
               f"({samples['train']:,} train / {samples['test']:,} test"
               + (f" / {samples['val']:,} validation" if samples.get("val") else "")
               + f"), batch {config['batch_size']}, {config['baseline_epochs']} + "
               f"{config['branchy_epochs']} epochs")
    return {"title": f"{what}; {setting}; {len(seeds)} seeds ({', '.join(map(str, seeds))}); "
                     f"mean ± standard deviation (ddof 1) [min, max] over the seeds",
            "seeds": seeds, "folders": [os.path.basename(seed_folder("", s)) for s in seeds],
            "setting": setting, "criterion": exps[0].s.criterion, "exits": exits,
            "statistics": "mean, sample standard deviation (ddof 1), min and max over the "
                          "seeds where the row is feasible; accuracy_vs_baseline_pp: the row's "
                          "accuracy minus the same seed's baseline accuracy"}


def _training_seconds(exp):
    """Each stage's training time (s) from its Chainer log (None without the log)."""
    seconds = {}
    for name in ("baseline", "branchynet"):
        record = training_record(exp.path(os.path.join(name, "log")), exp.config["samples"]["train"])
        seconds[name] = record and record["seconds"]
    return seconds


# -- formatting ------------------------------------------------------------------------------

def _csv_columns(doc):
    """Every statistic some row has (mean, std, min, max each), in STATISTICS order."""
    present = {k for row in doc["rows"] for k in row["stats"]}
    keys = [k for k in STATISTICS + tuple(f"exit{n + 1}_percent" for n in range(doc["exits"]))
            if k in present]
    timed = "gain" in present
    return (["network", "selection", "seeds", "infeasible_seeds"]
            + [f"{k}_{s}" for k in keys for s in SUMMARY] + ["thresholds_per_seed"]
            + (["gain_significant_seeds", "checks_flagged_seeds"] if timed else []))


def _csv_row(row):
    out = {k: row[k] for k in ("network", "selection", "seeds", "infeasible_seeds",
                               "gain_significant_seeds", "checks_flagged_seeds")}
    for key, stats in row["stats"].items():
        out.update({f"{key}_{s}": stats[s] for s in SUMMARY})
    out["thresholds_per_seed"] = _thresholds(row["thresholds"])
    return out


def _thresholds(per_seed):
    if all(t is None for t in per_seed):
        return ""
    return " / ".join("-" if t is None else ",".join(f"{v:g}" for v in t) for t in per_seed)


# Markdown columns: (statistic, header, format).
_MD = (("accuracy", "Acc. (%)", ".2f"), ("accuracy_vs_baseline_pp", "Δ acc. vs baseline (pp)", "+.2f"),
       ("time_ms", "Time (ms)", ".3f"), ("gain", "Gain", ".2f"), ("trunk_gain", "Trunk-only gain", ".2f"),
       ("macs", "MACs (M)", ".3g"), ("val_accuracy", "Val acc. (%)", ".2f"))


def _cell(stats, fmt, scale=1.0):
    if stats is None:
        return "-"
    f = lambda v: format(v / scale, fmt)  # noqa: E731
    std = "-" if stats["std"] is None else format(stats["std"] / scale, fmt.lstrip("+"))
    return f"{f(stats['mean'])} ± {std} [{f(stats['min'])}, {f(stats['max'])}]"


def format_markdown(doc):
    """The aggregate as a Markdown table (also printed), with the paper comparison."""
    rows, exits = doc["rows"], doc["exits"]
    columns = [c for c in _MD if any(c[0] in r["stats"] for r in rows)]
    header = (["Network", "Selection", "Seeds"] + [c[1] for c in columns[:2]] + ["T (per seed)", "Exit (%)"]
              + [c[1] for c in columns[2:]])
    if any("gain" in r["stats"] for r in rows):
        header.append("Gain significant")
    lines = [doc["title"], "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["network"], r["selection"],
                 f"{r['seeds']}" + (f" ({r['infeasible_seeds']} infeasible)" if r["infeasible_seeds"] else "")]
        stat = [_cell(r["stats"].get(k), fmt, 1e6 if k == "macs" else 1.0) for k, _, fmt in columns]
        exit_stats = [r["stats"].get(f"exit{n + 1}_percent") for n in range(exits)]
        exit_cell = "-" if exit_stats[0] is None else " / ".join(
            f"{s['mean']:.1f} ± {'-' if s['std'] is None else format(s['std'], '.1f')}"
            for s in exit_stats)
        cells += stat[:2] + [_thresholds(r["thresholds"]) or "-", exit_cell] + stat[2:]
        if "Gain significant" in header:
            cells.append(f"{r['gain_significant_seeds']} of {r['seeds']}" if "gain" in r["stats"] else "-")
        lines.append("| " + " | ".join(cells) + " |")
    paper = doc.get("paper")
    if paper:
        d = paper["difference_pp"]
        std = "-" if d["std"] is None else f"{d['std']:.3f}"
        in_std = "" if paper["in_std"] is None else f", {paper['in_std']:.2g} standard deviations of it"
        lines += ["", f"Paper: {paper['paper_bnet_accuracy']:.2f}% vs {paper['paper_baseline_accuracy']:.2f}% "
                  f"({paper['paper_difference_pp']:+.2f} pp, T = "
                  f"{', '.join(f'{t:g}' for t in paper['paper_thresholds'])}). Here "
                  f"({paper['row']}) minus the baseline, per seed: mean {d['mean']:+.3f} pp, "
                  f"std {std}, range [{d['min']:+.3f}, {d['max']:+.3f}]; the paper's difference "
                  f"is {'inside' if paper['within_range'] else 'outside'} that range{in_std}."]
    return "\n".join(lines)
