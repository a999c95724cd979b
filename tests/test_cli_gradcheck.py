"""`npvit gradcheck` (listed in the README's Predict section) must run offline and report real
gradient-check results."""
import subprocess
import sys


def test_gradcheck_command_passes_and_prints_every_op():
    out = subprocess.run([sys.executable, "-m", "npvit", "gradcheck"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "PASS" in out.stdout
    for op in ["conv2d 3x3 depthwise", "batch norm", "group norm", "softmax", "bilinear resize"]:
        assert op in out.stdout


def test_gradcheck_fails_when_tolerance_is_impossible():
    out = subprocess.run([sys.executable, "-m", "npvit", "gradcheck", "--tol", "1e-30"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "FAIL" in out.stdout
