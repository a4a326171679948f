"""The ``suite`` command line: a thin shell over the stage functions.

Each command parses options, builds a frozen config, calls one ``run_*`` function and returns an
exit code. Shared options (workspace, tracking URI) live in the callback. User errors
(:class:`suite.errors.SuiteError`) print one paragraph and exit with code 2.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, List, Optional

import click
import typer

from suite.config import Decoder, Executor, Launcher, ProbeBackend, ProbeSearch, Setting
from suite.errors import EXIT_USER_ERROR, SuiteError

app = typer.Typer(
    help="Do better ImageNet models transfer better? Run transfer studies on MLflow.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
study_app = typer.Typer(help="Run a whole study (models × datasets × settings).",
                        no_args_is_help=True)
zoo_app = typer.Typer(help="Pretrained ImageNet checkpoints (torchvision, timm).",
                      no_args_is_help=True)
data_app = typer.Typer(help="Target datasets: list what is present, fetch explicitly.",
                       no_args_is_help=True)
bench_app = typer.Typer(help="Side-by-side benchmarks (ratios in one run).", no_args_is_help=True)
server_app = typer.Typer(help="The workspace's MLflow tracking server (shared by many workers).",
                         no_args_is_help=True)
app.add_typer(study_app, name="study")
app.add_typer(zoo_app, name="zoo")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(server_app, name="server")

_OPTS: dict[str, Optional[str]] = {"workspace": None, "tracking_uri": None}

WORKSPACE_HELP = ("Folder for the embedded MLflow store, artifacts, feature cache and reports "
                  "(env SUITE_WORKSPACE; default ./suite-workspace).")


@app.callback()
def _root(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (a server, PostgreSQL...); wins over "
        "the embedded store (env MLFLOW_TRACKING_URI)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    _OPTS["workspace"] = str(workspace) if workspace else None
    _OPTS["tracking_uri"] = tracking_uri
    if quiet:
        os.environ["SUITE_PROGRESS"] = "0"


def _tracking():
    """Configure MLflow from the shared options (store created/migrated once, here)."""
    from suite import tracking

    return tracking.configure(_OPTS["workspace"], _OPTS["tracking_uri"])


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SuiteError(f"{what} must be comma-separated numbers, got {text!r}.",
                         "For example: --lrs 0.01,0.1") from None
    if not values:
        raise SuiteError(f"{what} is empty.", "Give at least one value, e.g. 0.01.")
    return values


_REUSED = " \\[reused]"  # escaped: rich would read [reused] as markup


def _bool(text: str, what: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off"):
        return False
    raise SuiteError(f"{what} must be true or false, got {text!r}.", f"For example: {what} false")


# ---------------------------------------------------------------------------------------------
# study


@study_app.command("run")
def study_run(
    config: Optional[str] = typer.Argument(
        None, help="YAML study file or preset name (suite study list); default: mini."),
    device: Optional[str] = typer.Option(None, help="Override the study's device (auto, cpu, "
                                         "cuda, cuda:1)."),
    launcher: Optional[Launcher] = typer.Option(
        None, help="inprocess: call stages directly; project: one MLflow Project run per "
        "pretrain/fine-tune cell."),
    data_root: Optional[str] = typer.Option(
        None, "--data-root", help="Override the study's data root (where `suite data fetch "
        "NAME --root R` put the datasets)."),
    skip_analysis: bool = typer.Option(False, help="Stop after the training stages."),
    skip_corrupt: bool = typer.Option(
        False, "--skip-corrupt", help="Every stage leaves out unreadable image files (listed "
        "in each run's skipped_images/ artifact) instead of failing on the first one."),
    executor: Optional[Executor] = typer.Option(
        None, help="Where cells run: inprocess (this process, one at a time; the default), "
        "local (--jobs worker processes), slurm (one SLURM job per cell)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1,
                                       help="local: worker processes (one GPU each)."),
    max_concurrent: Optional[int] = typer.Option(
        None, "--max-concurrent", min=0, help="slurm: jobs queued or running at once."),
) -> None:
    """Run a study end to end: pretrain → probe → fine-tune/scratch → analysis.

    Resumable: every cell already FINISHED in MLflow is skipped, registered models are never
    duplicated, and a killed run loses no completed cell. Ends with the correlation table and
    the command to open the MLflow UI.
    """
    from suite.config import load_study, replace
    from suite.study import run_study

    cfg = load_study(config)
    if device:
        cfg = replace(cfg, device=device)
    if launcher:
        cfg = replace(cfg, launcher=launcher)
    if data_root:
        cfg = replace(cfg, data_root=str(Path(data_root).expanduser().resolve()))
    if skip_corrupt:
        cfg = replace(cfg, skip_corrupt=True)
    for opt, value in (("executor", executor), ("jobs", jobs), ("max_concurrent", max_concurrent)):
        if value is not None:
            cfg = replace(cfg, **{opt: value})
    tr = _tracking()
    run_study(cfg, analysis=not skip_analysis)
    ws = f" --workspace {tr.workspace}" if tr.embedded else ""
    from suite.progress import console

    console.print(f"\nReview the study in the MLflow UI:  [bold]suite{ws} ui[/]  "
                  "(then open http://127.0.0.1:5000)")


@study_app.command("work")
def study_work(
    config: str = typer.Argument(..., help="YAML study file (as the driver wrote it)."),
    cell: str = typer.Option(..., "--cell", help="The cell's key (suite.cell)."),
) -> None:
    """Run one cell of a study (what every executor's workers run): claim it, run its stage.

    Exits 0 when the cell is done (or was already), 3 when another live worker holds it.
    """
    from suite.claims import ClaimLost
    from suite.config import load_study
    from suite.study import run_cell, work_cell

    cfg = load_study(config)
    _tracking()
    target = work_cell(cfg, cell)
    try:
        run_cell(cfg, target)
    except ClaimLost as e:
        typer.echo(f"{target.label}: held by {e.owner}; backing off", err=True)
        raise typer.Exit(3) from None


@study_app.command("status")
def study_status(
    config: Optional[str] = typer.Argument(None, help="YAML study file or preset name."),
    data_root: Optional[str] = typer.Option(None, "--data-root",
                                            help="The study's data root, if overridden."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per stage: how many cells are done, running, pending, failed; the failed cells' errors;
    the running cells' workers (SLURM job ids)."""
    import json

    from suite.config import load_study, replace
    from suite.study import format_status, study_status as status_of

    cfg = load_study(config)
    if data_root:
        cfg = replace(cfg, data_root=str(Path(data_root).expanduser().resolve()))
    _tracking()
    report = status_of(cfg)
    typer.echo(json.dumps(report, indent=2) if as_json else format_status(report))


@study_app.command("show")
def study_show(config: Optional[str] = typer.Argument(None, help="YAML file or preset name.")):
    """Print a study's full configuration (defaults filled in) as YAML."""
    from suite.config import load_study, study_to_yaml

    typer.echo(study_to_yaml(load_study(config)), nl=False)


@study_app.command("list")
def study_list() -> None:
    """List the built-in study presets."""
    from suite.config import PRESETS_DIR, list_presets

    for name in list_presets():
        doc = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()
        first = next((ln.lstrip("# ").strip() for ln in doc if ln.startswith("#")), "")
        typer.echo(f"{name:12s} {first}")


# ---------------------------------------------------------------------------------------------
# stages


# Options shared by the stage commands (one declaration, one help text).
StudyOpt = Annotated[str, typer.Option(help="Study (= MLflow experiment).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (splits, initialisation, batches).")]
ValFractionOpt = Annotated[float, typer.Option(
    help="Held out of train when the dataset has no validation split.")]
ExtractBatchOpt = Annotated[int, typer.Option(help="Feature-extraction batch size.")]
DataRootOpt = Annotated[str, typer.Option(
    help="Root of on-disk datasets (where `suite data fetch NAME --root R` put them).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
WorkersOpt = Annotated[int, typer.Option(
    help="DataLoader workers for on-disk datasets; -1: one per CPU core but one (at most 16).")]
SkipCorruptOpt = Annotated[bool, typer.Option(
    "--skip-corrupt/--no-skip-corrupt",
    help="Check every image file first and leave out the unreadable ones, listed in the log "
    "and in the run's skipped_images/ artifact; by default an unreadable image is an error "
    "naming it.")]
ModelArg = Annotated[str, typer.Argument(help="Registered model name.")]
DatasetArg = Annotated[str, typer.Argument(
    help="Target dataset (suite data list) or folder:PATH.")]
VersionOpt = Annotated[str, typer.Option(help="Model version, alias, or 'latest'.")]


@app.command()
def pretrain(
    name: str = typer.Option(..., help="Model name; registered as <study>-<name> unless "
                             "--registered-name is given."),
    study: StudyOpt = "default",
    arch: str = typer.Option("cnn", help="'cnn' or a torchvision architecture (suite zoo list)."),
    width: int = typer.Option(16, help="cnn: channels of the first stage."),
    depth: int = typer.Option(1, help="cnn: conv blocks per stage."),
    bn_scale: str = typer.Option("true", "--bn-scale", help="Learn batch-norm γ (true/false)."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing ε."),
    dropout: float = typer.Option(0.0, help="Dropout before the classifier."),
    aux_head: str = typer.Option("false", "--aux-head",
                                 help="Auxiliary classifier head (true/false)."),
    epochs: int = typer.Option(4, help="Source-task epochs."),
    source: str = typer.Option("synth-source", help="Source dataset (suite data list)."),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1, help="Peak SGD learning rate (Nesterov, cosine decay)."),
    weight_decay: float = typer.Option(5e-4),
    seed: SeedOpt = 0,
    registered_name: str = typer.Option("", help="Registry name (default <study>-<name>)."),
    data_root: DataRootOpt = "",
    device: DeviceOpt = "auto",
    num_workers: WorkersOpt = -1,
    skip_corrupt: SkipCorruptOpt = False,
    local: bool = typer.Option(False, "--local", help="Run in this process instead of "
                               "launching projects/pretrain as an MLflow Project."),
) -> None:
    """Train a model on the source task, log it, and register it in the Model Registry.

    An identical configuration already registered in the study is reused, not retrained.
    """
    from suite.config import ModelConfig, PretrainConfig

    model = ModelConfig(name=name, arch=arch, width=width, depth=depth,
                        bn_scale=_bool(bn_scale, "--bn-scale"),
                        label_smoothing=label_smoothing, dropout=dropout,
                        aux_head=_bool(aux_head, "--aux-head"),
                        epochs=epochs)
    cfg = PretrainConfig(model=model, source=source, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, seed=seed, registered_name=registered_name,
                         study=study, data_root=data_root, device=device,
                         num_workers=num_workers, skip_corrupt=skip_corrupt)
    _tracking()
    from suite.progress import console

    if not local:
        from suite.launch import launch_pretrain

        name, version, reused = launch_pretrain(cfg)
        console.print(f"{'reused' if reused else 'registered'} {name} v{version} "
                      "(MLflow Project projects/pretrain)")
        return
    from suite.pretrain import run_pretrain

    res = run_pretrain(cfg)
    state = "reused" if res.reused else "registered"
    console.print(f"{state} {res.registered_name} v{res.version}: source top-1 "
                  f"{res.source_top1:.2f}% (run {res.run_id})")


@app.command()
def finetune(
    model: ModelArg,
    dataset: DatasetArg,
    setting: Setting = typer.Option(Setting.finetune, help="finetune: from the checkpoint; "
                                    "scratch: same architecture from random init."),
    version: VersionOpt = "latest",
    study: StudyOpt = "default",
    lrs: str = typer.Option("0.01,0.1", help="Learning-rate grid, comma-separated."),
    wds: str = typer.Option("0.0001", help="Weight-decay grid, comma-separated."),
    steps: int = typer.Option(300, help="Optimisation steps per grid point."),
    batch_size: int = typer.Option(64),
    eval_every: int = typer.Option(50, help="Steps between validation evaluations."),
    seed: SeedOpt = 0,
    data_root: DataRootOpt = "",
    device: DeviceOpt = "auto",
    num_workers: WorkersOpt = -1,
    skip_corrupt: SkipCorruptOpt = False,
    local: bool = typer.Option(False, "--local", help="Run in this process instead of "
                               "launching projects/finetune as an MLflow Project."),
    point: bool = typer.Option(False, "--point", help="Train one grid point only (one --lrs "
                               "value, one --wds value), without the selection."),
) -> None:
    """Fine-tune (or train from scratch) over an lr × weight-decay grid; select on validation.

    Each grid point is a run of its own, nested under the selection's parent run; a point or a
    grid already FINISHED in the study (same model version, dataset, grid) is reused.
    """
    from suite.config import FinetuneConfig

    cfg = FinetuneConfig(model_name=model, dataset=dataset, model_version=version,
                         setting=setting, lrs=_floats(lrs, "--lrs"),
                         weight_decays=_floats(wds, "--wds"), steps=steps,
                         batch_size=batch_size, eval_every=eval_every, seed=seed, study=study,
                         data_root=data_root, device=device, num_workers=num_workers,
                         skip_corrupt=skip_corrupt)
    _tracking()
    from suite.progress import console

    if point:
        from suite.finetune import run_point

        if not local:
            from suite.launch import launch_point

            console.print(f"{setting.value} point run {launch_point(cfg)} (MLflow Project "
                          "projects/finetune, entry point point)")
            return
        p = run_point(cfg)
        console.print(f"{setting.value} {model} on {dataset} lr {p.lr:g} wd {p.wd:g}: val "
                      f"{p.val_accuracy:.2f}%, test {p.test_accuracy:.2f}%")
        return
    if not local:
        from suite.launch import launch_finetune

        run_id, reused = launch_finetune(cfg)
        console.print(f"{setting.value} run {run_id} (MLflow Project projects/finetune)"
                      f"{_REUSED if reused else ''}")
        return
    from suite.finetune import run_finetune

    res = run_finetune(cfg)
    console.print(f"{setting.value} {model} on {dataset}: test {res.test_accuracy:.2f}% "
                  f"(val {res.val_accuracy:.2f}%, lr {res.selected_lr:g}, wd "
                  f"{res.selected_wd:g}){_REUSED if res.reused else ''}")


@app.command()
def probe(
    model: ModelArg,
    dataset: DatasetArg,
    version: VersionOpt = "latest",
    study: StudyOpt = "default",
    backend: ProbeBackend = typer.Option(ProbeBackend.auto, help="Solver backend."),
    search: ProbeSearch = typer.Option(
        ProbeSearch.exhaustive, help="exhaustive: fit and score all l2 values (the paper's "
        "sweep); adaptive: an approximation that stops past the validation peak and can select "
        "a worse value."),
    val_fraction: ValFractionOpt = 0.2,
    seed: SeedOpt = 0,
    data_root: DataRootOpt = "",
    device: DeviceOpt = "auto",
    batch_size: ExtractBatchOpt = 256,
    num_workers: WorkersOpt = -1,
    decode: Decoder = typer.Option(
        Decoder.auto, help="Where extraction decodes JPEGs: pil or torchvision in the workers, "
        "or device (batched nvJPEG on CUDA); auto = device on CUDA when the model's transform "
        "takes tensors, else pil."),
    skip_corrupt: SkipCorruptOpt = False,
) -> None:
    """Fixed-feature logistic regression over the paper's 45 l2 values (cached features)."""
    from suite.config import ProbeConfig
    from suite.probe import run_probe
    from suite.progress import console

    cfg = ProbeConfig(model_name=model, dataset=dataset, model_version=version, backend=backend,
                      search=search, val_fraction=val_fraction, seed=seed, study=study,
                      data_root=data_root, device=device, batch_size=batch_size,
                      num_workers=num_workers, decode=decode, skip_corrupt=skip_corrupt)
    _tracking()
    res = run_probe(cfg)
    console.print(f"logistic {model} on {dataset}: test {res.test_accuracy:.2f}% "
                  f"(val {res.val_accuracy:.2f}%, l2 {res.selected_l2:.3g})"
                  f"{_REUSED if res.reused else ''}")


@app.command()
def estimate(
    model: ModelArg,
    dataset: DatasetArg,
    version: VersionOpt = "latest",
    estimator: Optional[List[str]] = typer.Option(
        None, help="Estimators to score (repeatable); default all: logme, leep, nce, hscore, "
        "hscore_shrinkage, nleep, gbc, sfda, transrate."),
    split: str = typer.Option("train", help="Split to score (the literature scores train)."),
    val_fraction: ValFractionOpt = 0.2,
    seed: SeedOpt = 0,
    data_root: DataRootOpt = "",
    device: DeviceOpt = "auto",
    batch_size: ExtractBatchOpt = 256,
    num_workers: WorkersOpt = -1,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the scores as JSON."),
) -> None:
    """Transferability estimators of one registered model on one dataset (cached features;
    higher = better); nothing is logged to MLflow."""
    import json

    from rich.table import Table

    from suite import data, features, tracking
    from suite.config import ESTIMATOR_NAMES
    from suite.estimators import ESTIMATORS, check_names
    from suite.probe.estimate import score_split
    from suite.progress import console, resolve_device

    names = check_names(estimator or ESTIMATOR_NAMES)
    _tracking()
    mv = tracking.get_version(model, version)
    info = data.get_info(dataset, data_root)
    dev = resolve_device(device)
    x, y = features.extract(mv, info.name, split, root=data_root, device=dev,
                            batch_size=batch_size, num_workers=num_workers, seed=seed,
                            val_fraction=val_fraction)
    scores = score_split(mv, info.name, x, y, names, root=data_root, device=dev, seed=seed,
                         val_fraction=val_fraction, split=split)
    t = Table(title=f"{mv.name} v{mv.version} on {info.name}/{split}: {len(x)} examples, "
                    f"{x.shape[1]} features (higher = better)", title_justify="left")
    for col in ("estimator", "value", "seconds"):
        t.add_column(col, justify="left" if col == "estimator" else "right")
    for name in names:
        if name in scores.values:
            v, sec = scores.values[name]
            t.add_row(ESTIMATORS[name].title + f" ({name})", f"{v:.6g}", f"{sec:.3f}")
        else:
            t.add_row(ESTIMATORS[name].title + f" ({name})", "–", "skipped")
    console.print(t)
    for name, why in scores.skipped.items():
        console.print(f"  {name}: {why}", highlight=False, markup=False)
    if json_out is not None:
        json_out.write_text(json.dumps({
            "model": mv.name, "version": str(mv.version), "dataset": info.name, "split": split,
            "n": int(len(x)), "d": int(x.shape[1]),
            "estimators": {k: {"value": v, "seconds": sec}
                           for k, (v, sec) in scores.values.items()},
            "skipped": scores.skipped}, indent=1))


@app.command()
def analyze(
    study: str = typer.Option("mini", help="Study (= MLflow experiment) to analyse."),
    from_csv: Optional[Path] = typer.Option(
        None, help="Analyse a table with columns model,source_top1,dataset,setting,accuracy "
        "(percent) instead of a study."),
    to_csv: Optional[Path] = typer.Option(None, help="Write the study's tidy table here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every number as JSON."),
    setting: Optional[List[str]] = typer.Option(None, help="Only these settings (repeatable)."),
    tsne: Optional[str] = typer.Option(None, help="Two registered model names 'A,B' for the "
                                       "t-SNE figure (from the feature cache)."),
    resamples: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0),
    out_dir: str = typer.Option("", help="Report folder (default <workspace>/reports/<study>)."),
    two_way: bool = typer.Option(False, "--two-way", help="Aggregate CIs resample models AND "
                                 "datasets (the two-way structure)."),
    log: bool = typer.Option(True, "--log/--no-log", help="Log an analysis run to MLflow."),
) -> None:
    """Correlations (log-odds), bootstrap CIs, figures and an HTML report, from MLflow or CSV."""
    from suite.analysis import run_analysis
    from suite.config import AnalysisConfig

    cfg = AnalysisConfig(study=study, n_resamples=resamples, seed=seed, out_dir=out_dir)
    _tracking()
    run_analysis(cfg, from_csv=from_csv, to_csv=to_csv, json_out=json_out,
                 settings=setting or None,
                 tsne_models=tuple(tsne.split(",")) if tsne else None, log=log,
                 two_way=two_way)


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
    port: int = typer.Option(5000),
) -> None:
    """Open the MLflow UI on this workspace's store (bound to 127.0.0.1)."""
    import subprocess

    tr = _tracking()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tr.tracking_uri,
           "--host", host, "--port", str(port)]
    if tr.artifact_root:
        cmd += ["--default-artifact-root", tr.artifact_root]
    from suite.progress import console

    console.print(f"MLflow UI on http://{host}:{port}  (store {tr.tracking_uri}); Ctrl-C stops")
    try:
        raise typer.Exit(subprocess.call(cmd))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


