"""The tidy results table: one row per (model, dataset, setting) with its transfer accuracy.

Columns (accuracies in percent):

==================  ==========================================================================
model               short model name (registered name without the ``<study>-`` prefix;
                    ``name@vN`` when a study has several versions of one name)
source_top1         source-task (ImageNet) top-1 of the model
dataset             target dataset
setting             logistic | finetune | scratch (or any other label from a CSV)
accuracy            transfer test accuracy
registered_name     registry name (study tables only)
version             registry version (study tables only)
architecture, width, depth, bn_scale, label_smoothing, dropout, aux_head
                    training choices from the version tags (study tables only)
recipe              hash of the rest of the pretraining config (epochs, lr, ...): the
                    version's ``recipe`` tag, written by the pretrain stage from its config
                    (older versions: computed from the pretrain run's params, either
                    launcher's layout), so that the training-choice study only pairs models
                    trained alike (study tables only; empty when unknown)
run_id              the probe / fine-tune run the accuracy came from (study tables only)
<predictor>         any further numeric column: a predictor score of (model, dataset), higher
                    = better (study tables: one per transferability estimator, ``logme``,
                    ``leep``, ..., from the probe run's ``estimator.<name>`` metrics, on every
                    setting's row of the pair; :mod:`suite.analysis.predictors`)
==================  ==========================================================================

A table comes from MLflow (:func:`load_study_table`: the Model Registry for the models, the run
search API for the probe and fine-tune runs, both with filter strings) or from a CSV
(:func:`read_csv`). :func:`write_csv` / :func:`read_csv` round-trip every number exactly.

Scratch results are one point per architecture, as in the paper: training from random
initialisation does not depend on a checkpoint, so models that share a scratch network
(:func:`suite.finetune.scratch_key`: architecture, width/depth, input side and preprocessing)
share one scratch row, reported under one representative model
(:func:`suite.finetune.scratch_representative`: a baseline, with every training choice at its
default, and among those the highest source top-1, i.e. the architecture's best-trained copy;
ties go to the first registered name). The other models of the architecture have no scratch
rows, so a variant never counts as a second scratch point at its own source accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from suite import tracking
from suite.config import ModelConfig
from suite.errors import SuiteError

REQUIRED = ("model", "source_top1", "dataset", "setting", "accuracy")
ESTIMATOR_METRIC = "estimator."  # probe-run metrics estimator.<name> (suite.probe.estimate)
CHOICES = tracking.VTAG_CHOICES  # bn_scale, label_smoothing, dropout, aux_head
DESIGN = ("architecture", "width", "depth") + CHOICES  # what makes two checkpoints differ
# scratch_network: the model's random-init network (suite.finetune.scratch_key), so that the
# fine-tune vs scratch comparison pairs every model with its architecture's one scratch row.
OPTIONAL = ("registered_name", "version") + DESIGN + ("recipe", "scratch_network", "run_id")
KNOWN_SETTINGS = ("logistic", "finetune", "scratch")
# Values of a training choice that mean "the choice is off" (the baseline of a pair): the
# ModelConfig defaults.
CHOICE_DEFAULTS = {c: getattr(ModelConfig("baseline"), c) for c in CHOICES}
SCRATCH = "scratch"
KEY = ["model", "dataset", "setting"]


def predictor_columns(df: pd.DataFrame) -> list[str]:
    """The predictor-score columns of a table: numeric columns beyond the required and known
    optional ones (estimator scores), in table order."""
    known = set(REQUIRED) | set(OPTIONAL)
    return [c for c in df.columns if c not in known and pd.api.types.is_numeric_dtype(df[c])]


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("source_top1", "accuracy")
                                      else "object") for c in REQUIRED})


# ---------------------------------------------------------------------------------------------
# from MLflow


def _parse_tag(value: str | None):
    """Version tags are strings: 'True'/'False' -> bool, numbers -> float/int, else the text."""
    if value is None or value == "":
        return None
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        f = float(value)
    except ValueError:
        return value
    return int(f) if f.is_integer() and "." not in value and "e" not in low else f


def _recipe(tags: dict, run_id: str | None) -> str | None:
    """The version's recipe: its ``recipe`` tag (:func:`suite.pretrain.pretrain_recipe`), or
    for versions registered before that tag, :func:`suite.pretrain.recipe_of_params` of its
    pretrain run's params; None when unknown."""
    from suite.pretrain import VTAG_RECIPE, recipe_of_params

    if tags.get(VTAG_RECIPE):
        return tags[VTAG_RECIPE]
    if not run_id:
        return None
    try:
        params = tracking.client().get_run(run_id).data.params
    except Exception:  # noqa: BLE001 -- a deleted or foreign run: recipe unknown
        return None
    return recipe_of_params(params)


