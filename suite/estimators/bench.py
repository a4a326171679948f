"""Benchmark of the transferability estimators beside the probe protocol they would replace.

On the same synthetic features (:func:`suite.probe.data.make_features`, the probe benchmark's
generator: train/val/test of n, n/4, n/2 rows, d dimensions, K classes) and in one process, it
times every estimator on the training split (:func:`suite.estimators.compute_all`, on the
chosen device), LogME again as a straightforward NumPy port of the reference algorithm
(:func:`logme_reference_numpy`), and the full probe protocol (:func:`suite.probe.solver.
fit_protocol`: 45 l2 values, selection on val, refit on train+val, test). Source-head
probabilities for LEEP/NCE come from a random 1000-way linear head on the features.

Per size one row: ``estimators`` {name: {"value", "seconds", "probe_ratio"}} where
``probe_ratio`` = probe seconds / estimator seconds, ``logme_numpy_seconds``,
``logme_speedup_vs_numpy`` and the two LogME values, ``probe_seconds``, the shape, device and
threads. The paper's shapes are 50,000 x 2,048 and 5,000 x 2,048 with 100 classes.

Run: ``suite bench estimators [--size N,D,K ...] [--json OUT] [--device cuda] [--no-probe]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from suite import progress

PAPER_SIZES = ((50_000, 2048, 100), (5_000, 2048, 100))
SOURCE_CLASSES = 1000


def logme_reference_numpy(f: np.ndarray, y: np.ndarray) -> float:
    """A straightforward NumPy port of thuml/LogME's ``LogME._fit_fixed_point`` (classification)
    with its ``truncated_svd``: per-class loop, SVD of ``F`` (n <= d) or eigendecomposition of
    ``F^T F`` (n > d), log det over the non-zero singular values only (so it differs from
    :func:`suite.estimators.logme` when n < d; see thuml/LogME#24 and that module)."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    if n > d:
        u_, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        u_times_sigma = f @ vh.T
        k = int(np.sum(s > 1e-10))
        s = s[:k].reshape(-1, 1)
        u = u_times_sigma[:, :k] / s.reshape(1, -1)
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        s = s.reshape(-1, 1)
    sigma = s ** 2
    evidences = []
    for c in range(int(y.max()) + 1):
        y_ = (y == c).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x ** 2
        res_x2 = (y_ ** 2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta)
                    - 0.5 * np.sum(np.log(alpha + beta * sigma)) - beta / 2.0 * res2
                    - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _source_probs(x: np.ndarray, seed: int) -> np.ndarray:
    """Softmax of a random 1000-way linear head (n, 1000) float32: a stand-in source head."""
    g = np.random.default_rng(seed + 1)
    w = g.normal(0.0, 1.0, (x.shape[1], SOURCE_CLASSES)).astype(np.float32)
    logits = torch.from_numpy(x) @ torch.from_numpy(w)
    logits = logits / logits.std() * 2.0  # a head of moderate confidence
    return torch.softmax(logits, dim=1).numpy()


def bench_size(n: int, d: int, k: int, *, device: torch.device, seed: int = 0,
               probe: bool = True, names: Sequence[str] | None = None,
               numpy_logme: bool = True, repeat: int = 3) -> dict:
    """One row of the benchmark (module docstring). Each estimator (and the NumPy LogME) runs
    ``repeat`` times and its fastest time is kept: on a shared machine the others measure
    whoever else was running; the probe protocol, minutes long, runs once."""
    from suite.estimators import compute_all
    from suite.probe.data import make_features

    feats = make_features(n, max(n // 4, k), max(n // 2, k), d, k, seed=seed)
    x, y = feats.x_train, feats.y_train
    probs = _source_probs(x, seed)
    row: dict = {"n": n, "d": d, "classes": k, "device": str(device),
                 "threads": torch.get_num_threads(), "seed": seed}
    xt = torch.from_numpy(x).to(device)
    pt = torch.from_numpy(probs).to(device)
    yt = torch.from_numpy(y).to(device)
    notes: list[str] = []
    scores: dict[str, tuple[float, float]] = {}
    for i in range(max(1, repeat)):
        got = compute_all(xt, yt, pt, names=names, notes=notes if i == 0 else [])
        for name, (v, sec) in got.items():
            if name not in scores or sec < scores[name][1]:
                scores[name] = (v, sec)
    row["repeat"] = max(1, repeat)
    row["estimators"] = {name: {"value": v, "seconds": s} for name, (v, s) in scores.items()}
    row["notes"] = notes
    for name, (_, s) in scores.items():
        progress.console.log(f"bench estimators {n}x{d}x{k}: {name} {s:.2f} s")
    if numpy_logme and "logme" in scores:
        best = float("inf")
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            row["logme_numpy_value"] = logme_reference_numpy(x, y)
            best = min(best, time.perf_counter() - t0)
        row["logme_numpy_seconds"] = best
        row["logme_speedup_vs_numpy"] = row["logme_numpy_seconds"] / scores["logme"][1]
        progress.console.log(f"bench estimators {n}x{d}x{k}: LogME NumPy port "
                             f"{row['logme_numpy_seconds']:.2f} s")
    if probe:
        from suite.probe.solver import fit_protocol

        t0 = time.perf_counter()
        fit = fit_protocol(*feats.as_tuple(), device=device)
        row["probe_seconds"] = time.perf_counter() - t0
        row["probe_backend"] = fit.backend
        row["probe_test_accuracy"] = fit.test_accuracy
        for item in row["estimators"].values():
            item["probe_ratio"] = row["probe_seconds"] / item["seconds"]
        progress.console.log(f"bench estimators {n}x{d}x{k}: probe protocol "
                             f"{row['probe_seconds']:.1f} s ({fit.backend})")
    return row


def run_bench(sizes: Sequence[tuple[int, int, int]] | None = None, *, device="cpu",
              json_out: str | Path | None = None, seed: int = 0, probe: bool = True,
              names: Sequence[str] | None = None, repeat: int = 3) -> list[dict]:
    """Every size (default :data:`PAPER_SIZES`), one row each; ``json_out`` is rewritten after
    every size, so an interrupted run leaves the finished rows."""
    from rich.table import Table

    from suite.progress import resolve_device

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    rows: list[dict] = []
    for n, d, k in sizes or PAPER_SIZES:
        rows.append(bench_size(n, d, k, device=device, seed=seed, probe=probe, names=names,
                               repeat=repeat))
        if json_out:
            Path(json_out).write_text(json.dumps(rows, indent=1))
        r = rows[-1]
        t = Table(title=f"estimators, n={n} d={d} {k} classes, {r['device']}, "
                        f"{r['threads']} threads" + (f"; probe protocol {r['probe_seconds']:.1f}"
                                                     " s" if probe else ""))
        for col in ("estimator", "value", "seconds", "probe / estimator"):
            t.add_column(col, justify="left" if col == "estimator" else "right")
        for name, item in r["estimators"].items():
            ratio = item.get("probe_ratio")
            t.add_row(name, f"{item['value']:.5g}", f"{item['seconds']:.3f}",
                      "-" if ratio is None else f"{ratio:.0f}x")
        if "logme_numpy_seconds" in r:
            t.add_row("logme (NumPy port)", f"{r['logme_numpy_value']:.5g}",
                      f"{r['logme_numpy_seconds']:.3f}",
                      f"ours {r['logme_speedup_vs_numpy']:.1f}x faster")
        progress.console.print(t)
    return rows


__all__ = ["PAPER_SIZES", "bench_size", "logme_reference_numpy", "run_bench"]
