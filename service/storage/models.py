"""Fitted kernel-regression models: a ledger row (metadata JSON) plus a folder of ``.npy`` arrays.

``<data_dir>/models/<id>/`` holds what later calls need so that no prediction or trajectory
refactors the kernel. A ``cholesky`` model: ``x_train``, ``y`` (n × k), the training Gram
``kernel``, ``alpha``, the Cholesky factor ``cholesky``; on first use the eigenbasis
(``eigenvalues``, ``eigenvectors``) and, for NTK variances, the training ``nngp``. A *dual* model
(solver ``cg`` or ``nystrom``; meta ``solver.type``) keeps only what its predictions
``K(x*, centers) β`` need: ``centers_x`` (the centers' inputs: all training points for cg, the
sampled ones for nystrom; loaded memory-mapped), ``coefficients`` (β, m × k) and, for nystrom,
``center_indices`` (the centers' rows in the training set, so a fit can be repeated and audited).
Arrays are saved and loaded with ``allow_pickle=False``; a folder is complete before its ledger
row exists.

A model is created atomically: its arrays are written into a staging folder ``.mdl_<id>``, which
is renamed into place in the same ledger transaction that records it. A model that does not fit
is the 507 problem and leaves neither folder nor row. The lazily persisted extras are a cache:
when the disk is full they stay in memory only (a warning is logged, the partial files are
removed) and the request that needed them still succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.dynamics import EigenBasis
from core.regression import DualFit, KernelRidgeFit
from core.solvers import SolveReport
from service.problems import insufficient_storage
from service.storage.db import Database
from service.storage.faults import free_bytes, is_disk_full, remove, writing
from service.timestamps import utc_timestamp

logger = logging.getLogger("ntk.service.storage")
_ID = re.compile(r"^mdl_[0-9a-f]{24}$")


@dataclass
class StoredModel:
    """A model as the service uses it: metadata, the inputs predictions are taken against and the
    fitted state. ``x_centers``: all training inputs (cholesky, cg) or the Nyström centers' inputs."""

    id: str
    owner: str
    meta: dict[str, Any]
    x_centers: np.ndarray
    fit: KernelRidgeFit | DualFit
    folder: Path
    seq: int
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def solver(self) -> str:
        """``cholesky`` (the dense model: times, variances, trajectories), ``cg`` or ``nystrom``."""
        return "cholesky" if isinstance(self.fit, KernelRidgeFit) else self.fit.solver

    @property
    def n_train(self) -> int:
        return self.fit.n_train

    @property
    def n_outputs(self) -> int:
        return self.fit.n_outputs

    def dense(self) -> KernelRidgeFit:
        """The Cholesky fit (callers check :attr:`solver` first and answer dual models with a 422)."""
        if not isinstance(self.fit, KernelRidgeFit):
            raise TypeError(f"model {self.id} is a {self.solver} model: it keeps no training kernel")
        return self.fit

    def extra(self, name: str, compute: Any) -> np.ndarray:
        """A derived array (e.g. the training NNGP), computed once and persisted beside the model."""
        with self.lock:
            if name not in self.extras:
                path = self.folder / f"{name}.npy"
                if path.exists():
                    self.extras[name] = np.load(path)
                else:
                    self.extras[name] = compute()
                    _cache_on_disk({path: self.extras[name]})
            return self.extras[name]

    def basis(self) -> EigenBasis:
        """The eigenbasis of the training Gram, computed on first use and persisted."""
        fit = self.dense()
        with self.lock:
            if "basis" not in fit._cache:  # noqa: SLF001 — the fit's own lazy cache
                values, vectors = self.folder / "eigenvalues.npy", self.folder / "eigenvectors.npy"
                if values.exists() and vectors.exists():
                    fit._cache["basis"] = EigenBasis(np.load(values), np.load(vectors))  # noqa: SLF001
                else:
                    basis = fit.basis
                    _cache_on_disk({vectors: basis.eigenvectors, values: basis.eigenvalues})
        return fit.basis


