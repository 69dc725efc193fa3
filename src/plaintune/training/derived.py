"""What a run decides from its config, once: the record carried next to the config, which itself stays
what the user wrote (config.yaml and last.pt's "config" keep `auto` where the user wrote auto).

The concrete precision, the head's output mapping and loss, how pairs are tokenized for this model, and
the effective batch are decided in `train_run` (from the device, the model and a resumed checkpoint) and
read from here by the loop, the saved files and the dashboards. last.pt keeps the resolved config
values (`resolved`), so a resume continues with them and compares like with like (training/resume.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

from plaintune.config.schema import assign, lookup, resolved_keys
from plaintune.data.tokenized import PairEncoding
from plaintune.model.objective import Objective

MISSING = object()


@dataclass(frozen=True)
class Derived:
    precision: str  # training.precision with auto resolved for this device, or kept from the checkpoint
    objective: Objective  # what the head's output means, and the loss it trains with
    encoding: PairEncoding  # how pairs are tokenized for this model (recorded with best/)
    effective_batch: int  # pairs per optimizer step: batch_size x grad_accum_steps x processes

    def resolved(self) -> dict:
        """{dotted key: value} of the config keys whose `auto` this run resolved (schema Field.resolved)."""
        values = {"training.precision": self.precision, **self.objective.resolved}
        return {key: values[key] for key in resolved_keys() if key in values}


def effective(config: dict, resolved: Optional[dict]) -> dict:
    """A plain config with the values its run resolved in place of `auto` (for comparing two runs, and
    for dashboards, which show what ran)."""
    out = copy.deepcopy(config)
    for key, value in (resolved or {}).items():
        if lookup(out, key, MISSING) is not MISSING:
            assign(out, key, value)
    return out


def resumed_values(config: dict, saved: Optional[dict]) -> dict:
    """What a resumed run's `auto` keys resolve to before anything is built: the checkpoint's resolved
    value wherever the config still says auto (the run continues as it started)."""
    return {key: value for key, value in (saved or {}).items() if lookup(config, key, None) == "auto"}
