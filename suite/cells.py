"""A study as a plan of cells with dependencies, and each cell's state in MLflow.

:func:`expand` turns a :class:`~suite.config.StudyConfig` into cells:

- ``pretrain`` per suite-trained model, ``register`` per ImageNet checkpoint (zoo);
- ``probe`` per (model, dataset), needing the model's cell;
- ``finetune-point`` per (model, dataset, lr, wd), needing the model's cell, and ``finetune``
  per (model, dataset): the selection over its grid (the parent run: chosen point, test
  accuracy, learning curves), needing its points;
- ``scratch-point`` and ``scratch`` likewise per (architecture, dataset), run under the
  architecture's representative (:func:`suite.study._scratch_models`), needing every model's
  cell (the representatives are chosen from the registered tags);
- ``analysis``, needing all of the above.

Grid points are cells so that the points of one grid train on different workers at once (the
paper's grids are 56 points per (model, dataset)). A point whose selection is done counts as
done, so studies whose grids ran as one cell keep their results.

A cell's **spec** is its stage config (:class:`~suite.config.PretrainConfig`,
:class:`~suite.config.ProbeConfig`, :class:`~suite.config.FinetuneConfig`); its **key** is the
stage's own resume key of that spec (:func:`suite.pretrain.pretrain_cell`,
:func:`suite.probe.probe_cell`, :func:`suite.finetune.point_cell`,
:func:`suite.finetune.finetune_cell`), so that the finished runs
and registered versions of studies run before cells existed are found as they are. The key
functions leave the resources out (device, DataLoader workers, data root, batch size of
inference); the executor, job count, partition and time limit are not in a spec at all
(:class:`~suite.config.StudyConfig` holds them only to say where cells run).

Keys downstream of a model depend on its registered version (the probe's and fine-tune's keys
name it; scratch's names the architecture read from its tags), so such a cell has no key
(``key == ""``, state ``blocked``) until the model's cell is done. The plan is re-expanded from
MLflow whenever it is needed: it has no state of its own.

:func:`states` reads every cell's state in a few queries: ``done`` (a FINISHED stage run or a
registered version with the key, or a FINISHED claim: the only record of ``register`` and
``analysis`` cells),
``running`` (a live claim, :mod:`suite.claims`), ``failed`` (the latest claim ended FAILED),
``pending`` (ready to run once its dependencies are done) or ``blocked`` (a dependency is not
done). A stale claim left RUNNING on a done cell (a worker killed after its stage ended, before
its claim did) is marked KILLED on the way, so that no run stays RUNNING.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum

from suite import claims, tracking
from suite.config import AnalysisConfig, ModelConfig, Setting, StudyConfig


class Kind(str, Enum):
    pretrain = "pretrain"
    register = "register"  # an ImageNet checkpoint registered from the zoo
    probe = "probe"
    finetune_point = "finetune-point"  # one (lr, wd) point of a fine-tune grid
    finetune = "finetune"  # the selection over a grid: the parent run
    scratch_point = "scratch-point"
    scratch = "scratch"
    analysis = "analysis"


KIND_ORDER = tuple(Kind)
POINT_KINDS = (Kind.finetune_point, Kind.scratch_point)


class State(str, Enum):
    done = "done"
    running = "running"
    pending = "pending"
    failed = "failed"
    blocked = "blocked"


@dataclass(frozen=True)
class Cell:
    kind: Kind
    label: str  # readable and unique in the study: "probe cnn-w4 on synth-shapes"
    key: str  # the suite.cell key; "" while a dependency is not done
    deps: tuple[str, ...]  # labels of the cells it needs
    spec: object = field(default=None, compare=False)  # the stage config (or ModelConfig)


@dataclass
class CellState:
    cell: Cell
    state: State
    claim: claims.ClaimInfo | None = None  # the latest claim, if any
    stale: str = ""  # why the latest RUNNING claim is stale


def _model_label(m: ModelConfig) -> str:
    kind = Kind.register if (m.weights or m.weights_file) else Kind.pretrain
    return f"{kind.value} {m.name}"


def _zoo_key(cfg: StudyConfig, m: ModelConfig) -> str:
    # What register_zoo is asked to register; its own version tag key also reads the weights'
    # metadata, which needs the checkpoint, so the plan keys the request.
    return tracking.cell_key(stage="register", study=cfg.name, arch=m.arch, weights=m.weights,
                             weights_file=m.weights_file, source_top1=m.source_top1)


def model_versions(cfg: StudyConfig, done_claims: set[str]) -> dict[str, object]:
    """The registered version of every model whose cell is done (model name -> ModelVersion)."""
    from suite.pretrain import pretrain_cell
    from suite.study import make_pretrain_config

    out: dict[str, object] = {}
    for m in cfg.models:
        name = tracking.registered_name(cfg.name, m.name)
        if m.weights or m.weights_file:
            if _zoo_key(cfg, m) not in done_claims:
                continue
            mv = _latest(name, cfg.name)
            if mv is not None:
                out[m.name] = mv
        else:
            pcfg = make_pretrain_config(cfg, m)
            key = pretrain_cell(pcfg)
            mv = tracking.find_version_by_cell(pcfg.registered_name or name, key)
            if mv is None and key in done_claims:  # registered without the cell tag
                mv = _latest(pcfg.registered_name or name, cfg.name)
            if mv is not None:
                out[m.name] = mv
    return out


def _latest(name: str, study: str):
    versions = [v for v in tracking.client().search_model_versions(f"name = '{name}'")
                if (v.tags or {}).get(tracking.TAG_STUDY) in (study, None)]
    return max(versions, key=lambda v: int(v.version)) if versions else None


def expand(cfg: StudyConfig, versions: dict[str, object] | None = None,
           done_claims: set[str] | None = None) -> list[Cell]:
    """The study's cells in run order (module docstring)."""
    from suite import data, features
    from suite.pretrain import pretrain_cell
    from suite.probe import probe_cell
    from suite.study import (
        make_finetune_config,
        make_pretrain_config,
        make_probe_config,
    )

    if done_claims is None:
        done_claims = {c.cell for c in claims.list_claims(cfg.name) if c.status == "FINISHED"}
    if versions is None:
        versions = model_versions(cfg, done_claims)
    out: list[Cell] = []
    for m in cfg.models:
        if m.weights or m.weights_file:
            out.append(Cell(Kind.register, _model_label(m), _zoo_key(cfg, m), (), m))
        else:
            pcfg = make_pretrain_config(cfg, m)
            out.append(Cell(Kind.pretrain, _model_label(m), pretrain_cell(pcfg), (), pcfg))
    pairs = list(itertools.product(cfg.models, cfg.datasets))
    infos = {ds: data.get_info(ds, cfg.data_root) for ds in cfg.datasets}
    if Setting.logistic in cfg.settings:
        for m, ds in pairs:
            mv, key, spec = versions.get(m.name), "", None
            if mv is not None:
                spec = make_probe_config(cfg, mv.name, str(mv.version), ds)
                key = probe_cell(spec, mv.name, str(mv.version),
                                 features.input_plan_id(mv, infos[ds]))
            out.append(Cell(Kind.probe, f"probe {m.name} on {ds}", key, (_model_label(m),),
                            spec))
    if Setting.finetune in cfg.settings:
        for m, ds in pairs:
            mv = versions.get(m.name)
            spec = (make_finetune_config(cfg, mv.name, str(mv.version), ds, Setting.finetune)
                    if mv is not None else None)
            out += _grid_cells(cfg, Setting.finetune, f"{m.name} on {ds}", ds, spec, mv,
                               (_model_label(m),))
    if Setting.scratch in cfg.settings:
        all_models = tuple(_model_label(m) for m in cfg.models)
        if len(versions) == len(cfg.models):
            from suite.study import _scratch_models

            pairs_v = {m.name: (mv.name, str(mv.version)) for m, mv in
                       ((m, versions[m.name]) for m in cfg.models)}
            for m in _scratch_models(cfg, pairs_v):
                mv = versions[m.name]
                for ds in cfg.datasets:
                    spec = make_finetune_config(cfg, mv.name, str(mv.version), ds,
                                                Setting.scratch)
                    out += _grid_cells(cfg, Setting.scratch, f"{m.name} on {ds}", ds, spec, mv,
                                       all_models)
        else:  # representatives unknown yet: one placeholder grid per dataset
            for ds in cfg.datasets:
                out += _grid_cells(cfg, Setting.scratch, f"on {ds}", ds, None, None, all_models)
    trained = tuple(c.label for c in out)
    keys = [c.key for c in out]
    akey = ""
    if all(keys):  # the points are implied by their selections' keys
        akey = tracking.cell_key(stage="analysis", study=cfg.name, n_resamples=cfg.n_resamples,
                                 seed=cfg.seed, cells=sorted(c.key for c in out
                                                             if c.kind not in POINT_KINDS))
    out.append(Cell(Kind.analysis, "analysis", akey, trained,
                    AnalysisConfig(study=cfg.name, n_resamples=cfg.n_resamples, seed=cfg.seed)))
    return out


