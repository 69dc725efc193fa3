"""plaintune: config-driven fine-tuning of Hugging Face models for sentence-pair tasks.

`train` and `predict` are the Python API (api.py); the commands train.py and inference.py call
the same two functions. They are imported on first use, so that `python -m plaintune.checkpoint`
and `import plaintune` stay light.
"""

from plaintune.errors import UserError

__all__ = ["train", "predict", "TrainResult", "UserError"]


def __getattr__(name: str):
    if name in ("train", "predict", "TrainResult"):
        from plaintune import api

        return getattr(api, name)
    raise AttributeError(f"module 'plaintune' has no attribute {name!r}")
