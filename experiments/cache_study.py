"""The paper's Fig. 6: runtime and cache-miss rate of B-AlexNet against the threshold.

    python -m experiments.cache_study --results results/cpu-alexnet_cifar10-converged \\
        --runtime chainer onnx --samples 10
    python -m experiments.cache_study --from-results results/fig6-alexnet_cifar10

For the baseline and for the B-net at every threshold vector of the folder's frontier
(``sweep_<tag>.csv``), the cache behaviour of inference at batch size 1 over the first
``--samples`` test samples, per sample: instructions, data references, first-level data
misses, last-level misses and their rates.

How it is counted. Where ``perf stat`` has hardware counters, with ``perf``: a process that
loads the networks and predicts the samples against the same process predicting none.
Where it has none (virtual machines: ``cache-misses <not supported>``), with a cache
simulator, valgrind's callgrind, configured to this machine's caches (sysfs: I1, D1 and the
last level as LL) and to the paper's 20 MB L3 (``--paper-ll``): one process per runtime and
cache; its imports and loading run uninstrumented; then the inputs are read and a warm-up
on other samples runs every layer once and every job once; then each job (the baseline,
each forced exit path, each point) is counted alone between two client requests (zero,
dump). These are the figures of a warm process, as over a long stream of samples; the
baseline is repeated last to show that the order of the jobs does not matter. Then the
baseline and each exit path once more from a cold cache (a buffer of twice the last level
read first): the one-time cost of bringing a path's weights in. Frontier points whose
measured samples take the same exits run the same code: they share one job (the table
says how many points share it); ``--max-points`` measures only some of the patterns.

Runtimes come from the folder's timing record (the sweep's measured batch-size-1 ms, else
its predicted ms, and the baseline row of ``table_<tag>.json``); the ONNX Runtime series
takes them from ``--deploy-results`` (``deploy_<tag>.json`` of ``experiments.deploy
time``) where given. Output: ``cache_study.json`` (command, tool and its configuration,
machine, every count), ``cache_table.csv`` and ``fig6.png``/``.pdf`` in ``--out``;
``--from-results`` redraws the table and figure from the JSON alone.
"""
import argparse
import csv
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

# The paper's description of its Fig. 6 (section V.D).
PAPER_FIG6 = ("Paper, Fig. 6 (B-AlexNet, CPU with a 20 MB L3): x = runtime 4-10 ms, y = "
              "cache-miss rate 0-0.25 %; the more aggressive T values have faster runtime "
              "and also fewer cache misses (later branches' weights are used rarely).")
# The paper's L3, simulated as the second cache: 20 MB, 20-way (the L3 of Intel's
# Sandy/Ivy Bridge-EP Xeons of 2016 with 20 MB), 64-byte lines. sets = 16384, a power of 2.
PAPER_LL = (20971520, 20, 64)
# Callgrind's event names and this study's names for them.
EVENTS = {"Ir": "instructions", "Dr": "data_reads", "Dw": "data_writes",
          "I1mr": "i1_misses", "D1mr": "d1_read_misses", "D1mw": "d1_write_misses",
          "ILmr": "ll_instruction_misses", "DLmr": "ll_read_misses", "DLmw": "ll_write_misses"}
PERF_EVENTS = ("instructions", "L1-dcache-loads", "L1-dcache-load-misses", "LLC-loads",
               "LLC-load-misses", "cache-references", "cache-misses")
TABLE_COLUMNS = ("runtime", "cache", "point", "thresholds", "points_sharing", "exits_measured",
                 "runtime_ms", "runtime_source", "instructions", "data_refs", "d1_misses",
                 "ll_misses", "ll_miss_rate_percent", "d1_miss_rate_percent")


class UsageError(Exception):
    """Bad input: printed as ``error: ...`` with exit status 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.cache_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", metavar="DIR", help="results folder of experiments.run")
    p.add_argument("--from-results", metavar="DIR",
                   help="redraw the table and figure from DIR/cache_study.json alone")
    p.add_argument("--runtime", nargs="+", default=["chainer"], choices=("chainer", "onnx"),
                   help="runtimes measured (default: chainer)")
    p.add_argument("--samples", type=int, default=10,
                   help="first test samples predicted per job (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2,
                   help="test samples after the measured ones that warm up (default: %(default)s)")
    p.add_argument("--tool", default="auto", choices=("auto", "callgrind", "perf"),
                   help="auto: perf where it has hardware cache counters, else callgrind")
    p.add_argument("--caches", nargs="+", default=["machine", "paper"],
                   choices=("machine", "paper"),
                   help="simulated caches: this machine's, the paper's 20 MB L3 (callgrind)")
    p.add_argument("--paper-ll", default=",".join(map(str, PAPER_LL)), metavar="SIZE,WAYS,LINE",
                   help="the paper's last-level cache (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="simulations at a time (default: 2)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the measured processes")
    p.add_argument("--perf-repeats", type=int, default=5,
                   help="perf: runs of each process, medians taken (default: %(default)s)")
    p.add_argument("--onnx", metavar="DIR", help="an ONNX export of the folder's weights "
                   "(default: exported into a temporary folder)")
    p.add_argument("--deploy-results", metavar="DIR",
                   help="folder with deploy_<tag>.json of the same weights: ONNX Runtime ms "
                        "(with --from-results: take them from this, newer, record; the "
                        "counts stay as measured)")
    p.add_argument("--max-points", type=int, default=0,
                   help="measure only this many exit patterns, spread over the frontier "
                        "(0: all; the knee and the paper's T are always kept)")
    p.add_argument("--data-dir", help="dataset folder (default: $BRANCHYNET_DATA)")
    p.add_argument("--tag", default="cpu", help="sweep_<TAG>.csv and table_<TAG>.json")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: results/fig6-<network>)")
    args = p.parse_args(argv)
    if bool(args.results) == bool(args.from_results):
        p.error("give --results DIR (measure) or --from-results DIR (redraw), not both")
    for name in ("samples", "jobs", "perf_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 1 or args.max_points < 0:
        p.error("--warmup must be >= 1 and --max-points >= 0")
    try:
        args.paper_ll = tuple(int(v) for v in args.paper_ll.split(","))
        assert len(args.paper_ll) == 3
    except (ValueError, AssertionError):
        p.error(f"--paper-ll takes SIZE,WAYS,LINE in bytes, got {args.paper_ll!r}")
    return args


# -- the machine ---------------------------------------------------------------------------

def sysfs_caches(cpu="/sys/devices/system/cpu/cpu0/cache"):
    """This CPU's caches from sysfs: ``[{level, type, size, ways, line}]`` (bytes)."""
    caches = []
    if not os.path.isdir(cpu):
        return caches
    for index in sorted(os.listdir(cpu)):
        if not index.startswith("index"):
            continue

        def read(name, index=index):
            with open(os.path.join(cpu, index, name)) as f:
                return f.read().strip()
        size = read("size")
        factor = {"K": 1024, "M": 1024 ** 2}.get(size[-1], 1)
        caches.append({"level": int(read("level")), "type": read("type"),
                       "size": int(size.rstrip("KM")) * factor,
                       "ways": int(read("ways_of_associativity")),
                       "line": int(read("coherency_line_size"))})
    return caches


