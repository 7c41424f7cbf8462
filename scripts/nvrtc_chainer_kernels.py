"""Compile Chainer 7.8.1's CUDA kernels with the installed CuPy and NVRTC, no GPU needed.

    python scripts/nvrtc_chainer_kernels.py [--arch 90] [--all]

Chainer builds its kernels at run time (``cuda.elementwise``/``cuda.reduce``); a kernel
that the installed CuPy's code generator or the CUDA compiler no longer accepts fails only
on first use, on a GPU. This script finds every kernel written as literal text in
Chainer's sources (plus the N-d pooling kernels it generates and the softmax cross-entropy
reduction), renders each with CuPy's own code generator for float16, float32 and float64
arguments, and compiles it with NVRTC for ``sm_<arch>``. NVRTC needs no driver and no
device, so this runs on any machine with CuPy and its NVRTC library (CuPy 14:
``pip install "cupy-cuda12x[ctk]"`` or ``"cupy-cuda13x[ctk]"``); on a GPU machine the arch
defaults to the device's.

Exit status 1 if a kernel that this project's networks and training use (``PROJECT``) fails.
Other kernels are listed with ``--all``; some of those fail here for reasons of this
harness, not of Chainer (text assembled at run time, raw arrays of more than one dimension,
float16 atomics that CUDA lacks). It uses CuPy internals (``cupy._core._kernel``), checked
against CuPy 13.6 and 14.2; another version may need an update here.
"""
import argparse
import ast
import os
import sys

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy

# Kernels on the paths of B-LeNet, B-AlexNet and B-ResNet: convolution (im2col/col2im),
# max and average pooling, LRN, batch normalisation, ReLU, dropout, softmax cross-entropy,
# Adam; MomentumSGD and WeightDecay (the fast recipe).
PROJECT = {"im2col", "col2im", "max_pool_2d_fwd", "max_pool_2d_bwd", "avg_pool_fwd",
           "avg_pool_bwd", "avg_pool_2d_fwd", "avg_pool_2d_bwd", "lrn_conv_sum", "lrn_fwd",
           "lrn_bwd_summand", "lrn_bwd", "bn_fwd", "bn_bwd", "update_mean_var", "relu_bwd",
           "dropout_fwd", "softmax_crossent_bwd", "softmax_crossent_no_reduce_fwd", "adam",
           "crossent_fwd", "momentum_sgd", "weight_decay"}
FLOATS = [numpy.dtype(t) for t in ("float32", "float16", "float64")]
INT32 = numpy.dtype("int32")

# _ArgInfo kinds (cupy/_core/_kernel.pxd: ndarray, indexer, scalar).
NDARRAY, INDEXER, SCALAR = 1, 2, 3


def literal(node):
    """The string a node spells, if it is a literal (or a sum of literals)."""
    try:
        value = ast.literal_eval(node)
        return value if isinstance(value, str) else None
    except ValueError:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            a, b = literal(node.left), literal(node.right)
            return a + b if a is not None and b is not None else None
        return None


def chainer_elementwise_kernels():
    """``(where, (in_params, out_params, operation, name, preamble) or None)`` per call site."""
    root = os.path.dirname(chainer.__file__)
    for folder, _, files in sorted(os.walk(root)):
        if os.sep + "testing" in folder:
            continue
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "elementwise"):
                    continue
                args = [literal(a) for a in node.args[:4]]
                kw = {k.arg: literal(k.value) for k in node.keywords}
                where = f"{os.path.relpath(path, root)}:{node.lineno}"
                if len(args) < 3 or None in args[:3]:
                    yield where, None
                    continue
                kname = (args[3] if len(args) > 3 else None) or kw.get("name") or "kernel"
                yield where, (args[0], args[1], args[2], kname, kw.get("preamble") or "")
    from chainer.functions.pooling import average_pooling_nd_kernel as avg
    from chainer.functions.pooling import max_pooling_nd_kernel as mx
    for cls in (mx.MaxPoolingNDKernelForward, mx.MaxPoolingNDKernelBackward,
                avg.AveragePoolingNDKernelForward, avg.AveragePoolingNDKernelBackward):
        for ndim in (1, 2, 3):
            in_params, out_params, operation, name = cls.generate(ndim)[:4]
            yield f"{cls.__name__}({ndim})", (in_params, out_params, operation, name, "")


