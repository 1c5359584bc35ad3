"""Fitted kernel-regression models: a ledger row (metadata JSON) plus a folder of ``.npy`` arrays.

``<data_dir>/models/<id>/`` holds what later calls need so that no prediction or trajectory
refactors the kernel: ``x_train``, ``y`` (n × k), the training Gram ``kernel``, ``alpha``, the
Cholesky factor ``cholesky``; on first use the eigenbasis (``eigenvalues``, ``eigenvectors``) and,
for NTK variances, the training ``nngp``. Arrays are saved and loaded with
``allow_pickle=False``; a folder is complete before its ledger row exists.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.dynamics import EigenBasis
from core.regression import KernelRidgeFit
from service.storage.db import Database

_ID = re.compile(r"^mdl_[0-9a-f]{24}$")


@dataclass
class StoredModel:
    """A model as the service uses it: metadata, training inputs and the fitted state."""

    id: str
    owner: str
    meta: dict[str, Any]
    x_train: np.ndarray
    fit: KernelRidgeFit
    folder: Path
    seq: int
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def extra(self, name: str, compute: Any) -> np.ndarray:
        """A derived array (e.g. the training NNGP), computed once and persisted beside the model."""
        with self.lock:
            if name not in self.extras:
                path = self.folder / f"{name}.npy"
                self.extras[name] = np.load(path) if path.exists() else _save(path, compute())
            return self.extras[name]

    def basis(self) -> EigenBasis:
        """The eigenbasis of the training Gram, computed on first use and persisted."""
        with self.lock:
            if "basis" not in self.fit._cache:  # noqa: SLF001 — the fit's own lazy cache
                values, vectors = self.folder / "eigenvalues.npy", self.folder / "eigenvectors.npy"
                if values.exists() and vectors.exists():
                    self.fit._cache["basis"] = EigenBasis(np.load(values), np.load(vectors))  # noqa: SLF001
                else:
                    basis = self.fit.basis
                    _save(vectors, basis.eigenvectors)
                    _save(values, basis.eigenvalues)
        return self.fit.basis


def _save(path: Path, array: np.ndarray) -> np.ndarray:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)
    return array


def new_model_id() -> str:
    return f"mdl_{secrets.token_hex(12)}"


_ARRAYS = ("x_train", "y", "kernel", "alpha", "cholesky")


def write_model_arrays(folder: Path, x_train: np.ndarray, fit: KernelRidgeFit) -> None:
    """Save what a stored model needs (also called on Dask workers for fit jobs)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": x_train, "y": fit.y, "kernel": fit.kernel, "alpha": fit.alpha, "cholesky": fit.cholesky[0]}
    for name in _ARRAYS:
        _save(folder / f"{name}.npy", arrays[name])


def model_meta(meta: dict[str, Any], fit: KernelRidgeFit) -> dict[str, Any]:
    """The request's description of a model plus the fitted summary the ledger keeps."""
    return {**meta, "n_train": fit.n_train, "n_outputs": fit.n_outputs, "ridge_effective": fit.ridge_effective,
            "y_was_1d": fit.y_was_1d, "condition_number": fit.condition_number,
            "train_residual_norm": fit.train_residual_norm}


class ModelStore:
    def __init__(self, db: Database, root: Path, cache_size: int = 4) -> None:
        self.db = db
        self.root = root / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: OrderedDict[str, StoredModel] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def create(self, owner: str, meta: dict[str, Any], x_train: np.ndarray, fit: KernelRidgeFit) -> StoredModel:
        model_id = new_model_id()
        staging = self.staging_folder(model_id)
        write_model_arrays(staging, x_train, fit)
        return self.register(model_id, owner, model_meta(meta, fit), (x_train, fit))

    def staging_folder(self, model_id: str) -> Path:
        """Where a model's arrays are written before :meth:`register` makes it visible."""
        return self.root / f".{model_id}"

    def register(self, model_id: str, owner: str, meta: dict[str, Any],
                 in_memory: tuple[np.ndarray, KernelRidgeFit] | None = None) -> StoredModel:
        """Move the staged arrays into place and record the model (the ledger row comes last).

        ``in_memory``: the ``(x_train, fit)`` just written, so nothing is read back from disk.
        """
        meta = {**meta, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z")}
        os.replace(self.staging_folder(model_id), self.root / model_id)
        seq = time.time_ns()
        self.db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?)",
                        (model_id, owner, json.dumps(meta), meta["created_at"], seq))
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
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
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
