"""The fused engine: all layers of a network per Gram entry, in one compiled pass.

The layer list is compiled into a small program (``Program``): an opcode per layer, a row
of float parameters per opcode, and per activation layer the per-point quantities of the
two input sets (``aux`` slots ``m, p, ip, q, u, t, sP, g``, see ``activations.py``) computed in
O(n) from the diagonal recursion. ``run_program`` then walks the Gram matrix in square
cache blocks (upper-triangle blocks only, mirrored, when symmetric) and, for each row
segment of a block, runs every opcode over the segment while it sits in L1. Each opcode is
a simple branch-free loop that LLVM vectorises (AVX2: 4 float64 / 8 float32 lanes):
``arctan2`` is the select-only polynomial ``_atan2p`` (float64 |error| ~1e-16 rad, float32
~1e-7), ``error_model="numpy"`` removes the division-by-zero checks that would block
vectorisation; only ``sin`` calls libm (``exp``/``expm1``) and stays scalar.

Arithmetic is done in the array dtype (float32 or float64; constants come in as arrays of
that dtype, never as Python literals, so nothing is silently promoted) and without
fast-math (FMA contraction only inside the arctan polynomial), in the same operation order
as the NumPy reference: for relu/leaky_relu/abs/sign a point's correlation with itself is
exactly 1 at every layer, so duplicate rows get exactly the diagonal value.

Compiled once per dtype (one function serves every layer list) and cached on disk
(``cache=True``; see ``gram.warm_up``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from core.kernels.activations import ACTIVATIONS, relu_constants
from core.kernels.spec import Activation

# opcodes
OP_INPUT = 0  # nngp /= d, ntk = 0                          params: d
OP_DENSE_NTK = 1  # nngp' = w² nngp + b², ntk' = nngp' + w² ntk     params: w², b²
OP_DENSE_STD = 2  # ntk' = fan·nngp + w² ntk + bias               params: w², b², fan, bias
OP_ABRELU = 3  # relu, leaky_relu, abs                        params: factor, c0
OP_ERF = 4
OP_SIGN = 5
OP_GELU = 6
OP_SIN = 7
OP_SCALE = 8  # nngp, ntk *= r1·r2 (layer_norm; r = 1/√(ε + q) in aux slot q)
# the branch stack (params: slot); OP_SAVE … OP_MUL_SLOT are consecutive
OP_SAVE = 9  # stack[slot] = (nngp, ntk)
OP_LOAD = 10  # (nngp, ntk) = stack[slot]
OP_ADD = 11  # stack[slot] += (nngp, ntk)                    (FanInSum)
OP_MUL = 12  # stack[slot] = (N·n, T·n + N·t)               (FanInProd)
OP_ADD_SLOT = 13  # (nngp, ntk) += stack[slot]               (an identity branch of a sum)
OP_MUL_SLOT = 14  # (n, t) = (n·N, t·N + n·T), stack[slot] = (N, T)   (… of a product)

#: aux slot of each per-point quantity.
SLOTS = {"m": 0, "p": 1, "ip": 2, "q": 3, "u": 4, "t": 5, "sP": 6, "g": 7}
N_SLOTS = len(SLOTS)

#: arctan(t) ≈ t + t·z·P(z), z = t², |t| ≤ tan(π/8): least-squares Chebyshev fits of the
#: Taylor series of (arctan(t) − t)/t³. Degree 10 in z (float64): max |error| 5.6e-17 rad;
#: degree 4 (float32): 1.0e-9 rad, below float32 rounding.
ATAN_COEFFS_64 = (
    -0.33333333333333326, 0.1999999999999466, -0.14285714284678983, 0.11111111022437817,
    -0.09090904999967814, 0.07692194756272229, -0.0666468995638395, 0.058597880195239524,
    -0.05094332793642562, 0.039494038984047866, -0.019502586907037746,
)
ATAN_COEFFS_32 = (
    -0.3333333181341926, 0.19999550075913622, -0.14264232553018982, 0.10746298434070425,
    -0.06459376277415833,
)
_CONSTS = (
    (0.0, 1.0, 0.5, 0.25, 2.0, math.pi, math.pi / 2, math.pi / 4, math.tan(math.pi / 8),
     1 / (2 * math.pi), 2 / math.pi, 4 / math.pi, 0.0)  # _TINY: set per dtype
    + ATAN_COEFFS_64
    + ATAN_COEFFS_32
)
# indices into the constants tuple
_ZERO, _ONE, _HALF, _QUARTER, _TWO, _PI, _PI2, _PI4, _T8, _INV2PI, _2PI, _4PI, _TINY = range(13)
_C64 = 13
_C32 = _C64 + len(ATAN_COEFFS_64)
N_CONSTS = len(_CONSTS)


#: Serialises compiled passes: each one already uses every core, and numba's ``workqueue``
#: threading layer (the fallback when OpenMP/TBB are missing) is not thread-safe.
_RUN_LOCK = threading.Lock()


def constants(dtype: np.dtype) -> np.ndarray:
    """The kernel's constants as an array of the working dtype."""
    consts = np.array(_CONSTS, dtype=dtype)
    consts[_TINY] = np.finfo(dtype).tiny
    return consts