def _save(path: Path, array: np.ndarray) -> np.ndarray:
    """Write ``path`` whole or not at all (a temporary beside it, renamed; removed on failure)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as handle:
            _write_npy(handle, array)
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    return array


def _write_npy(handle: Any, array: np.ndarray) -> None:
    """``np.save`` through ``handle.write`` (the same bytes): numpy's own path for real files,
    ``ndarray.tofile``, reports a full disk as an OSError without errno ("… requested and … written")."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise ValueError("object arrays are never stored (allow_pickle=False)")
    header = np.lib.format.header_data_from_array_1_0(array)
    fortran = header["fortran_order"]
    if not (array.flags.f_contiguous if fortran else array.flags.c_contiguous):
        array = np.ascontiguousarray(array)
        header = np.lib.format.header_data_from_array_1_0(array)
        fortran = False
    np.lib.format.write_array_header_1_0(handle, header)
    if array.size:
        handle.write(memoryview((array.T if fortran else array).reshape(-1)).cast("B"))


def _cache_on_disk(arrays: dict[Path, np.ndarray]) -> None:
    """Persist derived arrays (all or none); a full disk only costs the cache (module docstring)."""
    try:
        for path, array in arrays.items():
            _save(path, array)
    except OSError as exc:
        for path in arrays:
            remove(path)
        if not is_disk_full(exc):
            raise
        logger.warning("disk full: %s not cached on disk (kept in memory; free %s bytes)",
                       ", ".join(p.name for p in arrays), free_bytes(next(iter(arrays)).parent))


def new_model_id() -> str:
    return f"mdl_{secrets.token_hex(12)}"


_ARRAYS = ("x_train", "y", "kernel", "alpha", "cholesky")


def _model_arrays(x_train: np.ndarray, fit: KernelRidgeFit) -> dict[str, np.ndarray]:
    return {"x_train": x_train, "y": fit.y, "kernel": fit.kernel, "alpha": fit.alpha, "cholesky": fit.cholesky[0]}


def write_model_arrays(folder: Path, x_train: np.ndarray, fit: KernelRidgeFit) -> None:
    """Save what a stored model needs (also called on Dask workers for fit jobs)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _model_arrays(x_train, fit)
    for name in _ARRAYS:
        _save(folder / f"{name}.npy", arrays[name])


def solver_summary(solver: str, centers: int, seed: int | None = None, iterations: int | None = None,
                   relative_residual: float | None = None) -> dict[str, Any]:
    """The model document's ``solver`` object. ``centers``: the training points predictions are
    taken against (n for cholesky and cg); seed, iterations and relative_residual are null for cholesky."""
    return {"type": solver, "centers": int(centers), "seed": seed, "iterations": iterations,
            "relative_residual": relative_residual}


def model_meta(meta: dict[str, Any], fit: KernelRidgeFit) -> dict[str, Any]:
    """The request's description of a model plus the fitted summary the ledger keeps (cholesky)."""
    return {**meta, "n_train": fit.n_train, "n_outputs": fit.n_outputs, "ridge_effective": fit.ridge_effective,
            "y_was_1d": fit.y_was_1d, "condition_number": fit.condition_number,
            "train_residual_norm": fit.train_residual_norm, "solver": solver_summary("cholesky", fit.n_train)}



def write_dual_model(staging: Path, centers_x: np.ndarray | str | Path, center_indices: np.ndarray | None,
                     coefficients: np.ndarray) -> None:
    """Stage a dual (cg or nystrom) model's arrays in ``staging`` (also called on Dask workers).

    ``centers_x``: the centers' inputs (m × row shape, kept in their dtype), or the path of the
    ``.npy`` file of all training inputs (cg), which is hard-linked (copied where linking fails)
    and never loaded. ``center_indices``: the centers' sorted rows in the training set (nystrom),
    None for cg. ``coefficients``: β, (m,) or m × k; stored float64 m × k.
    """
    staging.mkdir(parents=True, exist_ok=True)
    target = staging / "centers_x.npy"
    if isinstance(centers_x, str | Path):
        remove(target)
        try:
            os.link(centers_x, target)
        except OSError as exc:
            if is_disk_full(exc):
                raise
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
            try:
                shutil.copyfile(centers_x, tmp)
                os.replace(tmp, target)
            except BaseException:
                remove(tmp)
                raise
    else:
        _save(target, np.asarray(centers_x))
    if center_indices is not None:
        _save(staging / "center_indices.npy", np.asarray(center_indices, dtype=np.int64))
    beta = np.asarray(coefficients, dtype=np.float64)
    _save(staging / "coefficients.npy", beta[:, None] if beta.ndim == 1 else beta)