# ---------------------------------------------------------------------------------------------
# server


def _workspace() -> Path:
    from suite.tracking import resolve_workspace

    return resolve_workspace(_OPTS["workspace"])


@server_app.command("start")
def server_start(
    backend_store_uri: Optional[str] = typer.Option(
        None, "--backend-store-uri", help="postgresql://USER[:PASSWORD]@HOST:PORT/DB (the "
        "database must exist), or any MLflow database URI; default: the workspace's SQLite "
        "file (one machine only)."),
    host: str = typer.Option("127.0.0.1", help="Bind address. The server has no "
                             "authentication: bind elsewhere only on a trusted network."),
    port: int = typer.Option(5000, help="Port."),
    workers: int = typer.Option(4, help="uvicorn worker processes."),
    allowed_hosts: Optional[str] = typer.Option(
        None, "--allowed-hosts", help="Host headers the server accepts, comma-separated "
        "(mlflow server --allowed-hosts); MLflow's default: localhost and private IP "
        "addresses. Needed when workers reach the server by host name."),
    timeout: float = typer.Option(180.0, help="Seconds to wait for the store's migration and "
                                  "/health."),
) -> None:
    """Start `mlflow server` for this workspace in the background (artifacts proxied into
    <workspace>/mlflow-artifacts) and print the MLFLOW_TRACKING_URI to export."""
    from suite import server

    if host not in server.LOOPBACK:
        typer.echo(f"warning: binding {host}:{port}: the MLflow server has no authentication, "
                   "so anyone who reaches this port can read, change and delete every run and "
                   "model. Use it only on a trusted network; see docs/scaleout.md (basic-auth).",
                   err=True)
    state, started = server.start_server(_workspace(), backend_store_uri, host=host, port=port,
                                         workers=workers, allowed_hosts=allowed_hosts,
                                         timeout=timeout)
    verb = "started" if started else "already running"
    typer.echo(f"MLflow server {verb} (pid {state.pid}) on {state.url}\n"
               f"  store:     {state.backend_store}\n"
               f"  artifacts: {state.artifacts} (proxied by the server)\n"
               f"  log:       {state.log}\n"
               "Point suite and every worker at it:\n"
               f"export MLFLOW_TRACKING_URI={state.url}")


