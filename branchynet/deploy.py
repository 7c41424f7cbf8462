"""Early exit outside Chainer: a B-net exported to ONNX as parts, run on ONNX Runtime.

Export (``export_bnet``) writes, with Chainer's own exporter (``onnx_chainer``, shipped
with chainer 7.8.1):

* ``segmentK.onnx``: trunk segment K (the layers between branch points K-1 and K);
* ``exitK.onnx``: the head of exit K; every exit but the last also outputs the exit's
  entropy score (``score``), computed in the graph, so the decision costs no extra call;
* ``baseline.onnx``: the baseline (main branch) as one graph;
* ``early_exit.onnx``: the parts composed into one graph that routes one sample itself
  (``If`` per exit; batch size 1, entropy);
* ``manifest.json``: the layer structure, the exits, the thresholds and the criterion.

The parts take any batch size (the exporter fixes the traced one; ``_dynamic_batch``
frees it). ``OnnxBranchyNet`` runs early-exit inference on them with the rule of
``branchynet.routing``: a sample leaves at the first exit whose score is strictly below the
threshold, the last exit takes every sample left; batches are regrouped between exits.
``ort_variants`` and ``chainer_variants`` are the timing variants of
``python -m experiments.deploy time`` (see docs/deploy.md).
"""
import json
import os

import chainer
import numpy as np

from branchynet import _onnx_compat  # noqa: F401  (onnx.mapping for onnx_chainer)
from branchynet.io import atomic_path, read_json, write_json
from branchynet.routing import check_thresholds, get_criterion

FORMAT = "branchynet-onnx/1"
MANIFEST = "manifest.json"
# The exporter traces a batch of this many samples; its size is then freed. Any size > 1
# tells the batch axis apart from other axes of size 1.
EXPORT_BATCH = 3
# The criterion computed inside the exit graphs (the others are computed on the logits).
GRAPH_CRITERION = "entropy"


class DeployError(ValueError):
    """A bad export folder or argument; the message says what is wrong and how to fix it."""


def _describe(layer):
    """A short, readable description of one layer of a Sequential (for the manifest)."""
    if isinstance(layer, chainer.Link):
        params = {name.lstrip("/"): list(p.shape) for name, p in layer.namedparams()
                  if p.array is not None}
        return {"link": type(layer).__name__, "params": params}
    func = getattr(layer, "func", None)
    if func is not None:  # functools.partial
        return {"function": func.__name__, "options": {k: v for k, v in layer.keywords.items()}}
    return {"function": getattr(layer, "__name__", type(layer).__name__)}


def _dynamic_batch(model, batch):
    """Free the traced batch size: graph inputs/outputs get a symbolic batch axis ``N``,
    ``Reshape`` targets keep axis 0 from their input, and weights stop being graph inputs
    (so ONNX Runtime may fold and fuse them)."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_value == batch:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    del graph.value_info[:]
    from onnx import numpy_helper
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        name = node.input[1]
        if name in consts:
            attr = next(a for a in consts[name].attribute if a.name == "value")
            shape = numpy_helper.to_array(attr.t).copy()
        elif name in inits:
            shape = numpy_helper.to_array(inits[name]).copy()
        else:
            continue
        if shape[0] != batch:
            raise DeployError(f"cannot free the batch size of a Reshape to {shape.tolist()} "
                              f"(axis 0 is not the batch axis)")
        shape[0] = 0  # ONNX: 0 copies the input's size along that axis
        tensor = numpy_helper.from_array(shape.astype(np.int64), name)
        if name in consts:
            attr.t.CopyFrom(tensor)
        else:
            inits[name].CopyFrom(tensor)


def _append_entropy(model, logits):
    """Add an output ``score``: the entropy (natural log) of softmax(``logits``) per row,
    the same formula as ``branchynet.routing.entropy``."""
    from onnx import TensorProto, helper
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    nodes = [helper.make_node("LogSoftmax", [logits], ["_log_p"], axis=1),
             helper.make_node("Exp", ["_log_p"], ["_p"]),
             helper.make_node("Mul", ["_p", "_log_p"], ["_p_log_p"])]
    if opset >= 13:
        axes = helper.make_tensor("_axes", TensorProto.INT64, [1], [1])
        model.graph.initializer.append(axes)
        nodes.append(helper.make_node("ReduceSum", ["_p_log_p", "_axes"], ["_sum"], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceSum", ["_p_log_p"], ["_sum"], axes=[1], keepdims=0))
    nodes.append(helper.make_node("Neg", ["_sum"], ["score"]))
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]))


def export_link(link, x, path, output_names=("logits",), score=False):
    """Export ``link`` (a Chain called on one array) traced on ``x`` to ``path``; returns
    the chain's output on ``x`` (an array). ``score`` adds the entropy output."""
    import onnx
    import onnx_chainer
    with chainer.using_config("train", False):
        model = onnx_chainer.export(link, chainer.Variable(x), filename=None,
                                    input_names=["input"], output_names=list(output_names),
                                    train=False)
    _dynamic_batch(model, len(x))
    if score:
        _append_entropy(model, output_names[0])
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        out = link(x)
    return chainer.as_array(out[0] if isinstance(out, (list, tuple)) else out)


