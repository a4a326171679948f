"""Stage orchestration: ``suite study run CONFIG``.

Reads: a :class:`~suite.config.StudyConfig` (YAML or preset). Writes, into the study's MLflow
experiment: one pretrain run + registered model version per model, one probe run per
(model, dataset), one run per fine-tune grid point and one parent run (the selection, the
points nested under it) per (model, dataset), the same for scratch per (architecture,
dataset), and one analysis run with the correlation
table, figures and report.

Scratch trains an architecture, not a checkpoint: models that share one
(:func:`suite.finetune.scratch_spec`: architecture, width/depth, input side and preprocessing;
not the training choices or epochs) share one scratch cell, run under their representative
(:func:`suite.finetune.scratch_representative`: a baseline, the highest source top-1) and
reported under it by the analysis.

The study is a plan of cells (:mod:`suite.cells`) run by an executor (:mod:`suite.executors`:
``inprocess``, ``local``, ``slurm``); every cell is claimed in MLflow before it runs
(:mod:`suite.claims`, :func:`run_cell`), so several drivers or workers on one study never run a
cell twice. Resumable by construction: a cell already done in MLflow (``suite.cell`` tag on
runs, on registered versions for pretraining, or a FINISHED claim) is not run again, a rerun
retries what failed before, and a killed worker's claim is taken over (marked KILLED, never
FINISHED). ``suite study status`` (:func:`study_status`) reports the plan's state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from suite import tracking
from suite.config import (
    FinetuneConfig,
    GridOptions,
    Launcher,
    ModelConfig,
    PretrainConfig,
    ProbeConfig,
    Setting,
    StudyConfig,
    study_to_yaml,
)
from suite.progress import console


@dataclass
class StudyResult:
    name: str
    versions: dict[str, tuple[str, str]] = field(default_factory=dict)  # model -> (name, ver)
    cells_run: int = 0
    cells_reused: int = 0
    seconds: float = 0.0
    analysis: object | None = None


def make_pretrain_config(cfg: StudyConfig, model: ModelConfig) -> PretrainConfig:
    return PretrainConfig(model=model, source=cfg.source, batch_size=cfg.pretrain_batch_size,
                          lr=cfg.pretrain_lr, weight_decay=cfg.pretrain_weight_decay,
                          seed=cfg.seed, study=cfg.name, data_root=cfg.data_root,
                          device=cfg.device, num_workers=cfg.num_workers,
                          skip_corrupt=cfg.skip_corrupt)


def make_probe_config(cfg: StudyConfig, name: str, version: str, dataset: str) -> ProbeConfig:
    return ProbeConfig(model_name=name, model_version=version, dataset=dataset,
                       backend=cfg.probe_backend, search=cfg.probe_search,
                       l2_grid=cfg.l2_grid, seed=cfg.seed,
                       study=cfg.name, data_root=cfg.data_root, device=cfg.device,
                       num_workers=cfg.num_workers, decode=cfg.decode,
                       skip_corrupt=cfg.skip_corrupt, estimators=cfg.estimators)


def make_finetune_config(cfg: StudyConfig, name: str, version: str, dataset: str,
                         setting: Setting) -> FinetuneConfig:
    grid: GridOptions = cfg.finetune if setting == Setting.finetune else cfg.scratch
    return FinetuneConfig(model_name=name, model_version=version, dataset=dataset,
                          setting=setting, lrs=grid.lrs, weight_decays=grid.weight_decays,
                          steps=grid.steps, batch_size=grid.batch_size,
                          eval_every=grid.eval_every, seed=cfg.seed, study=cfg.name,
                          data_root=cfg.data_root, device=cfg.device,
                          num_workers=cfg.num_workers, skip_corrupt=cfg.skip_corrupt)


def _validate_names(cfg: StudyConfig) -> None:
    """Fail before any training on unknown datasets or architectures."""
    from suite import data, models

    if any(not (m.weights or m.weights_file) for m in cfg.models):
        data.get_info(cfg.source, cfg.data_root)  # some model is pretrained on it
    for ds in cfg.datasets:
        data.get_info(ds, cfg.data_root)
    for m in cfg.models:
        models.check_arch(m.arch)


def _pretrain(cfg: StudyConfig, model: ModelConfig) -> tuple[str, str, bool]:
    """Pretrain (or reuse) one model; returns (registered name, version, reused)."""
    from suite import pretrain

    if model.weights or model.weights_file:
        from suite.models.zoo import register_zoo

        name = tracking.registered_name(cfg.name, model.name)
        mv = register_zoo(model.arch, weights=model.weights or None,
                          weights_file=model.weights_file or None,
                          source_top1=model.source_top1 if model.source_top1 >= 0 else None,
                          registered_name=name, study=cfg.name)
        return name, str(mv.version), False
    pcfg = make_pretrain_config(cfg, model)
    if cfg.launcher == Launcher.project:
        from suite.launch import launch_pretrain

        return launch_pretrain(pcfg)
    res = pretrain.run_pretrain(pcfg)
    return res.registered_name, str(res.version), res.reused


def _finetune(fcfg: FinetuneConfig, launcher: Launcher) -> bool:
    """Fine-tune (or reuse) one cell; returns reused."""
    if launcher == Launcher.project:
        from suite.launch import launch_finetune

        return launch_finetune(fcfg)[1]
    from suite import finetune

    return finetune.run_finetune(fcfg).reused


def _point(fcfg: FinetuneConfig, launcher: Launcher) -> bool:
    """Train (or reuse) one grid point; returns reused."""
    from suite import finetune

    mv = tracking.get_version(fcfg.model_name, fcfg.model_version)
    if tracking.find_finished_run(fcfg.study, finetune.point_cell(fcfg, mv)) is not None:
        return True
    if launcher == Launcher.project:
        from suite.launch import launch_point

        launch_point(fcfg)
    else:
        finetune.run_point(fcfg, mv=mv)
    return False


def _scratch_group_guess(model: ModelConfig) -> tuple:
    """Models that surely share a scratch network, from their configs alone (for the cell count
    announced before pretraining; :func:`_scratch_models` decides from the registered tags)."""
    shape = (model.width, model.depth) if model.arch == "cnn" else ()
    return (model.arch, *shape, model.weights or model.weights_file or "source")


def _scratch_models(cfg: StudyConfig, versions: dict[str, tuple[str, str]]) -> list[ModelConfig]:
    """One model per distinct scratch network (:func:`suite.finetune.scratch_key` of its
    registered tags), its group's :func:`~suite.finetune.scratch_representative`, in study
    order. Groups are ordered by registered name, as the analysis orders them, so that a tie
    goes to the model the analysis reports the result under."""
    from suite.finetune import scratch_key, scratch_representative

    groups: dict[str, list[tuple[ModelConfig, dict]]] = {}
    for model in sorted(cfg.models, key=lambda m: versions[m.name]):
        tags = dict(tracking.get_version(*versions[model.name]).tags or {})
        groups.setdefault(scratch_key(tags), []).append((model, tags))
    chosen = [members[scratch_representative([t for _, t in members])][0]
              for members in groups.values()]
    return [m for m in cfg.models if m in chosen]


def _execute(cfg: StudyConfig, cell) -> tuple[bool, object]:
    """Run one cell's stage; returns (reused, the stage's result)."""
    from suite.cells import Kind

    if cell.kind is Kind.register:
        name, version, reused = _pretrain(cfg, cell.spec)
        return reused, (name, version)
    if cell.kind is Kind.pretrain:
        model = cell.spec.model
        name, version, reused = _pretrain(cfg, model)
        return reused, (name, version)
    if cell.kind is Kind.probe:
        from suite.probe import run_probe

        res = run_probe(cell.spec)
        return res.reused, res
    if cell.kind in (Kind.finetune_point, Kind.scratch_point):
        return _point(cell.spec, cfg.launcher), None
    if cell.kind in (Kind.finetune, Kind.scratch):
        return _finetune(cell.spec, cfg.launcher), None
    from suite.analysis import run_analysis

    return False, run_analysis(cell.spec)


def run_cell(cfg: StudyConfig, cell) -> tuple[bool, object]:
    """Claim ``cell`` (:mod:`suite.claims`) and run it; returns (reused, result). Raises
    :class:`suite.claims.ClaimLost` when another live worker holds it, or when another worker
    finished the cell between this worker's look and its claim (so that exactly one claim per
    cell ends FINISHED)."""
    from suite import claims

    with claims.claim(cfg.name, cell.key, kind=cell.kind.value, label=cell.label):
        done = [c for c in claims.list_claims(cfg.name, cell.key) if c.status == "FINISHED"]
        if done:  # finished by another worker since this one looked: this claim ends KILLED
            raise claims.ClaimLost(cell.key, done[0].owner)
        return _execute(cfg, cell)


def work_cell(cfg: StudyConfig, key: str):
    """The cell of ``cfg`` with key ``key`` (a worker's ``--cell``)."""
    from suite.cells import expand
    from suite.errors import SuiteError

    for cell in expand(cfg):
        if cell.key == key:
            return cell
    raise SuiteError(
        f"Study {cfg.name!r} has no cell {key} ready to run: its dependencies are not done, or "
        "the study changed since the driver submitted it.",
        f"Run `suite study status {cfg.name}` and `suite study run` again: the driver submits "
        "cells only when their dependencies are done.")


def study_status(cfg: StudyConfig) -> dict:
    """Per kind: counts of done/running/pending/failed cells (blocked counts as pending), and
    one entry per cell that is not done (state, error line, worker, SLURM job)."""
    from suite.cells import KIND_ORDER, State, states

    out: dict = {"study": cfg.name, "stages": {}, "cells": []}
    queued = _queued_jobs()
    for st in states(cfg):
        kind = st.cell.kind.value
        state = State.pending if st.state is State.blocked else st.state
        counts = out["stages"].setdefault(kind, {s: 0 for s in ("done", "running", "pending",
                                                                 "failed")})
        counts[state.value] += 1
        if st.state is not State.done:
            c = st.claim
            out["cells"].append({
                "kind": kind, "label": st.cell.label, "key": st.cell.key,
                "state": st.state.value,
                "error": c.error if c is not None and st.state is State.failed else "",
                "owner": c.owner if c is not None and st.state is State.running else "",
                "slurm_job": (c.slurm_job if c is not None and st.state is not State.pending
                              else queued.get(st.cell.key, "")),
                "stale": st.stale})
    order = [k.value for k in KIND_ORDER]
    out["stages"] = dict(sorted(out["stages"].items(), key=lambda kv: order.index(kv[0])))
    return out


def _queued_jobs() -> dict[str, str]:
    """SLURM jobs of this user queued for cells (key -> job id), where SLURM is at hand."""
    import shutil

    if shutil.which("squeue") is None:
        return {}
    import subprocess

    from suite.errors import SuiteError
    from suite.executors.slurm import queued_jobs

    try:
        return queued_jobs()
    except (SuiteError, OSError, subprocess.TimeoutExpired):
        return {}


def format_status(report: dict) -> str:
    """:func:`study_status` as the table ``suite study status`` prints."""
    lines = [f"study {report['study']}",
             f"  {'stage':10s} {'done':>6s} {'running':>8s} {'pending':>8s} {'failed':>7s}"]
    for kind, n in report["stages"].items():
        lines.append(f"  {kind:10s} {n['done']:6d} {n['running']:8d} {n['pending']:8d} "
                     f"{n['failed']:7d}")
    for c in report["cells"]:
        if c["state"] == "failed":
            job = f" (SLURM job {c['slurm_job']})" if c["slurm_job"] else ""
            lines.append(f"  failed  {c['label']}{job}: {c['error'] or 'no error recorded'}")
        elif c["state"] == "running":
            job = f", SLURM job {c['slurm_job']}" if c["slurm_job"] else ""
            lines.append(f"  running {c['label']} ({c['owner']}{job})")
        elif c["slurm_job"]:
            lines.append(f"  queued  {c['label']} (SLURM job {c['slurm_job']})")
    return "\n".join(lines)


def run_study(cfg: StudyConfig, analysis: bool = True) -> StudyResult:
    """Run every cell of the study that is not already complete in MLflow, through the study's
    executor (:mod:`suite.executors`), then analyse (the analysis is a cell too)."""
    from suite.cells import Kind, model_versions
    from suite.executors import EXECUTORS, drive

    t0 = time.perf_counter()
    _validate_names(cfg)
    executor = EXECUTORS[cfg.executor](jobs=cfg.jobs, max_concurrent=cfg.max_concurrent,
                                       slurm=cfg.slurm)
    exp = tracking.experiment_id(cfg.name)
    tracking.client().set_experiment_tag(exp, "suite.study_yaml", study_to_yaml(cfg)[:4900])
    res = StudyResult(cfg.name)
    trained = [s for s in (Setting.finetune, Setting.scratch) if s in cfg.settings]
    pairs = len(cfg.models) * len(cfg.datasets)
    n_scratch = len({_scratch_group_guess(m) for m in cfg.models}) * len(cfg.datasets)
    grid = {Setting.finetune: 1 + len(cfg.finetune.lrs) * len(cfg.finetune.weight_decays),
            Setting.scratch: 1 + len(cfg.scratch.lrs) * len(cfg.scratch.weight_decays)}
    n_cells = (len(cfg.models) + (pairs if Setting.logistic in cfg.settings else 0)
               + (pairs * grid[Setting.finetune] if Setting.finetune in trained else 0)
               + (n_scratch * grid[Setting.scratch] if Setting.scratch in trained else 0))
    where = cfg.executor.value + (f", {cfg.jobs} jobs" if cfg.executor.value == "local" else "")
    console.print(f"study [bold]{cfg.name}[/]: {len(cfg.models)} models × "
                  f"{len(cfg.datasets)} datasets × {len(cfg.settings)} settings "
                  f"({n_cells} cells, {where}) → experiment {cfg.name!r} in "
                  f"{tracking.redact(tracking.current_uri())}")
    out = drive(cfg, executor, analysis=analysis)
    labels = {s.cell.label: s.cell for s in out.final}
    trained_labels = [lb for lb in out.ran if labels.get(lb) is None
                      or labels[lb].kind is not Kind.analysis]
    reused_here = [lb for lb in trained_labels
                   if isinstance(out.results.get(lb), tuple) and out.results[lb][0]]
    res.cells_run = len(set(trained_labels)) - len(set(reused_here))
    res.cells_reused = len([lb for lb in out.reused if labels[lb].kind is not Kind.analysis]) \
        + len(set(reused_here))
    for m, mv in model_versions(cfg, {c.cell.key for c in out.final
                                      if c.state.value == "done"}).items():
        res.versions[m] = (mv.name, str(mv.version))
    if "analysis" in out.results:
        res.analysis = out.results["analysis"][1]
    console.print(f"{res.cells_run} cells run, {res.cells_reused} reused from MLflow "
                  f"({time.perf_counter() - t0:.0f} s)")
    res.seconds = time.perf_counter() - t0
    console.print(f"study {cfg.name} finished in {res.seconds:.0f} s")
    return res
