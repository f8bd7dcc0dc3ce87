"""The one place `ssogen.training` imports TRL: a missing install is one clear line, not a traceback.

Owns the TRL names the trainer builds on. They are TRL 1.16's (`ssogen[train]` pins it): `SSOTrainer` mirrors
parts of `DPOTrainer._compute_loss`, whose internals change between TRL releases.
"""

from __future__ import annotations

import warnings

TESTED_TRL = "1.16.0"

try:
    import trl
    from accelerate.utils import is_peft_model
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import _tokenize, common_prefix_length, is_conversational
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import use_adapter
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"ssogen.training needs TRL 1.16 ({exc}); install it with: pip install 'ssogen[train]'") from exc

if trl.__version__ != TESTED_TRL:
    warnings.warn(
        f"ssogen.training is tested with TRL {TESTED_TRL} and mirrors its DPO loss; this is TRL {trl.__version__}. "
        "tests/test_training.py checks the mirror against it.",
        stacklevel=2,
    )

__all__ = [
    "TESTED_TRL",
    "DPOConfig",
    "DPOTrainer",
    "DataCollatorForPreference",
    "_tokenize",
    "common_prefix_length",
    "disable_gradient_checkpointing",
    "is_conversational",
    "is_peft_model",
    "use_adapter",
]