def export_bnet(branchy, baseline, x, out_dir, thresholds=None, criterion="entropy",
                info=None):
    """Export ``branchy`` (a ``BranchyNet``) as parts and ``baseline`` as one graph.

    Args:
        x: real input samples (host array); the first ``EXPORT_BATCH`` are traced.
        out_dir: folder for the ``.onnx`` files and ``manifest.json`` (written atomically).
        thresholds: the default threshold vector of the runtime (e.g. the knee), or None.
        criterion: exit score (a key of ``branchynet.routing.CRITERIA``).
        info: extra JSON-able facts for the manifest (network, source of the weights).

    Returns the manifest (a dict).
    """
    get_criterion(criterion)
    if thresholds is not None:
        thresholds = list(check_thresholds(thresholds, branchy.n_exits))
    x = np.asarray(x[:EXPORT_BATCH], np.float32)
    if len(x) < 2:
        raise DeployError("export needs at least 2 real samples to trace the batch axis")
    branchy.to_device("@numpy")
    baseline.to_device("@numpy")
    os.makedirs(out_dir, exist_ok=True)
    segments, heads = [], []
    h = x
    for n in range(branchy.n_exits):
        segment = branchy.trunk[n]
        entry = {"index": n + 1, "layers": [_describe(layer) for layer in segment],
                 "file": None}
        if len(segment):
            entry["file"] = f"segment{n + 1}.onnx"
            entry["input_shape"] = list(h.shape[1:])
            h = export_link(segment, h, os.path.join(out_dir, entry["file"]), ("output",))
            entry["output_shape"] = list(h.shape[1:])
        segments.append(entry)
        last = n == branchy.n_exits - 1
        head = branchy.heads[n]
        heads.append({"exit": n + 1, "file": f"exit{n + 1}.onnx", "input_shape": list(h.shape[1:]),
                      "layers": [_describe(layer) for layer in head],
                      "outputs": ["logits"] if last else ["logits", "score"]})
        export_link(head, h, os.path.join(out_dir, heads[-1]["file"]), score=not last)
    export_link(baseline, x, os.path.join(out_dir, "baseline.onnx"))
    import onnx
    manifest = {
        "format": FORMAT,
        "input_shape": list(x.shape[1:]),
        "n_exits": branchy.n_exits,
        "segments": segments,
        "exits": heads,
        "baseline": {"file": "baseline.onnx"},
        "criterion": criterion,
        "graph_criterion": GRAPH_CRITERION,
        "thresholds": thresholds,
        "rule": "a sample leaves at the first exit whose score is strictly below that exit's "
                "threshold; the last exit takes every sample left",
        "exporter": {"onnx_chainer": "chainer " + chainer.__version__, "onnx": onnx.__version__},
        **(info or {}),
    }
    manifest["early_exit"] = {"file": build_early_exit_graph(out_dir, manifest), "batch": 1,
                              "inputs": ["input", "thresholds"], "outputs": ["label", "exit"]}
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


# Tensors that ``_append_entropy`` adds to a head (the decision's arithmetic).
SCORE_TENSORS = ("_log_p", "_p", "_p_log_p", "_sum", "_axes", "score")


