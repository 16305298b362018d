"""The MLflow pyfunc model of a trained classifier, logged as code (MLflow "models from code"): loading it
imports this file and reads safetensors weights plus a JSON config (uda_core.inference), so nothing is unpickled.

Input: float32 flux stamps in nanomaggies of the target survey, shape (N, bands, H, W) as recorded in the config.
Output: a DataFrame with one probability column per known class (`prob_<class>`), `predicted_class`, `unknown`,
`anomaly_score`, `entropy`, `uncertainty` (mutual information over dihedral views) and `predicted_prob_std`; a
model with a Galaxy Zoo vote head adds `{question}_{answer}_alpha` and `{question}_{answer}_fraction` per answer
and `{question}_entropy` and `{question}_fraction_std` per question (uda_core.inference.vote_columns), the same
names as the `uda-sweep predict` catalogue.
Pass params={"views": 1} to skip the views (uncertainty 0) when only probabilities are wanted.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

__all__ = ["GalaxyClassifier", "to_frame"]


def to_frame(out: dict[str, np.ndarray], class_names: list[str], tree=None) -> pd.DataFrame:
    """`tree`: the classifier's vote tree (Classifier.vote_tree); None (no vote head) gives the class columns only."""
    from uda_core.inference import vote_columns

    frame = pd.DataFrame(out["probs"], columns=[f"prob_{n}" for n in class_names])
    frame["predicted_class"] = np.asarray(class_names, dtype=object)[out["predicted"]]
    for key in ("unknown", "anomaly_score", "entropy", "uncertainty", "predicted_prob_std"):
        frame[key] = out[key]
    votes = vote_columns(out, tree)
    if votes:  # one concat: ~90 columns added one by one fragment the frame
        frame = pd.concat([frame, pd.DataFrame(votes, index=frame.index)], axis=1)
    return frame


class GalaxyClassifier(PythonModel):
    def load_context(self, context):
        from pathlib import Path

        from uda_core.inference import Classifier

        self.classifier = Classifier.load(Path(context.artifacts["classifier"]))

    # The hint is one MLflow skips for schema inference (the signature is logged explicitly): without one, every
    # load warns "Add type hints to the `predict` method".
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        views = int((params or {}).get("views", 8))
        clf = self.classifier
        return to_frame(clf.predict(np.asarray(model_input, dtype=np.float32), views=views),
                        clf.class_names, clf.vote_tree)


mlflow.models.set_model(GalaxyClassifier())