def dual_model_meta(*, solver: str, n_train: int, n_outputs: int, y_was_1d: bool, ridge_effective: float,
                    train_residual_norm: float, centers: int, seed: int, iterations: int,
                    relative_residual: float) -> dict[str, Any]:
    """The fitted summary the ledger keeps for a dual model (merged into the request's description,
    as :func:`model_meta` is). ``condition_number`` is not estimated (None)."""
    if solver not in ("cg", "nystrom"):
        raise ValueError(f"a dual model's solver is cg or nystrom, not {solver!r}")
    return {"n_train": int(n_train), "n_outputs": int(n_outputs), "ridge_effective": float(ridge_effective),
            "y_was_1d": bool(y_was_1d), "condition_number": None, "train_residual_norm": float(train_residual_norm),
            "solver": solver_summary(solver, centers, int(seed), int(iterations), float(relative_residual))}


def dual_fit_meta(meta: dict[str, Any], fit: DualFit) -> dict[str, Any]:
    """:func:`dual_model_meta` of an in-memory :class:`DualFit`, merged into the request's description."""
    return {**meta, **dual_model_meta(
        solver=fit.solver, n_train=fit.n_train, n_outputs=fit.n_outputs, y_was_1d=fit.y_was_1d,
        ridge_effective=fit.ridge_effective, train_residual_norm=fit.train_residual_norm, centers=fit.n_centers,
        seed=fit.seed, iterations=fit.report.iterations, relative_residual=fit.report.relative_residual)}


