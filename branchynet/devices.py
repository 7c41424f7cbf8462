"""The Chainer devices this machine can run on."""
import chainer

from branchynet._compat import cuda_status


def available_devices():
    """``(devices, reason)``: the CPU and every usable CUDA GPU as Chainer devices, and why
    there is no GPU ('' when there is one)."""
    gpus, reason = cuda_status()
    devices = [chainer.get_device("@numpy")]
    devices += [chainer.get_device(f"@cupy:{i}") for i in range(gpus)]
    return devices, reason
