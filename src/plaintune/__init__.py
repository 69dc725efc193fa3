"""plaintune: config-driven fine-tuning of Hugging Face models for sentence-pair tasks.

`train` and `predict` are the Python API (see api.py); the commands train.py and
inference.py run the same code.
"""
from .api import predict, train
from .errors import UserError
from .recipe import TrainResult

__all__ = ["train", "predict", "TrainResult", "UserError"]
