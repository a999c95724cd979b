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


def test_a_closed_pipe_ends_the_command_quietly():
    # `npvit models | head -1` when head has already gone: the reader closes the pipe before the
    # command writes (unbuffered, so every print writes at once); one line, no traceback.
    import os
    proc = subprocess.Popen([sys.executable, "-m", "npvit", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
