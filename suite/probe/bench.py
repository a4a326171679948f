"""Benchmark of the probe protocol: our solvers against scikit-learn and a naive torch loop.

Every backend runs the *whole* protocol (sweep the grid, select on validation, refit on
train+val, score test) on the same features in one process, one after another, so that they
share the machine's state. Per size it prints a table (backend, wall time, speed-up over
scikit-learn, process CPU time, selected l2, accuracies, full-data evaluations, peak memory)
and returns one row per (size, backend); ``json_out`` writes the rows as a JSON list.

Peak memory: on a CPU, the peak resident set size above the level before the run, sampled every
5 ms from ``/proc/self/statm`` (``ru_maxrss`` cannot go down between runs); on CUDA,
``torch.cuda.max_memory_allocated``.

Run: ``suite bench probe [--quick] [--features FILE] [--json OUT] [--backend cpu ...]``, or
``python -m suite.probe.bench`` with the same options.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console
from rich.table import Table

from suite import kernels as K
from suite import progress
from suite.config import PAPER_L2_GRID
from suite.errors import SuiteError
from suite.probe.data import Features, load_features_npz, make_features


@dataclass(frozen=True)
class Size:
    """One benchmark shape; val/test sizes are n_train/4 and n_train/2."""

    name: str
    n_train: int
    d: int
    classes: int

    @property
    def n_val(self) -> int:
        return max(self.n_train // 4, self.classes)

    @property
    def n_test(self) -> int:
        return max(self.n_train // 2, self.classes)


# small, medium, and the paper's shape (ResNet-50 features: d = 2048; >= 100 classes; >= 5k
# training images, e.g. CIFAR-100 / Food-101 subsets).
DEFAULT_SIZES = (Size("small", 2000, 512, 50), Size("medium", 4000, 1024, 100),
                 Size("paper", 5000, 2048, 100))
QUICK_SIZES = (Size("quick", 400, 16, 4),)
# "<backend>-adaptive": the same solver with search="adaptive" (an approximation; not default)
BACKENDS = ("cpu", "cuda", "reference", "sklearn", "torch_lbfgs", "cuml", "cpu-adaptive",
            "cuda-adaptive")
DEFAULT_BACKENDS = ("cpu", "cuda", "sklearn", "torch_lbfgs")


def default_backends() -> list[str]:
    """cpu, cuda (with a GPU and the CUDA kernels), sklearn, torch_lbfgs."""
    return [b for b in DEFAULT_BACKENDS if b != "cuda" or K.has_cuda()]


class _PeakRSS:
    """Peak resident memory above the starting level, sampled in a background thread."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.ok = Path("/proc/self/statm").exists()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.base = self._rss() if self.ok else 0
        self.peak = self.base
        self._stop = threading.Event()
        if self.ok:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        if self.ok:
            self._thread.join()
            self.peak = max(self.peak, self._rss())
            self.mb = (self.peak - self.base) / 2**20
        else:  # high-water mark only: a lower bound of 0 once an earlier run went higher
            end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.mb = max(end - self.start_maxrss, 0) / 2**20
        return False


def _run_one(backend: str, f: Features, l2_grid, seed: int) -> dict:
    from suite.probe.backends import torch_lbfgs_protocol
    from suite.probe.solver import fit_protocol

    data = f.as_tuple()
    cuda = backend.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with _PeakRSS() as mem:
        c0 = time.process_time()
        t0 = time.perf_counter()
        if backend == "torch_lbfgs":
            dev = "cuda" if K.has_cuda() else "cpu"
            fit = torch_lbfgs_protocol(*data, l2_grid=l2_grid, device=dev)
        else:
            name, _, search = backend.partition("-")
            fit = fit_protocol(*data, l2_grid=l2_grid, backend=name, search=search or "exhaustive")
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else mem.mb
    n, d, k = f.shape
    return {"n": n, "n_val": len(f.y_val), "n_test": len(f.y_test), "d": d, "classes": k,
            "backend": backend, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "selected_l2": fit.selected_l2,
            "val_accuracy": fit.val_accuracy, "test_accuracy": fit.test_accuracy,
            "values_fitted": len(fit.sweep), "evaluations": fit.evaluations or None,
            "peak_mem_mb": peak, "threads": torch.get_num_threads(), "seed": seed,
            "timings": fit.timings}


def _compare(rows: list[dict]) -> None:
    """Fill speed-up and test-accuracy difference against the sklearn row, if any."""
    base = next((r for r in rows if r["backend"] == "sklearn"), None)
    for r in rows:
        r["speedup_vs_sklearn"] = base["seconds"] / r["seconds"] if base else None
        r["test_delta_vs_sklearn"] = r["test_accuracy"] - base["test_accuracy"] if base else None