@server_app.command("status")
def server_status_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Running, stopped or stale; the URL, pid, store, and whether /health answers.
    Exit code 0 when running and healthy, 1 when running but not answering, 3 otherwise."""
    import json

    from suite import server

    st = server.server_status(_workspace())
    if json_out:
        typer.echo(json.dumps(st.to_json(), indent=2))
    elif st.state == "stopped":
        typer.echo(f"stopped: no server recorded for the workspace {st.workspace}")
    elif st.state == "stale":
        typer.echo(f"stale: the server recorded for {st.workspace} (pid {st.server.pid}, "
                   f"{st.server.url}) is gone; its state file was removed")
    else:
        s = st.server
        typer.echo(f"running ({'healthy' if st.healthy else '/health does not answer'})\n"
                   f"  url:       {s.url}\n  pid:       {s.pid}\n"
                   f"  store:     {s.backend_store}\n  artifacts: {s.artifacts}\n"
                   f"  log:       {s.log}")
    raise typer.Exit(0 if st.healthy else 1 if st.state == "running" else 3)


@server_app.command("stop")
def server_stop(
    timeout: float = typer.Option(10.0, help="Seconds between SIGTERM and SIGKILL."),
) -> None:
    """Stop the workspace's server (SIGTERM, then SIGKILL) and remove its state file."""
    from suite import server

    st = server.stop_server(_workspace(), grace=timeout)
    if st.state == "running":
        typer.echo(f"stopped the MLflow server (pid {st.server.pid}, {st.server.url})")
    elif st.state == "stale":
        typer.echo(f"the server recorded (pid {st.server.pid}) was already gone; removed its "
                   "stale state file")
    else:
        typer.echo(f"no server was running for the workspace {st.workspace}")


