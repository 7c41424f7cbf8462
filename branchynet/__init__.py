"""BranchyNet on Chainer 7: networks with early-exit side branches."""
from branchynet import _compat  # noqa: F401  (must run before chainer is imported)
