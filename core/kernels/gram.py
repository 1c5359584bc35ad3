"""Public entry points: Gram matrices of a kernel specification.

``gram`` computes whole matrices, ``gram_block`` one self-contained tile (it needs only the
rows of its two blocks: the first-layer covariances and the diagonals come from the rows), which
is what asynchronous jobs run. Results are arrays of the requested dtype (float32 or
float64; all arithmetic is done in that dtype) and of the inputs' array module: NumPy, or
CuPy on a GPU worker (reference engine; not exercised by the CPU test suite).

Engines for network kernels (``network``, ``two_layer_relu``):

- ``"fused"`` (the default on NumPy ``n × d`` inputs): one BLAS product ``<x, x'>`` written
  straight into the buffer that becomes ``nngp`` (only its upper triangle, by row-block products
  that release the GIL, when ``x2`` is ``x1``), then one compiled pass (``fused.py``) that runs every layer per entry — branches on a
  small per-row stack, ``layer_norm`` as a scaling — upper-triangle blocks only when symmetric.
  Per-point quantities come from the self passes of ``engine.py`` (O(n·layers)). Quadrature
  activations (outside branches) run vectorised between compiled segments, tile by tile.
  Extra memory: O(n·layers) besides the outputs.
- ``"reference"``: the general engine (``engine.py``: the rules of ``rules.py`` on blocks of
  example pairs). It is also the path of convolutional inputs (``n × L × C``, ``n × H × W × C``),
  of quadrature activations inside branches and of CuPy inputs.

Symmetric means ``x2`` is ``None``, the same object as ``x1`` or equal to it. Then the result
is exactly symmetric and its diagonal comes from the self pass (each point has correlation
exactly 1 with itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.backend import array_namespace
from core.kernels.activations import ACTIVATIONS
from core.kernels.classic import classic_block
from core.kernels.engine import blocks, network_gram, self_pass, store_block
from core.kernels.fused import (
    OP_ADD,
    OP_ADD_SLOT,
    OP_DENSE_NTK,
    OP_DENSE_STD,
    OP_INPUT,
    OP_LOAD,
    OP_MUL,
    OP_MUL_SLOT,
    OP_SAVE,
    OP_SCALE,
    Program,
    activation_opcode,
)
from core.kernels.geometry import row_sq_norms
from core.kernels.quadrature import FUNCTIONS, pair_matrix
from core.kernels.rules import dense_constants, require_fan_in
from core.kernels.shapes import is_chain, trace
from core.kernels.spec import (
    Activation,
    Branches,
    Dense,
    KernelSpec,
    Layer,
    LayerNorm,
    Network,
    TwoLayerRelu,
    resolve_outputs,
    validate_spec,
)
from core.kernels.two_layer import TWO_LAYER_NETWORK

Array = Any

#: Default tile edge for the vectorised paths (bounds their temporaries to O(tile²)).
DEFAULT_TILE = 512
#: Cache block edge of the fused pass.
FUSED_BLOCK = 192


#: Fewest rows per product of ``upper_product`` (thinner products run well below BLAS's peak).
PRODUCT_ROWS = 2048


def upper_product(x: np.ndarray, out: np.ndarray) -> None:
    """The upper triangle (and a little more) of ``x @ x.T`` written into ``out``.

    Row blocks ``x[i:i+b] @ x[i:].T`` straight into ``out[i:i+b, i:]`` (BLAS GEMM through
    NumPy, no copy): about half the flops of the full product, like a ``?syrk``, but NumPy
    releases the GIL during each product, so the event loop and other requests keep running.
    The fused pass reads the upper triangle and mirrors its own result.
    """
    n = x.shape[0]
    rows = max(PRODUCT_ROWS, -(-n // 4))  # at most 4 products: ≤ 62.5 % of the full product's flops
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        np.matmul(x[i0:i1], x[i0:].T, out=out[i0:i1, i0:])


_ENGINES = ("auto", "fused", "reference")


# ----------------------------------------------------------------------------------- checks
def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def input_ranks(spec: KernelSpec) -> tuple[int, ...]:
    """The array ranks ``spec`` accepts: 2 (``n × d``), and 3, 4 (``n × L × C``, ``n × H × W × C``)
    for network kernels."""
    return (2, 3, 4) if isinstance(spec, Network) else (2,)


def as_inputs(x: Any, name: str, dtype: np.dtype, ranks: tuple[int, ...] = (2,)) -> Array:
    """``x`` as a contiguous array of ``dtype`` with one of ``ranks``, non-empty and finite."""
    xp = array_namespace(x)
    a = xp.asarray(x)
    if a.ndim not in ranks:
        forms = {2: "n × d", 3: "n × L × C", 4: "n × H × W × C"}
        allowed = " or ".join(forms[r] for r in ranks)
        raise ValueError(f"{name} must be {allowed} for this kernel, got shape {tuple(a.shape)}")
    if 0 in a.shape:
        raise ValueError(f"{name} must have at least one row and one feature, got shape {tuple(a.shape)}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # reported just below
        a = xp.ascontiguousarray(a, dtype=dtype)
    if not bool(xp.isfinite(a).all()):
        raise ValueError(f"{name} has values that are not finite in {np.dtype(dtype).name}")
    return a


def _prepare(spec, x1, x2, outputs, dtype, engine):
    validate_spec(spec)
    dt = _check_dtype(dtype)
    wanted = resolve_outputs(spec, outputs)
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {_ENGINES}, got {engine!r}")
    ranks = input_ranks(spec)
    a = as_inputs(x1, "x1", dt, ranks)
    b = None
    if x2 is not None and x2 is not x1:
        b = as_inputs(x2, "x2", dt, ranks)
        if b.shape[1:] != a.shape[1:]:
            raise ValueError(f"feature mismatch: x1 rows have shape {list(a.shape[1:])}, x2 rows "
                             f"{list(b.shape[1:])}")
    if isinstance(spec, Network):
        trace(spec, a.shape[1:])
    return a, b, wanted, dt


# ------------------------------------------------------------------------------------ tiles
# ---------------------------------------------------------------------------- network paths
def _numerical_in_place(layer: Activation, nngp: np.ndarray, ntk: np.ndarray | None, q1: np.ndarray,
                        q2: np.ndarray, symmetric: bool, tile: int) -> None:
    """A quadrature activation applied block by block to the full buffers (variances ``q1``, ``q2``)."""
    phi, dphi = FUNCTIONS[layer.name]
    for rows, cols in blocks(nngp.shape[0], nngp.shape[1], tile, tile, symmetric):
        new, dot = pair_matrix(phi, None if ntk is None else dphi, q1[rows], q2[cols], nngp[rows, cols])
        store_block(nngp, rows, cols, new, symmetric)
        if ntk is not None:
            store_block(ntk, rows, cols, ntk[rows, cols] * dot, symmetric)


@dataclass
class _Graph:
    """What compiling a fully connected graph needs besides the layers."""

    program: Program
    parameterization: str
    tape1: Iterator[np.ndarray]
    tape2: Iterator[np.ndarray]
    nngp: np.ndarray
    ntk: np.ndarray | None
    symmetric: bool
    tile: int


def _compile(layers: Sequence[Layer], g: _Graph, width: int | None, depth: int = 0) -> int | None:
    """Opcodes of a fully connected layer graph into ``g.program``; activations take their
    per-point quantities from the self passes' variance tapes, consumed in the order
    ``rules.run_layers`` visits the layers. A numerical activation (top level only) runs the
    program so far, then itself on the whole matrices. Returns the width after ``layers``."""
    program = g.program
    for layer in layers:
        if isinstance(layer, Dense):
            w2, b2, bias = dense_constants(layer)
            if g.parameterization == "ntk":
                program.add(OP_DENSE_NTK, (w2, b2))
            else:
                program.add(OP_DENSE_STD, (w2, b2, float(require_fan_in(width, 0)), bias))
            width = layer.width
        elif isinstance(layer, Activation) and layer.name in FUNCTIONS:
            program.run(g.nngp, g.ntk, g.symmetric, FUSED_BLOCK)
            _numerical_in_place(layer, g.nngp, g.ntk, next(g.tape1), next(g.tape2), g.symmetric, g.tile)
        elif isinstance(layer, Activation) and layer.name != "identity":
            q1, q2 = next(g.tape1), next(g.tape2)
            rule = ACTIVATIONS[layer.name]
            op, params = activation_opcode(layer)
            program.add_activation(op, rule.aux(q1, layer), rule.aux(q2, layer), params)
        elif isinstance(layer, LayerNorm):
            q1, q2 = next(g.tape1), next(g.tape2)
            eps = q1.dtype.type(layer.eps)
            program.add_activation(OP_SCALE, {"q": 1 / np.sqrt(eps + q1)}, {"q": 1 / np.sqrt(eps + q2)})
        elif isinstance(layer, Branches):
            # the branches with layers run from a saved copy of the input and merge into `acc`;
            # identity branches (at most one: shapes.py) then merge the saved input in directly
            start, acc = 2 * depth, 2 * depth + 1
            program.slots = max(program.slots, acc + 1)
            program.add(OP_SAVE, (start,))
            ran = [branch for branch in layer.branches if branch]
            widths = [width] if len(ran) < len(layer.branches) else []
            for b, branch in enumerate(ran):
                if b:
                    program.add(OP_LOAD, (start,))
                widths.append(_compile(branch, g, width, depth + 1))
                if len(ran) > 1:
                    program.add(OP_SAVE if b == 0 else (OP_ADD if layer.merge == "sum" else OP_MUL), (acc,))
            if len(ran) > 1:
                program.add(OP_LOAD, (acc,))
            if ran and len(ran) < len(layer.branches):
                program.add(OP_ADD_SLOT if layer.merge == "sum" else OP_MUL_SLOT, (start,))
            width = next((w for w in widths if w is not None), None)
        # identity, flatten and global pooling are the identity on n × d representations
    return width


def _compiles(layers: Sequence[Layer], top: bool = True) -> bool:
    """Whether ``_compile`` handles ``layers`` (numerical activations only outside branches)."""
    for layer in layers:
        if isinstance(layer, Branches) and not all(_compiles(b, False) for b in layer.branches):
            return False
        if not top and isinstance(layer, Activation) and layer.name in FUNCTIONS:
            return False
    return True


def _network_fused(spec: Network, x1: np.ndarray, x2: np.ndarray | None, want_ntk: bool, input_scale: float,
                   tile: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(nngp, ntk) of a fully connected network by the compiled pass (module doc).

    The self passes (``engine.self_pass``, O(n·layers)) give every activation's per-point
    variances; when symmetric their input norms are the diagonal of the same product as the
    pairs, so a duplicated row has exactly the same inner product with its copy as with itself.
    """
    symmetric = x2 is None
    n1 = x1.shape[0]
    n2 = n1 if symmetric else x2.shape[0]
    nngp = np.empty((n1, n2), x1.dtype)
    if symmetric:
        upper_product(x1, nngp)  # upper triangle only; the fused pass reads it and mirrors
        norms1 = nngp.diagonal().copy()
    else:
        np.matmul(x1, x2.T, out=nngp)
        norms1 = row_sq_norms(x1)
    batch = 1 << 16
    first = self_pass(spec, x1, want_ntk, batch, input_scale, norms1)
    second = first if symmetric else self_pass(spec, x2, want_ntk, batch, input_scale, row_sq_norms(x2))
    ntk = np.empty((n1, n2), x1.dtype) if want_ntk else None
    program = Program(x1.dtype, n1, n2)
    program.add(OP_INPUT, (float(input_scale),))
    graph = _Graph(program, spec.parameterization, iter(first.tape), iter(second.tape), nngp, ntk, symmetric, tile)
    _compile(spec.layers, graph, x1.shape[1])
    program.run(nngp, ntk, symmetric, FUSED_BLOCK)
    if symmetric:
        np.fill_diagonal(nngp, first.nngp)
        if ntk is not None:
            np.fill_diagonal(ntk, first.ntk)
    return nngp, ntk