# ---------------------------------------------------------------------------------------------
# zoo / data / bench


@zoo_app.command("list")
def zoo_list(
    paper: bool = typer.Option(False, "--paper", help="Only the paper's 16 architectures."),
) -> None:
    """Every torchvision ImageNet architecture: top-1/top-5, resolution; paper archs marked."""
    from rich.table import Table

    from suite.models.zoo import list_zoo

    rows = list_zoo()
    if paper:
        rows = [r for r in rows if r.get("paper")]
    table = Table(title=f"{len(rows)} ImageNet checkpoints")
    cols = ["name", "weights", "acc@1", "acc@5", "params_m", "resolution", "paper", "source"]
    for c in cols:
        table.add_column(c, justify="right" if c.startswith(("acc", "params", "res")) else "left")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in cols])
    from rich.console import Console

    Console().print(table)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "✓" if v else ""
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


@zoo_app.command("register")
def zoo_register(
    name: str = typer.Argument(..., help="Architecture (suite zoo list); ARCH:WEIGHTS picks "
                               "specific weights, e.g. resnet50:IMAGENET1K_V1; "
                               "py:MODULE:FACTORY[?key=value] builds a network of your own."),
    weights_file: Optional[Path] = typer.Option(None, help="Checkpoint file (state_dict) to use "
                                                "instead of torchvision's cache/download."),
    source_top1: Optional[float] = typer.Option(None, help="ImageNet top-1 (percent) of a "
                                                "checkpoint of your own."),
    registered_name: Optional[str] = typer.Option(None, help="Registry name (default tv-NAME, "
                                                  "timm-NAME, py-FACTORY)."),
    study: str = typer.Option("zoo", help="Experiment of the registration run."),
    feature_layer: Optional[str] = typer.Option(
        None, help="py: only. The penultimate layer (its output, flattened, are the features); "
        "default: the factory's choice, else the input of the last nn.Linear."),
    input_size: Optional[int] = typer.Option(None, help="py: only. Centre-crop side (224)."),
    resize: Optional[int] = typer.Option(None, help="py: only. Shorter side before the crop "
                                         "(default input-size × 256/224)."),
    mean: Optional[str] = typer.Option(None, help="py: only. Normalisation mean, R,G,B "
                                       "(ImageNet's 0.485,0.456,0.406)."),
    std: Optional[str] = typer.Option(None, help="py: only. Normalisation std, R,G,B "
                                      "(ImageNet's 0.229,0.224,0.225)."),
    interpolation: Optional[str] = typer.Option(None, help="py: only. Resize interpolation: "
                                                "nearest, bilinear (default) or bicubic."),
) -> None:
    """Register an ImageNet checkpoint in the Model Registry with its tags."""
    from suite.models.zoo import register_zoo
    from suite.progress import console

    _tracking()
    mv = register_zoo(name, weights_file=weights_file, source_top1=source_top1,
                      registered_name=registered_name, study=study,
                      feature_layer=feature_layer, input_size=input_size, resize=resize,
                      mean=mean, std=std, interpolation=interpolation)
    console.print(f"registered {mv.name} v{mv.version} "
                  f"(source top-1 {mv.tags.get('source_top1', '?')}%)")