# ------------------------------------------------------------------------------ scalar helpers
def _atan_poly(z, K):  # pragma: no cover - only its numba overload runs
    """P(z) of ``arctan(t) ≈ t + t·z·P(z)``: degree 10 for float64, 4 for float32."""
    raise NotImplementedError


@overload(_atan_poly, jit_options={"fastmath": {"contract"}, "error_model": "numpy"})
def _atan_poly_impl(z, K):
    if z == types.float32:

        def poly32(z, K):
            p = K[_C32 + 4]
            p = p * z + K[_C32 + 3]
            p = p * z + K[_C32 + 2]
            p = p * z + K[_C32 + 1]
            return p * z + K[_C32]

        return poly32

    def poly64(z, K):
        p = K[_C64 + 10]
        p = p * z + K[_C64 + 9]
        p = p * z + K[_C64 + 8]
        p = p * z + K[_C64 + 7]
        p = p * z + K[_C64 + 6]
        p = p * z + K[_C64 + 5]
        p = p * z + K[_C64 + 4]
        p = p * z + K[_C64 + 3]
        p = p * z + K[_C64 + 2]
        p = p * z + K[_C64 + 1]
        return p * z + K[_C64]

    return poly64


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _atan2p(y, x, K):
    """``arctan2(y, x)`` for ``y ≥ 0``, not both 0 (result in [0, π]); branch-free (selects only).

    Compiled with FMA contraction (its own flags survive LLVM inlining); the rest of the
    engine is not, to keep the reference's rounding.
    """
    ax = abs(x)
    lo = min(y, ax)
    hi = max(y, ax)
    big = lo > K[_T8] * hi
    num = lo - hi if big else lo
    den = lo + hi if big else hi
    t = num / den
    z = t * t
    r = t + t * z * _atan_poly(z, K)
    r = r + (K[_PI4] if big else K[_ZERO])
    r = K[_PI2] - r if y > ax else r
    return K[_PI] - r if x < K[_ZERO] else r


@njit(cache=True, inline="always", error_model="numpy")
def _atan2(y, x, K):
    """``arctan2(y, x)`` for any sign of ``y``."""
    r = _atan2p(abs(y), x, K)
    return -r if y < K[_ZERO] else r


@njit(cache=True, inline="always", error_model="numpy")
def _rho(x, s12, K):
    """Correlation ``x / s12`` clipped to [-1, 1], 0 when ``s12 == 0``."""
    r = x / s12 if s12 > K[_ZERO] else K[_ZERO]
    return min(max(r, -K[_ONE]), K[_ONE])


# ---------------------------------------------------------------------------------- opcodes
@njit(cache=True, inline="always", error_model="numpy")
def _scaled_angle(x, m1, ip1, m2, ip2, K):
    """``(x̂, D̂, θ)`` of ``geometry.scaled_pair`` for one entry."""
    xh = x * ip1 * ip2
    dh = np.sqrt(max(m1 * m2 - xh * xh, K[_ZERO]))
    return xh, dh, _atan2p(max(dh, K[_TINY]), xh, K)


@njit(cache=True, inline="always", error_model="numpy")
def _op_abrelu(nn, nt, factor, c0, m1, p1, ip1, m2, p2, ip2, K):
    for j in range(nn.shape[0]):
        xh, dh, theta = _scaled_angle(nn[j], m1, ip1, m2[j], ip2[j], K)
        dot = c0 - factor * theta
        nn[j] = (p1 * p2[j]) * (factor * dh + dot * xh)
        nt[j] = nt[j] * dot


@njit(cache=True, inline="always", error_model="numpy")
def _op_sign(nn, nt, m1, ip1, m2, ip2, K):
    one = K[_ONE]
    zero = K[_ZERO]
    for j in range(nn.shape[0]):
        x = nn[j]
        _, _, theta = _scaled_angle(abs(x), m1, ip1, m2[j], ip2[j], K)
        v = one - K[_2PI] * theta
        nn[j] = v if x > zero else (-v if x < zero else zero)
        nt[j] = zero


