"""Dataset ids in synchronous requests: every array field may name an uploaded dataset.

The request schemas turn a ``"ds_…"`` string into a ``DatasetRef``; ``resolve_datasets`` replaces
each one by the caller's dataset, memory-mapped read-only from its ``.npy`` file (uploads are
validated finite float32/float64 when they arrive), so a large input is sent once and never
re-encoded as JSON. Unknown ids (or another key's) are a ``422`` at the field, as in jobs.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from service.problems import invalid
from service.schemas.common import DatasetRef
from service.storage.datasets import Dataset
from service.storage.state import Storage

#: Array fields and the ranks they take (inputs: n × d, n × L × C, n × H × W × C; targets: n, n × k).
ARRAY_FIELDS: dict[str, tuple[int, ...]] = {
    "x1": (2, 3, 4), "x2": (2, 3, 4), "x": (2, 3, 4), "x_train": (2, 3, 4), "x_test": (2, 3, 4),
    "y_train": (1, 2), "y_test": (1, 2),
}


def requested_dataset(store: Storage, owner: str, field: str, dataset_id: str,
                      ranks: tuple[int, ...] | None = None) -> Dataset:
    """The caller's dataset named by a request's ``field`` (422 at the field when it does not exist for
    this key, or has a rank not in ``ranks``); synchronous requests and jobs alike."""
    dataset = store.datasets.get(owner, dataset_id)
    if dataset is None:
        raise invalid(["body", field], f"no dataset {dataset_id!r} for this API key; upload it with POST /v1/datasets")
    if ranks is not None and len(dataset.shape) not in ranks:
        raise invalid(["body", field], f"{field} must have rank {' or '.join(map(str, ranks))}, dataset "
                      f"{dataset_id} has shape {list(dataset.shape)}")
    return dataset


def load_dataset(store: Storage, owner: str, field: str, dataset_id: str, ranks: tuple[int, ...]) -> np.ndarray:
    """The caller's dataset as a read-only array (``requested_dataset``'s 422s)."""
    requested_dataset(store, owner, field, dataset_id, ranks)
    array = np.load(store.datasets.path(dataset_id), mmap_mode="r", allow_pickle=False)
    return array if len(ranks) > 2 else np.asarray(array, dtype=np.float64)  # targets: small, float64


def resolve_datasets(body: BaseModel, store: Storage, owner: str) -> None:
    """Replace, in place, every ``DatasetRef`` among ``body``'s array fields by its array."""
    for field, ranks in ARRAY_FIELDS.items():
        value = getattr(body, field, None)
        if isinstance(value, DatasetRef):
            setattr(body, field, load_dataset(store, owner, field, value.id, ranks))