@data_app.command("list")
def data_list(root: str = typer.Option("", help="Data root of the on-disk datasets.")) -> None:
    """Each dataset: present under the root?, classes, sizes, metric."""
    from rich.console import Console
    from rich.table import Table

    from suite.data import list_datasets

    rows = list_datasets(root)
    table = Table(title=f"datasets (root: {root or '-'})")
    cols = ["name", "kind", "present", "classes", "train", "val", "test", "metric",
            "description"]
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in cols])
    Console().print(table)


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="Dataset name (suite data list)."),
    root: str = typer.Option(..., help="Data root to download into."),
) -> None:
    """Download a dataset through torchvision (the only command that downloads data)."""
    from suite.data import fetch
    from suite.progress import console

    fetch(name, root)
    console.print(f"{name} is ready under {root}")


@bench_app.command("probe")
def bench_probe(
    features: Optional[Path] = typer.Option(
        None, help=".npz with x_train,y_train,x_val,y_val,x_test,y_test (e.g. a study's)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON."),
    backend: Optional[List[str]] = typer.Option(
        None, help="Backends to run (repeatable): cpu, cuda, reference, sklearn, torch_lbfgs, "
        "cpu-adaptive / cuda-adaptive (the adaptive search, an approximation)."),
    quick: bool = typer.Option(False, help="Small sizes only (seconds)."),
    seed: int = typer.Option(0),
) -> None:
    """Full probe protocol: our solvers vs scikit-learn vs naive torch L-BFGS, side by side."""
    from suite.probe.bench import run_bench

    run_bench(features_file=features, json_out=json_out, backends=backend or None,
              quick=quick, seed=seed)


