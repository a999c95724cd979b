"""npvit.heap: with glibc's malloc tuned (as `import npvit` does), freed NumPy arrays are reused
instead of being mapped and zeroed by the kernel again: a warm training step takes (almost) no
fresh pages, and a large temporary faults its pages in only the first time."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc's malloc, Linux only")

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

# A 64 MiB temporary, as a batch's activations are: above the largest threshold glibc would pick
# by itself (32 MiB), so untuned it is mapped fresh from the kernel every time.
TEMPORARY = """
import resource
import numpy as np
import npvit
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(16 * 2**20, np.float32)
    a.fill(1.0)                    # touch every page
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def run(code: str, keep: str) -> str:
    env = {**os.environ, "NPVIT_KEEP_FREED_MEMORY": keep, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=True).stdout


def glibc_or_skip():
    import npvit
    if not npvit.keep_freed_memory():
        pytest.skip("not glibc: malloc is left as it is")


def test_a_freed_temporary_is_reused_not_faulted_in_again():
    glibc_or_skip()
    # fault counts, not page counts: with transparent huge pages one fault maps 2 MiB
    tuned = [int(f) for f in run(TEMPORARY, "1").split()]
    untuned = [int(f) for f in run(TEMPORARY, "0").split()]
    assert min(untuned) > 10 and min(untuned) > max(untuned) / 2, untuned   # fresh every round
    assert tuned[0] > 10 and max(tuned[1:]) < tuned[0] / 20, tuned          # fresh only once


def test_a_warm_training_step_takes_almost_no_fresh_pages():
    glibc_or_skip()
    # measured 0-27 per step (Python's own small allocations); untuned it varies from process
    # to process between a few and 4,000
    assert float(run(STEP, "1")) < 100


def test_the_tuning_can_be_turned_off(monkeypatch):
    import npvit.heap
    monkeypatch.setenv("NPVIT_KEEP_FREED_MEMORY", "0")
    assert npvit.heap.keep_freed_memory() is False
