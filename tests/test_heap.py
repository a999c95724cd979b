"""npvit.heap: with glibc's malloc tuned (as `import npvit` does), a warm training step takes
no fresh pages from the kernel; without it, the same step faults in thousands."""
import os
import subprocess
import sys

import pytest

STEP = """
import resource
import numpy as np
import npvit
model = npvit.create_model("mobilevitv2_050", seed=0).train()
x = np.random.default_rng(0).random((4, 3, 128, 128), dtype=np.float32)
def step():
    model.zero_grad()
    logits = model(x)
    model.backward(np.full_like(logits, 1.0 / logits.size))
for _ in range(2):                 # warm: the allocator has seen every size once
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def faults_per_step(keep: str) -> float:
    env = {**os.environ, "NPVIT_KEEP_FREED_MEMORY": keep, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, Linux only")
def test_a_warm_training_step_takes_no_fresh_pages():
    import npvit
    if not npvit.keep_freed_memory():
        pytest.skip("not glibc: malloc is left as it is")
    tuned, untuned = faults_per_step("1"), faults_per_step("0")
    # measured: about 13 per step (Python's own small allocations) against 1,700-1,800
    assert tuned < 100, tuned
    assert untuned > 10 * tuned, (tuned, untuned)


def test_the_tuning_can_be_turned_off(monkeypatch):
    import npvit.heap
    monkeypatch.setenv("NPVIT_KEEP_FREED_MEMORY", "0")
    assert npvit.heap.keep_freed_memory() is False