def _network(spec: Network, x1: Array, x2: Array | None, want_ntk: bool, input_scale: float | None, tile: int,
             engine: str) -> tuple[Array, Array | None]:
    """(nngp, ntk) of any network: the compiled pass for fully connected NumPy inputs, else the
    general engine (``engine.py``; also the ``"reference"`` engine and CuPy's path)."""
    if engine != "reference" and array_namespace(x1) is np and x1.ndim == 2 and _compiles(spec.layers):
        return _network_fused(spec, x1, x2, want_ntk, float(x1.shape[1] if input_scale is None else input_scale),
                              tile)
    if array_namespace(x1) is not np and (x1.ndim > 2 or not is_chain(spec)):
        raise ValueError("networks beyond fully connected chains run on NumPy (CPU) workers only")
    return network_gram(spec, x1, x2, want_ntk, input_scale=input_scale)


# ------------------------------------------------------------------------------------ kernels
def _compute(spec, x1, x2, wanted, tile, engine) -> dict[str, Array]:
    if isinstance(spec, Network):
        nngp, ntk = _network(spec, x1, x2, "ntk" in wanted, None, tile, engine)
        return {name: (nngp if name == "nngp" else ntk) for name in wanted}
    if isinstance(spec, TwoLayerRelu):
        want_a = bool({"ntk", "ntk_a"} & set(wanted))
        nngp, ntk_a = _network(TWO_LAYER_NETWORK, x1, x2, want_a, 1.0, tile, engine)
        out: dict[str, Array] = {}
        for name in wanted:
            if name == "ntk":
                out[name] = ntk_a + nngp
            elif name == "ntk_a":
                out[name] = ntk_a
            else:  # nngp and ntk_b are the same matrix: separate arrays when both are asked for
                out[name] = nngp if not any(n in out for n in ("nngp", "ntk_b")) else nngp.copy()
        return out
    return {"kernel": classic_block(spec, x1, x2)}


