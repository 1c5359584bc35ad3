"""ntk_client: neural-tangents' ``stax`` and ``kernel_fn`` on top of the NTK service's HTTP API.

    from ntk_client import Client, stax
    spec = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1))
    kernel_fn = Client("http://127.0.0.1:8000").kernel_fn(spec)
    k = kernel_fn(x1, x2, ("nngp", "ntk"))   # k.nngp, k.ntk: numpy arrays
    ntk = kernel_fn(x1, None, "ntk")         # one numpy array
"""

from ntk_client import kernels, stax
from ntk_client.client import Client, KernelFn, Model
from ntk_client.errors import JobFailed, ProblemError
from ntk_client.jobs import Job
from ntk_client.results import (
    Dataset,
    EmpiricalKernel,
    LazyTraining,
    NetworkSide,
    NTKSide,
    Prediction,
    Spectrum,
    Trajectory,
)

__version__ = "0.1.0"
__all__ = [
    "Client", "Dataset", "EmpiricalKernel", "Job", "JobFailed", "KernelFn", "LazyTraining", "Model", "NTKSide",
    "NetworkSide", "Prediction", "ProblemError", "Spectrum", "Trajectory", "kernels", "stax",
]