def _version_row(mv) -> dict:
    tags = dict(mv.tags or {})
    row = {"registered_name": mv.name, "version": str(mv.version)}
    for key in DESIGN:
        row[key] = _parse_tag(tags.get(key))
    row["recipe"] = _recipe(tags, tags.get("run_id") or getattr(mv, "run_id", None))
    src = _parse_tag(tags.get(tracking.VTAG_SOURCE_TOP1))
    row["source_top1"] = float(src) if isinstance(src, (int, float)) and not isinstance(
        src, bool) else np.nan
    return row


def load_study_table(study: str) -> tuple[pd.DataFrame, list[str]]:
    """Read a study from MLflow into the tidy table. Returns (table, warnings).

    Reads: the Model Registry versions tagged ``suite.study = study`` (source accuracy and
    training choices from their tags) and the study's FINISHED runs with ``suite.stage`` probe
    and finetune (metric ``test_accuracy``; tags ``suite.model``, ``suite.model_version``,
    ``suite.dataset``, ``suite.setting``). A run of a version not tagged with the study is
    looked up by name and version. When one cell has several runs, the newest is kept. Scratch
    runs give one row per (architecture, dataset) (module docstring).
    """
    notes: list[str] = []
    study_mvs = tracking.study_versions(study)
    versions = {(mv.name, str(mv.version)): _version_row(mv) for mv in study_mvs}
    tags_of = {(mv.name, str(mv.version)): dict(mv.tags or {}) for mv in study_mvs}
    rows = []
    estimates: dict[tuple[str, str, str], dict[str, float]] = {}  # (name, version, dataset)
    for stage in ("probe", "finetune"):
        # Newest first (the run search API's default order), so the first of a cell wins.
        for run in tracking.search_runs(study, stage=stage):
            tags, metrics = run.data.tags, run.data.metrics
            name = tags.get(tracking.TAG_MODEL, "")
            version = tags.get(tracking.TAG_MODEL_VERSION, "")
            dataset = tags.get(tracking.TAG_DATASET, "")
            setting = tags.get(tracking.TAG_SETTING, "logistic" if stage == "probe" else "")
            if not (name and dataset and setting):
                notes.append(f"Run {run.info.run_id} ({stage}) lacks model/dataset/setting tags; "
                             "left out.")
                continue
            if "test_accuracy" not in metrics:
                notes.append(f"Run {run.info.run_id} ({name} on {dataset}, {setting}) has no "
                             "test_accuracy metric; left out.")
                continue
            if (name, version) not in versions:
                versions[(name, version)], tags_of[(name, version)] = _lookup_version(
                    name, version, notes)
            row = dict(versions[(name, version)])
            row.update(dataset=dataset, setting=setting, accuracy=float(metrics["test_accuracy"]),
                       run_id=run.info.run_id)
            rows.append(row)
            if stage == "probe":  # newest first: the first probe run of a pair gives them
                est = {k[len(ESTIMATOR_METRIC):]: float(v) for k, v in metrics.items()
                       if k.startswith(ESTIMATOR_METRIC) and not k.endswith(".seconds")}
                estimates.setdefault((name, version, dataset), est)
    if not rows:
        notes.append(f"Study {study!r} has no finished probe or fine-tune runs in "
                     f"{tracking.current_uri()}.")
        return empty_table(), notes
    rows = _one_scratch_per_network(rows, versions, tags_of, notes)
    names = sorted({k for est in estimates.values() for k in est})
    for row in rows:  # estimator scores belong to (model, dataset): every setting's row
        est = estimates.get((row["registered_name"], str(row["version"]), row["dataset"]), {})
        for k in names:
            row[k] = est.get(k, np.nan)
    df = pd.DataFrame(rows)
    df.insert(0, "model", _short_names(df, study))
    n = len(df)
    df = df.drop_duplicates(KEY, keep="first").reset_index(drop=True)
    if len(df) < n:
        notes.append(f"{n - len(df)} older run(s) of an already measured (model, dataset, "
                     "setting) cell were ignored (the newest run of each cell is used).")
    cols = list(REQUIRED) + [c for c in OPTIONAL if c in df.columns] + names
    return df[cols], notes


