"""Count the work one forward pass does: multiply-adds, element-wise operations and the largest
intermediate array, as reported by the code that runs.

The attention functions in ``npvit.functional.attention`` report each operation right after
doing it (``opcount.matmul("scores = q k^T", q, k_t, scores)``). Outside ``count_ops()`` a
report is a no-op; inside, the counter reads the sizes off the arrays that were actually used
and produced, so the numbers come from the code path, not from a formula written beside it:

    with count_ops() as counter:
        separable_attention_forward(x, ...)
    counter.macs, counter.elementwise, counter.largest.nbytes, print(counter.table())

What is counted, per reported operation:
* ``macs`` — multiply-adds of matrix products: (M x K) @ (K x N) is M*N*K, a linear layer or a
  1x1 convolution is (output elements) * (input features).
* ``elementwise`` — one per element an element-wise operation writes (bias add, scaling, exp
  and normalisation of a softmax counted once per element, ReLU, products), and one per element
  a reduction reads (a sum over N of a (B, d, P, N) array is B*d*P*N additions).
* the output array's shape and bytes; the largest of these over the pass is the
  "largest intermediate buffer";
* ``bytes_read`` and ``bytes_written`` — the compulsory memory traffic: every input array read
  once, the output written once (a matmul reads a and b; a linear layer its weight and an input
  of out.size / out_features * in_features elements; an element-wise op one input the size of
  its output; a reduction its input). Divided by ``seconds`` this is the op's achieved GB/s, a
  lower bound of its real traffic (an op that makes several passes moves more), to put beside
  the machine's memory bandwidth;
* ``seconds`` — wall time since the previous report (or since the block began): as each report
  follows its operation, this times the operation (plus any unreported work just before it,
  such as a view turned into a copy), which makes the counter a per-operation profiler.
Views (reshape, slicing, transpose without a copy) do no work and are not reported.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Op:
    name: str           # what the code computes, e.g. "scores = q k^T"
    kind: str           # linear | conv | matmul | softmax | elementwise | reduction | copy
    macs: int
    elementwise: int
    shape: tuple
    nbytes: int
    seconds: float = 0.0
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def gb_per_s(self) -> float:
        """Achieved bandwidth of the compulsory traffic, GB/s (0 for an untimed op)."""
        return (self.bytes_read + self.bytes_written) / self.seconds / 1e9 if self.seconds else 0.0

    @property
    def gflop_per_s(self) -> float:
        """Achieved 2 x multiply-adds per second, GFLOP/s."""
        return 2 * self.macs / self.seconds / 1e9 if self.seconds else 0.0


class OpCounter:
    """The operations reported during one ``count_ops()`` block, in order."""

    def __init__(self):
        self.ops: list[Op] = []
        self._clock = time.perf_counter()

    def record(self, name: str, kind: str, out: np.ndarray, macs: int = 0, elementwise: int = 0,
               bytes_read: int | None = None):
        """bytes_read: the inputs' bytes; None means one input the size of ``out``."""
        now = time.perf_counter()
        read = out.nbytes if bytes_read is None else bytes_read
        self.ops.append(Op(name, kind, int(macs), int(elementwise), tuple(out.shape), int(out.nbytes),
                           now - self._clock, int(read), int(out.nbytes)))
        self._clock = now

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def elementwise(self) -> int:
        return sum(op.elementwise for op in self.ops)

    @property
    def bytes_moved(self) -> int:
        """Compulsory bytes read plus written, over every operation."""
        return sum(op.bytes_read + op.bytes_written for op in self.ops)

    @property
    def largest(self) -> Op:
        """The operation whose output array is the biggest."""
        return max(self.ops, key=lambda op: op.nbytes)

    def by_kind(self) -> dict[str, int]:
        """kind -> number of operations of that kind (the paper's Fig. 1, left)."""
        kinds: dict[str, int] = {}
        for op in self.ops:
            kinds[op.kind] = kinds.get(op.kind, 0) + 1
        return kinds

    def table(self) -> str:
        lines = [f"{'operation':34s} {'kind':12s} {'multiply-adds':>15s} {'element-wise':>13s} "
                 f"{'MiB moved':>9s}  output"]
        for op in self.ops:
            moved = (op.bytes_read + op.bytes_written) / 2**20
            lines.append(f"{op.name:34s} {op.kind:12s} {op.macs:15,d} {op.elementwise:13,d} "
                         f"{moved:9.1f}  {op.shape} {op.nbytes / 2**20:.1f} MiB")
        big = self.largest
        lines.append(f"{'total':34s} {'':12s} {self.macs:15,d} {self.elementwise:13,d} "
                     f"{self.bytes_moved / 2**20:9.1f}  largest: {big.name} {big.shape}")
        return "\n".join(lines)


_active: OpCounter | None = None


@contextlib.contextmanager
def count_ops():
    """Collect the operations reported inside this block into the yielded OpCounter."""
    global _active
    previous, _active = _active, OpCounter()
    try:
        yield _active
    finally:
        _active = previous


# --- reports: each is called by the code right after the operation it describes ---------------
def linear(name: str, w: np.ndarray, out: np.ndarray, bias: np.ndarray | None) -> None:
    """A linear layer or 1x1 convolution with weight w (out_features, in_features[, 1, 1])
    produced ``out``: every output element is a dot product over in_features, plus a bias add."""
    if _active is not None:
        x_bytes = out.size // w.shape[0] * w.shape[1] * out.itemsize
        _active.record(name, "linear", out, macs=out.size * w.shape[1],
                       elementwise=out.size if bias is not None else 0,
                       bytes_read=x_bytes + w.nbytes + (bias.nbytes if bias is not None else 0))


def matmul(name: str, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b (batched over leading axes): each output element is a dot product of length
    a.shape[-1]."""
    if _active is not None:
        _active.record(name, "matmul", out, macs=out.size * a.shape[-1],
                       bytes_read=a.nbytes + b.nbytes)


def elementwise(name: str, out: np.ndarray, kind: str = "elementwise") -> None:
    """An element-wise operation (kind "softmax" for a softmax) that wrote ``out``."""
    if _active is not None:
        _active.record(name, kind, out, elementwise=out.size)


def reduction(name: str, x: np.ndarray, out: np.ndarray) -> None:
    """A sum of ``x`` over some axes into ``out``: one addition per element read."""
    if _active is not None:
        _active.record(name, "reduction", out, elementwise=x.size, bytes_read=x.nbytes)


def copy(name: str, out: np.ndarray) -> None:
    """A data movement that allocated ``out`` (e.g. merging heads back into tokens)."""
    if _active is not None:
        _active.record(name, "copy", out)


def conv(name: str, w: np.ndarray, out: np.ndarray, x: np.ndarray | None = None) -> None:
    """A k x k convolution (weight (C_out, C_in/groups, kh, kw)) produced ``out``: every output
    element is a dot product over C_in/groups * kh * kw inputs (a depthwise conv: kh * kw).
    x, the input, counts towards bytes_read (with the weight) when given."""
    if _active is not None:
        _active.record(name, "conv", out, macs=out.size * w.shape[1] * w.shape[2] * w.shape[3],
                       bytes_read=w.nbytes + (x.nbytes if x is not None else 0))
