"""A search on a three-node Ray cluster (one process per node, all on loopback)."""

import json
import os
import threading
import time

import pytest
import ray
import ray._private.services as ray_services
from ray.cluster_utils import Cluster

import emoma.tune.search
from emoma.config import load_config
from emoma.space import load_space
from emoma.synthetic import make_frame
from emoma.tune.search import run_search

from conftest import ROOT


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray.shutdown()  # a driver attaches to one Ray at a time
    # own temp folder: Cluster writes ray_current_cluster there, which a plain ray.init() would attach to
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray"))
    # keep every node and the driver on loopback: Ray resolves 127.0.0.1 to the machine's interface address
    perspective = ray_services.node_ip_address_from_perspective
    ray_services.node_ip_address_from_perspective = lambda *args, **kwargs: "127.0.0.1"
    args = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 150 * 1024**2}
    nodes = Cluster(initialize_head=True, head_node_args=args)
    for _ in range(2):
        nodes.add_node(**args)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="WARNING")
    yield nodes
    ray.shutdown()
    nodes.shutdown()
    ray_services.node_ip_address_from_perspective = perspective
    if before is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = before


def test_trials_spread_over_nodes_and_never_read_the_csv(cluster, tmp_path, monkeypatch):
    csv = tmp_path / "merged.csv"
    make_frame(seed=2).to_csv(csv)
    real_fingerprint = emoma.tune.search.data_fingerprint

    def fingerprint_then_delete(table, path):  # the driver's last read: trials that read the CSV would fail
        fingerprint = real_fingerprint(table, path)
        csv.unlink()
        return fingerprint

    monkeypatch.setattr(emoma.tune.search, "data_fingerprint", fingerprint_then_delete)
    smoke = ROOT / "configs" / "smoke.yaml"
    config = load_config(
        smoke,
        [
            f"data.path={csv}",
            f"cv.cache_dir={tmp_path / 'cache'}",
            "cv.folds=2",
            "search.num_samples=6",
            "search.max_concurrent=3",
            "cv.jobs=2",
            "train.epochs=40",
        ],
    )  # trials long enough to overlap on a loaded machine
    result = run_search(
        config,
        load_space(ROOT / "configs" / "smoke_space.yaml"),
        config,
        storage_path=tmp_path / "exp",
        name="c",
        log=lambda *a: None,
    )
    assert not csv.exists()
    assert len(result.completed) == 6
    nodes = {t.node for t in result.trials}
    assert len(nodes) >= 2, [t.node for t in result.trials]
    assert len(ray.nodes()) == 3
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


def test_a_lost_worker_node_reruns_its_trials_elsewhere(cluster, tmp_path):
    config = load_config(
        ROOT / "configs" / "smoke.yaml",
        [
            f"cv.cache_dir={tmp_path / 'cache'}",
            "cv.folds=3",
            "search.num_samples=4",
            "train.epochs=30",
            "search.fold_batch=1",
            "search.prune=false",
        ],
    )
    outcome = {}

    def search():
        try:
            outcome["result"] = run_search(
                config,
                load_space(ROOT / "configs" / "smoke_space.yaml"),
                config,
                storage_path=tmp_path / "exp",
                name="lost",
                log=lambda *a: None,
            )
        except BaseException as err:  # reported by the assertion below
            outcome["error"] = err

    thread = threading.Thread(target=search)
    thread.start()
    workers = {node.node_id[:8]: node for node in cluster.worker_nodes}
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and thread.is_alive():
        for path in (tmp_path / "exp" / "lost").glob("trial_*/result.json"):
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if lines and lines[-1]["folds_done"] < lines[-1]["folds_total"]:
                node_id = lines[-1]["node"].split("/")[1]
                if node_id in workers:
                    victim = workers[node_id]
                    break
        time.sleep(0.2)
    assert victim is not None, "no trial ran mid-CV on a worker node"
    cluster.remove_node(victim)  # the node dies with its trial mid-CV
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert len(result.completed) == 4
    assert all(len(t.fold_scores) == 3 for t in result.completed)
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=150 * 1024**2)
