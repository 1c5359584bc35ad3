"""Training dynamics of linearized (infinite-width) networks and kernel spectra (pure numpy).

- :mod:`core.dynamics.spectral`: the one eigendecomposition (``EigenBasis.of``), the spectral
  time filter shared by trajectories, predictions at finite time and ensemble variances, and
  ``spectrum`` (``/v1/spectra``).
- :mod:`core.dynamics.trajectory`: gradient-flow and gradient-descent trajectories for all
  requested times from that one decomposition.
"""

from core.dynamics.spectral import (
    EigenBasis,
    Method,
    Spectrum,
    Time,
    spectrum,
    time_filter,
)
from core.dynamics.trajectory import (
    Normalization,
    Trajectory,
    dual_coefficients,
    normalization_count,
    trajectory,
)

__all__ = [
    "EigenBasis",
    "Method",
    "Normalization",
    "Spectrum",
    "Time",
    "Trajectory",
    "dual_coefficients",
    "normalization_count",
    "spectrum",
    "time_filter",
    "trajectory",
]