@bench_app.command("features")
def bench_features(
    arch: str = typer.Option("resnet18", help="Architecture (random weights)."),
    batch_size: int = typer.Option(64),
    n_images: int = typer.Option(512),
    device: str = typer.Option("auto"),
    n_files: int = typer.Option(
        0, help="Also extract from this many JPEG files on disk with each decoder (pil, "
        "torchvision, device); 0 skips it."),
    num_workers: WorkersOpt = -1,
) -> None:
    """Extraction images/s vs pure forward throughput, and JPEG decode throughput."""
    import json

    from suite.features import bench_features as _bench
    from suite.progress import resolve_device

    res = _bench(arch, batch_size=batch_size, n_images=n_images, device=resolve_device(device),
                 n_files=n_files, num_workers=num_workers)
    typer.echo(json.dumps(res, indent=2, default=str))


@bench_app.command("estimators")
def bench_estimators(
    size: Optional[List[str]] = typer.Option(
        None, help="N,D,CLASSES (repeatable); default the paper's shapes 50000,2048,100 and "
        "5000,2048,100."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON."),
    device: str = typer.Option("cpu", help="Where the estimators and the probe run."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Also time the full probe "
                               "protocol on the same features (the ratio's baseline)."),
    estimator: Optional[List[str]] = typer.Option(None, help="Only these (repeatable)."),
    repeat: int = typer.Option(3, help="Runs per estimator; the fastest is kept."),
    seed: int = typer.Option(0),
) -> None:
    """Each estimator's seconds beside the full probe protocol, and LogME vs a NumPy port of
    its reference algorithm, on the same features in one run."""
    from suite.estimators.bench import run_bench

    sizes = None
    if size:
        try:
            sizes = [tuple(int(v) for v in s.split(",")) for s in size]
        except ValueError:
            raise SuiteError(f"--size must be N,D,CLASSES, got {size!r}.",
                             "For example: --size 5000,2048,100") from None
        if any(len(s) != 3 or min(s) < 2 for s in sizes):
            raise SuiteError(f"--size must be N,D,CLASSES (each at least 2), got {size!r}.",
                             "For example: --size 5000,2048,100")
    run_bench(sizes, device=device, json_out=json_out, seed=seed, probe=probe,
              names=estimator or None, repeat=repeat)


@bench_app.command("analysis")
def bench_analysis(resamples: int = typer.Option(10000)) -> None:
    """Bootstrap over 16 models × 12 datasets × 3 settings (target ≤ 5 s on 2 cores)."""
    import json

    from suite.analysis.stats import bench_bootstrap

    typer.echo(json.dumps(bench_bootstrap(n_resamples=resamples), indent=2, default=str))


# ---------------------------------------------------------------------------------------------


def _quiet_libraries() -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _print_error(e: SuiteError) -> int:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e.message}",
                                               highlight=False, markup=True)
    return EXIT_USER_ERROR


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: run the app, turning user errors into one paragraph and exit code 2."""
    _quiet_libraries()
    try:
        rv = app(args=argv, prog_name="suite", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        return 130
    except SuiteError as e:
        return _print_error(e)
    except KeyboardInterrupt:
        rv = 130
    except Exception as e:
        # The one place where a tracking server that went away mid-command becomes a user
        # error naming the server (every stage's MLflow calls end up here).
        from suite.tracking import server_error

        err = server_error(e)
        if err is None:
            raise
        return _print_error(err)
    if rv == 130:  # typer turns Ctrl-C into exit code 130
        from rich.console import Console

        Console(stderr=True).print("interrupted: completed cells are kept in MLflow; run the "
                                   "same command again to resume.")
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