def _renamed(path, prefix, h_name, score=True):
    """The nodes and weights of an exported part, every name prefixed, its input renamed
    to ``h_name`` (the tensor it reads in the composed graph); ``score=False`` leaves the
    head's score out."""
    import onnx
    from onnx import compose
    model = compose.add_prefix(onnx.load(path), prefix)
    drop = set() if score else {prefix + name for name in SCORE_TENSORS}
    nodes = [node for node in model.graph.node if node.output[0] not in drop]
    for node in nodes:
        node.input[:] = [h_name if i == prefix + "input" else i for i in node.input]
    return nodes, [w for w in model.graph.initializer if w.name not in drop]


def path_graph(out_dir, manifest, n, earlier_heads=False, scores=False):
    """A straight-line graph (bytes) of exit ``n``'s path for one sample: trunk segments
    1..n+1, head n+1 and its argmax (output ``label``), no score and no decision; with
    ``earlier_heads`` the heads of the exits before it run too (their logits are extra
    outputs, so nothing prunes them), and with ``scores`` also the scores of the exits up
    to it but the last (extra outputs; no comparison). The references the composed graph
    is measured against: zero overhead, earlier heads, and scores without decisions."""
    import onnx
    from onnx import TensorProto, helper
    nodes, weights, outputs, h = [], [], [], "input"
    last = manifest["n_exits"] - 1
    for k in range(n + 1):
        segment = manifest["segments"][k]
        if segment["file"]:
            more, w = _renamed(os.path.join(out_dir, segment["file"]), f"s{k + 1}_", h)
            nodes, weights, h = nodes + more, weights + w, f"s{k + 1}_output"
        if k == n or earlier_heads or scores:
            score = scores and k < last
            more, w = _renamed(os.path.join(out_dir, manifest["exits"][k]["file"]), f"e{k + 1}_",
                               h, score=score)
            nodes, weights = nodes + more, weights + w
            if k < n:
                outputs.append(helper.make_tensor_value_info(f"e{k + 1}_logits",
                                                             TensorProto.FLOAT, [1, None]))
            if score:
                outputs.append(helper.make_tensor_value_info(f"e{k + 1}_score",
                                                             TensorProto.FLOAT, [1]))
    nodes.append(helper.make_node("ArgMax", [f"e{n + 1}_logits"], ["label"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes, f"exit{n + 1}_path",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1] + manifest["input_shape"])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [1])] + outputs,
        initializer=weights)
    opset = onnx.load(os.path.join(out_dir, manifest["exits"][0]["file"])).opset_import
    model = helper.make_model(graph, opset_imports=list(opset))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_early_exit_graph(out_dir, manifest):
    """Compose the exported parts into one graph that routes a single sample itself.

    Inputs ``input`` (batch size 1) and ``thresholds`` (one per exit but the last); outputs
    ``label`` and ``exit`` (0-based), int64 of shape [1]. At each exit but the last, an
    ``If`` on ``score < threshold`` returns that exit's argmax, or runs the next segment and
    head in its ``else`` branch, whose weights it holds. One ONNX Runtime call per sample,
    with no Python between exits: the batch-size-1 deployment form. Written to
    ``early_exit.onnx``; returns the file name.
    """
    import onnx
    from onnx import TensorProto, helper
    segments, exits = manifest["segments"], manifest["exits"]
    last = manifest["n_exits"] - 1

    def int64(name, value):
        return helper.make_node("Constant", [], [name],
                                value=helper.make_tensor(name, TensorProto.INT64, [1], [value]))

    def level(n, h_name):
        """Nodes and weights from trunk segment n on; the names of its label and exit."""
        nodes, weights = [], []
        if segments[n]["file"]:
            more, w = _renamed(os.path.join(out_dir, segments[n]["file"]), f"s{n + 1}_", h_name)
            nodes += more
            weights += w
            h_name = f"s{n + 1}_output"
        more, w = _renamed(os.path.join(out_dir, exits[n]["file"]), f"e{n + 1}_", h_name)
        nodes += more
        weights += w
        logits = f"e{n + 1}_logits"
        label, exit_ = f"label{n + 1}", f"exit{n + 1}"
        if n == last:
            nodes += [helper.make_node("ArgMax", [logits], [label], axis=1, keepdims=0),
                      int64(exit_, n)]
            return nodes, weights, label, exit_
        weights.append(helper.make_tensor(f"index{n + 1}", TensorProto.INT64, [], [n]))
        nodes += [helper.make_node("Gather", ["thresholds", f"index{n + 1}"], [f"T{n + 1}"],
                                   axis=0),
                  # shape [1]: If takes a condition tensor holding a single element
                  helper.make_node("Less", [f"e{n + 1}_score", f"T{n + 1}"], [f"cond{n + 1}"])]
        then = helper.make_graph(
            [helper.make_node("ArgMax", [logits], [f"then_label{n + 1}"], axis=1, keepdims=0),
             int64(f"then_exit{n + 1}", n)], f"leave_at_exit{n + 1}", [],
            [helper.make_tensor_value_info(f"then_label{n + 1}", TensorProto.INT64, [1]),
             helper.make_tensor_value_info(f"then_exit{n + 1}", TensorProto.INT64, [1])])
        rest, rest_weights, rest_label, rest_exit = level(n + 1, h_name)
        other = helper.make_graph(
            rest, f"go_on_after_exit{n + 1}", [],
            [helper.make_tensor_value_info(rest_label, TensorProto.INT64, [1]),
             helper.make_tensor_value_info(rest_exit, TensorProto.INT64, [1])],
            initializer=rest_weights)
        nodes.append(helper.make_node("If", [f"cond{n + 1}"], [label, exit_],
                                      then_branch=then, else_branch=other))
        return nodes, weights, label, exit_

    nodes, weights, label, exit_ = level(0, "input")
    nodes += [helper.make_node("Identity", [label], ["label"]),
              helper.make_node("Identity", [exit_], ["exit"])]
    graph = helper.make_graph(
        nodes, "early_exit",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1] + manifest["input_shape"]),
         helper.make_tensor_value_info("thresholds", TensorProto.FLOAT, [max(last, 1)])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("exit", TensorProto.INT64, [1])],
        initializer=weights)
    opset = onnx.load(os.path.join(out_dir, exits[0]["file"])).opset_import
    model = helper.make_model(graph, opset_imports=list(opset))
    onnx.checker.check_model(model)
    name = "early_exit.onnx"
    with atomic_path(os.path.join(out_dir, name)) as tmp:
        onnx.save(model, tmp)
    return name


