"""Using a trained model: the Python API, batch prediction, gMAD, export and the benchmark."""

from mfe_iqa.inference.api import IQAModel, load_model

__all__ = ["IQAModel", "load_model"]