def elementwise_source(spec, float_type):
    """CuPy's rendering of an elementwise kernel; placeholders S and I are int32, the rest
    ``float_type``; typed and placeholder params are arrays, explicitly typed ones scalars."""
    from cupy._core import _kernel, _scalar
    import cupy
    in_params, out_params, operation, name, preamble = spec
    ins = _kernel._get_param_info(in_params, True)
    outs = _kernel._get_param_info(out_params, False)
    params = ins + outs + _kernel._get_param_info("CIndexer _ind", False)
    types, infos = {}, []
    for p in ins + outs:
        if p.dtype is None:
            types[p.ctype] = INT32 if p.ctype in ("S", "I") else float_type
            dtype = types[p.ctype]
        else:
            dtype = numpy.dtype(p.dtype)
        if p.raw or p.dtype is None:
            infos.append(_kernel._ArgInfo(NDARRAY, cupy.ndarray, dtype, 1, True, True))
        else:
            infos.append(_kernel._ArgInfo(SCALAR, _scalar.CScalar, dtype, 0, True, True))
    infos.append(_kernel._ArgInfo(INDEXER, object, None, 1, True, True))
    code = _kernel._get_elementwise_kernel_code(
        tuple(infos), _kernel._TypeMap(tuple(sorted(types.items()))), params, operation,
        name, preamble)
    return name, "#include <cupy/carray.cuh>\n" + code


def crossent_source(float_type):
    """softmax_cross_entropy's forward reduction (chainer/functions/loss/
    softmax_cross_entropy.py), rendered by CuPy's ReductionKernel code generator."""
    from cupy._core import _kernel, _reduction, _scalar
    import cupy
    ins = _kernel._get_param_info(
        "S t, raw T log_y, int32 n_channel, raw U coeff, S ignore_label", True)
    outs = _kernel._get_param_info("U out", False)
    params = (ins + outs + _kernel._get_param_info("CIndexer _in_ind, CIndexer _out_ind", False)
              + _kernel._get_param_info("int32 _block_stride", True))
    u = numpy.dtype("float32") if float_type == numpy.float16 else float_type
    arr = lambda d, n: _kernel._ArgInfo(NDARRAY, cupy.ndarray, d, n, True, True)  # noqa: E731
    sca = lambda d: _kernel._ArgInfo(SCALAR, _scalar.CScalar, d, 0, True, True)  # noqa: E731
    infos = (arr(INT32, 1), arr(float_type, 2), sca(INT32), arr(u, 0), sca(INT32), arr(u, 0),
             _kernel._ArgInfo(INDEXER, object, None, 1, True, True),
             _kernel._ArgInfo(INDEXER, object, None, 0, True, True), sca(INT32))
    types = _kernel._TypeMap((("IndexT", INT32), ("S", INT32), ("T", float_type), ("U", u)))
    code = _reduction._ReductionKernel_get_cached_function_code(
        len(ins), len(outs), params, infos, types, "crossent_fwd", 512, "U", "0",
        "t == ignore_label ? T(0) : log_y[_j * n_channel + t]", "a + b",
        "out = static_cast<U>(a * -coeff[0])", "", ())
    return "crossent_fwd", "#include <cupy/carray.cuh>\n" + code


def default_arch():
    import cupy
    try:
        return cupy.cuda.Device().compute_capability
    except Exception:
        return "90"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", help="compute capability, e.g. 90 (default: the GPU's, else 90)")
    parser.add_argument("--all", action="store_true", help="list every kernel, not only failures")
    args = parser.parse_args(argv)
    import cupy
    import cupy._core.core as core
    from cupy.cuda import compiler
    arch = args.arch or default_arch()
    options = core.assemble_cupy_compiler_options(()) + (
        "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")

    jobs = [(where, lambda t, s=spec: elementwise_source(s, t))
            for where, spec in chainer_elementwise_kernels() if spec is not None]
    jobs.append(("functions/loss/softmax_cross_entropy.py (reduction)", crossent_source))
    counts = {"ok": 0, "failed": 0}
    project_failures, project_kernels = [], set()
    for where, render in jobs:
        for float_type in FLOATS:
            name = "?"
            try:
                name, source = render(float_type)
                compiler._NVRTCProgram(source, "kern.cu", method="cubin").compile(options)
                counts["ok"] += 1
                status = "ok"
            except Exception as err:
                counts["failed"] += 1
                status = "FAILED " + (" | ".join(
                    line for line in str(err).splitlines() if "error" in line)
                    or f"{type(err).__name__}: {err}")[:400]
            ours = name in PROJECT
            if ours:
                project_kernels.add(name)
                if status != "ok":
                    project_failures.append((where, name, float_type))
            if args.all or status != "ok" and ours:
                print(f"{'*' if ours else ' '} {status[:6]:6s} {name} {float_type} ({where})"
                      + (f": {status[7:]}" if status != "ok" else ""))
    print(f"CuPy {cupy.__version__}, NVRTC {'.'.join(map(str, compiler._get_nvrtc_version()))}, "
          f"sm_{arch}: {counts['ok']} kernel/type pairs compiled, {counts['failed']} failed; "
          f"project kernels: {len(project_kernels)} x {len(FLOATS)} types, "
          f"{len(project_failures)} failed")
    missing = PROJECT - project_kernels
    if missing:
        print(f"project kernels not found in Chainer's sources: {sorted(missing)}")
    return 1 if project_failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
