"""The MLflow pyfunc flavour of a DFP model, as an MLflow "model from code" (no pickle).

MLflow copies THIS FILE into every registered model version and runs it when the model is
loaded with ``mlflow.pyfunc.load_model``; the model's state comes only from two artifacts:

- ``model_dir``: the autoencoder in dfp_ray's own format (safetensors weights + JSON);
- ``schema``: the log source's schema YAML, so raw records are mapped exactly as in training.

So nothing is unpickled at load time, and the model scores raw log rows::

    import mlflow
    model = mlflow.pyfunc.load_model("models:/DFP-duo-alice/latest")
    scores = model.predict(pandas.json_normalize(duo_records, sep="."))

The loading environment needs dfp_ray installed (it is in the model's requirements).
``DFP_RAY_DEVICE`` (auto, cpu, cuda, cuda:N) chooses where the network runs; default auto.

Annotations stay real types (no ``from __future__ import annotations``): MLflow reads the
``pd.DataFrame`` hint of ``predict`` and, for DataFrames, then leaves the input alone.
"""

import os

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class DFPPyfuncModel(PythonModel):
    """Scores a DataFrame of raw-schema rows: mapped columns + per-feature losses/z-scores."""

    def load_context(self, context) -> None:
        from dfp_ray.autoencoder import DFPAutoencoder
        from dfp_ray.schemas import load_schema

        self.model = DFPAutoencoder.load(
            context.artifacts["model_dir"], device=os.environ.get("DFP_RAY_DEVICE", "auto")
        )
        self.schema = load_schema(context.artifacts["schema"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Rows (raw nested records, flattened raw columns or mapped columns) -> scored rows.

        Output: the schema's mapped columns in time order, then ``<f>_loss``, ``<f>_z_loss``,
        ``<f>_pred`` per feature, ``max_abs_z`` and ``mean_abs_z``. Malformed rows are dropped.
        """
        from dfp_ray.registry.signature import score_raw_frame

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return score_raw_frame(self.model, self.schema, model_input)


mlflow.models.set_model(DFPPyfuncModel())
