r"""Per-node quadratic objectives, so the simulator can run SGP and D-PSGD.

Node ``i`` minimises $f_i(x) = \tfrac12 (x - b_i)^\top A_i (x - b_i)$, with
$A_i$ diagonal (given as a vector) or full. The network objective is the mean of
the $f_i$.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Quadratic"]


class Quadratic:
    r"""Quadratic objectives $f_i(x) = \tfrac12 (x - b_i)^\top A_i (x - b_i)$.

    Args:
        curvature: ``(n, d)`` for diagonal $A_i$, or ``(n, d, d)`` for full
            symmetric positive semi-definite ones.
        target: ``(n, d)``, the minimiser $b_i$ of each $f_i$.

    Attributes:
        curvature: The $A_i$ as a float64 array, ``(n, d)`` or ``(n, d, d)``.
        target: The $b_i$ as a float64 array, ``(n, d)``.

    Raises:
        ValueError: If the shapes disagree or a curvature is not finite.
    """

    def __init__(self, curvature: ArrayLike, target: ArrayLike) -> None:
        self.curvature = np.asarray(curvature, dtype=np.float64)
        self.target = np.asarray(target, dtype=np.float64)
        if self.target.ndim != 2:
            raise ValueError(f"target must have shape (n, d); got {self.target.shape}")
        n, d = self.target.shape
        if self.curvature.shape not in ((n, d), (n, d, d)):
            raise ValueError(
                f"curvature must have shape ({n}, {d}) or ({n}, {d}, {d}) to match target; "
                f"got {self.curvature.shape}"
            )
        if not (np.isfinite(self.curvature).all() and np.isfinite(self.target).all()):
            raise ValueError("curvature and target must be finite")

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, d)``."""
        n, d = self.target.shape
        return n, d

    def gradient(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        r"""Row ``i`` is $\nabla f_i(x_i)$ for ``x`` of shape ``(n, d)``."""
        diff = x - self.target
        if self.curvature.ndim == 2:
            grad: NDArray[np.float64] = self.curvature * diff
            return grad
        return np.asarray(np.einsum("nij,nj->ni", self.curvature, diff), dtype=np.float64)

    def minimizer(self) -> NDArray[np.float64]:
        r"""The minimiser of $\sum_i f_i$, shape ``(d,)``.

        Raises:
            numpy.linalg.LinAlgError: If $\sum_i A_i$ is singular.
        """
        if self.curvature.ndim == 2:
            weighted: NDArray[np.float64] = (self.curvature * self.target).sum(axis=0)
            return np.asarray(weighted / self.curvature.sum(axis=0), dtype=np.float64)
        A = self.curvature.sum(axis=0)
        rhs = np.einsum("nij,nj->i", self.curvature, self.target)
        return np.asarray(np.linalg.solve(A, rhs), dtype=np.float64)
