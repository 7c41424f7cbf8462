"""Variants of a network's layer list, for ablations of its branches.

The paper's Fig. 5 (section V.C) trains "a modified version of B-AlexNet with only the
first side branch" with 0 to 4 convolutional layers in that branch. Here that is::

    layers = one_branch(spec.build(), 1)                # side branch 1 and the final exit
    layers = with_conv_layers(layers, 1, 3)             # 3 convolutions in that branch
    net = BranchyNet(layers)
    copy_main_branch(trained_baseline, net)             # trunk + final classifier

The variant's trunk segments are those of the full network merged where a branch was
dropped, so its parameter names differ from the full network's; ``copy_main_branch``
copies by position along the main branch instead of by name.
"""
import chainer
import chainer.functions as F
import chainer.links as L
from branchynet.net import Branch


def _branch_positions(layers):
    return [i for i, layer in enumerate(layers) if isinstance(layer, Branch)]


def side_branches(layers):
    """The number of side branches of a layer list (every ``Branch`` but the last)."""
    return len(_branch_positions(layers)) - 1


def one_branch(layers, n):
    """The layer list with only side branch ``n`` (1-based) and the final exit kept."""
    layers = list(layers)
    positions = _branch_positions(layers)
    if not positions or positions[-1] != len(layers) - 1:
        raise ValueError("the layer list must end with a Branch (the final classifier)")
    sides = positions[:-1]
    if not 1 <= n <= len(sides):
        raise ValueError(f"branch {n} does not exist: the network has {len(sides)} side "
                         f"branch(es), numbered 1 to {len(sides)}")
    keep = (sides[n - 1], positions[-1])
    return [layer for i, layer in enumerate(layers) if not isinstance(layer, Branch) or i in keep]


def with_conv_layers(layers, n, k):
    """The layer list with side branch ``n`` rebuilt around ``k`` convolutions.

    The branch keeps the layers before its first ``Convolution2D`` (e.g. ReLU, pooling,
    LRN) and those after its last one (pooling and the classifier); in between come ``k``
    convolutions of the kind of its first one (kernel, stride, padding, output channels),
    each followed by a ReLU when the branch uses ReLUs. The classifier becomes a
    ``Linear`` whose input size is inferred at the first call (the feature map changes with
    ``k``). ``k = 0`` leaves pooling and the classifier right after the prefix.
    """
    if not (isinstance(k, int) and k >= 0):
        raise ValueError(f"the number of convolutional layers must be an integer >= 0, not {k!r}")
    layers = list(layers)
    positions = _branch_positions(layers)
    if not 1 <= n <= len(positions) - 1:
        raise ValueError(f"branch {n} does not exist: the network has {len(positions) - 1} "
                         f"side branch(es)")
    branch = layers[positions[n - 1]].layers
    convs = [i for i, layer in enumerate(branch) if isinstance(layer, L.Convolution2D)]
    if not convs:
        raise ValueError(f"side branch {n} has no Convolution2D layer to repeat: a study of its "
                         f"depth needs one as the template")
    classifier = branch[-1]
    if not isinstance(classifier, L.Linear):
        raise ValueError(f"side branch {n} does not end with a Linear classifier "
                         f"({type(classifier).__name__})")
    template = branch[convs[0]]
    relu = F.relu in branch
    after = convs[-1] + 1
    if relu and after < len(branch) and branch[after] is F.relu:
        after += 1
    new = list(branch[:convs[0]])
    for _ in range(k):
        new.append(L.Convolution2D(None, template.out_channels, template.ksize,
                                   stride=template.stride, pad=template.pad,
                                   nobias=template.b is None))
        if relu:
            new.append(F.relu)
    new += list(branch[after:-1]) + [L.Linear(None, classifier.out_size)]
    layers[positions[n - 1]] = Branch(new)
    return layers


def _main_branch_links(net):
    """The Links of the trunk, then of the final exit's head, in call order."""
    links = [link for segment in net.trunk for link in segment if isinstance(link, chainer.Link)]
    return links + [link for link in net.heads[-1] if isinstance(link, chainer.Link)]


def copy_main_branch(source, target):
    """Copy the trunk and final classifier of ``source`` into ``target`` by position.

    Both are ``BranchyNet``s built from layer lists with the same main branch (e.g. the
    trained baseline of a network and a variant of it with other side branches). Side
    branches of ``target`` keep their own initialisation. BatchNorm statistics are copied
    too.
    """
    mine, theirs = _main_branch_links(target), _main_branch_links(source)
    if len(mine) != len(theirs):
        raise ValueError(f"the main branches differ: {len(theirs)} links in the source, "
                         f"{len(mine)} in the target")
    for k, (src, dst) in enumerate(zip(theirs, mine)):
        if type(src) is not type(dst):
            raise ValueError(f"main-branch link {k} is a {type(src).__name__} in the source "
                             f"and a {type(dst).__name__} in the target")
        params = dict(dst.namedparams())
        for name, param in src.namedparams():
            if param.array is None:
                raise ValueError(f"main-branch link {k} parameter {name} of the source is not "
                                 f"initialised: run or train the source first")
            if params[name].array is None:
                params[name].initialize(param.shape)
            if params[name].shape != param.shape:
                raise ValueError(f"main-branch link {k} parameter {name}: shape {param.shape} "
                                 f"in the source, {params[name].shape} in the target")
            params[name].copydata(param)
        for key in getattr(src, "_persistent", ()):
            value = getattr(src, key)
            setattr(dst, key, value.copy() if hasattr(value, "shape") else value)
    return target
