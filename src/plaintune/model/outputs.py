"""A model's outputs for every item of a loader, in dataset order (validation and inference alike)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader


@torch.inference_mode()
def model_outputs(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, autocast_dtype: Optional[torch.dtype] = None
) -> np.ndarray:
    """Model outputs for every item of `loader.dataset`, in dataset order.

    The loader may batch in any order (inference sorts by length); each batch
    carries the dataset indices of its rows, which put the outputs back in place.
    Regression returns shape (n,), classification the logits (n, num_labels).
    """
    was_training = model.training
    model.eval()
    outputs: Optional[np.ndarray] = None
    for batch in loader:
        index = batch.pop("index").numpy()
        batch.pop("labels", None)
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(**inputs).logits
        logits = logits.float().cpu().numpy()
        if outputs is None:
            outputs = np.full((len(loader.dataset), logits.shape[-1]), np.nan, dtype=np.float32)
        outputs[index] = logits
    model.train(was_training)
    if outputs is None:  # no batches on this rank (tiny set under DDP): nothing predicted here
        width = getattr(getattr(model, "config", None), "num_labels", 1)
        outputs = np.full((len(loader.dataset), width), np.nan, dtype=np.float32)
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs
