"""Cache blocking: run a loop of NumPy passes over slices of an array small enough to stay in
the CPU's caches across all the passes, instead of streaming the whole array from memory once
per pass. Used where an op makes many elementwise passes over a large intermediate (the 9 taps
of a depthwise convolution, the softmax of the attention scores)."""
from __future__ import annotations

# 1 MiB: this machine's L2 is 1-2 MiB per core; measured in the depthwise convolution (256 KiB
# and 512 KiB blocks were slower, B/A 1.07-1.35 and 0.95-1.10) and the attention softmax.
BLOCK_BYTES = 1024 * 1024


def blocks(count: int, bytes_per_item: int, budget: int | None = None) -> list[slice]:
    """Slices of range(count), each holding as many items as fit in ``budget`` bytes (default
    BLOCK_BYTES, read at the call) and at least one, in order and covering every item once."""
    per = max(1, (BLOCK_BYTES if budget is None else budget) // max(bytes_per_item, 1))
    return [slice(start, min(start + per, count)) for start in range(0, count, per)]