def simulable(size, ways, line):
    """``(size, ways, line)`` as callgrind can simulate it: its set count must be a power of
    two. Otherwise the sets are rounded down to one and the ways raised in proportion, the
    size staying about the same (valgrind's own rule for the last level it detects; e.g.
    a 480 MiB, 16-way L3 of 491,520 sets is simulated as 262,144 sets of 30 ways)."""
    sets = size // (ways * line)
    if sets >= 1 and sets & (sets - 1) == 0 and sets * ways * line == size:
        return size, ways, line
    power = 1 << (max(sets, 1).bit_length() - 1)
    ways = max(1, round(size / (power * line)))
    return power * ways * line, ways, line


def machine_caches(caches):
    """Callgrind's I1, D1 and LL (the last level) from sysfs caches, as (size, ways, line),
    each made simulable (``simulable``)."""
    def find(level, types):
        return next((simulable(c["size"], c["ways"], c["line"]) for c in caches
                     if c["level"] == level and c["type"] in types), None)
    last = max((c["level"] for c in caches), default=0)
    config = {"I1": find(1, ("Instruction",)), "D1": find(1, ("Data",)),
              "LL": find(last, ("Unified", "Data"))}
    if None in config.values() or last < 2:
        raise UsageError(f"could not read this CPU's I1, D1 and last-level caches from sysfs "
                         f"({caches}); simulate only the paper's (--caches paper)")
    return config


def lscpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), None)


