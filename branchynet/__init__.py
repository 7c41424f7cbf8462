"""BranchyNet on Chainer 7: networks with early-exit side branches."""
from branchynet import _compat  # noqa: F401  (must run before chainer is imported)
from branchynet import cpu_kernels

cpu_kernels.install()  # faster CPU convolution and max pooling (BRANCHYNET_FAST_CPU=0: off)