def _grid_cells(cfg: StudyConfig, setting: Setting, what: str, dataset: str, spec, mv,
                deps: tuple[str, ...]) -> list[Cell]:
    """The point cells of one grid and the selection cell that needs them (keys empty while the
    model version is unknown)."""
    from suite.finetune import finetune_cell, grid_points, point_cell

    grid = cfg.finetune if setting is Setting.finetune else cfg.scratch
    kind = Kind.finetune if setting is Setting.finetune else Kind.scratch
    point_kind = Kind.finetune_point if setting is Setting.finetune else Kind.scratch_point
    specs = grid_points(spec) if spec is not None else [None] * (len(grid.lrs)
                                                                 * len(grid.weight_decays))
    values = itertools.product(grid.lrs, grid.weight_decays)
    points = [Cell(point_kind, f"{setting.value} {what} lr={lr:g} wd={wd:g}",
                   point_cell(p, mv) if p is not None else "", deps, p)
              for p, (lr, wd) in zip(specs, values)]
    sel = Cell(kind, f"{setting.value} {what}", finetune_cell(spec, mv) if spec else "",
               tuple(c.label for c in points), spec)
    return [*points, sel]


def states(cfg: StudyConfig, since: float | None = None) -> list[CellState]:
    """Every cell of the study with its state (module docstring). A claim that FAILED before
    ``since`` (Unix seconds: when the asking driver started) counts as pending, so a rerun
    retries what failed in an earlier run but not what failed in its own."""
    all_claims = claims.list_claims(cfg.name)
    done_claims = {c.cell for c in all_claims if c.status == "FINISHED"}
    plan = expand(cfg, done_claims=done_claims)
    latest: dict[str, claims.ClaimInfo] = {}
    running: dict[str, list[claims.ClaimInfo]] = {}
    for c in all_claims:  # oldest first: the last one seen is the latest
        if c.status == "RUNNING":
            running.setdefault(c.cell, []).append(c)
        elif c.status != "KILLED" or c.cell not in latest:
            latest[c.cell] = c
    finished_runs = {r.data.tags.get(tracking.TAG_CELL) for r in tracking.client().search_runs(
        [tracking.experiment_id(cfg.name)],
        filter_string="attributes.status = 'FINISHED'", max_results=50000)}
    from suite.pretrain import registered_name_of

    now = time.time()
    done = {c.label for c in plan
            if c.key and _is_done(c, finished_runs, done_claims, registered_name_of)}
    # A grid point is not needed once its selection is done (a study whose grids ran as one
    # cell each, before points were cells of their own, has no point runs with their keys).
    done |= {d for c in plan if c.kind in (Kind.finetune, Kind.scratch) and c.label in done
             for d in c.deps}
    by_label: dict[str, CellState] = {}
    out: list[CellState] = []
    for cell in plan:
        st = CellState(cell, State.pending, latest.get(cell.key))
        if not cell.key:
            st.state = State.blocked
        elif cell.label in done:
            st.state = State.done
            # A worker killed between its stage's end and its claim's leaves a RUNNING claim
            # on a done cell that nobody would take over: close it here.
            for c in running.get(cell.key, []):
                if why := claims.stale_reason(c, now):
                    claims.kill_stale(cfg.name, c, why)
        else:
            live = [(c, claims.stale_reason(c, now)) for c in running.get(cell.key, [])]
            alive = [c for c, why in live if not why]
            if alive:
                st.state, st.claim = State.running, alive[0]
            elif live:
                st.claim, st.stale = live[-1][0], live[-1][1]
            elif (st.claim is not None and st.claim.status == "FAILED"
                  and (since is None or st.claim.end_time / 1000.0 >= since)):
                st.state = State.failed
            if st.state is State.pending and any(
                    by_label[d].state is not State.done for d in cell.deps if d in by_label):
                st.state = State.blocked
        by_label[cell.label] = st
        out.append(st)
    return out


def _is_done(cell: Cell, finished_runs: set, done_claims: set[str], registered_name_of) -> bool:
    if cell.key in done_claims:
        return True
    if cell.kind is Kind.pretrain:
        return tracking.find_version_by_cell(registered_name_of(cell.spec), cell.key) is not None
    return cell.key in finished_runs


__all__ = ["Cell", "CellState", "Kind", "State", "expand", "model_versions", "states"]
