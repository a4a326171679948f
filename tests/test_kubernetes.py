"""MLflow's built-in ``kubernetes`` backend for the suite's projects, without a cluster: the Job
spec MLflow builds from ``projects/kubernetes/job-template.yaml`` and ``projects/finetune`` (with
the one ``docker_env`` line a Kubernetes run needs), and the call that submits it, with the
Kubernetes client patched as MLflow's own tests do (no cluster or Docker engine runs here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from suite import tracking

pytest.importorskip("kubernetes")
ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "projects" / "kubernetes"


@pytest.fixture
def finetune_project(tmp_path):
    """projects/finetune with a docker_env: what `mlflow run --backend kubernetes` needs."""
    work = tmp_path / "finetune"
    shutil.copytree(ROOT / "projects" / "finetune", work)
    mlproject = work / "MLproject"
    mlproject.write_text(mlproject.read_text() + "\ndocker_env:\n  image: suite:latest\n")
    return work


def _job(finetune_project, env):
    from mlflow.projects import kubernetes as kb
    from mlflow.projects._project_spec import load_project
    from mlflow.projects.utils import get_entry_point_command

    project = load_project(str(finetune_project))
    assert project.docker_env == {"image": "suite:latest"}
    params = {"model": "mini-cnn-w16", "dataset": "synth-shapes", "study": "mini"}
    command = get_entry_point_command(project, "main", params, None)
    template = yaml.safe_load((K8S / "job-template.yaml").read_text())
    job = kb._get_kubernetes_job_definition(project.name, "registry.example.org/suite/suite",
                                            "sha256:0123", kb._get_run_command(command),
                                            env, template)
    return project, command, job


def test_backend_config_names_the_template():
    config = json.loads((K8S / "backend-config.json").read_text())
    assert set(config) == {"kube-context", "repository-uri", "kube-job-template-path"}
    assert (ROOT / config["kube-job-template-path"]).exists()


def test_job_spec_runs_the_finetune_entry_point(finetune_project, monkeypatch):
    monkeypatch.delenv("KUBE_MLFLOW_TRACKING_URI", raising=False)
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.suite:5000", "MLFLOW_RUN_ID": "r1"}
    project, command, job = _job(finetune_project, env)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "suite"
    assert job["metadata"]["name"].startswith("suite-finetune-")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "suite-finetune"
    assert container["image"] == "registry.example.org/suite/suite@sha256:0123"
    cmd = " ".join(container["command"])
    assert cmd.startswith("python -m suite finetune --local mini-cnn-w16 synth-shapes")
    assert "--study mini" in cmd and "--no-skip-corrupt" in cmd
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.suite:5000"} in container["env"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_submission_creates_one_namespaced_job(store, finetune_project, monkeypatch):
    import kubernetes
    from mlflow.projects import kubernetes as kb

    created = []

    class BatchV1Api:
        def create_namespaced_job(self, namespace, body, pretty):
            created.append((namespace, body))

    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda context=None: None)
    monkeypatch.setattr(kubernetes.client, "BatchV1Api", BatchV1Api)
    run = tracking.client().create_run(tracking.experiment_id("k8s"))
    project, command, _ = _job(finetune_project, {})
    template = yaml.safe_load((K8S / "job-template.yaml").read_text())
    submitted = kb.run_kubernetes_job(project.name, run, "registry.example.org/suite/suite",
                                      "sha256:0123", command,
                                      {"MLFLOW_RUN_ID": run.info.run_id}, None, template)
    assert submitted.run_id == run.info.run_id
    ((namespace, body),) = created
    assert namespace == "suite" and body["metadata"]["name"] == submitted._job_name