def gram(
    spec: KernelSpec,
    x1: Array,
    x2: Array | None = None,
    *,
    outputs: Iterable[str] | None = None,
    dtype: Any = np.float64,
    tile: int = DEFAULT_TILE,
    engine: str = "auto",
) -> dict[str, np.ndarray]:
    """Gram matrices of ``spec`` for ``x1`` against ``x2`` (``None``: ``x1``): ``n × d`` arrays, or for
    network kernels also ``n × L × C`` / ``n × H × W × C`` (the general engine, ``engine.py``).

    ``outputs``: names from ``output_names(spec)`` (default: all). Returns
    ``{name: n1 × n2 array of dtype}``. Raises ``ValueError`` for an invalid spec, unknown
    outputs, a dtype other than float32/float64, non-2-D or empty inputs, a feature mismatch,
    or inputs that are not finite in ``dtype``. ``tile`` bounds the temporaries of the
    vectorised paths; ``engine``: ``"auto"``, ``"fused"`` or ``"reference"`` (module doc).
    """
    a, b, wanted, _ = _prepare(spec, x1, x2, outputs, dtype, engine)
    if b is not None and b.shape == a.shape and bool((b == a).all()):
        b = None  # x1 against itself: exploit (and guarantee) symmetry
    with np.errstate(all="ignore"):  # overflow shows as inf in the result, for the caller to report
        return _compute(spec, a, b, wanted, max(1, int(tile)), engine)