def read_manifest(out_dir):
    """The manifest of an export folder, with a clear error where there is none."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise DeployError(f"{path} does not exist: export the B-net first "
                          f"(python -m experiments.deploy export --results DIR)")
    try:
        manifest = read_json(path)
    except (OSError, json.JSONDecodeError) as err:
        raise DeployError(f"{path} is not a readable manifest ({err}): export again") from None
    if manifest.get("format") != FORMAT:
        raise DeployError(f"{path} has format {manifest.get('format')!r}, not {FORMAT!r}: "
                          f"export again with this version")
    for part in [s for s in manifest["segments"] if s["file"]] + manifest["exits"] + \
            [manifest["baseline"], manifest["early_exit"]]:
        if not os.path.isfile(os.path.join(out_dir, part["file"])):
            raise DeployError(f"{part['file']} is missing from {out_dir}: export again")
    return manifest


def providers_for(device="cpu"):
    """ONNX Runtime execution providers for ``device`` (``cpu`` or ``cuda``)."""
    import onnxruntime as ort
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeployError("ONNX Runtime here has no CUDAExecutionProvider: install "
                              "onnxruntime-gpu (and a CUDA 12 runtime) or use --ort-device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise DeployError(f"unknown ONNX Runtime device {device!r}; choose cpu or cuda")


class _Part:
    """One ONNX Runtime session with its input name and output names."""

    def __init__(self, path, providers, options):
        import onnxruntime as ort
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, x, outputs=None):
        return self.session.run(outputs, {self.input: x})


class OnnxBranchyNet:
    """A B-net exported by ``export_bnet``, run on ONNX Runtime.

    Args:
        out_dir: the export folder.
        device: ``cpu`` (CPUExecutionProvider) or ``cuda`` (CUDAExecutionProvider).
        threads: intra-op threads per session (1 matches the project's one BLAS thread).
    """

    def __init__(self, out_dir, device="cpu", threads=1):
        import onnxruntime as ort
        self.manifest = read_manifest(out_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        providers = providers_for(device)
        self.out_dir, self.options, self.providers = out_dir, options, providers

        def part(entry):
            return _Part(os.path.join(out_dir, entry["file"]), providers, options) \
                if entry.get("file") else None

        self.device = device
        self.segments = [part(s) for s in self.manifest["segments"]]
        self.heads = [part(e) for e in self.manifest["exits"]]
        self.baseline = part(self.manifest["baseline"])
        self.baseline_one = self._batch_one(self.manifest["baseline"]["file"])
        # Batch size 1 runs on copies of the parts with the batch axis fixed to 1.
        self.segments_one = [s["file"] and self._batch_one(s["file"])
                             for s in self.manifest["segments"]]
        self.heads_one = [self._batch_one(e["file"]) for e in self.manifest["exits"]]
        self.early_exit = part(self.manifest["early_exit"])
        self.n_exits = self.manifest["n_exits"]
        self.criterion = self.manifest["criterion"]
        self.thresholds = self.manifest["thresholds"]

    def _batch_one(self, name):
        """A session of graph ``name`` with its batch axis fixed to 1 (ONNX Runtime plans
        static shapes better: the composed batch-size-1 graphs have them too)."""
        import onnx
        import onnxruntime as ort
        model = onnx.load(os.path.join(self.out_dir, name))
        for value in list(model.graph.input) + list(model.graph.output):
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].dim_param:
                dims[0].ClearField("dim_param")
                dims[0].dim_value = 1
        return _Part(model.SerializeToString(), self.providers, self.options)

    def run_trunk(self, h, n):
        """Trunk segment ``n`` (0-based) on ``h`` (identity where the segment is empty)."""
        segment = self.segments[n]
        return h if segment is None else segment(h)[0]

    def exit_logits(self, x):
        """Logits of every exit for a batch (no early exit), in exit order."""
        out, h = [], np.asarray(x, np.float32)
        for n in range(self.n_exits):
            h = self.run_trunk(h, n)
            out.append(self.heads[n](h, ["logits"])[0])
        return out

    def exit_scores(self, x):
        """The in-graph scores of every exit but the last (no early exit)."""
        out, h = [], np.asarray(x, np.float32)
        for n in range(self.n_exits - 1):
            h = self.run_trunk(h, n)
            out.append(self.heads[n](h, ["score"])[0])
        return out

    def predict_baseline(self, x):
        """Labels of the baseline graph for a batch (int32); a single sample runs on the
        baseline with its batch axis fixed to 1."""
        part = self.baseline_one if len(x) == 1 else self.baseline
        return part(np.asarray(x, np.float32))[0].argmax(axis=1).astype(np.int32)

    def path_session(self, n, earlier_heads=False, scores=False):
        """An ONNX Runtime session of ``path_graph(n, earlier_heads, scores)`` (batch 1)."""
        import onnxruntime as ort
        return ort.InferenceSession(
            path_graph(self.out_dir, self.manifest, n, earlier_heads, scores),
            self.options, providers=self.providers)

    def call_session(self):
        """A session of a graph that only returns its input: the fixed cost of a call."""
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
        shape = [1] + self.manifest["input_shape"]
        graph = helper.make_graph(
            [helper.make_node("Identity", ["input"], ["output"])], "call",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)])
        model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 11)])
        model.ir_version = onnx.load(os.path.join(self.out_dir, "baseline.onnx")).ir_version
        return ort.InferenceSession(model.SerializeToString(), self.options,
                                    providers=self.providers)

    def predict_one(self, x, thresholds=None):
        """Early exit of one sample in one call of the composed graph (``early_exit.onnx``,
        entropy criterion); returns ``(labels, exits)`` as ``predict`` does."""
        thresholds = self.thresholds if thresholds is None else thresholds
        thresholds = np.asarray(check_thresholds(thresholds, self.n_exits) or [0.0], np.float32)
        if self.criterion != GRAPH_CRITERION:
            raise DeployError(f"the composed graph decides by {GRAPH_CRITERION}, this export by "
                              f"{self.criterion}: use predict()")
        label, exit_ = self.early_exit.session.run(
            None, {"input": np.asarray(x, np.float32), "thresholds": thresholds})
        return label.astype(np.int32), exit_.astype(np.int32)

    def _decider(self, criterion, in_graph):
        """``(outputs to request from a head, function head outputs -> scores)``."""
        if in_graph and criterion == GRAPH_CRITERION:
            return None, lambda outs: outs[1]
        score = get_criterion(criterion)
        return ["logits"], lambda outs: score(outs[0])

    def predict(self, x, thresholds=None, criterion=None, score_in_graph=True):
        """Early-exit inference on a batch; returns ``(labels, exits)`` int32 host arrays.

        ``thresholds`` default to the manifest's; ``criterion`` to its criterion. The
        entropy comes from the exit graphs (``score_in_graph``) or, like the other
        criteria, from ``branchynet.routing`` applied to the logits.
        """
        thresholds = self.thresholds if thresholds is None else thresholds
        if thresholds is None:
            raise DeployError("no thresholds given and none in the manifest: pass them, or "
                              "export with thresholds")
        thresholds = check_thresholds(thresholds, self.n_exits)
        criterion = criterion or self.criterion
        wanted, scores = self._decider(criterion, score_in_graph)
        x = np.asarray(x, np.float32)
        last = self.n_exits - 1
        if len(x) == 1:  # batch size 1: no index arrays, the same comparisons
            h = x
            for n in range(self.n_exits):
                if self.segments_one[n]:
                    h = self.segments_one[n](h)[0]
                if n == last:
                    logits = self.heads_one[n](h)[0]
                    break
                outs = self.heads_one[n](h, wanted)
                logits = outs[0]
                if (scores(outs) < thresholds[n])[0]:
                    break
            return logits.argmax(axis=1).astype(np.int32), np.full(1, n, np.int32)
        labels = np.empty(len(x), np.int32)
        exits = np.empty(len(x), np.int32)
        remaining = np.arange(len(x))
        h = x
        for n in range(self.n_exits):
            h = self.run_trunk(h, n)
            outs = self.heads[n](h) if n == last else self.heads[n](h, wanted)
            labels[remaining] = outs[0].argmax(axis=1)
            exits[remaining] = n
            if n == last:
                break
            stay = np.flatnonzero(~(scores(outs) < thresholds[n]))
            if len(stay) == 0:
                break
            if len(stay) < len(remaining):
                remaining, h = remaining[stay], h[stay]
        return labels, exits


def compare_parts(branchy, baseline, runtime, x):
    """Largest absolute difference, per part, between Chainer and ONNX Runtime on ``x``.

    Each part gets the same input in both runtimes (Chainer's output of the parts before
    it). Returns a dict part name -> ``{"max_abs": ..., "scale": max |Chainer output|}``
    (for an exit's score, the scale of that exit's logits).
    """
    x = np.asarray(x, np.float32)
    result = {}

    def record(name, ours, theirs, scale=None):
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        if ours.shape != theirs.shape:
            raise AssertionError(f"{name}: ONNX output shape {ours.shape} != "
                                 f"Chainer's {theirs.shape}")
        result[name] = {"max_abs": float(np.abs(ours - theirs).max()),
                        "scale": float(np.abs(theirs).max()) if scale is None else scale}

    from branchynet.routing import entropy
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        h = x
        for n in range(branchy.n_exits):
            segment = branchy.trunk[n]
            if len(segment):
                ref = chainer.as_array(segment(h))
                record(f"segment{n + 1}", runtime.segments[n](h)[0], ref)
                h = ref
            ref = chainer.as_array(branchy.heads[n](h))
            outs = runtime.heads[n](h)
            record(f"exit{n + 1}", outs[0], ref)
            if n < branchy.n_exits - 1:
                # The entropy's rounding error follows the logits' absolute error, so its
                # scale is the logits' (entropy changes by at most ~|logit change|).
                record(f"exit{n + 1}.score", outs[1], entropy(ref), result[f"exit{n + 1}"]["scale"])
        ref = chainer.as_array(baseline(x)[0])
        record("baseline", runtime.baseline(x)[0], ref)
    return result


# ---------------------------------------------------------------------------------------
# Timing variants for ``branchynet.timing.interleave``: callable(i) -> seconds of sample i


class Timed:
    """Runs ``predict(x[i:i + 1]) -> (labels, exits)`` on sample ``i`` and returns its
    seconds, from slicing the input to having the label on the host; keeps each sample's
    label and exit in ``labels`` and ``exits``."""

    def __init__(self, predict, x):
        import time
        self.predict, self.x, self.clock = predict, x, time.perf_counter
        self.labels = np.full(len(x), -1, np.int32)
        self.exits = np.full(len(x), -1, np.int32)

    def __call__(self, i):
        start = self.clock()
        label, exit_ = self.predict(self.x[i:i + 1])
        seconds = self.clock() - start
        self.labels[i], self.exits[i] = label[0], exit_[0]
        return seconds


def ort_variants(runtime, x, points, prefix="ort"):
    """ONNX Runtime variants: ``<prefix>:baseline``; ``<prefix>:call``, a graph that only
    returns its input (the fixed cost of one call); per exit path forced there, with the
    parts and Python routing (``:exitN``) and with the composed graph (``-1g:exitN``);
    the zero-overhead paths (``:exitN_alone``, one straight-line graph each), with the
    earlier heads (``:exitN_cascade``) and with their scores too (``:exitN_scored``); and
    every point of ``points`` (name -> thresholds) both ways."""
    from branchynet.timing import forced_exit_thresholds
    zero = np.zeros(1, np.int32)
    call = runtime.call_session()
    variants = {f"{prefix}:baseline": Timed(lambda xi: (runtime.predict_baseline(xi), zero), x),
                f"{prefix}:call": Timed(lambda xi: (call.run(None, {"input": xi})[0][:1, 0, 0, 0]
                                                    .astype(np.int32), zero), x)}
    for n in range(runtime.n_exits):
        forced = forced_exit_thresholds(n, runtime.n_exits)
        variants[f"{prefix}:exit{n + 1}"] = Timed(lambda xi, t=forced: runtime.predict(xi, t), x)
        variants[f"{prefix}-1g:exit{n + 1}"] = Timed(
            lambda xi, t=forced: runtime.predict_one(xi, t), x)
        for kind in ("alone", "cascade", "scored") if n else ("alone", "scored"):
            session = runtime.path_session(n, earlier_heads=kind == "cascade",
                                           scores=kind == "scored")
            variants[f"{prefix}:exit{n + 1}_{kind}"] = Timed(
                lambda xi, s=session, n=n: (s.run(["label"], {"input": xi})[0],
                                            np.full(1, n, np.int32)), x)
    for name, thresholds in points.items():
        variants[f"{prefix}:{name}"] = Timed(lambda xi, t=thresholds: runtime.predict(xi, t), x)
        variants[f"{prefix}-1g:{name}"] = Timed(
            lambda xi, t=thresholds: runtime.predict_one(xi, t), x)
    return variants


def chainer_path(net, n, earlier_heads=False):
    """A Chainer forward of exit ``n``'s path for one host sample, no decisions:
    ``predict``-like function returning ``(labels, exits)`` (the zero-overhead reference;
    ``earlier_heads`` also runs the heads of the exits before it)."""
    def run(xi):
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            h = xi
            for m in range(n + 1):
                h = net.run_trunk(h, m)
                if m < n and earlier_heads:
                    net.heads[m](h)
            label = chainer.as_array(net.heads[n](h)).argmax(axis=1).astype(np.int32)
        return label, np.full(1, n, np.int32)
    return run


def chainer_variants(branchy, baseline, x, points, criterion="entropy", prefix="chainer"):
    """The same variants as ``ort_variants`` for Chainer on the CPU (``EndToEnd`` of
    ``branchynet.timing`` for the baseline, the forced exit paths and the points)."""
    from branchynet.timing import EndToEnd, forced_exit_thresholds
    cpu = chainer.get_device("@numpy")
    variants = {f"{prefix}:baseline": EndToEnd(baseline, x, [], cpu)}
    for n in range(branchy.n_exits):
        variants[f"{prefix}:exit{n + 1}"] = EndToEnd(
            branchy, x, forced_exit_thresholds(n, branchy.n_exits), cpu, criterion)
        for kind in ("alone", "cascade") if n else ("alone",):
            variants[f"{prefix}:exit{n + 1}_{kind}"] = Timed(
                chainer_path(branchy, n, kind == "cascade"), x)
    for name, thresholds in points.items():
        variants[f"{prefix}:{name}"] = EndToEnd(branchy, x, thresholds, cpu, criterion)
    return variants