@njit(cache=True, inline="always", error_model="numpy")
def _op_erf(nn, nt, m1, p1, u1, t1, sp1, m2, p2, u2, t2, sp2, K):
    one = K[_ONE]
    for j in range(nn.shape[0]):
        x = nn[j]
        s12 = np.sqrt(m1 * m2[j]) * p1 * p2[j]
        rho = _rho(x, s12, K)
        c = np.sqrt(u1 * u2[j] + t1 * u2[j] + u1 * t2[j] + t1 * t2[j] * ((one - rho) * (one + rho)))
        big_s = sp1 * sp2[j]
        r = K[_TWO] * x / big_s
        nn[j] = K[_2PI] * _atan2(r, c, K)
        nt[j] = nt[j] * (K[_4PI] / (big_s * c))


@njit(cache=True, inline="always", error_model="numpy")
def _op_gelu(nn, nt, m1, p1, u1, t1, sp1, g1, m2, p2, u2, t2, sp2, g2, K):
    one = K[_ONE]
    inv2pi = K[_INV2PI]
    for j in range(nn.shape[0]):
        x = nn[j]
        s12 = np.sqrt(m1 * m2[j]) * p1 * p2[j]
        rho = _rho(x, s12, K)
        uu = u1 * u2[j]
        e = uu + t1 * u2[j] + u1 * t2[j]
        c2 = e + t1 * t2[j] * ((one - rho) * (one + rho))
        c = np.sqrt(c2)
        big_s = sp1 * sp2[j]
        r = x / big_s
        angle = _atan2(r, c, K)
        nn[j] = (r * r / (big_s * c) + g1 * g2[j] * c + x * angle) * inv2pi + x * K[_QUARTER]
        nt[j] = nt[j] * ((r / c) * (uu / c2 + uu + e) * inv2pi + K[_QUARTER] + angle * inv2pi)


@njit(cache=True, inline="always", error_model="numpy")
def _op_sin(nn, nt, q1, q2, K):
    zero = K[_ZERO]
    one = K[_ONE]
    half = K[_HALF]
    for j in range(nn.shape[0]):
        x = nn[j]
        h = (q1 + q2[j]) * half
        a = abs(x)
        e = np.exp(a - h)
        s = one if x > zero else (-one if x < zero else zero)
        nn[j] = s * e * (-np.expm1(-K[_TWO] * a)) * half
        nt[j] = nt[j] * (e * (one + np.exp(-K[_TWO] * a)) * half)


@njit(cache=True, inline="always", error_model="numpy")
def _merge(dn, dt, sn, st, n, product):
    """``(dn, dt)`` merged with ``(sn, st)`` in place: their sum, or their product rule
    ``(dn·sn, dt·sn + dn·st)`` (FanInSum / FanInProd of two branches)."""
    if product:
        for j in range(n):
            dt[j] = dt[j] * sn[j] + dn[j] * st[j]
            dn[j] = dn[j] * sn[j]
    else:
        for j in range(n):
            dn[j] = dn[j] + sn[j]
            dt[j] = dt[j] + st[j]


