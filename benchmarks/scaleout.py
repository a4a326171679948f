"""Scale-out benchmark: a study with ``--executor local --jobs 1`` vs ``--jobs N`` (wall-time
ratio, in one run), and the per-cell overhead of the ``slurm`` executor for a cell that does
nothing heavy.

    python benchmarks/scaleout.py                      # mini, jobs 1 vs 2, slurm if present
    python benchmarks/scaleout.py --study tiny --jobs 2 --slurm-cells 3

Each study run gets a fresh workspace (its own SQLite store), ``--skip-analysis``, so the two
runs do the same cells. The slurm part needs ``sbatch`` and an idle node (``. .ci/services.sh
&& start_slurm``): it starts ``suite server`` on a fresh workspace, registers one tiny model
in-process, then submits the worker command of that finished cell ``--slurm-cells`` times
through sbatch (the worker starts, claims, finds the cell done and ends FINISHED) and the same
command as a local subprocess, and reports sbatch-to-FINISHED per cell, and its excess over the
local run (what SLURM adds: queueing, job start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY_ONE = """
name: bench-slurm
source: synth-source
models:
  - {name: a, width: 4, depth: 1, epochs: 1}
datasets: [synth-shapes]
settings: [logistic]
l2_grid: [1.0]
"""


def suite(ws: Path, *args: str, env: dict | None = None, uri: str | None = None) -> float:
    cmd = [sys.executable, "-m", "suite", "-w", str(ws), "-q"]
    cmd += ["--tracking-uri", uri] if uri else []
    t0 = time.perf_counter()
    subprocess.run(cmd + list(args), check=True, env=env or dict(os.environ),
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def local_ratio(study: str, jobs: int, root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = {}
    for n in (1, jobs):
        ws = root / f"local-{n}"
        secs = suite(ws, "study", "run", study, "--skip-analysis", "--executor", "local",
                     "--jobs", str(n), env=env)
        out[f"jobs_{n}_s"] = round(secs, 1)
        print(f"{study}: --executor local --jobs {n}: {secs:.1f} s", flush=True)
    out["ratio"] = round(out["jobs_1_s"] / out[f"jobs_{jobs}_s"], 2)
    print(f"{study}: jobs 1 / jobs {jobs} wall-time ratio {out['ratio']:.2f}", flush=True)
    return out


def slurm_overhead(cells: int, root: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from suite import claims, tracking
    from suite.cells import expand
    from suite.config import load_study
    from suite.executors import write_study_file
    from suite.executors.base import worker_command

    ws = root / "slurm"
    ws.mkdir()
    study = ws / "study.yaml"
    study.write_text(TINY_ONE)
    port = 5000 + os.getpid() % 1000
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    subprocess.run([sys.executable, "-m", "suite", "-w", str(ws), "server", "start",
                    "--port", str(port), "--workers", "1"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        suite(ws, "study", "run", str(study), "--skip-analysis", uri=uri, env=env)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        tracking.configure(ws, uri)
        cfg = load_study(study)
        cell = expand(cfg)[0]  # pretrain a: done, so a worker only claims and ends
        cmd = worker_command(write_study_file(cfg), cell.key)
        local, sl = [], []

        def finished() -> list:
            return [c for c in claims.list_claims(cfg.name, cell.key) if c.status == "FINISHED"]

        def until_finished(before: int, t0: float) -> float:
            """Seconds from t0 to the end of the next FINISHED claim (the cell's end, not the
            process's exit, for both ways of starting it)."""
            while len(rows := finished()) <= before:
                time.sleep(0.2)
            return rows[-1].end_time / 1000.0 - t0

        for _ in range(cells):  # alternated, so that both see the same warm caches
            before, t0 = len(finished()), time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            local.append(until_finished(before, t0))
            before, t0 = len(finished()), time.time()
            subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap",
                            " ".join(cmd)], check=True, stdout=subprocess.DEVNULL)
            sl.append(until_finished(before, t0))
    finally:
        subprocess.run([sys.executable, "-m", "suite", "-w", str(ws), "server", "stop"],
                       env=env, stdout=subprocess.DEVNULL)
    med = sorted(sl)[len(sl) // 2]
    med_local = sorted(local)[len(local) // 2]
    print(f"slurm: sbatch to FINISHED per do-nothing cell {med:.1f} s (median of {cells}); "
          f"the same worker started as a local process {med_local:.1f} s; SLURM adds "
          f"{med - med_local:+.1f} s", flush=True)
    return {"slurm_cell_s": round(med, 2), "local_cell_s": round(med_local, 2),
            "slurm_overhead_s": round(med - med_local, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default="mini")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--slurm-cells", type=int, default=3)
    ap.add_argument("--json", default="", help="Also write the numbers here.")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="suite-scaleout-"))
    try:
        res = {"study": args.study, "cpus": os.cpu_count(),
               **local_ratio(args.study, args.jobs, root)}
        if args.slurm_cells and shutil.which("sbatch"):
            res.update(slurm_overhead(args.slurm_cells, root))
        elif args.slurm_cells:
            print("slurm: sbatch not on PATH, overhead not measured")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
