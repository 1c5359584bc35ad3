"""Iterative solvers on matrix-free kernels (pure numpy/scipy, float64): the kernel is a
callable ``V ↦ K·V``, so ``K`` never has to exist in one process.

- :mod:`core.solvers.cg`: column-batched preconditioned conjugate gradients on ``K + shift·I``;
- :mod:`core.solvers.preconditioner`: centers, the Nyström preconditioner, jittered Cholesky;
- :mod:`core.solvers.nystrom`: Nyström kernel ridge regression by Falkon's preconditioned CG;
- :mod:`core.solvers.lanczos`: training trajectories for many times at once by Lanczos;
- :mod:`core.solvers.report`: ``SolveReport``, ``NotConverged`` and the callable types.
"""

from core.solvers.cg import conjugate_gradients
from core.solvers.lanczos import KrylovTrajectory, krylov_trajectory
from core.solvers.nystrom import nystrom_solve
from core.solvers.preconditioner import choose_centers, jittered_cholesky, nystrom_preconditioner
from core.solvers.report import Callback, MatMat, NotConverged, SolveReport

__all__ = [
    "Callback",
    "KrylovTrajectory",
    "MatMat",
    "NotConverged",
    "SolveReport",
    "choose_centers",
    "conjugate_gradients",
    "jittered_cholesky",
    "krylov_trajectory",
    "nystrom_preconditioner",
    "nystrom_solve",
]