def _stored_arrays(x_train: np.ndarray, fit: KernelRidgeFit | DualFit) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The inputs predictions use and every array a model stores (sync fits)."""
    if isinstance(fit, KernelRidgeFit):
        return x_train, _model_arrays(x_train, fit)
    x_centers = x_train if fit.center_indices is None else x_train[fit.center_indices]
    arrays = {"centers_x": x_centers, "coefficients": fit.coefficients}
    if fit.center_indices is not None:
        arrays["center_indices"] = fit.center_indices
    return x_centers, arrays


class ModelStore:
    def __init__(self, db: Database, root: Path, cache_size: int = 4) -> None:
        self.db = db
        self.root = root / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: OrderedDict[str, StoredModel] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def create(self, owner: str, meta: dict[str, Any], x_train: np.ndarray, fit: KernelRidgeFit | DualFit,
               on_commit: Callable[[str], None] | None = None) -> StoredModel:
        """Write and record a new model (cholesky or dual); ``on_commit(model_id)`` writes in the same
        ledger transaction (the Idempotency-Key record). A model that does not fit is a 507 that leaves
        nothing behind."""
        model_id = new_model_id()
        staging = self.staging_folder(model_id)
        x_centers, arrays = _stored_arrays(x_train, fit)
        needed = sum(a.nbytes for a in arrays.values())
        with writing("the model", "models", self.root, partial=[staging], needed_bytes=needed):
            free = free_bytes(self.root)
            if free is not None and needed > free:
                raise insufficient_storage("the model", free, ["store", "models"], needed)
            if isinstance(fit, KernelRidgeFit):
                write_model_arrays(staging, x_train, fit)
                full_meta = model_meta(meta, fit)
            else:
                write_dual_model(staging, x_centers, fit.center_indices, fit.coefficients)
                full_meta = dual_fit_meta(meta, fit)
            return self.register(model_id, owner, full_meta, (x_centers, fit), on_commit)

    def staging_folder(self, model_id: str) -> Path:
        """Where a model's arrays are written before :meth:`register` makes it visible."""
        return self.root / f".{model_id}"

    def register(self, model_id: str, owner: str, meta: dict[str, Any],
                 in_memory: tuple[np.ndarray, KernelRidgeFit | DualFit] | None = None,
                 on_commit: Callable[[str], None] | None = None) -> StoredModel:
        """Move the staged arrays into place and record the model, in one ledger transaction (the
        row is visible only with the folder in place). On failure the staged or moved folder is removed.

        ``in_memory``: the ``(x_centers, fit)`` just written, so nothing is read back from disk.
        """
        meta = {**meta, "created_at": utc_timestamp()}
        staging, final = self.staging_folder(model_id), self.root / model_id
        seq = time.time_ns()
        moved = False
        try:
            with self.db.transaction():
                self.db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?)",
                                (model_id, owner, json.dumps(meta), meta["created_at"], seq))
                if on_commit is not None:
                    on_commit(model_id)
                os.replace(staging, final)
                moved = True
        except BaseException:
            remove(staging)
            if moved:  # only a folder this call moved (never an existing model's)
                remove(final)
            raise
        row = {"id": model_id, "owner": owner, "meta": json.dumps(meta), "seq": seq}
        model = (self._load(row) if in_memory is None else
                 StoredModel(model_id, owner, meta, in_memory[0], in_memory[1], self.root / model_id, seq))
        self._remember(model)
        return model

    def _remember(self, model: StoredModel) -> None:
        with self._lock:
            self._cache[model.id] = model
            self._cache.move_to_end(model.id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def get(self, owner: str, model_id: str) -> StoredModel | None:
        """The model if it exists and belongs to ``owner``; loaded from disk once, then cached."""
        if not _ID.match(model_id):
            return None
        with self._lock:
            cached = self._cache.get(model_id)
        if cached is not None:
            return cached if cached.owner == owner else None
        rows = self.db.query("SELECT * FROM models WHERE id=? AND owner=?", (model_id, owner))
        if not rows:
            return None
        model = self._load(rows[0])
        self._remember(model)
        return model

    def _load(self, row: Any) -> StoredModel:
        folder = self.root / row["id"]
        meta = json.loads(row["meta"])
        solver = meta.get("solver", {}).get("type", "cholesky")  # models from before issue #10 are cholesky
        if solver != "cholesky":
            indices = folder / "center_indices.npy"
            fit: KernelRidgeFit | DualFit = DualFit(
                solver=solver, coefficients=np.load(folder / "coefficients.npy", allow_pickle=False),
                center_indices=np.load(indices, allow_pickle=False) if indices.exists() else None,
                seed=meta["solver"]["seed"], n_train=meta["n_train"], y_was_1d=meta["y_was_1d"],
                ridge_effective=meta["ridge_effective"], train_residual_norm=meta["train_residual_norm"],
                report=SolveReport(meta["solver"]["iterations"], meta["solver"]["relative_residual"], True),
            )
            x_centers = np.load(folder / "centers_x.npy", mmap_mode="r", allow_pickle=False)
            return StoredModel(row["id"], row["owner"], meta, x_centers, fit, folder, row["seq"])
        # memory-mapped: the n × n kernel and factor are paged in by the predictions that read them, so
        # registering a large fit job's model costs the API process nothing (bench/scale.py saw 16·n² bytes)
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in _ARRAYS}
        fit = KernelRidgeFit(
            kernel=arrays["kernel"], y=arrays["y"], y_was_1d=meta["y_was_1d"], alpha=arrays["alpha"],
            cholesky=(arrays["cholesky"], True), ridge_effective=meta["ridge_effective"],
            condition_number=meta["condition_number"], train_residual_norm=meta["train_residual_norm"],
        )
        return StoredModel(row["id"], row["owner"], meta, arrays["x_train"], fit, folder, row["seq"])

    def metadata(self, owner: str, limit: int, before_seq: int | None) -> list[tuple[str, dict[str, Any], int]]:
        """``(id, meta, seq)`` of the owner's models, newest first, below ``before_seq``."""
        rows = self.db.query(
            "SELECT id, meta, seq FROM models WHERE owner=? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (owner, before_seq if before_seq is not None else 2**63 - 1, limit),
        )
        return [(r["id"], json.loads(r["meta"]), r["seq"]) for r in rows]

    def delete(self, model: StoredModel) -> None:
        self.db.execute("DELETE FROM models WHERE id=?", (model.id,))
        with self._lock:
            self._cache.pop(model.id, None)
        shutil.rmtree(model.folder, ignore_errors=True)
