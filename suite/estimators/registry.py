"""The estimators by name, what each needs, and :func:`compute_all`.

Every estimator is called as ``fn(features, labels, source_probs)`` through its entry here;
the ones that read the source head (LEEP, NCE) have ``needs_source = True`` and are skipped,
with a note, when there are no source probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from suite.config import ESTIMATOR_NAMES
from suite.errors import SuiteError
from suite.estimators.gbc import gbc
from suite.estimators.hscore import hscore, hscore_shrinkage
from suite.estimators.logme import logme
from suite.estimators.nleep import nleep
from suite.estimators.sfda import sfda
from suite.estimators.source import leep, nce
from suite.estimators.transrate import transrate


@dataclass(frozen=True)
class Estimator:
    """One transferability estimator: higher = better for every entry."""

    name: str
    fn: Callable[..., float]  # fn(features, labels, source_probs) -> float
    needs_source: bool  # reads the source head's probabilities, not the features
    title: str  # how reports name it

    def __call__(self, features, labels, source_probs=None) -> float:
        return self.fn(features, labels, source_probs)


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator("logme", lambda f, y, p: logme(f, y), False, "LogME"),
    Estimator("leep", lambda f, y, p: leep(p, y), True, "LEEP"),
    Estimator("nce", lambda f, y, p: nce(p, y), True, "NCE"),
    Estimator("hscore", lambda f, y, p: hscore(f, y), False, "H-score"),
    Estimator("hscore_shrinkage", lambda f, y, p: hscore_shrinkage(f, y), False,
              "H-score (shrinkage)"),
    Estimator("nleep", lambda f, y, p: nleep(f, y), False, "N-LEEP"),
    Estimator("gbc", lambda f, y, p: gbc(f, y), False, "GBC"),
    Estimator("sfda", lambda f, y, p: sfda(f, y), False, "SFDA"),
    Estimator("transrate", lambda f, y, p: transrate(f, y), False, "TransRate"),
)}
assert tuple(ESTIMATORS) == ESTIMATOR_NAMES, "suite.config.ESTIMATOR_NAMES is out of date"


def check_names(names: Sequence[str]) -> list[str]:
    """``names`` as a list, or SuiteError naming the unknown ones."""
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise SuiteError(f"Unknown estimator(s) {', '.join(unknown)}.",
                         f"Use any of: {', '.join(ESTIMATORS)} (an empty list disables them).")
    return list(dict.fromkeys(names))


def _sync(t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)


def compute_all(features, labels, source_probs=None, names: Sequence[str] | None = None, *,
                notes: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """{name: (value, seconds)} of every estimator in ``names`` (default: all) on one split.

    Estimators that need ``source_probs`` are left out when it is None; an estimator that
    cannot score this input (a single class, multi-label targets) is left out too. Each gets a
    line in ``notes`` saying why. NaN or inf features raise :class:`SuiteError` (nothing can
    be scored). ``features`` / ``source_probs`` may be NumPy arrays or tensors on any device;
    they are converted to float64 once, on that device.
    """
    notes = notes if notes is not None else []
    names = check_names(list(ESTIMATORS) if names is None else names)
    from suite.estimators._common import as_features

    f = as_features(features) if any(not ESTIMATORS[n].needs_source for n in names) else None
    y = torch.as_tensor(labels)
    p = None
    if source_probs is not None and any(ESTIMATORS[n].needs_source for n in names):
        p = as_features(source_probs, "source probabilities")
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        est = ESTIMATORS[name]
        if est.needs_source and p is None:
            notes.append(f"{name}: skipped, the model has no source-head probabilities "
                         "(no source classifier, or one that cannot be applied to the cached "
                         "features).")
            continue
        ref = p if est.needs_source else f
        _sync(ref)
        t0 = time.perf_counter()
        try:
            value = est(f, y.to(ref.device), p)
        except SuiteError as e:
            notes.append(f"{name}: skipped, {e.message}")
            continue
        except torch.linalg.LinAlgError as e:  # a degenerate fit (e.g. a singular covariance)
            notes.append(f"{name}: skipped, numerical failure ({e}).")
            continue
        _sync(ref)
        out[name] = (value, time.perf_counter() - t0)
    return out