def _table(title: str, rows: list[dict]) -> Table:
    t = Table(title=title)
    for col in ("backend", "seconds", "vs sklearn", "CPU s", "selected l2", "val %", "test %",
                "Δtest vs sklearn", "values", "evals", "peak MB"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in rows:
        sp = r.get("speedup_vs_sklearn")
        dt = r.get("test_delta_vs_sklearn")
        t.add_row(r["backend"], f"{r['seconds']:.2f}", "-" if sp is None else f"{sp:.1f}x",
                  f"{r['cpu_seconds']:.1f}",
                  f"{r['selected_l2']:.3g}", f"{r['val_accuracy']:.2f}",
                  f"{r['test_accuracy']:.2f}", "-" if dt is None else f"{dt:+.2f}",
                  str(r["values_fitted"]), str(r["evaluations"] or "-"),
                  f"{r['peak_mem_mb']:.0f}")
    return t


def run_bench(sizes: Sequence[Size | tuple[int, int, int]] | None = None,
              backends: Sequence[str] | None = None, features_file: str | Path | None = None,
              json_out: str | Path | None = None, seed: int = 0, *, quick: bool = False,
              l2_grid: Sequence[float] = PAPER_L2_GRID, console: Console | None = None
              ) -> list[dict]:
    """Run every backend on every size (or on the features in ``features_file``).

    ``sizes``: :class:`Size` or ``(n_train, d, classes)`` tuples; default :data:`DEFAULT_SIZES`,
    or :data:`QUICK_SIZES` with ``quick=True`` (seconds; what ``--quick`` runs).
    ``backends``: names from :data:`BACKENDS`; default :func:`default_backends`. Rows carry
    ``speedup_vs_sklearn`` (sklearn seconds / ours) and ``test_delta_vs_sklearn`` when sklearn
    ran on that size.
    """
    if console is None:  # a table needs ~130 columns; pipes and captures default to 80
        console = Console()
        if console.width < 130:
            console = Console(width=130)
    backends = list(backends) if backends else default_backends()
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SuiteError(f"Unknown benchmark backend(s): {', '.join(unknown)}.",
                         f"Use any of: {', '.join(BACKENDS)}.")
    if any(b.startswith("cuda") for b in backends):
        K.require_cuda()
    if features_file is not None:
        jobs = [(Path(features_file).name, lambda: load_features_npz(features_file))]
    else:
        todo = [s if isinstance(s, Size) else Size(f"{s[0]}x{s[1]}x{s[2]}", *s)
                for s in (sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))]
        jobs = [(s.name, lambda s=s: make_features(s.n_train, s.n_val, s.n_test, s.d, s.classes,
                                                   seed=seed)) for s in todo]
    rows: list[dict] = []
    for name, load in jobs:
        feats = load()
        size_rows = []
        # scikit-learn first (the speed-up baseline), the naive torch loop last (the slowest).
        order = sorted(backends, key=lambda b: (b != "sklearn", b == "torch_lbfgs"))
        for b in order:
            r = _run_one(b, feats, list(l2_grid), seed)
            r["size"] = name
            size_rows.append(r)
            progress.console.log(f"bench {name}: {b} {r['seconds']:.1f} s, test "
                                 f"{r['test_accuracy']:.2f} %, l2 {r['selected_l2']:.3g}")
            _compare(size_rows)
            if json_out:  # after every run, so that a long benchmark leaves partial results
                Path(json_out).write_text(json.dumps(rows + size_rows, indent=1))
        size_rows.sort(key=lambda r: backends.index(r["backend"]))
        n, d, k = feats.shape
        console.print(_table(f"probe protocol, {name}: n={n} (val {len(feats.y_val)}, test "
                             f"{len(feats.y_test)}), d={d}, {k} classes, {len(l2_grid)} values, "
                             f"{torch.get_num_threads()} threads", size_rows))
        rows.extend(size_rows)
        if json_out:
            Path(json_out).write_text(json.dumps(rows, indent=1))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--features")
    ap.add_argument("--json")
    ap.add_argument("--backend", action="append", choices=BACKENDS)
    ap.add_argument("--size", action="append", help="N,D,CLASSES (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split(",")) for s in a.size] if a.size else None
    run_bench(sizes, a.backend, a.features, a.json, a.seed, quick=a.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Size", "DEFAULT_SIZES", "QUICK_SIZES", "BACKENDS", "default_backends", "run_bench",
           "main"]