@njit(cache=True, error_model="numpy")
def _run_row(nn, nt, i, js, je, ops, prm, act, rows, cols, K, stack):
    """All opcodes over the row segment ``nn = nngp[i, js:je]``, ``nt = ntk[i, js:je]``;
    ``stack`` (slots × 2 × block) holds the states of open branches."""
    n = nn.shape[0]
    for o in range(ops.shape[0]):
        op = ops[o]
        k = act[o]
        if op >= OP_SAVE:
            s = int(prm[o, 0])
            sn = stack[s, 0]
            st = stack[s, 1]
            if op == OP_SAVE:
                for j in range(n):
                    sn[j] = nn[j]
                    st[j] = nt[j]
            elif op == OP_LOAD:
                for j in range(n):
                    nn[j] = sn[j]
                    nt[j] = st[j]
            elif op == OP_ADD or op == OP_MUL:  # noqa: SIM109 - no tuple in the compiled loop
                _merge(sn, st, nn, nt, n, op == OP_MUL)  # into the slot
            else:
                _merge(nn, nt, sn, st, n, op == OP_MUL_SLOT)  # the slot into the current state
        elif op == OP_SCALE:
            r1 = rows[k, 3, i]
            r2 = cols[k, 3, js:je]
            for j in range(n):
                r = r1 * r2[j]
                nn[j] = nn[j] * r
                nt[j] = nt[j] * r
        elif op == OP_INPUT:
            d = prm[o, 0]
            for j in range(n):
                nn[j] = nn[j] / d
                nt[j] = K[_ZERO]
        elif op == OP_DENSE_NTK:
            w2 = prm[o, 0]
            b2 = prm[o, 1]
            for j in range(n):
                x = w2 * nn[j] + b2
                nn[j] = x
                nt[j] = x + w2 * nt[j]
        elif op == OP_DENSE_STD:
            w2 = prm[o, 0]
            b2 = prm[o, 1]
            fan = prm[o, 2]
            bias = prm[o, 3]
            for j in range(n):
                x = nn[j]
                nt[j] = fan * x + w2 * nt[j] + bias
                nn[j] = w2 * x + b2
        elif op == OP_ABRELU:
            _op_abrelu(nn, nt, prm[o, 0], prm[o, 1], rows[k, 0, i], rows[k, 1, i], rows[k, 2, i],
                       cols[k, 0, js:je], cols[k, 1, js:je], cols[k, 2, js:je], K)
        elif op == OP_SIGN:
            _op_sign(nn, nt, rows[k, 0, i], rows[k, 2, i], cols[k, 0, js:je], cols[k, 2, js:je], K)
        elif op == OP_ERF:
            _op_erf(nn, nt, rows[k, 0, i], rows[k, 1, i], rows[k, 4, i], rows[k, 5, i], rows[k, 6, i],
                    cols[k, 0, js:je], cols[k, 1, js:je], cols[k, 4, js:je], cols[k, 5, js:je],
                    cols[k, 6, js:je], K)
        elif op == OP_GELU:
            _op_gelu(nn, nt, rows[k, 0, i], rows[k, 1, i], rows[k, 4, i], rows[k, 5, i], rows[k, 6, i],
                     rows[k, 7, i], cols[k, 0, js:je], cols[k, 1, js:je], cols[k, 4, js:je],
                     cols[k, 5, js:je], cols[k, 6, js:je], cols[k, 7, js:je], K)
        elif op == OP_SIN:
            _op_sin(nn, nt, rows[k, 3, i], cols[k, 3, js:je], K)


@njit(cache=True, error_model="numpy")
def _mirror_block(a, i0, i1, j0, j1, diagonal):
    """Copy block ``a[i0:i1, j0:j1]`` (its upper part if ``diagonal``) to its transpose."""
    if diagonal:
        for r in range(i0 + 1, i1):
            for c in range(i0, r):
                a[r, c] = a[c, r]
    else:
        for r in range(j0, j1):
            for c in range(i0, i1):
                a[r, c] = a[c, r]


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def run_program(nngp, ntk, want_ntk, symmetric, ops, prm, act, rows, cols, consts, block, slots):
    """Run the program in place on ``nngp`` (holding ``<x, x'>``) and ``ntk``.

    ``symmetric``: compute upper-triangle blocks only and mirror them. ``want_ntk=False``:
    ``ntk`` may be a dummy (its values go to a per-block scratch row).
    """
    n1, n2 = nngp.shape
    nb1 = (n1 + block - 1) // block
    nb2 = (n2 + block - 1) // block
    count = nb1 * (nb1 + 1) // 2 if symmetric else nb1 * nb2
    tiles = np.empty((count, 2), np.int64)
    t = 0
    for bi in range(nb1):
        for bj in range(bi if symmetric else 0, nb2):
            tiles[t, 0] = bi
            tiles[t, 1] = bj
            t += 1
    K = (consts[0], consts[1], consts[2], consts[3], consts[4], consts[5], consts[6],
         consts[7], consts[8], consts[9], consts[10], consts[11], consts[12], consts[13],
         consts[14], consts[15], consts[16], consts[17], consts[18], consts[19], consts[20],
         consts[21], consts[22], consts[23], consts[24], consts[25], consts[26], consts[27],
         consts[28])
    for t in prange(count):
        bi = tiles[t, 0]
        bj = tiles[t, 1]
        i0 = bi * block
        i1 = min(n1, i0 + block)
        j0 = bj * block
        j1 = min(n2, j0 + block)
        scratch = np.empty(j1 - j0, nngp.dtype)
        stack = np.empty((max(slots, 1), 2, j1 - j0), nngp.dtype)
        for i in range(i0, i1):
            js = max(j0, i) if symmetric else j0
            if js >= j1:
                continue
            nn = nngp[i, js:j1]
            if want_ntk:
                nt = ntk[i, js:j1]
            else:
                nt = scratch[: j1 - js]
            _run_row(nn, nt, i, js, j1, ops, prm, act, rows, cols, K, stack)
        if symmetric:
            _mirror_block(nngp, i0, i1, j0, j1, bi == bj)
            if want_ntk:
                _mirror_block(ntk, i0, i1, j0, j1, bi == bj)


