"""scripts/gpu_replicate.sh: its environment is checked before any work."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_replicate.sh")


@pytest.mark.parametrize("variable", ["NETS", "LATENCY"])
def test_an_unknown_network_is_refused_before_any_work(tmp_path, variable):
    env = dict(os.environ, **{variable: "lenet bogus"})
    out = tmp_path / "out"
    done = subprocess.run(["bash", SCRIPT, "dry-run", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert (f"{variable} has 'bogus': choose from lenet, alexnet, resnet, "
            "resnet-converged, resnet-cycle2") in done.stderr
    assert not out.exists()
