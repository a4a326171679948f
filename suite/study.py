"""Stage orchestration: ``suite study run CONFIG``.

Reads: a :class:`~suite.config.StudyConfig` (YAML or preset). Writes, into the study's MLflow
experiment: one pretrain run + registered model version per model, one probe run per
(model, dataset), one fine-tune parent run (with a child per grid point) per (model, dataset),
one scratch parent run per (architecture, dataset), and one analysis run with the correlation
table, figures and report.

Scratch trains an architecture, not a checkpoint: models that share one
(:func:`suite.finetune.scratch_spec`: architecture, width/depth, input side and preprocessing;
not the training choices or epochs) share one scratch cell, run under their representative
(:func:`suite.finetune.scratch_representative`: a baseline, the highest source top-1) and
reported under it by the analysis.

Resumable by construction: every stage function looks its cell up in MLflow first
(``suite.cell`` tag on runs, on registered versions for pretraining) and reuses a FINISHED
result, so re-running a study skips what is done, never registers duplicates, and a killed study
loses only the cell in flight (marked KILLED/FAILED, never FINISHED).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from suite import tracking
from suite.config import (
    AnalysisConfig,
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
from suite.progress import console, make_progress


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
                       skip_corrupt=cfg.skip_corrupt)


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


def run_study(cfg: StudyConfig, analysis: bool = True) -> StudyResult:
    """Run every cell of the study that is not already complete in MLflow, then analyse."""
    from suite.probe import run_probe

    t0 = time.perf_counter()
    _validate_names(cfg)
    exp = tracking.experiment_id(cfg.name)
    tracking.client().set_experiment_tag(exp, "suite.study_yaml", study_to_yaml(cfg)[:4900])
    res = StudyResult(cfg.name)
    pairs = list(itertools.product(cfg.models, cfg.datasets))
    trained = [s for s in (Setting.finetune, Setting.scratch) if s in cfg.settings]
    n_scratch = len({_scratch_group_guess(m) for m in cfg.models}) * len(cfg.datasets)
    n_cells = (len(cfg.models) + (len(pairs) if Setting.logistic in cfg.settings else 0)
               + (len(pairs) if Setting.finetune in trained else 0)
               + (n_scratch if Setting.scratch in trained else 0))
    console.print(f"study [bold]{cfg.name}[/]: {len(cfg.models)} models × "
                  f"{len(cfg.datasets)} datasets × {len(cfg.settings)} settings "
                  f"({n_cells} cells) → experiment {cfg.name!r} in {tracking.current_uri()}")

    def done(reused: bool) -> None:
        if reused:
            res.cells_reused += 1
        else:
            res.cells_run += 1
        progress.advance(task)

    with make_progress(transient=False) as progress:
        task = progress.add_task(f"study {cfg.name}", total=n_cells)
        for model in cfg.models:
            progress.update(task, description=f"pretrain {model.name}")
            name, version, reused = _pretrain(cfg, model)
            res.versions[model.name] = (name, version)
            done(reused)
        if Setting.logistic in cfg.settings:
            for model, ds in pairs:
                name, version = res.versions[model.name]
                progress.update(task, description=f"probe {model.name} on {ds}")
                done(run_probe(make_probe_config(cfg, name, version, ds)).reused)
        scratch = _scratch_models(cfg, res.versions) if Setting.scratch in trained else []
        if scratch and len(scratch) * len(cfg.datasets) != n_scratch:  # the guess was off
            progress.update(task, total=n_cells - n_scratch + len(scratch) * len(cfg.datasets))
        for setting in trained:
            models = cfg.models if setting is Setting.finetune else scratch
            for model, ds in itertools.product(models, cfg.datasets):
                name, version = res.versions[model.name]
                progress.update(task, description=f"{setting.value} {model.name} on {ds}")
                done(_finetune(make_finetune_config(cfg, name, version, ds, setting),
                               cfg.launcher))
        progress.update(task, description=f"study {cfg.name}: training stages done")
    console.print(f"{res.cells_run} cells run, {res.cells_reused} reused from MLflow "
                  f"({time.perf_counter() - t0:.0f} s)")
    if analysis:
        from suite.analysis import run_analysis

        res.analysis = run_analysis(AnalysisConfig(study=cfg.name, n_resamples=cfg.n_resamples,
                                                   seed=cfg.seed))
    res.seconds = time.perf_counter() - t0
    console.print(f"study {cfg.name} finished in {res.seconds:.0f} s")
    return res
