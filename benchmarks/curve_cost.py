"""What the learning curve costs: the test-set evaluation against an epoch of training.

    python -m benchmarks.curve_cost --network alexnet_cifar10 --batch-size 128
    python -m benchmarks.curve_cost --network lenet_mnist --batch-size 512

Interleaves (``branchynet.timing.interleave``) a baseline and a joint training iteration
(``training_throughput.TrainingStep``: forward, backward, update of --batch-size
images) with one ``branchynet.training.CurveEvaluator`` pass, the evaluation the runner
does after every epoch (the B-net's every exit in inference mode, batches of 500), over
--eval-samples test images. The evaluation's cost is linear in the images, so the share
of an epoch it adds is (test images x evaluation seconds per image) / (training images x
training seconds per image), reported for both stages at the paper's dataset sizes
(--epoch-images, --test-images). The weights do not matter: both nets are initialised.
"""
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)

from benchmarks import _common as C  # noqa: E402
from benchmarks.training_throughput import TrainingStep  # noqa: E402
from branchynet.net import JointLoss  # noqa: E402
from branchynet.timing import interleave, spread, synchronize  # noqa: E402
from branchynet.training import CurveEvaluator  # noqa: E402

DEFAULTS = {
    "lenet_mnist": {"batch_size": 512, "iterations": 6, "warmup": 1, "block": 1,
                    "eval_samples": 2000, "epoch_images": 60000, "test_images": 10000},
    "alexnet_cifar10": {"batch_size": 128, "iterations": 3, "warmup": 1, "block": 1,
                        "eval_samples": 1000, "epoch_images": 50000, "test_images": 10000},
    "resnet110_cifar10": {"batch_size": 64, "iterations": 2, "warmup": 1, "block": 1,
                          "eval_samples": 200, "epoch_images": 50000, "test_images": 10000},
}


def parse_args(argv=None):
    p = C.parser(__doc__, DEFAULTS)
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--iterations", type=int, help="timed calls of each variant per round")
    p.add_argument("--eval-samples", type=int, help="test images per evaluation pass")
    p.add_argument("--epoch-images", type=int, help="training images per epoch")
    p.add_argument("--test-images", type=int, help="test images evaluated after an epoch")
    return C.finish_args(p.parse_args(argv), "curve_cost")


class Evaluation:
    """One ``CurveEvaluator`` pass over the test images; returns its seconds."""

    def __init__(self, net, x, y, device):
        self.evaluator = CurveEvaluator(x, y, JointLoss(net), device)
        self.device = device

    def __call__(self, i):
        synchronize(self.device)
        start = time.perf_counter()
        self.evaluator()
        synchronize(self.device)
        return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args, test_samples=args.eval_samples, need_weights=False)
    data = setup.data
    report = C.Report("curve_cost", args, setup)
    tag = f"[curve_cost] {setup.spec.name} {report.doc['device']}"
    setup.branchy.to_device(device)
    count = min(args.eval_samples, len(data.test_y))
    variants = {"baseline": TrainingStep(setup.baseline, data, args.batch_size, device, args.seed),
                "joint": TrainingStep(setup.branchy, data, args.batch_size, device, args.seed),
                "evaluation": Evaluation(setup.branchy, data.test_x[:count],
                                         data.test_y[:count], device)}
    t = interleave(variants, args.iterations, args.timing_rounds, args.block, args.warmup)
    per_image = {"baseline": t.rounds_ms["baseline"] / 1e3 / args.batch_size,
                 "joint": t.rounds_ms["joint"] / 1e3 / args.batch_size,
                 "evaluation": t.rounds_ms["evaluation"] / 1e3 / count}
    with report.figure("timing") as fig:
        fig.update({"batch_size": args.batch_size, "eval_samples": count,
                    "iterations": args.iterations, "timing": t.to_json(),
                    "seconds_per_image": {k: spread(v) for k, v in per_image.items()}})
    for stage in ("baseline", "joint"):
        share = (args.test_images * per_image["evaluation"]) / (args.epoch_images * per_image[stage])
        with report.figure(f"{stage}_epoch_share") as fig:
            fig.update({"epoch_images": args.epoch_images, "test_images": args.test_images,
                        "evaluation_over_epoch": spread(share),
                        "evaluation_seconds": spread(args.test_images * per_image["evaluation"])})
        C.log(f"{tag}: evaluating {args.test_images} test images adds "
              f"{100 * fig['evaluation_over_epoch']['median']:.1f}% "
              f"[{100 * fig['evaluation_over_epoch']['q1']:.1f}, "
              f"{100 * fig['evaluation_over_epoch']['q3']:.1f}] to a {stage} epoch of "
              f"{args.epoch_images} images at batch {args.batch_size} (evaluation "
              f"{fig['evaluation_seconds']['median']:.1f} s) {C.timing_note(t)}")
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
