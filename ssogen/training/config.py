"""`SSOConfig`: TRL's `DPOConfig` plus the settings of the SSO objective.

Owns the SSO fields (β_G, α, offline or online W, whether online W is detached), their defaults (those of the
authors' training script) and the refusal of every DPO option the steering pairs cannot follow row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ssogen.training._trl import DPOConfig

# Base losses whose value is a sum of per-row terms, each a function of that row's pair alone, so that a row's
# steering loss can be scaled by its own W. `SSOTrainer._pair_losses` computes exactly these, as TRL 1.16 does.
ROW_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "sigmoid_norm")


@dataclass
class SSOConfig(DPOConfig):
    r"""
    Configuration of [`SSOTrainer`]: every field of TRL's [`DPOConfig`] (same defaults) plus the SSO objective

        loss = L(x, y+, y-) + W · β_G · [ L(x+, y+, y-) + L(x-, y°, y+) ]

    where `L` is the base preference loss chosen by `loss_type` (with `beta`), averaged over the rows of a batch.
    The authors' training script uses `loss_type="ipo"`, `beta=0.2`, `beta_g=0.1`, `alpha=0.66` and online W;
    `examples/train_sso.py` defaults to that recipe, this class keeps TRL's `beta` and `loss_type` defaults.

    Parameters:
        > Parameters of the SSO objective

        beta_g (`float`, *optional*, defaults to `0.1`):
            β_G, the weight of the two steering pairs' losses against the main pair's. `0.0` trains the main pair
            only, exactly as [`DPOTrainer`] does.
        alpha (`float`, *optional*, defaults to `0.66`):
            α in W = sigmoid(-(α · π̃(y+|x) + (1 - α) · π̃(y-|x))), where π̃ is the mean per-token log-probability of
            an answer under the bare query x. Must be in [0, 1].
        w (`str`, *optional*, defaults to `"online"`):
            Where π̃ comes from. `"online"`: recomputed at every step from the policy being trained, on the main
            pair's own forward pass (no extra forward), as the authors' trainer does; W then follows the policy as
            it moves away from the checkpoint that generated the data, which is what W measures (how on-policy a
            pair still is). `"offline"`: the dataset's `weight` column, W of the generating policy (a constant per
            row; `ssogen.training.data` recomputes it with this `alpha` from the row's recorded π̃).
        detach_w (`bool`, *optional*, defaults to `False`):
            Online W only: whether W is treated as a constant in the backward pass. The authors do not detach it,
            so the steering losses also push up α · π̃(y+|x) + (1 - α) · π̃(y-|x), the more the larger they are.

    The base loss must be computable row by row, because W scales each row's steering loss: `loss_type` may hold
    `"sigmoid"`, `"ipo"`, `"hinge"` and `"sigmoid_norm"` (with `loss_weights`). `precompute_ref_log_probs`
    (TRL would precompute the main pair's reference only), `use_weighting`, `ld_alpha` and a non-default
    `f_divergence_type` are refused.
    """

    beta_g: float = field(
        default=0.1,
        metadata={"help": "β_G: weight of the two steering pairs' losses. 0.0 trains the main pair only."},
    )
    alpha: float = field(
        default=0.66,
        metadata={"help": "α in W = sigmoid(-(α·π̃(y+|x) + (1-α)·π̃(y-|x))), in [0, 1]."},
    )
    w: Literal["offline", "online"] = field(
        default="online",
        metadata={
            "help": "`online`: W from the policy being trained, every step (as the authors' trainer); `offline`: the "
            "dataset's `weight` column (W of the generating policy).",
        },
    )
    detach_w: bool = field(
        default=False,
        metadata={"help": "Online W only: treat W as a constant in the backward pass (the authors do not)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # turns a single loss_type string into a list
        unsupported = [t for t in self.loss_type if t not in ROW_LOSS_TYPES]
        refusals = [
            (
                bool(unsupported),
                "loss_type",
                f"{', '.join(unsupported)} cannot be weighted per row by W; use one of {', '.join(ROW_LOSS_TYPES)}",
            ),
            (
                self.precompute_ref_log_probs,
                "precompute_ref_log_probs",
                "TRL precomputes the main pair's reference log-probabilities only, and both steering pairs need "
                "their own (with LoRA the reference costs no extra model)",
            ),
            (self.use_weighting, "use_weighting", "WPO weights are not applied to the steering pairs"),
            (self.ld_alpha is not None, "ld_alpha", "LD-DPO weighting is not applied to the steering pairs"),
            (
                self.f_divergence_type != "reverse_kl",
                "f_divergence_type",
                "only reverse_kl (standard DPO) is applied to the steering pairs",
            ),
            (self.w not in ("offline", "online"), "w", f"must be 'offline' or 'online', not {self.w!r}"),
            (not 0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], not {self.alpha}"),
            (self.beta_g < 0.0, "beta_g", f"must be >= 0, not {self.beta_g}"),
        ]
        for refused, name, why in refusals:
            if refused:
                raise ValueError(f"SSOConfig.{name}: {why}.")
