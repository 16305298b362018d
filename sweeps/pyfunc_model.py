"""The MLflow pyfunc model of a trained classifier, logged as code (MLflow "models from code"): loading it
imports this file and reads safetensors weights plus a JSON config, so nothing is unpickled.

Input: float32 flux stamps in nanomaggies, shape (N, bands, H, W), bands and size as recorded in the config.
Output: a DataFrame with one probability column per known class, the predicted class and the prediction entropy.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class GalaxyClassifier(PythonModel):
    def load_context(self, context):
        import torch
        from safetensors.torch import load_file

        from uda_core.config import ModelConfig
        from uda_core.models import build_model

        meta = json.loads(open(context.artifacts["config"]).read())
        self.meta = meta
        self.model = build_model(ModelConfig(**meta["model"]), len(meta["bands"]), meta["num_known"])
        self.model.load_state_dict(load_file(context.artifacts["weights"]))
        self.model.eval()
        self.torch = torch

    def predict(self, context, model_input, params=None):
        from uda_core.data.dataset import preprocess
        from uda_core.models import TARGET

        x = np.asarray(model_input, dtype=np.float32)
        meta = self.meta
        want = (len(meta["bands"]), meta["stamp_px"], meta["stamp_px"])
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"input must have shape (N, {want[0]}, {want[1]}, {want[2]}) for bands {meta['bands']}, got {x.shape}")
        with self.torch.no_grad():
            logits, _ = self.model(preprocess(x, meta["softening"]), TARGET)
            p = self.torch.softmax(logits.float(), 1).numpy()
        names = meta["class_names"][: meta["num_known"]]
        out = pd.DataFrame(p, columns=[f"prob_{n}" for n in names])
        out["predicted_class"] = [names[i] for i in p.argmax(1)]
        out["entropy"] = -(p * np.log(p + 1e-12)).sum(1)
        return out


mlflow.models.set_model(GalaxyClassifier())
