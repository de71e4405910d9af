"""MLflow tracking (the optional extra emoma[mlflow]): one run per cross-validation, or one parent run per search
with one child run per trial. A tracking URI that cannot be reached stops the command before any work (one
line); a failure later is reported once and tracking stops, never the run itself."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from emoma.errors import UserError

QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError("--mlflow needs MLflow: pip install -e '.[mlflow]'") from None


def default_uri(folder: Path) -> str:
    """A local MLflow store in `folder` (no server needed): `mlflow ui --backend-store-uri` reads it."""
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


class Tracker:
    """MLflow client calls that never stop the run they track. Picklable (the client is rebuilt after)."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        self.uri, self.experiment, self.failed = uri, experiment, False
        self.artifact_location = artifact_location
        self._client, self.experiment_id = None, None
        require_mlflow()
        try:
            with _quick_requests():  # an unreachable server is reported in seconds, not after minutes of retries
                client = self.client
                found = client.get_experiment_by_name(experiment)
                self.experiment_id = (
                    found.experiment_id
                    if found
                    else client.create_experiment(experiment, artifact_location=artifact_location)
                )
        except Exception as err:  # MLflow raises many types for bad URIs, unreachable servers, locked files
            raise UserError(
                f"--mlflow {uri}: cannot use the tracking store ({_first_line(err)}): check the URI or "
                "start the tracking server"
            ) from None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    def _safe(self, call, *args, **kwargs):
        if self.failed:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # tracking must never stop or lose the run it tracks
            self.failed = True
            print(
                f"warning: MLflow tracking failed ({_first_line(err)}): the run goes on without it",
                file=sys.stderr,
                flush=True,
            )
            return None

    def start_run(self, name: str, params: dict, tags: dict | None = None, parent: str | None = None) -> str | None:
        def start():
            tags_ = {**(tags or {}), **({"mlflow.parentRunId": parent} if parent else {})}
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags_)
            self.log_params(run.info.run_id, params)
            return run.info.run_id

        return self._safe(start)

    def find_run(self, tag: str, value: str, parent: str | None = None) -> str | None:
        query = f"tags.{tag} = '{value}'" + (f" and tags.mlflow.parentRunId = '{parent}'" if parent else "")
        runs = self._safe(self.client.search_runs, [self.experiment_id], query, max_results=1)
        return runs[0].info.run_id if runs else None

    def log_params(self, run_id: str | None, params: dict) -> None:
        from mlflow.entities import Param

        if run_id:
            items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self._safe(self.client.log_batch, run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str | None, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        if run_id:
            now = int(time.time() * 1000)
            items = [
                Metric(k, float(v), now, step)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and math.isfinite(v)
            ]
            self._safe(self.client.log_batch, run_id, metrics=items)

    def set_tags(self, run_id: str | None, tags: dict) -> None:
        from mlflow.entities import RunTag

        if run_id:
            self._safe(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str | None, paths) -> None:
        for path in paths:
            if run_id and Path(path).is_file():
                self._safe(self.client.log_artifact, run_id, str(path))

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id:
            self._safe(self.client.set_terminated, run_id, status)


def log_selection(tracker, run: str | None, summary: dict) -> None:
    """The selection's estimates (BBC-CV, its interval, the naive best) on a run, at the step of the number of
    completed trials it chose from, and the choice as tags."""
    metrics = {
        f"{key}_{part}": value
        for key, b in summary.items()
        if key.startswith("bbc_cv")
        for part, value in b.items()
        if part in ("estimate", "ci_low", "ci_high", "naive_best_cv")
    }
    metrics |= {
        f"gain_bbc_cv_{name}_{m}": g["mean"]
        for name, by in summary.get("gain_bbc_cv", {}).items()
        for m, g in by.items()
    }
    tracker.log_metrics(run, metrics, step=summary["trials_completed"])
    tracker.set_tags(
        run, {"selection.rule": summary["rule"], "selection.final": json.dumps(summary["final"]["weights"])}
    )


@contextmanager
def _quick_requests():
    saved = {k: os.environ.get(k) for k in QUICK}
    os.environ.update(QUICK)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