def _lookup_version(name: str, version: str, notes: list[str]) -> tuple[dict, dict | None]:
    """(table row, raw tags) of a version outside the study's; tags None when it is gone."""
    try:
        mv = tracking.get_version(name, version or "latest")
    except SuiteError:
        notes.append(f"Registered model {name!r} version {version!r} (used by runs of this "
                     "study) is not in the registry; its source accuracy is unknown.")
        return {"registered_name": name, "version": version, "source_top1": np.nan,
                "recipe": None, **{k: None for k in DESIGN}}, None
    return _version_row(mv), dict(mv.tags or {})


def _one_scratch_per_network(rows: list[dict], versions: dict, tags_of: dict,
                             notes: list[str]) -> list[dict]:
    """``rows`` (newest run first) with scratch rows folded to one per (scratch network,
    dataset), the newest, relabelled as the network's representative among the versions the
    table has rows for (module docstring). Versions whose tags are gone stay on their own."""
    from suite.finetune import scratch_key, scratch_representative

    keys: dict[tuple[str, str], str] = {}

    def key(v: tuple[str, str]) -> str:
        if v not in keys:
            keys[v] = f"{v[0]}@{v[1]}"  # a version of unknown architecture: on its own
            if tags_of.get(v):
                try:
                    keys[v] = scratch_key(tags_of[v])
                except SuiteError:  # an architecture this machine cannot build (timm missing)
                    pass
        return keys[v]

    def ident(row: dict) -> tuple[str, str]:
        return row["registered_name"], str(row["version"])

    members: dict[str, list[tuple[str, str]]] = {}
    for v in sorted({ident(r) for r in rows}):  # ties go to the first registered name
        members.setdefault(key(v), []).append(v)
    out, seen, folded = [], set(), 0
    for row in rows:
        if row["setting"] != SCRATCH:
            out.append({**row, "scratch_network": key(ident(row))})
            continue
        k = key(ident(row))
        if (k, row["dataset"]) in seen:
            folded += 1
            continue
        seen.add((k, row["dataset"]))
        group = members[k]
        rep = group[scratch_representative([tags_of.get(v) or {} for v in group])]
        out.append({**versions[rep], "dataset": row["dataset"], "setting": SCRATCH,
                    "accuracy": row["accuracy"], "run_id": row["run_id"], "scratch_network": k})
    if folded:
        notes.append(f"{folded} scratch run(s) of an architecture already measured on the same "
                     "dataset were left out (one scratch point per architecture, the newest run; "
                     "older studies trained it once per model).")
    return out


def _short_names(df: pd.DataFrame, study: str) -> list[str]:
    prefix = f"{study}-"
    multi = df.groupby("registered_name")["version"].nunique()
    out = []
    for name, version in zip(df["registered_name"], df["version"]):
        short = name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name
        out.append(f"{short}@v{version}" if multi[name] > 1 else short)
    return out


# ---------------------------------------------------------------------------------------------
# CSV


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the table: the five required columns first, then the optional ones it has.
    Floats are written with full precision (``repr``), so :func:`read_csv` gets them back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(REQUIRED) + [c for c in OPTIONAL if c in df.columns] + predictor_columns(df)
    df[cols].to_csv(path, index=False)
    return path


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a results CSV: header ``model,source_top1,dataset,setting,accuracy`` (percent), plus
    optionally the columns :func:`write_csv` adds and any numeric columns, read as predictor
    scores (a published table of estimator scores; :func:`predictor_columns`). Wrong columns
    raise :class:`SuiteError`."""
    path = Path(path)
    header = ",".join(REQUIRED)
    if not path.is_file():
        raise SuiteError(f"Results file {path} does not exist.",
                         f"Pass a CSV with the header {header}.")
    try:
        df = pd.read_csv(path, float_precision="round_trip", dtype={
            "model": str, "dataset": str, "setting": str, "version": str, "run_id": str,
            "registered_name": str, "architecture": str, "recipe": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SuiteError(f"Results file {path} is not a readable CSV ({e}).",
                         f"Write it with the header {header}, one row per model, dataset and "
                         "setting.") from None
    cols = [str(c).strip() for c in df.columns]
    df.columns = cols
    missing = [c for c in REQUIRED if c not in cols]
    unknown = []
    for c in (c for c in cols if c not in REQUIRED and c not in OPTIONAL):
        num = pd.to_numeric(df[c], errors="coerce")
        # A numeric extra is a predictor score, unless the header is wrong altogether (a
        # misnamed accuracy column is numeric too).
        if missing or (num.isna() & df[c].notna()).any() or df[c].isna().all():
            unknown.append(c)
        else:
            df[c] = num.astype("float64")
    if missing or unknown:
        what = []
        if missing:
            what.append("missing " + ", ".join(missing))
        if unknown:
            what.append("unexpected " + ", ".join(unknown))
        raise SuiteError(
            f"Results file {path} has the wrong columns ({'; '.join(what)}); found: "
            f"{','.join(cols)}.",
            f"The expected header is exactly {header} (accuracies in percent; setting "
            f"logistic, finetune, scratch or another label). Optional extra columns: "
            f"{', '.join(OPTIONAL)}; any other column must be numeric (a predictor score such "
            "as an estimator's, higher = better).")
    for c in ("source_top1", "accuracy"):
        num = pd.to_numeric(df[c], errors="coerce")
        bad = df[c][num.isna() & df[c].notna()]
        if len(bad):
            raise SuiteError(f"Column {c} of {path} has non-numeric values, e.g. {bad.iloc[0]!r}.",
                             "Write accuracies as numbers in percent (e.g. 76.1).")
        df[c] = num.astype("float64")
    for c in ("model", "dataset", "setting"):
        df[c] = df[c].astype(str).str.strip()
    for c in CHOICES:
        if c in df.columns:
            df[c] = [_parse_tag(None if pd.isna(v) else str(v)) for v in df[c]]
    return df


# ---------------------------------------------------------------------------------------------
# checks


def clean(df: pd.DataFrame, settings: Iterable[str] | None = None
          ) -> tuple[pd.DataFrame, list[str]]:
    """Drop what cannot be analysed and say why. Returns (clean table, warnings).

    Left out, each with a message: rows with a missing or out-of-[0, 100] accuracy or source
    accuracy; repeated (model, dataset, setting) rows (the first is kept); a model whose rows
    disagree on source_top1 keeps its first value. ``settings`` filters the table; settings not
    present are reported.
    """
    notes: list[str] = []
    df = df.copy()
    if settings:
        wanted = [str(getattr(s, "value", s)) for s in settings]
        present = set(df["setting"])
        unknown = [s for s in wanted if s not in present]
        if unknown:
            notes.append(f"Setting(s) {', '.join(unknown)} requested but not in the results "
                         f"(present: {', '.join(sorted(present)) or 'none'}); ignored.")
        df = df[df["setting"].isin(wanted)]
    for col, what in (("accuracy", "transfer accuracy"), ("source_top1", "source accuracy")):
        bad = df[~df[col].between(0.0, 100.0)]  # NaN is not between
        if len(bad):
            ex = bad.iloc[0]
            notes.append(f"{len(bad)} row(s) with a {what} missing or outside [0, 100] percent "
                         f"were left out (e.g. {ex['model']} on {ex['dataset']}, {ex['setting']}: "
                         f"{ex[col]}).")
            df = df[df[col].between(0.0, 100.0)]
    dup = df.duplicated(KEY, keep="first")
    if dup.any():
        ex = df[dup].iloc[0]
        notes.append(f"{int(dup.sum())} duplicate row(s) of the same (model, dataset, setting) "
                     f"were left out, the first kept (e.g. {ex['model']} on {ex['dataset']}, "
                     f"{ex['setting']}).")
        df = df[~dup]
    src = df.groupby("model")["source_top1"].nunique()
    for model in src[src > 1].index:
        first = df.loc[df["model"] == model, "source_top1"].iloc[0]
        notes.append(f"Model {model} has different source_top1 values; using the first, {first}.")
        df.loc[df["model"] == model, "source_top1"] = first
    return df.reset_index(drop=True), notes


def settings_of(df: pd.DataFrame) -> list[str]:
    """Settings in the table, the paper's three first in their usual order."""
    present = list(dict.fromkeys(df["setting"]))
    return [s for s in KNOWN_SETTINGS if s in present] + sorted(
        s for s in present if s not in KNOWN_SETTINGS)


def matrix(df: pd.DataFrame, setting: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(models, datasets, source (m,), accuracy (m, D) with NaN for missing cells) of a setting.

    Models are sorted by source accuracy, datasets by name.
    """
    sub = df[df["setting"] == setting]
    src = sub.groupby("model")["source_top1"].first().sort_values(kind="stable")
    models = list(src.index)
    datasets = sorted(sub["dataset"].unique())
    acc = sub.pivot(index="model", columns="dataset", values="accuracy").reindex(
        index=models, columns=datasets)
    return models, datasets, src.to_numpy(np.float64), acc.to_numpy(np.float64)


def design(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: source_top1 and whatever design columns (architecture, choices) the
    table has, indexed by model."""
    cols = ["source_top1"] + [c for c in ("registered_name", "version") + DESIGN + ("recipe",)
                              if c in df.columns]
    return df.groupby("model")[cols].first()
