"""Training a policy on a build with the SSO objective: the main pair's loss plus both steering pairs' loss
weighted by W, on TRL.

    config   `SSOConfig`: TRL's DPOConfig plus β_G, α, offline or online W
    trainer  `SSOTrainer`: TRL's DPOTrainer with the steering pairs and W
    data     a build's `sso` config as the trainer's dataset, and the model that generated it (no TRL needed)

``from ssogen.training import SSOConfig, SSOTrainer, load_sso_dataset`` works; TRL is imported only when the
config or the trainer is first used (``pip install 'ssogen[train]'``).

May import: every package before it; it reads a build through `ssogen.output.readback`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SSOConfig": "ssogen.training.config",
    "SSOTrainer": "ssogen.training.trainer",
    "GeneratingModel": "ssogen.training.data",
    "generating_model": "ssogen.training.data",
    "load_sso_dataset": "ssogen.training.data",
    "training_dataset": "ssogen.training.data",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy, so reading a build into a dataset does not need TRL installed.
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