# ------------------------------------------------------------------------------- the program
def activation_opcode(layer: Activation) -> tuple[int, tuple[float, ...]]:
    """The opcode and parameters of a closed-form activation (identity has none: skip it)."""
    if layer.name in ("relu", "leaky_relu", "abs"):
        return OP_ABRELU, relu_constants(layer)
    return {"erf": OP_ERF, "sign": OP_SIGN, "gelu": OP_GELU, "sin": OP_SIN}[layer.name], ()


#: ``run_program`` compiled without threads: for callers that already run one block per core
#: (the general engine's pair blocks), so no thread pool is launched or contended for.
run_program_serial = njit(cache=True, nogil=True, error_model="numpy")(run_program.py_func)


def run_activation(layer: Activation, q1: np.ndarray, q2: np.ndarray, nngp: np.ndarray,
                   ntk: np.ndarray | None, serial: bool = False) -> None:
    """One closed-form activation in place on the matrices ``nngp``, ``ntk`` (``n1 × n2``) with row
    variances ``q1`` (n1,) and column variances ``q2`` (n2,); ``serial``: on the calling thread only."""
    rule = ACTIVATIONS[layer.name]
    program = Program(nngp.dtype, nngp.shape[0], nngp.shape[1])
    op, params = activation_opcode(layer)
    program.add_activation(op, rule.aux(q1, layer), rule.aux(q2, layer), params)
    program.run(nngp, ntk, False, 192, serial=serial)


@dataclass
class Program:
    """Opcodes, parameters and per-point quantities for ``run_program`` (one dtype)."""

    dtype: np.dtype
    n1: int
    n2: int
    ops: list[int] = field(default_factory=list)
    params: list[tuple[float, float, float, float]] = field(default_factory=list)
    act: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    cols: list[np.ndarray] = field(default_factory=list)
    #: stack slots used by OP_SAVE … OP_MUL (branches)
    slots: int = 0

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, op: int, params: tuple[float, ...] = ()) -> None:
        """An opcode without per-point quantities."""
        self.ops.append(op)
        self.params.append(tuple(params) + (0.0,) * (4 - len(params)))  # type: ignore[arg-type]
        self.act.append(0)

    def add_activation(
        self, op: int, aux1: dict[str, np.ndarray], aux2: dict[str, np.ndarray], params: tuple[float, ...] = ()
    ) -> None:
        """An activation opcode with the per-point quantities of both input sets."""
        r = np.zeros((N_SLOTS, self.n1), self.dtype)
        c = np.zeros((N_SLOTS, self.n2), self.dtype)
        for name, value in aux1.items():
            r[SLOTS[name]] = value
        for name, value in aux2.items():
            c[SLOTS[name]] = value
        self.add(op, params)
        self.act[-1] = len(self.rows)
        self.rows.append(r)
        self.cols.append(c)

    def run(self, nngp: np.ndarray, ntk: np.ndarray | None, symmetric: bool, block: int = 192,
            serial: bool = False) -> None:
        """Execute in place (see ``run_program``) and clear the program (``serial``: without threads,
        concurrently with other callers)."""
        if not self.ops:
            return
        dtype = self.dtype
        rows = np.stack(self.rows) if self.rows else np.zeros((1, N_SLOTS, self.n1), dtype)
        cols = np.stack(self.cols) if self.cols else np.zeros((1, N_SLOTS, self.n2), dtype)
        if serial:
            run_program_serial(*self._arguments(nngp, ntk, symmetric, block, rows, cols))
        else:
            with _RUN_LOCK:
                self._run_locked(nngp, ntk, symmetric, block, rows, cols)
        self.slots = 0
        self.ops.clear()
        self.params.clear()
        self.act.clear()
        self.rows.clear()
        self.cols.clear()

    def _arguments(self, nngp, ntk, symmetric, block, rows, cols) -> tuple:
        dtype = self.dtype
        return (
            nngp,
            ntk if ntk is not None else np.empty((0, 0), dtype),
            ntk is not None,
            bool(symmetric),
            np.asarray(self.ops, np.int64),
            np.asarray(self.params, dtype),
            np.asarray(self.act, np.int64),
            rows,
            cols,
            constants(dtype),
            int(block),
            self.slots,
        )

    def _run_locked(self, nngp, ntk, symmetric, block, rows, cols) -> None:
        previous = numba.set_parallel_chunksize(1)  # blocks are handed out dynamically
        try:
            run_program(*self._arguments(nngp, ntk, symmetric, block, rows, cols))
        finally:
            numba.set_parallel_chunksize(previous)
