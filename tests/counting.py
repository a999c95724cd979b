"""What the complexity tests (test_opcount.py, test_attention_zoo_complexity.py) measure a unit
with. A unit is ``unit(rng, k) -> run``: it builds its inputs for k tokens, and ``run()`` calls
the attention function once."""
import tracemalloc

import numpy as np

from npvit.opcount import count_ops


def arrays(rng, *shapes):
    """Standard-normal float32 arrays of the given shapes."""
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def counted(unit, k):
    """The OpCounter of one run of ``unit`` at k tokens."""
    run = unit(np.random.default_rng(k), k)
    with count_ops() as counter:
        run()
    return counter


def peak_bytes(run):
    """Peak traced memory (every NumPy buffer, temporaries included) during one call."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
