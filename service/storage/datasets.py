"""Uploaded arrays: ``.npy`` files under ``<data_dir>/datasets`` plus a ledger row each.

An upload is streamed to a temporary file (never whole in memory), validated without
unpickling (header, dtype, shape, exact byte count, finite values) and only then moved into
place and recorded, so a failed upload leaves nothing behind. An upload that does not fit —
its header already promises more than the free space, or the disk fills while it streams, or the
ledger cannot record it — is the 507 problem, with the temporary file removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from service.npy import NpyHeader, bad_npy, parse_header
from service.problems import insufficient_storage
from service.storage.db import Database
from service.storage.faults import free_bytes, full_disk_problem, remove
from service.timestamps import utc_timestamp

_ID = re.compile(r"^ds_[0-9a-f]{24}$")
_FLUSH = 1 << 20


@dataclass(frozen=True, slots=True)
class Dataset:
    id: str
    owner: str
    name: str | None
    shape: tuple[int, ...]
    dtype: str
    sha256: str
    bytes: int
    created_at: str
    seq: int


def _header_length(prefix: bytes) -> int | None:
    """Total bytes of magic + header, once enough of ``prefix`` is known."""
    if len(prefix) < 8:
        return None
    if prefix[:6] != b"\x93NUMPY":
        raise bad_npy("body is not a .npy array (bad magic string); send numpy.save output")
    size_bytes = 2 if prefix[6] == 1 else 4
    if len(prefix) < 8 + size_bytes:
        return None
    return 8 + size_bytes + int.from_bytes(prefix[8 : 8 + size_bytes], "little")


def _check_finite(path: Path) -> None:
    """Scan the stored array block by block (memory-mapped) for NaN/Infinity."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    step = max(1, (1 << 22) // int(np.prod(array.shape[1:], dtype=np.int64)))
    for start in range(0, array.shape[0], step):
        if not np.isfinite(array[start : start + step]).all():
            raise bad_npy(".npy array contains NaN or Infinity; every value must be finite")


class DatasetStore:
    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root / "datasets"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, dataset_id: str) -> Path:
        return self.root / f"{dataset_id}.npy"

    async def ingest(self, chunks: AsyncIterator[bytes]) -> tuple[Path, NpyHeader, str, int]:
        """Stream an upload to a temporary file; returns (temp path, header, sha256, bytes)."""
        tmp = self.root / f".upload-{secrets.token_hex(8)}"
        hasher = hashlib.sha256()
        prefix = bytearray()
        header: NpyHeader | None = None
        pending = bytearray()
        total = 0
        try:
            async with await anyio.open_file(tmp, "wb") as handle:
                async for chunk in chunks:
                    total += len(chunk)
                    hasher.update(chunk)
                    pending += chunk
                    if header is None:
                        prefix += chunk
                        needed = _header_length(bytes(prefix[:16]))
                        if needed is not None and len(prefix) >= needed:
                            header = parse_header(bytes(prefix[:needed]))
                            self._check_room(header.offset + header.data_bytes - (total - len(pending)))
                    if header is not None and total - header.offset > header.data_bytes:
                        raise bad_npy(f".npy data is longer than the {header.data_bytes} bytes its header declares")
                    if len(pending) >= _FLUSH:
                        await handle.write(bytes(pending))
                        pending.clear()
                await handle.write(bytes(pending))
            if header is None:
                raise bad_npy("body is not a complete .npy array (header truncated); send numpy.save output")
            if total - header.offset != header.data_bytes:
                raise bad_npy(f".npy header promises {header.data_bytes} data bytes for shape {list(header.shape)} "
                              f"but {total - header.offset} were sent")
            await anyio.to_thread.run_sync(_check_finite, tmp)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            needed = None if header is None else header.offset + header.data_bytes
            problem = full_disk_problem(exc, "the dataset upload", "datasets", self.root, needed)
            if problem is not None:
                raise problem from exc
            raise
        return tmp, header, hasher.hexdigest(), total

    def _check_room(self, remaining: int) -> None:
        """507 at once when the rest of an upload (its header says how much) cannot fit."""
        free = free_bytes(self.root)
        if free is not None and remaining > free:
            raise insufficient_storage("the dataset upload", free, ["store", "datasets"], remaining)

    def commit(self, tmp: Path, header: NpyHeader, sha256: str, size: int, owner: str, name: str | None,
               on_commit: Callable[[Dataset], None] | None = None) -> Dataset:
        """Move the validated upload into place and record it; ``on_commit(dataset)`` writes in the same
        ledger transaction (the Idempotency-Key record). On any failure nothing is kept."""
        dataset = Dataset(
            id=f"ds_{secrets.token_hex(12)}", owner=owner, name=name, shape=header.shape,
            dtype=str(header.dtype.newbyteorder("=").name), sha256=sha256, bytes=size,
            created_at=utc_timestamp(),
            seq=time.time_ns(),
        )
        path = self.path(dataset.id)
        try:
            with self.db.transaction():  # the file is in place before the row is visible
                self.db.execute(
                    "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (dataset.id, owner, name, json.dumps(list(dataset.shape)), dataset.dtype, sha256, size,
                     dataset.created_at, dataset.seq),
                )
                if on_commit is not None:
                    on_commit(dataset)
                os.replace(tmp, path)
        except BaseException as exc:
            remove(tmp)
            remove(path)
            problem = full_disk_problem(exc, "the dataset upload", "datasets", self.root, size)
            if problem is not None:
                raise problem from exc
            raise
        return dataset

    def get(self, owner: str, dataset_id: str) -> Dataset | None:
        """The dataset if it exists and belongs to ``owner`` (ids of another shape are simply absent)."""
        if not _ID.match(dataset_id):
            return None
        rows = self.db.query("SELECT * FROM datasets WHERE id=? AND owner=?", (dataset_id, owner))
        return _row(rows[0]) if rows else None

    def list(self, owner: str, limit: int, before_seq: int | None) -> list[Dataset]:
        rows = self.db.query(
            "SELECT * FROM datasets WHERE owner=? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (owner, before_seq if before_seq is not None else 2**63 - 1, limit),
        )
        return [_row(r) for r in rows]

    def delete(self, dataset: Dataset) -> None:
        self.db.execute("DELETE FROM datasets WHERE id=?", (dataset.id,))
        self.path(dataset.id).unlink(missing_ok=True)


def _row(row: object) -> Dataset:
    r = dict(row)  # type: ignore[call-overload]
    return Dataset(id=r["id"], owner=r["owner"], name=r["name"], shape=tuple(json.loads(r["shape"])),
                   dtype=r["dtype"], sha256=r["sha256"], bytes=r["bytes"], created_at=r["created_at"], seq=r["seq"])
