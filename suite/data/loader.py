"""Batches: a tensor-indexing fast path for in-memory datasets, else a seeded DataLoader."""

from __future__ import annotations

import os
from typing import Iterator

import torch

from suite.data.base import TensorImageDataset


class TensorLoader:
    """Iterate (images, labels) batches of a :class:`TensorImageDataset` by tensor indexing.

    Like a DataLoader with a seeded generator: each pass (epoch) draws a fresh permutation from
    one generator seeded once, so the sequence of epochs is deterministic for a seed. A dataset
    transform is applied to the whole batch (N, 3, H, W) when it accepts one (torchvision tensor
    transforms do), else item by item.
    """

    def __init__(self, dataset: TensorImageDataset, batch_size: int, *, shuffle: bool,
                 seed: int = 0, drop_last: bool = False):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self._batchwise: bool | None = None  # decided on the first batch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        tf = self.dataset.transform
        if tf is None:
            return x
        if self._batchwise is None:
            try:
                out = tf(x)
                self._batchwise = isinstance(out, torch.Tensor) and out.ndim == 4 \
                    and out.shape[0] == x.shape[0]
            except Exception:  # a per-image transform (e.g. one expecting (C, H, W) or PIL)
                self._batchwise = False
            if self._batchwise:
                return out
        if self._batchwise:
            return tf(x)
        return torch.stack([tf(xi) for xi in x])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._transform(self.dataset.images[idx]), self.dataset.labels[idx]


AUTO_WORKERS = -1  # num_workers value meaning "sized to this machine" (resolve_workers)
MAX_AUTO_WORKERS = 16


def available_cpus() -> int:
    """CPU cores this process may run on (the affinity mask: a container's or a job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_workers(num_workers: int) -> int:
    """DataLoader worker processes: ``num_workers`` when >= 0; a negative value (the default,
    :data:`AUTO_WORKERS`) means one per available core but one (the main process feeds the
    device), at most :data:`MAX_AUTO_WORKERS`, and none on a single core."""
    if num_workers >= 0:
        return int(num_workers)
    return max(0, min(MAX_AUTO_WORKERS, available_cpus() - 1))


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                num_workers: int = AUTO_WORKERS, drop_last: bool = False, collate_fn=None):
    """Iterable of (images, labels) batches; deterministic order for a seed.

    In-memory :class:`TensorImageDataset` -> :class:`TensorLoader` (no DataLoader, no workers);
    anything else -> ``torch.utils.data.DataLoader`` with a seeded generator,
    :func:`resolve_workers` worker processes, ``pin_memory`` when CUDA is available.
    """
    if isinstance(dataset, TensorImageDataset):
        return TensorLoader(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    g = torch.Generator().manual_seed(seed)
    workers = resolve_workers(num_workers)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=workers,
        drop_last=drop_last, pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0, collate_fn=collate_fn)