def gram_block(
    spec: KernelSpec,
    x1_rows: Array,
    x2_rows: Array | None,
    *,
    outputs: Iterable[str] | None = None,
    dtype: Any = np.float64,
    symmetric: bool = False,
    engine: str = "auto",
) -> dict[str, np.ndarray]:
    """One tile ``K(x1_rows, x2_rows)``: self-contained, needs only the two blocks of rows.

    ``symmetric=True`` declares a diagonal tile (``x2_rows`` is ``None`` or the same rows):
    it is computed as in ``gram(spec, x1_rows)``, exactly symmetric. Off-diagonal tiles of a
    symmetric job use ``symmetric=False``; the job writes the tile and its transpose.
    """
    if symmetric and x2_rows is not None and x2_rows is not x1_rows:
        xp = array_namespace(x1_rows, x2_rows)
        if not bool(xp.array_equal(xp.asarray(x1_rows), xp.asarray(x2_rows))):
            raise ValueError("symmetric=True needs x2_rows to be the same rows as x1_rows (or None)")
    a, b, wanted, _ = _prepare(spec, x1_rows, None if symmetric else x2_rows, outputs, dtype, engine)
    if not symmetric and b is None:
        b = a
    n = max(a.shape[0], 1 if b is None else b.shape[0])
    with np.errstate(all="ignore"):
        return _compute(spec, a, None if symmetric else b, wanted, max(n, 1), engine)


def warm_up() -> None:
    """Compile the fused engine for float32 and float64 (or load it from numba's disk cache).

    One compiled function serves every layer list, so this is all a process needs before its
    first real request (a cold compile takes a few seconds per dtype).
    """
    spec = Network((Dense(1.0, 0.1), Activation("relu"), Dense(1.0)))
    x = np.array([[1.0, 0.0], [0.5, 2.0]])
    for dtype in (np.float32, np.float64):
        gram(spec, x, dtype=dtype)
