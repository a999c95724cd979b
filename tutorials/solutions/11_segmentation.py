"""Solutions to the exercises of tutorial 11, and the wrong answers their checkers must reject."""
import numpy as np


def adaptive_pool_rows(n, p):
    a = np.zeros((p, n))
    for i in range(p):
        start, end = (i * n) // p, -((-(i + 1) * n) // p)     # floor, ceil
        a[i, start:end] = 1.0 / (end - start)
    return a


def adaptive_pool_rows_floor(n, p):
    """Wrong: floors both ends, so bins never overlap and, for p > n, some are empty."""
    a = np.zeros((p, n))
    for i in range(p):
        start, end = (i * n) // p, ((i + 1) * n) // p
        a[i, start:end] = 1.0 / max(end - start, 1)
    return a


WRONG_ANSWERS = {"adaptive_pool_rows": adaptive_pool_rows_floor}
