"""deploy/: the container, cluster-launcher, KubeRay and SLURM files, checked as far as this machine allows (no
Docker daemon, no Kubernetes, no SLURM): against Ray's own launcher schema, for the right commands, and the SLURM
script run with fake srun/scontrol/ray/emoma."""

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import ray
import yaml

import emoma

from conftest import ROOT

DEPLOY = ROOT / "deploy"


def test_cluster_launcher_config_is_valid_for_ray():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert all(
        "RAY_AUTH_MODE=disabled ray start" in c
        for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    )
    assert "emoma search --address auto" in (DEPLOY / "ray-cluster.yaml").read_text()


def test_rayjob_runs_the_search_on_its_cluster():
    job = yaml.safe_load((DEPLOY / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("emoma search --address auto ")
    assert "--storage-path s3://" in job["spec"]["entrypoint"]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert images == {f"emoma:{emoma.__version__}"}
    # no kubectl or CRD here: the fields that KubeRay's v1 RayJob CRD requires at each level in its older
    # operators (rayStartParams is optional from 1.4 on), and the types a YAML slip would break
    assert "entrypoint" in job["spec"] and "headGroupSpec" in cluster
    assert {"rayStartParams", "template"} <= set(cluster["headGroupSpec"])
    for group in cluster["workerGroupSpecs"]:
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert all(isinstance(group[k], int) for k in ("replicas", "minReplicas", "maxReplicas"))
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for params in (g["rayStartParams"] for g in groups):
        assert all(isinstance(v, str) for v in params.values())  # the CRD: a map of strings
    for pod in pods:
        assert all(c.get("name") for c in pod["spec"]["containers"])
        assert all(v.get("name") for v in pod["spec"].get("volumes", []))


def test_every_image_tag_is_the_package_version():
    files = [*sorted(DEPLOY.iterdir()), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts = [p.read_text() for p in files]
    tags = {tag for text in texts for tag in re.findall(r"\bemoma:([\w.]+)", text)}
    assert tags == {emoma.__version__}


def test_dockerfile_installs_the_tested_versions_and_runs_emoma():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON\}-slim$", text, re.M)
    assert 'pip install -c constraints.txt ".[export]" "ray[default]" boto3' in text
    assert not re.search(
        r"^ENTRYPOINT", text, re.M
    )  # the cluster launcher runs `docker run IMAGE bash`: an entrypoint would eat it
    assert 'CMD ["emoma", "cv", "--config", "smoke"]' in text
    for line in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for source in line.split():
            assert (ROOT / source).exists(), source
    torch_pin = re.search(r'"torch==([\d.]+)"', text).group(1)
    assert f"torch=={torch_pin}\n" in (ROOT / "constraints.txt").read_text()


def test_slurm_script_starts_head_workers_and_the_search(tmp_path):
    log = tmp_path / "calls.log"
    fakes = {
        "scontrol": 'printf "node1\\nnode2\\nnode3\\n"',
        "srun": 'while [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done; exec "$@"',
        "hostname": "echo 10.0.0.1",
        "ray": f'echo "ray $*" >> {log}',
        "emoma": f'echo "emoma $* RAY_AUTH_MODE=$RAY_AUTH_MODE" >> {log}',
        "sleep": "true",
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[1-3]",
        "SLURM_CPUS_PER_TASK": "4",
    }
    assert subprocess.run(["bash", "-n", str(DEPLOY / "slurm-search.sh")]).returncode == 0
    proc = subprocess.run(
        ["bash", str(DEPLOY / "slurm-search.sh"), "--num-samples", "2", "--name", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    calls = sorted(log.read_text().splitlines())
    assert calls == sorted(
        [
            "ray start --head --node-ip-address=10.0.0.1 --port=6379 --num-cpus=4 --block",
            "ray start --address=10.0.0.1:6379 --num-cpus=4 --block",
            "ray start --address=10.0.0.1:6379 --num-cpus=4 --block",
            "emoma search --address 10.0.0.1:6379 --num-samples 2 --name x RAY_AUTH_MODE=disabled",
        ]
    )
