"""Log the models of a sweep's best trials (the finalists) to their MLflow child runs.

`log_model` costs seconds (environment capture), so only finalists get one. The model is safetensors weights
plus a JSON config, served by `pyfunc_model.py` as code: loading never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import SweepConfig

__all__ = ["log_finalists", "export_checkpoint"]

log = logging.getLogger(__name__)
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


def export_checkpoint(checkpoint_dir: Path, out: Path) -> dict:
    """weights.safetensors + config.json (run config, bands, classes, preprocessing) from a core checkpoint."""
    from safetensors.torch import save_file

    from uda_core.config import RunConfig
    from uda_core.train import CHECKPOINT_FILE, load_data

    cfg = RunConfig.model_validate_json((checkpoint_dir / "config.json").read_text())
    state = torch.load(checkpoint_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    data = load_data(cfg, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state["model"].items()}, str(out / "weights.safetensors"))
    meta = {"run_config": json.loads(cfg.model_dump_json()), "model": cfg.model.model_dump(),
            "bands": data.bands, "stamp_px": data.stamp_px, "softening": data.softening,
            "class_names": data.class_names, "num_known": data.num_known, "step": int(state["step"]),
            "data_fingerprint": data.manifest.get("fingerprint")}
    (out / "config.json").write_text(json.dumps(meta, indent=1))
    return meta


def _checkpoint_at(trial_path: Path, step: int) -> Path | None:
    from uda_core.train import CHECKPOINT_FILE

    for ckpt in sorted(trial_path.glob("checkpoint_*")):
        f = ckpt / CHECKPOINT_FILE
        if f.exists() and int(torch.load(f, map_location="cpu", weights_only=True)["step"]) == step:
            return ckpt
    return None


def log_finalists(sweep: SweepConfig, exp_dir: Path, state: dict, rows: list[dict]) -> list[str]:
    import mlflow
    from mlflow.models import infer_signature

    from .summary import ranked_rows

    scored = [r for r in ranked_rows(rows, sweep) if r["path"]]
    mlflow.set_tracking_uri(state["tracking_uri"])
    client = mlflow.MlflowClient(state["tracking_uri"])
    logged = []
    for r in scored[: sweep.tracking.finalists]:
        ckpt = _checkpoint_at(Path(r["path"]), r["best_step"])
        runs = client.search_runs([state["experiment_id"]], filter_string=f"tags.trial_id = '{r['trial_id']}'")
        if ckpt is None or not runs:
            log.warning("trial %s: no checkpoint at its best step %s or no MLflow run; model not logged", r["trial_id"], r["best_step"])
            continue
        if runs[0].data.tags.get("finalist_step") == str(r["best_step"]):
            continue  # logged by an earlier summary of this sweep (e.g. before a resume)
        with tempfile.TemporaryDirectory() as tmp:
            meta = export_checkpoint(ckpt, Path(tmp))
            example = np.zeros((2, len(meta["bands"]), meta["stamp_px"], meta["stamp_px"]), np.float32)
            from .pyfunc_model import GalaxyClassifier

            class _Ctx:
                artifacts = {"weights": str(Path(tmp) / "weights.safetensors"), "config": str(Path(tmp) / "config.json")}

            model = GalaxyClassifier()
            model.load_context(_Ctx)
            signature = infer_signature(example, model.predict(None, example))
            try:
                with mlflow.start_run(run_id=runs[0].info.run_id):
                    info = mlflow.pyfunc.log_model(
                        name="model", python_model=str(PYFUNC_CODE), artifacts=_Ctx.artifacts, signature=signature,
                        input_example=example, pip_requirements=["galaxy-uda-sweeps", "torch", "safetensors", "mlflow"])
            finally:  # start_run's exit marks the run FINISHED (or FAILED on error): put back the trial's own status
                client.set_terminated(runs[0].info.run_id, runs[0].info.status)
            client.set_tag(runs[0].info.run_id, "finalist", "true")
            client.set_tag(runs[0].info.run_id, "finalist_step", str(r["best_step"]))
            client.set_tag(runs[0].info.run_id, "model_uri", info.model_uri)
            logged.append(info.model_uri)
    return logged