def perf_counters():
    """``(True, '')`` where ``perf stat`` counts hardware cache misses, else ``(False, why)``."""
    if not shutil.which("perf"):
        return False, "perf is not installed"
    try:
        out = subprocess.run(["perf", "stat", "-x,", "-e", "cache-misses,instructions", "true"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"perf stat failed: {err}"
    lines = [line for line in out.stderr.splitlines() if "cache-misses" in line]
    if out.returncode or not lines or lines[0].startswith("<not"):
        return False, ("perf stat -e cache-misses reports "
                       + (lines[0].split(",")[0] if lines else f"exit status {out.returncode}")
                       + " (no hardware counters here)")
    return True, ""


def valgrind_version():
    if not shutil.which("valgrind"):
        return None
    return subprocess.run(["valgrind", "--version"], capture_output=True,
                          text=True).stdout.strip()


# -- the points ------------------------------------------------------------------------------

def read_sweep(path):
    """The rows of a runner's sweep CSV with thresholds, exits, frontier, knee and times."""
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist: run experiments.run on this folder first")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "frontier" not in rows[0]:
        raise UsageError(f"{path} is not a sweep of experiments.run (no frontier column)")
    n_t = sum(1 for k in rows[0] if re.fullmatch(r"T\d+", k))

    def number(value):
        return float(value) if value not in ("", None) else None
    return [{"thresholds": [float(r[f"T{k + 1}"]) for k in range(n_t)],
             "accuracy": float(r["accuracy"]),
             "exit_fractions": [float(r[f"exit{k + 1}_fraction"]) for k in range(n_t + 1)],
             "frontier": r["frontier"] == "1", "knee": r["knee"] == "1",
             "measured_ms": number(r.get("measured_ms")),
             "predicted_ms": number(r.get("predicted_ms"))} for r in rows]


def point_name(thresholds):
    return "T=" + ",".join(f"{t:g}" for t in thresholds)


def group_points(points, exits):
    """Points grouped by the exits their measured samples take: ``[(exits, [points])]``
    in the order of the first point of each group."""
    groups = {}
    for point, row in zip(points, exits):
        groups.setdefault(tuple(int(e) for e in row), []).append(point)
    return list(groups.items())


def spread(groups, keep, count):
    """``count`` of ``groups`` spread evenly over their order, those with a point in
    ``keep`` (names) always among them."""
    if not count or count >= len(groups):
        return groups
    forced = [i for i, (_, pts) in enumerate(groups) if any(p["name"] in keep for p in pts)]
    rest = [i for i in np.linspace(0, len(groups) - 1, count).round().astype(int)
            if i not in forced]
    chosen = sorted(set(forced) | set(rest[:max(0, count - len(forced))]))
    return [groups[i] for i in chosen]


# -- runtimes from committed timing records ----------------------------------------------

def chainer_runtimes(folder, tag, points):
    """Baseline ms and each point's ms from the folder's own timing (measured, else predicted)."""
    path = os.path.join(folder, f"table_{tag}.json")
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist: the folder has no timed table")
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    baseline = next(r for r in table["rows"] if r["selection"] is None)
    out = {"baseline": {"ms": baseline["time_ms"], "source": f"table_{tag}.json baseline row"}}
    for p in points:
        measured = p["measured_ms"] is not None
        out[p["name"]] = {"ms": p["measured_ms"] if measured else p["predicted_ms"],
                          "source": f"sweep_{tag}.csv " + ("measured_ms" if measured
                                                           else "predicted_ms (not timed)")}
    return {"rule": table.get("timing_rule"), "title": table.get("title"), "ms": out}


def onnx_runtimes(deploy, tag, weights):
    """ONNX Runtime ms per point from ``deploy_<tag>.json`` of the same weights, or None
    and the reason."""
    if not deploy:
        return None, "no --deploy-results folder given"
    path = os.path.join(deploy, f"deploy_{tag}.json")
    if not os.path.isfile(path):
        return None, f"{path} does not exist"
    from branchynet.provenance import file_sha256
    for name, digest in weights.items():
        other = os.path.join(deploy, f"{name}.npz")
        if not os.path.isfile(other) or file_sha256(other) != digest:
            return None, f"{deploy}/{name}.npz is not the measured folder's weights"
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    ort = doc.get("summary", {}).get("runtimes", {}).get("ort")
    if not ort:
        return None, f"{path} has no ONNX Runtime ('ort') summary"
    out = {"baseline": {"ms": ort["baseline"]["median_ms"], "source": f"{path} ort baseline"}}
    for name, entry in ort.get("frontier", {}).items():
        out[name] = {"ms": entry["stats"]["median_ms"], "source": f"{path} ort frontier"}
    return {"title": doc.get("title"), "ms": out}, ""


def with_onnx_runtimes(doc, deploy, tag):
    """The study with its ONNX Runtime series' ms taken from a newer deploy record of the same
    weights (a quiet re-measurement); the simulated counts do not depend on the load."""
    if not any(s["runtime"] == "onnx" for s in doc["series"]):
        raise UsageError("the study measured no ONNX Runtime series: nothing to take from "
                         f"{deploy}")
    onnx_ms, why = onnx_runtimes(deploy, tag, doc["weights_sha256"])
    if onnx_ms is None:
        raise UsageError(f"--deploy-results {deploy}: {why}")
    before = doc["runtimes"].get("onnx", {}).get("ms", {})
    missing = [name for name in before if name not in onnx_ms["ms"]]
    if missing:
        raise UsageError(f"{deploy}/deploy_{tag}.json has no ONNX Runtime time for "
                         f"{', '.join(missing[:3])}, which the study's record has: time the "
                         f"same points there")
    refreshed = dict(doc, runtimes=dict(doc["runtimes"], onnx=onnx_ms))
    refreshed["onnx_runtimes_from"] = {
        "deploy_record": os.path.normpath(os.path.join(deploy, f"deploy_{tag}.json")),
        "command": f"python -m experiments.cache_study --from-results DIR "
                   f"--deploy-results {os.path.normpath(deploy)}"}
    return refreshed


# -- measuring ---------------------------------------------------------------------------

def parse_callgrind_dumps(directory):
    """``{label: {event: count}}`` from callgrind's client-request dumps in ``directory``."""
    found = {}
    for name in sorted(os.listdir(directory)):
        label = events = summary = None
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("desc: Trigger: Client Request: "):
                    label = line.split(": ", 3)[3].strip()
                elif line.startswith("events:"):
                    events = line.split()[1:]
                elif line.startswith("summary:"):
                    summary = [int(v) for v in line.split()[1:]]
                if label and events and summary:
                    break
        if label and events and summary:
            found[label] = dict(zip(events, summary))
    return found


def per_sample(events, count):
    """The study's figures per sample from callgrind's events over ``count`` samples."""
    e = {EVENTS[k]: v for k, v in events.items() if k in EVENTS}
    refs = e["data_reads"] + e["data_writes"]
    d1 = e["d1_read_misses"] + e["d1_write_misses"]
    ll_data = e["ll_read_misses"] + e["ll_write_misses"]
    return {"instructions": e["instructions"] / count, "data_refs": refs / count,
            "d1_misses": d1 / count, "ll_misses": ll_data / count,
            "ll_instruction_misses": e["ll_instruction_misses"] / count,
            "i1_misses": e["i1_misses"] / count,
            "ll_miss_rate_percent": 100.0 * ll_data / refs if refs else None,
            "d1_miss_rate_percent": 100.0 * d1 / refs if refs else None}


def child_command(spec_path, nice):
    """The measured process at niceness ``nice`` (absolute: this process's own counts)."""
    return ["nice", "-n", str(max(0, nice - os.nice(0))), sys.executable, "-m",
            "experiments._cache_child", spec_path]


def callgrind_options(config):
    return ["--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes", "--dump-instr=no",
            "--dump-line=no"] + [f"--{k}={','.join(map(str, v))}" for k, v in config.items()]


def run_callgrind(spec, config, work, nice, log):
    """One child under callgrind with cache ``config``; returns its dumps, exits, seconds."""
    os.makedirs(work)
    spec = dict(spec, callgrind=True, out=os.path.join(work, "exits.json"),
                ll_size=config["LL"][0])
    spec_path = os.path.join(work, "spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    dumps = os.path.join(work, "dumps")
    os.makedirs(dumps)
    command = (child_command(spec_path, nice)[:3] + ["valgrind"] + callgrind_options(config)
               + [f"--callgrind-out-file={dumps}/callgrind.out", "--log-file="
                  + os.path.join(work, "valgrind.log")]
               + child_command(spec_path, nice)[3:])
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=_child_env())
    seconds = time.monotonic() - start
    if done.returncode:
        tail, log_file = "", os.path.join(work, "valgrind.log")
        if os.path.exists(log_file):  # not when valgrind refused an option
            with open(log_file, errors="replace") as f:
                tail = f.read()[-2000:]
        raise RuntimeError(f"callgrind run failed (exit {done.returncode}): "
                           f"{done.stderr[-2000:]}\n{tail}")
    with open(spec["out"], encoding="utf-8") as f:
        exits = {r["name"]: r for r in json.load(f)}
    log(f"  {spec['runtime']}, {config['LL'][0] / 2 ** 20:g} MB LL: {seconds:.0f} s")
    return parse_callgrind_dumps(dumps), exits, seconds


def _child_env():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def parse_perf(text):
    """``{event: count}`` from ``perf stat -x,`` output (counts only)."""
    counts = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in PERF_EVENTS:
            try:
                counts[fields[2]] = float(fields[0])
            except ValueError:
                counts[fields[2]] = None
    return counts


def run_perf(spec, work, nice, repeats, log):
    """Each job with ``count`` samples against the same process with none, under
    ``perf stat``, ``repeats`` times interleaved; medians of the differences per sample."""
    os.makedirs(work)
    jobs = {}
    for index, job in enumerate(spec["jobs"]):
        runs = {"full": [], "none": []}
        for _ in range(repeats):
            for kind, count in (("full", spec["count"]), ("none", 0)):
                path = os.path.join(work, f"spec-{index}-{kind}.json")
                out = os.path.join(work, f"exits-{index}-{kind}.json")
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(dict(spec, job=index, count=count, out=out), f)
                done = subprocess.run(["perf", "stat", "-x,", "-e", ",".join(PERF_EVENTS), "--"]
                                      + child_command(path, nice), capture_output=True,
                                      text=True, env=_child_env())
                if done.returncode:
                    raise RuntimeError(f"perf run failed: {done.stderr[-2000:]}")
                runs[kind].append(parse_perf(done.stderr))
        with open(os.path.join(work, f"exits-{index}-full.json"), encoding="utf-8") as f:
            record = json.load(f)[0]
        diff = {e: float(np.median([(a[e] - b[e]) for a, b in zip(runs["full"], runs["none"])]))
                / spec["count"] for e in PERF_EVENTS
                if all(r.get(e) is not None for r in runs["full"] + runs["none"])}
        refs = diff.get("L1-dcache-loads")
        ll = diff.get("LLC-load-misses", diff.get("cache-misses"))
        jobs[job["name"]] = {
            "per_sample": {"instructions": diff.get("instructions"), "data_refs": refs,
                           "d1_misses": diff.get("L1-dcache-load-misses"), "ll_misses": ll,
                           "ll_miss_rate_percent": 100 * ll / refs if refs and ll is not None
                           else None,
                           "d1_miss_rate_percent": 100 * diff["L1-dcache-load-misses"] / refs
                           if refs and "L1-dcache-load-misses" in diff else None},
            "raw": runs, "exits": record["exits"], "labels": record["labels"]}
        log(f"  {spec['runtime']}: {job['name']} done")
    return jobs


# -- the study ------------------------------------------------------------------------------

def measure(args, log=print, save=None):
    """Run the study on ``args.results``; returns the JSON document, also passed to
    ``save`` after every finished process (so a cut run keeps what it measured)."""
    from branchynet.provenance import file_sha256
    from branchynet.sweep import ExitOutputs, exit_indices
    from branchynet.timing import forced_exit_thresholds, loadavg
    from experiments.experiment import Experiment
    folder = args.results
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UsageError(f"{folder} is not a results folder of experiments.run (no config.json)")
    for name in ("baseline.npz", "branchynet.npz", "exit_outputs.npz"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise UsageError(f"{folder}/{name} is missing: train and sweep there first")
    rows = read_sweep(os.path.join(folder, f"sweep_{args.tag}.csv"))
    tool, why = choose_tool(args.tool)
    if "onnx" in args.runtime:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UsageError("--runtime onnx needs onnx and onnxruntime: pip install -e "
                             "'.[deploy]'") from None
    caches = sysfs_caches()
    configs = {}
    if tool == "callgrind":
        if "machine" in args.caches:
            configs["machine"] = machine_caches(caches)
        if "paper" in args.caches:
            base = configs.get("machine") or machine_caches(caches)
            configs["paper"] = {"I1": base["I1"], "D1": base["D1"], "LL": args.paper_ll}
    exp = Experiment.from_results(folder, log=lambda *a: None)
    exp.s.data_dir = args.data_dir or os.environ.get("BRANCHYNET_DATA")
    exp.s.test_limit = args.samples + args.warmup
    exp.s.no_progress = True
    exp.s.timing_samples = 0  # nothing is timed here
    try:
        exp.load_data()
    except (ValueError, OSError, SystemExit) as err:
        raise UsageError(f"cannot read {folder}'s test data: {err}") from None
    x = exp.data.test_x
    if len(x) < args.samples + args.warmup:
        raise UsageError(f"the test set has {len(x)} samples; --samples + --warmup need "
                         f"{args.samples + args.warmup}")
    outputs = ExitOutputs.load(os.path.join(folder, "exit_outputs.npz"))
    if not np.array_equal(outputs.labels[:len(x)], exp.data.test_y):
        raise UsageError(f"the test labels read from the data differ from those of "
                         f"{folder}/exit_outputs.npz: another dataset or preprocessing")
    n_exits = outputs.n_exits
    frontier = [dict(r, name=point_name(r["thresholds"])) for r in rows if r["frontier"]]
    if not frontier:
        raise UsageError(f"sweep_{args.tag}.csv marks no frontier point")
    paper_t = exp.config.get("paper_thresholds") or _paper_t(exp.spec.name)
    keep = {p["name"] for p in frontier if p["knee"]}
    if paper_t:
        keep.add(point_name(paper_t))
    expected = exit_indices(outputs.take(slice(0, args.samples)),
                            [p["thresholds"] for p in frontier])
    all_groups = group_points(frontier, expected)
    groups = spread(all_groups, keep, args.max_points)
    weights = {n: file_sha256(os.path.join(folder, f"{n}.npz"))
               for n in ("baseline", "branchynet")}

    jobs = [{"name": "baseline", "net": "baseline"}]
    jobs += [{"name": f"exit {n + 1} path", "net": "branchynet",
              "thresholds": forced_exit_thresholds(n, n_exits)} for n in range(n_exits)]
    for k, (_, pts) in enumerate(groups):
        rep = next((p for p in pts if p["name"] in keep), pts[0])
        jobs.append({"name": f"pattern {k + 1}", "net": "branchynet",
                     "thresholds": rep["thresholds"], "represented_by": rep["name"]})
    cold = []
    if tool == "callgrind":
        cold = [dict(j) for j in jobs[:n_exits + 1]]
        jobs.append(dict(jobs[0], name="baseline (repeated last)"))
    log(f"{len(frontier)} frontier points of sweep_{args.tag}.csv; their exits on the first "
        f"{args.samples} test samples fall into {len(all_groups)} patterns"
        + (f", {len(groups)} measured" if len(groups) < len(all_groups) else "")
        + f"; {len(jobs)} jobs per process; tool: {tool}" + (f" ({why})" if why else ""))

    work = tempfile.mkdtemp(prefix="cache_study-")
    try:
        np.savez(os.path.join(work, "samples.npz"), x=x)
        base_spec = {"network": exp.spec.name, "n_exits": n_exits, "count": args.samples,
                     "warmup_from": args.samples, "samples": os.path.join(work, "samples.npz"),
                     "weights": {n: os.path.abspath(os.path.join(folder, f"{n}.npz"))
                                 for n in weights},
                     "jobs": jobs, "cold_jobs": cold}
        onnx_dir, onnx_note = None, None
        if "onnx" in args.runtime:
            onnx_dir, onnx_note = prepare_onnx(args, exp, folder, x, work, weights)
        load_before = loadavg()
        started = datetime.datetime.now(datetime.timezone.utc)
        doc = None
        tasks = []
        for runtime in args.runtime:
            spec = dict(base_spec, runtime=runtime, onnx=onnx_dir)
            if tool == "callgrind":
                tasks += [(runtime, cache, spec) for cache in configs]
            else:
                tasks.append((runtime, "hardware", spec))
        log(f"{len(tasks)} processes, at most {args.jobs} at a time (nice {args.nice})")

        def run(task):
            runtime, cache, spec = task
            where = os.path.join(work, f"{runtime}-{cache}")
            if tool == "perf":
                return task, run_perf(spec, where, args.nice, args.perf_repeats, log), None
            dumps, exits, seconds = run_callgrind(spec, configs[cache], where, args.nice, log)
            missing = [j["name"] for j in jobs if j["name"] not in dumps] + [
                "cold: " + j["name"] for j in cold if "cold: " + j["name"] not in dumps]
            if missing:
                raise RuntimeError(f"callgrind wrote no dump for {missing}")
            return task, {name: {"per_sample": per_sample(dumps[name], args.samples),
                                 "events": dumps[name], "exits": exits[name]["exits"],
                                 "labels": exits[name]["labels"]} for name in dumps}, seconds

        runtimes = {"chainer": chainer_runtimes(folder, args.tag, frontier)}
        if "onnx" in args.runtime:
            onnx_ms, onnx_why = onnx_runtimes(args.deploy_results, args.tag, weights)
            runtimes["onnx"] = onnx_ms or {"missing": onnx_why}
        points = []
        for k, (pattern, pts) in enumerate(groups):
            for p in pts:
                points.append({"name": p["name"], "thresholds": p["thresholds"],
                               "job": f"pattern {k + 1}", "accuracy": p["accuracy"],
                               "exit_fractions": p["exit_fractions"], "knee": p["knee"],
                               "paper_t": bool(paper_t) and p["name"] == point_name(paper_t),
                               "exits_expected": list(pattern)})
        finished = []
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in as_completed([pool.submit(run, task) for task in tasks]):
                finished.append(future.result())
                finished.sort(key=lambda f: tasks.index(f[0]))
                series = [{"runtime": runtime, "cache": cache, "wall_s": seconds,
                           "jobs": results} for (runtime, cache, _), results, seconds in finished]
                check_exits(series, jobs, groups, args.samples, log)
                doc = document(args, exp, folder, started, load_before, loadavg(), weights,
                               n_exits, tool, why, configs, caches, frontier, all_groups,
                               groups, paper_t, jobs, series, points, runtimes, onnx_note)
                doc["complete"] = len(finished) == len(tasks)
                if save:
                    save(doc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return doc


def document(args, exp, folder, started, load_before, load_after, weights, n_exits, tool,
             why, configs, caches, frontier, all_groups, groups, paper_t, jobs, series,
             points, runtimes, onnx_note):
    """The study's JSON document from the series measured so far."""
    return {
        "title": f"Cache behaviour of inference at batch size 1: {exp.spec.title} and "
                 f"B-{exp.spec.title} at the frontier's thresholds",
        "command": "python -m experiments.cache_study " + " ".join(_argv_of(args)),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "load": {"before": load_before, "after": load_after,
                 "note": "1-minute load averages; the counts are deterministic under "
                         "callgrind, only the wall seconds depend on the load"},
        "results": os.path.normpath(folder), "weights_sha256": weights,
        "network": exp.spec.name, "network_title": exp.spec.title, "n_exits": n_exits,
        "samples": {"measured": args.samples, "indices": f"test samples 0-{args.samples - 1}",
                    "warmup": f"test samples {args.samples}-{args.samples + args.warmup - 1}, "
                              f"every layer of both networks once, then every job once, "
                              f"before any job is counted"},
        "tool": tool_record(tool, why, configs),
        "machine": machine_record(caches),
        "frontier": {"points": len(frontier), "patterns": len(all_groups),
                     "patterns_measured": len(groups), "grid": exp.config.get("grid"),
                     "paper_t": paper_t, "rule": "points of sweep_<tag>.csv with frontier = 1; "
                     "points whose measured samples take the same exits share one job"},
        "frontier_points": [{k: p[k] for k in ("name", "thresholds", "accuracy",
                                                "exit_fractions", "knee")}
                            | {"paper_t": bool(paper_t) and p["name"] == point_name(paper_t)}
                            for p in frontier],
        "jobs": [_plain_job(j) for j in jobs], "series": series, "points": points,
        "runtimes": runtimes, "onnx_export": onnx_note, "paper": PAPER_FIG6,
    }


def _plain_job(job):
    """A job for the JSON: infinite thresholds (forced exits) written as "inf"."""
    if "thresholds" not in job:
        return job
    return dict(job, thresholds=[t if np.isfinite(t) else "inf" for t in job["thresholds"]])


def _paper_t(network):
    from branchynet.paper import paper_thresholds
    return paper_thresholds(network)


def _argv_of(args):
    parts = [f"--results {os.path.normpath(args.results)}", "--runtime " + " ".join(args.runtime),
             f"--samples {args.samples}", f"--warmup {args.warmup}", f"--tool {args.tool}",
             "--caches " + " ".join(args.caches), f"--jobs {args.jobs}", f"--nice {args.nice}"]
    if args.max_points:
        parts.append(f"--max-points {args.max_points}")
    if args.deploy_results:
        parts.append(f"--deploy-results {os.path.normpath(args.deploy_results)}")
    if args.out:
        parts.append(f"--out {os.path.normpath(args.out)}")
    return parts


def choose_tool(wanted):
    """``(tool, why)``: perf where its hardware counters work, else callgrind."""
    counters, why_not = perf_counters()
    if wanted == "perf" and not counters:
        raise UsageError(f"--tool perf: {why_not}; use --tool callgrind")
    if wanted == "perf" or (wanted == "auto" and counters):
        return "perf", "hardware counters"
    if not valgrind_version():
        raise UsageError("valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)"
                         + (f", and {why_not}" if not counters else ""))
    return "callgrind", why_not if not counters else "--tool callgrind"


def tool_record(tool, why, configs):
    if tool == "perf":
        return {"name": "perf stat", "why": why, "events": list(PERF_EVENTS),
                "method": "per job: a process predicting the samples minus the same process "
                          "predicting none, medians over repeats, per sample"}
    return {"name": "callgrind", "version": valgrind_version(), "why": why,
            "options": {name: callgrind_options(c) for name, c in configs.items()},
            "caches": {name: {k: {"size": v[0], "ways": v[1], "line": v[2]}
                              for k, v in c.items()} for name, c in configs.items()},
            "method": "one process per runtime and cache; imports and loading uninstrumented; "
                      "warm-up; each job counted alone between callgrind client requests "
                      "(zero stats, dump stats)",
            "rates": "ll_miss_rate = last-level data misses / data references; d1_miss_rate "
                     "= first-level data misses / data references (reads + writes)",
            "note": "callgrind simulates two levels: this machine's L2 is not simulated; "
                    "LL is the last level (L3); no prefetching, write-allocate; a cache "
                    "whose set count is not a power of two (machine.caches has sysfs's) "
                    "is simulated with the sets rounded down to one and the ways raised "
                    "in proportion, as valgrind does"}


def machine_record(caches):
    import platform
    record = {"cpu": lscpu_model(), "cpu_count": os.cpu_count(), "caches": caches,
              "code": _git_commit(),
              "platform": platform.platform(), "python": sys.version.split()[0],
              "numpy": np.__version__}
    try:
        import chainer
        record["chainer"] = chainer.__version__
        import onnxruntime
        record["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return record


def _git_commit():
    """The repository's commit (and whether the tree differs from it), or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "branchynet",
                                "experiments", "networks"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" (with uncommitted changes)" if dirty else "")


def prepare_onnx(args, exp, folder, x, work, weights):
    """The ONNX export measured: ``--onnx`` (checked against the weights) or a fresh one."""
    from branchynet.deploy import export_bnet, read_manifest
    from branchynet.training import load_weights
    if args.onnx:
        manifest = read_manifest(args.onnx)
        if manifest.get("weights_sha256") != weights:
            raise UsageError(f"{args.onnx} was not exported from {folder}'s weights: export it "
                             f"again (python -m experiments.deploy export --results {folder})")
        return os.path.abspath(args.onnx), f"{os.path.normpath(args.onnx)} (given)"
    exp.build_networks()
    load_weights(os.path.join(folder, "baseline.npz"), exp.baseline)
    load_weights(os.path.join(folder, "branchynet.npz"), exp.branchy)
    out = os.path.join(work, "onnx")
    export_bnet(exp.branchy, exp.baseline, x, out, info={"weights_sha256": weights})
    return out, ("exported from the folder's weights by branchynet.deploy.export_bnet into a "
                 "temporary folder; the B-net runs as parts with batch-size-1 sessions and "
                 "Python routing (OnnxBranchyNet.predict), the baseline as one graph "
                 "(predict_baseline); 1 intra-op thread")


def check_exits(series, jobs, groups, count, log):
    """Every job's exits must be the expected pattern (forced paths: all at their exit)."""
    expected = {f"pattern {k + 1}": list(pattern) for k, (pattern, _) in enumerate(groups)}
    for n in range(len([j for j in jobs if j["name"].endswith(" path")])):
        expected[f"exit {n + 1} path"] = [n] * count
    for s in series:
        s["exit_mismatches"] = {name: {"expected": want, "took": s["jobs"][name]["exits"]}
                                for name, want in expected.items()
                                if s["jobs"][name]["exits"] != want}
        if s["exit_mismatches"]:
            log(f"note: {s['runtime']}: {len(s['exit_mismatches'])} job(s) took other exits "
                f"at batch size 1 than the batched sweep gives (borderline scores); the "
                f"counts are those of the exits taken (recorded)")


# -- table and figure from the JSON -------------------------------------------------------

def table_rows(doc):
    """One row per series and point (the baseline first), from the JSON alone."""
    rows = []
    for s in doc["series"]:
        ms = doc["runtimes"].get(s["runtime"], {}).get("ms", {})
        entries = [("AlexNet" if doc["network"] == "alexnet_cifar10" else doc["network_title"],
                    None, "baseline", 1, "baseline")]
        entries += [(p["name"], p["thresholds"], p["job"],
                     sum(q["job"] == p["job"] for q in doc["points"]), p["name"])
                    for p in doc["points"]]
        for label, thresholds, job, sharing, timing in entries:
            figures = s["jobs"][job]
            exits = figures["exits"]
            counts = np.bincount(exits, minlength=doc["n_exits"]).tolist() \
                if thresholds is not None else None
            runtime = ms.get(timing)
            rows.append({"runtime": s["runtime"], "cache": s["cache"], "point": label,
                         "thresholds": thresholds, "points_sharing": sharing,
                         "exits_measured": counts,
                         "runtime_ms": runtime["ms"] if runtime else None,
                         "runtime_source": runtime["source"] if runtime else None,
                         **{k: figures["per_sample"][k] for k in
                            ("instructions", "data_refs", "d1_misses", "ll_misses",
                             "ll_miss_rate_percent", "d1_miss_rate_percent")}})
    return rows


FIGURES = ("instructions", "data_refs", "d1_misses", "ll_misses")


def path_figures(doc, series):
    """Per-sample figures of each exit path alone (``exit k path`` jobs), in exit order."""
    return [series["jobs"][f"exit {k + 1} path"]["per_sample"] for k in range(doc["n_exits"])]


def mixed(paths, fractions):
    """Per-sample figures of a mix of exits (fractions per exit) from the exit paths alone,
    with the two rates."""
    out = {k: float(sum(f * p[k] for f, p in zip(fractions, paths))) for k in FIGURES}
    out["ll_miss_rate_percent"] = 100 * out["ll_misses"] / out["data_refs"]
    out["d1_miss_rate_percent"] = 100 * out["d1_misses"] / out["data_refs"]
    return out


def additivity(doc):
    """Per series: the largest relative difference, over the measured exit patterns,
    between a pattern's figures and those its exits give from the exit paths alone."""
    out = {}
    for s in doc["series"]:
        paths, worst = path_figures(doc, s), {k: 0.0 for k in FIGURES}
        for name, job in s["jobs"].items():
            if not name.startswith("pattern "):
                continue
            counts = np.bincount(job["exits"], minlength=doc["n_exits"]) / len(job["exits"])
            model = mixed(paths, counts)
            for k in FIGURES:
                if job["per_sample"][k]:
                    worst[k] = max(worst[k], abs(model[k] / job["per_sample"][k] - 1))
        out[f"{s['runtime']}, {s['cache']}"] = worst
    return out


def _ranks(values):
    values = np.asarray(values, float)
    ranks = np.empty(len(values))
    ranks[values.argsort(kind="mergesort")] = np.arange(len(values))
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def spearman(a, b):
    """Spearman's rank correlation (ties get their mean rank); None below 3 points."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def claim_check(doc, rows):
    """Per series: Spearman's correlation of runtime with the LL miss rate over the B-net
    points with a measured runtime, measured on the samples' exits (the measured patterns)
    and at every frontier point's test-set exit mix (from the exit paths); positive =
    faster points miss less, as the paper says."""
    out = {}
    for s in doc["series"]:
        paths = path_figures(doc, s)
        ms = doc["runtimes"].get(s["runtime"], {}).get("ms", {})
        pts = [r for r in rows if (r["runtime"], r["cache"]) == (s["runtime"], s["cache"])
               and r["thresholds"] is not None and r["runtime_ms"] is not None
               and "not timed" not in r["runtime_source"]]
        every = [p for p in doc.get("frontier_points", doc["points"])
                 if p["name"] in ms and "not timed" not in ms[p["name"]]["source"]]
        at_mix = [mixed(paths, p["exit_fractions"]) for p in every]
        rates = [m["ll_miss_rate_percent"] for m in at_mix]
        out[f"{s['runtime']}, {s['cache']}"] = {
            "measured_points": len(pts),
            "spearman_runtime_ll_rate": spearman(
                [r["runtime_ms"] for r in pts], [r["ll_miss_rate_percent"] for r in pts]),
            "points_at_test_mix": len(every),
            "spearman_runtime_ll_rate_at_test_mix": spearman(
                [ms[p["name"]]["ms"] for p in every], rates),
            "ll_rate_range_at_test_mix_percent": [min(rates), max(rates)] if rates else None}
    return out


def order_check(doc):
    """Per series: the baseline job's counts, first and repeated last (relative change)."""
    out = {}
    for s in doc["series"]:
        first, last = s["jobs"].get("baseline"), s["jobs"].get("baseline (repeated last)")
        if first and last:
            out[f"{s['runtime']}, {s['cache']}"] = {
                k: (last["per_sample"][k] - first["per_sample"][k]) / first["per_sample"][k]
                if first["per_sample"][k] else None
                for k in ("instructions", "d1_misses", "ll_misses")}
    return out


def write_table(path, rows):
    from branchynet.io import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(TABLE_COLUMNS)
        for r in rows:
            w.writerow([_cell(r[c]) for c in TABLE_COLUMNS])


def _cell(value):
    if isinstance(value, list):
        return " ".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def format_table(doc, rows):
    """A short text table: per series, the baseline and each measured pattern once."""
    lines = []
    for s in doc["series"]:
        lines.append(f"{s['runtime']}, {_cache_title(doc, s['cache'])}:")
        lines.append(f"  {'point':<26}{'shared':>7}{'exits':>10}{'ms':>8}{'instr M':>9}"
                     f"{'refs M':>8}{'D1 k':>8}{'LL':>8}{'LL %':>9}{'D1 %':>7}")
        seen = set()
        for r in rows:
            if (r["runtime"], r["cache"]) != (s["runtime"], s["cache"]):
                continue
            job = next((p["job"] for p in doc["points"] if p["name"] == r["point"]), "baseline")
            if job in seen:
                continue
            seen.add(job)
            ms = f"{r['runtime_ms']:.2f}" if r["runtime_ms"] is not None else "-"
            exits = "/".join(map(str, r["exits_measured"])) if r["exits_measured"] else "-"
            lines.append(f"  {r['point']:<26}{r['points_sharing']:>7}{exits:>10}{ms:>8}"
                         f"{r['instructions'] / 1e6:>9.2f}{r['data_refs'] / 1e6:>8.2f}"
                         f"{r['d1_misses'] / 1e3:>8.1f}{r['ll_misses']:>8.0f}"
                         f"{r['ll_miss_rate_percent']:>9.4f}{r['d1_miss_rate_percent']:>7.2f}")
        cold = [(name[6:], j) for name, j in s["jobs"].items() if name.startswith("cold: ")]
        if cold:
            lines.append("  from a cold cache (a buffer of twice the LL read first), per sample:")
            for name, j in cold:
                f = j["per_sample"]
                lines.append(f"  {name:<26}{'':>25}{f['instructions'] / 1e6:>9.2f}"
                             f"{f['data_refs'] / 1e6:>8.2f}{f['d1_misses'] / 1e3:>8.1f}"
                             f"{f['ll_misses']:>8.0f}{f['ll_miss_rate_percent']:>9.4f}"
                             f"{f['d1_miss_rate_percent']:>7.2f}")
    return "\n".join(lines)


def _cache_title(doc, cache):
    caches = doc["tool"].get("caches", {}).get(cache)
    if not caches:
        return "hardware counters"
    ll = caches["LL"]
    return (f"simulated {'this machine' if cache == 'machine' else 'the paper'}'s caches "
            f"(LL {ll['size'] / 2 ** 20:g} MB, {ll['ways']}-way)")


def figure(doc, rows):
    """Fig. 6 as the paper draws it (runtime x, LL miss rate y): measured on the samples'
    exits, at each point's test-set exit mix (from the exit paths), and the D1 miss rate;
    returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4))
    markers = {"chainer": "o", "onnx": "s"}
    colors = {("chainer", "machine"): "tab:blue", ("chainer", "paper"): "tab:orange",
              ("onnx", "machine"): "tab:green", ("onnx", "paper"): "tab:red"}
    fractions = {p["name"]: p for p in doc.get("frontier_points", doc["points"])}
    missing = []
    for s in doc["series"]:
        mine = [r for r in rows if (r["runtime"], r["cache"]) == (s["runtime"], s["cache"])
                and r["runtime_ms"] is not None]
        if not mine:
            missing.append(f"{s['runtime']} ({s['cache']})")
            continue
        color = colors.get((s["runtime"], s["cache"]), "tab:gray")
        paths = path_figures(doc, s)
        pts = sorted((r for r in mine if r["thresholds"] is not None),
                     key=lambda r: r["runtime_ms"])
        ms = doc["runtimes"].get(s["runtime"], {}).get("ms", {})
        every = sorted((p for p in doc.get("frontier_points", doc["points"])
                        if p["name"] in ms), key=lambda p: ms[p["name"]]["ms"])
        at_mix = [mixed(paths, p["exit_fractions"]) for p in every]
        label = f"{s['runtime']}, {_cache_title(doc, s['cache'])}"
        panels = ((axes[0], pts, [r["ll_miss_rate_percent"] for r in pts], "ll_miss_rate_percent"),
                  (axes[1], [{"runtime_ms": ms[p["name"]]["ms"], "point": p["name"]}
                             for p in every],
                   [m["ll_miss_rate_percent"] for m in at_mix], "ll_miss_rate_percent"),
                  (axes[2], pts, [r["d1_miss_rate_percent"] for r in pts], "d1_miss_rate_percent"))
        for ax, drawn, ys, key in panels:
            xs = [r["runtime_ms"] for r in drawn]
            ax.plot(xs, ys, markers[s["runtime"]], color=color, ms=4, alpha=0.6,
                    mfc="none" if s["runtime"] == "onnx" else color, label=f"B-net, {label}")
            for r in mine:
                if r["thresholds"] is None:
                    ax.plot(r["runtime_ms"], r[key], "D", color=color, ms=9, mec="black",
                            label=f"baseline, {label}")
            for x, y, r in zip(xs, ys, drawn):
                p = fractions[r["point"]]
                if p["knee"] or p["paper_t"]:
                    ax.plot(x, y, "*" if p["knee"] else "X", color=color, ms=13, mec="black")
    title = doc.get("network_title", "")
    n = doc["samples"]["measured"]
    axes[0].set(xlabel="runtime, ms per sample (batch size 1, the folders' timing)",
                ylabel="LL miss rate, % of data references",
                title=f"Fig. 6: {title} (diamond), B-{title} as T varies\n(exits of the "
                      f"first {n} test samples)")
    axes[1].set(xlabel="runtime, ms per sample", ylabel="LL miss rate, % of data references",
                title="the same at each point's test-set exit mix\n(from the exit paths alone)")
    axes[2].set(xlabel="runtime, ms per sample", ylabel="D1 miss rate, % of data references",
                title=f"first-level data cache (star: knee, X: paper's T)\n(exits of the first "
                      f"{n} test samples)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[0].legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    note = PAPER_FIG6 + f"\nHere: {doc['tool']['name']}, per sample over the first {n} test " \
        f"samples, warm caches; {doc['frontier']['points']} frontier points in " \
        f"{doc['frontier']['patterns_measured']} exit patterns; {doc['date']}; " \
        f"{doc['machine']['cpu']}."
    if missing:
        note += f" No runtime for {', '.join(missing)}: not drawn (counts in the JSON)."
    fig.text(0.01, 0.01, note, fontsize=7.5, wrap=True, va="bottom")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return fig


def plot(doc, rows, stem):
    """``figure`` saved as ``stem``.png and .pdf (atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from branchynet.io import atomic_path
    fig = figure(doc, rows)
    for ext in ("png", "pdf"):
        with atomic_path(f"{stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=120)
    plt.close(fig)


def write_outputs(doc, out, log=print):
    rows = table_rows(doc)
    doc["order_check"] = order_check(doc)
    doc["additivity"] = additivity(doc)
    doc["claim_check"] = claim_check(doc, rows)
    write_table(os.path.join(out, "cache_table.csv"), rows)
    plot(doc, rows, os.path.join(out, "fig6"))
    log(format_table(doc, rows))
    if doc["order_check"]:
        log("order check (baseline repeated after every job, relative change): " + "; ".join(
            f"{k}: " + ", ".join(f"{e} {v:+.2%}" for e, v in d.items() if v is not None)
            for k, d in doc["order_check"].items()))
    log("exit paths alone predict each pattern (largest relative difference): " + "; ".join(
        f"{k}: " + ", ".join(f"{e} {v:.1%}" for e, v in d.items())
        for k, d in doc["additivity"].items()))
    for k, c in doc["claim_check"].items():
        rho, rho_mix = c["spearman_runtime_ll_rate"], c["spearman_runtime_ll_rate_at_test_mix"]
        span = c["ll_rate_range_at_test_mix_percent"]
        log(f"{k}: Spearman(runtime, LL miss rate) over {c['measured_points']} measured points "
            + (f"{rho:+.2f}" if rho is not None else "n/a")
            + f"; over {c['points_at_test_mix']} timed frontier points at their test-set mix "
            + (f"{rho_mix:+.2f}" if rho_mix is not None else "n/a")
            + (f" (LL miss rate {span[0]:.4f}-{span[1]:.4f}%)" if span else ""))
    log(f"wrote {out}/cache_table.csv, {out}/fig6.png, {out}/fig6.pdf")
    return rows


def main(argv=None):
    try:
        args = parse_args(argv)
        from branchynet.io import write_json
        if args.from_results:
            path = os.path.join(args.from_results, "cache_study.json")
            if not os.path.isfile(path):
                raise UsageError(f"{path} does not exist: measure first (--results DIR)")
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            if args.deploy_results:
                doc = with_onnx_runtimes(doc, args.deploy_results, args.tag)
            out = args.out or args.from_results
            write_outputs(doc, out)
            if args.deploy_results:
                write_json(os.path.join(out, "cache_study.json"), doc)
            return 0

        def save(doc):
            out = args.out or os.path.join("results", f"fig6-{doc['network']}")
            write_outputs(doc, out)
            write_json(os.path.join(out, "cache_study.json"), doc)
            print(f"wrote {out}/cache_study.json ({len(doc['series'])} series"
                  + ("" if doc["complete"] else ", more to come") + ")")
        measure(args, save=save)
        return 0
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
