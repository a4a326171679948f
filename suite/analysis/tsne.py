"""t-SNE of the penultimate features of two models on the same images, from the feature cache
(``suite.features.cache_path(model_name, version, dataset, split, root=...)`` -> ``.npz`` with
x, y; the data root comes from the model's probe run, since it is part of the cache key)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

MAX_POINTS = 600  # Barnes-Hut t-SNE is O(n log n) per iteration; 600 points: a few seconds
MAX_ITER = 500  # gradient steps (scikit-learn's default 1000 changes little for a picture)


def _data_root(df: pd.DataFrame, model: str, dataset: str) -> str:
    """The data root the model's probe on ``dataset`` ran with (its run's ``data_root`` param;
    it is part of the cache key of the paper's datasets), "" when unknown."""
    if "run_id" not in df.columns:
        return ""
    rows = df[(df["model"] == model) & (df["dataset"] == dataset) & (df["setting"] == "logistic")]
    for run_id in rows["run_id"].dropna():
        from suite import tracking

        try:
            return tracking.client().get_run(str(run_id)).data.params.get("data_root", "")
        except Exception:  # noqa: BLE001 -- a missing run only loses the picture
            return ""
    return ""


def _cache_path(name: str, version: str, dataset: str, split: str, root: str = "") -> Path:
    from suite.features import cache_path

    return Path(cache_path(name, version, dataset, split, root=root))


def embed_pair(df: pd.DataFrame, models: Sequence[str], *, dataset: str | None = None,
               split: str = "test", seed: int = 0, notes=None) -> dict | None:
    """t-SNE maps of two models' cached features on the first dataset (or ``dataset``) for
    which both are cached; ``models`` are table model names or registered names.

    Returns {"models", "dataset", "split", "labels" (n,), "points": [(n, 2), (n, 2)]}, or None
    with a note when the models or their features are absent."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    def note(msg: str) -> None:
        if notes is not None:
            notes.add(msg)

    models = list(models)
    if len(models) != 2:
        note(f"t-SNE needs exactly two models, got {len(models)} ({', '.join(models)}); skipped.")
        return None
    if "registered_name" not in df.columns or "version" not in df.columns:
        note("t-SNE skipped: the table has no registered names / versions (CSV input), so the "
             "feature cache cannot be located.")
        return None
    info = df.groupby("model")[["registered_name", "version"]].first()
    # Accept registered names as well as the table's short names.
    by_registered = {str(r): m for m, r in zip(info.index, info["registered_name"])}
    models = [m if m in info.index else by_registered.get(m, m) for m in models]
    unknown = [m for m in models if m not in info.index]
    if unknown:
        note(f"t-SNE skipped: unknown model(s) {', '.join(unknown)} (known: "
             f"{', '.join(info.index)}).")
        return None
    datasets = [dataset] if dataset else sorted(df["dataset"].unique())
    for d in datasets:
        paths = [_cache_path(str(info.loc[m, "registered_name"]), str(info.loc[m, "version"]),
                             d, split, _data_root(df, m, d)) for m in models]
        if not all(p.is_file() for p in paths):
            continue
        arrays = [np.load(p) for p in paths]
        xs = [np.asarray(a["x"], np.float32) for a in arrays]
        y = np.asarray(arrays[0]["y"])
        if y.ndim > 1:  # multi-label: colour by the first positive label
            y = y.argmax(axis=1)
        n = min(len(x) for x in xs)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(n, size=min(n, MAX_POINTS), replace=False))
        if len(pick) < 5:
            continue
        points = []
        perplexity = float(min(30.0, (len(pick) - 1) / 3.0))
        for x in xs:
            tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity,
                        max_iter=MAX_ITER)
            # One OpenMP thread: on a shared machine the spinning worker threads of the
            # Barnes-Hut gradient ran ten times slower than a single one.
            with threadpool_limits(limits=1):
                points.append(tsne.fit_transform(x[pick]))
        return {"models": models, "dataset": d, "split": split, "labels": y[pick].tolist(),
                "points": [p.tolist() for p in points]}
    note(f"t-SNE skipped: no dataset has cached {split} features for both {models[0]} and "
         f"{models[1]} (run the probe stage first).")
    return None
