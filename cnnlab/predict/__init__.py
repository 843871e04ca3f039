"""``cnnlab predict``: a Kaggle submission CSV from a finished run or an ensemble of runs."""

from cnnlab.predict.command import Prediction, main, predict

__all__ = ["Prediction", "main", "predict"]
