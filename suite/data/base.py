"""Shared data types: dataset metadata and the in-memory tensor dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the suite needs to know about a dataset without loading it."""

    name: str
    num_classes: int
    metric: str  # "top1" | "mean_per_class" | "map11" (suite.metrics.score)
    multilabel: bool = False  # labels are (k,) 0/1 float tensors (VOC2007)
    has_val: bool = False  # the dataset ships its own validation split
    kind: str = "synthetic"  # "synthetic" | "torchvision" | "folder"
    image_size: int = 0  # native side for synthetic sets; 0 = varies
    description: str = ""
    paper: bool = False  # one of the paper's 12 datasets


class TensorImageDataset(torch.utils.data.Dataset):
    """Images already in memory: ``images`` (N, 3, H, W) float32, ``labels`` (N,) int64.

    ``transform`` (optional) maps an image tensor (3, H, W) -> tensor; :func:`make_loader` applies
    it to a whole batch (N, 3, H, W) at once when it accepts batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Callable | None = None, classes: list[str] | None = None):
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} "
                             "must be (N, C, H, W) and (N, ...)")
        self.images = images
        self.labels = labels
        self.transform = transform
        self.classes = classes or []

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        y = self.labels[i]
        return x, (int(y) if y.ndim == 0 else y)
