"""`SSOTrainer`: TRL 1.16's `DPOTrainer` trained on the SSO objective.

    loss = mean over rows of  L(x, y+, y-) + W · β_G · [ L(x+, y+, y-) + L(x-, y°, y+) ]

Owns the steering pairs: their tokenization (TRL's own split of prompt and answer, applied to x+ and x-), their
batches (TRL's collator, run once per pair), their per-row base loss and W (offline from the dataset, or online from
the policy's main-pair forward). The main pair is `DPOTrainer`'s: same tokenization, same batch, same loss and
metrics, computed by `DPOTrainer._compute_loss` itself; so are the reference model, LoRA, gradient accumulation and
evaluation. `docs/training.md` sets the objective beside the authors' trainer, term by term.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ssogen.training._trl import (
    DataCollatorForPreference,
    DPOTrainer,
    _tokenize,
    common_prefix_length,
    disable_gradient_checkpointing,
    is_conversational,
    is_peft_model,
    use_adapter,
)
from ssogen.training.config import SSOConfig

logger = logging.getLogger(__name__)

# The two steering pairs: key prefix -> (prompt column, preferred answer, dispreferred answer).
STEERING_PAIRS: dict[str, tuple[str, str, str]] = {
    "pos_": ("prompt_pos", "chosen", "rejected"),  # (x+, y+ ≻ y-)
    # (x-, y° ≻ y+): the original answer, not y-, is preferred under p-, so p- cannot become a backdoor (SSO.md).
    "neg_": ("prompt_neg", "original", "chosen"),
}
WEIGHT_KEY = "sso_weight"
_IDS = ("prompt_ids", "chosen_ids", "rejected_ids")
_STEERING_KEYS = (*STEERING_PAIRS, WEIGHT_KEY)
REQUIRED_COLUMNS = ("prompt", "prompt_pos", "prompt_neg", "chosen", "rejected", "original", "weight")


def split_pair(
    processing_class: Any, prompt: list[dict], chosen: list[dict], rejected: list[dict], example: dict[str, Any]
) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) of a conversational pair, split exactly as TRL 1.16's DPOTrainer splits
    the main pair (`_prepare_dataset.tokenize_fn`): the answer starts where the prompt rendered alone and the prompt
    rendered with the answer diverge. `tests/test_training.py` checks it against TRL on the main pair."""
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    kwargs = {"tools": tools, **(example.get("chat_template_kwargs") or {})}
    prompt_ids = _tokenize(processing_class, prompt, add_generation_prompt=True, **kwargs)["input_ids"]
    prompt_chosen = _tokenize(processing_class, prompt + chosen, **kwargs)["input_ids"]
    prompt_rejected = _tokenize(processing_class, prompt + rejected, **kwargs)["input_ids"]
    cut = min(common_prefix_length(prompt_ids, prompt_chosen), common_prefix_length(prompt_ids, prompt_rejected))
    return prompt_ids[:cut], prompt_chosen[cut:], prompt_rejected[cut:]


def _tokenize_steering(example: dict[str, Any], processing_class: Any) -> dict[str, Any]:
    """The steering pairs' token ids of one prepared row, and its offline W."""
    out: dict[str, Any] = {WEIGHT_KEY: float(example["weight"])}
    for prefix, (prompt, preferred, dispreferred) in STEERING_PAIRS.items():
        ids = split_pair(processing_class, example[prompt], example[preferred], example[dispreferred], example)
        out.update({prefix + name: value for name, value in zip(_IDS, ids, strict=True)})
    return out


@dataclass
class SSODataCollator:
    """TRL's preference collator run three times: the main pair (TRL's batch, unchanged), then each steering pair
    under its key prefix; plus the rows' offline W."""

    base: DataCollatorForPreference

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base(examples)
        for prefix in STEERING_PAIRS:
            pairs = [{name: example[prefix + name] for name in _IDS} for example in examples]
            batch.update({prefix + key: value for key, value in self.base(pairs).items()})
        batch[WEIGHT_KEY] = torch.tensor([float(example[WEIGHT_KEY]) for example in examples])
        return batch


class _FirstOutput:
    """Calls the policy like the model itself and keeps the output of the first call.

    Why: `DPOTrainer._compute_loss` runs the policy on the main pair once, through its `model` argument (the
    reference runs through `self.model` / `self.ref_model`, never through it). Online W needs the policy's
    log-probabilities of y+ and y- under x from exactly that forward, graph included, so it costs no extra pass.
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self.output: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self._model(*args, **kwargs)
        if self.output is None:
            self.output = output
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def mean_token_logps(log_probs: torch.Tensor, completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """π̃ of the chosen and the rejected answers: the mean per-token log-probability over each answer's tokens.

    ``log_probs``: the fused LM head's per-token log-probabilities of a [chosen; rejected] batch (shifted, as TRL
    reads them); ``completion_mask``: the collator's mask of the same batch.
    """
    mask = completion_mask[..., 1:]
    log_probs = log_probs[:, -mask.size(1) :]  # prompt-learning PEFT prepends virtual tokens, as TRL handles
    mean = (log_probs * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    chosen, rejected = mean.chunk(2, dim=0)
    return chosen, rejected


class SSOTrainer(DPOTrainer):
    """Train a policy on the SSO objective: TRL's DPO loss on the main pair plus W · β_G times both steering pairs'.

    Takes `DPOTrainer`'s arguments; ``args`` must be an `SSOConfig` and ``train_dataset`` rows must hold the
    conversations ``prompt`` (x), ``prompt_pos`` (x+), ``prompt_neg`` (x-), the assistant turns ``chosen`` (y+),
    ``rejected`` (y-), ``original`` (y°) and ``weight`` (offline W): `ssogen.training.data.load_sso_dataset` reads a
    build into that layout. Logs ``sso/W``, ``sso/loss_main``, ``sso/loss_pos``, ``sso/loss_neg`` and the policy's
    π̃ of y+ and y- under x (``sso/logp_chosen``, ``sso/logp_rejected``) beside TRL's own metrics.
    """

    _tag_names: ClassVar[list[str]] = ["trl", "dpo", "sso", "ssogen"]

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        args: SSOConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SSOConfig(f"{str(name).rstrip('/').split('/')[-1]}-SSO")
        if not isinstance(args, SSOConfig):
            raise TypeError(f"SSOTrainer needs an SSOConfig as args, not {type(args).__name__}.")
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        if self._is_vision_dataset:
            raise ValueError("SSOTrainer trains text conversations; this dataset holds images.")
        # Wrapped after DPOTrainer.__init__, which settles the pad token the collator pads with.
        if not isinstance(self.data_collator, DataCollatorForPreference):
            raise TypeError("SSOTrainer batches with TRL's DataCollatorForPreference; pass no data_collator.")
        self.data_collator = SSODataCollator(self.data_collator)

    # ---- data ----------------------------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: SSOConfig, dataset_name: str) -> Any:
        first = next(iter(dataset))
        missing = [c for c in REQUIRED_COLUMNS if c not in first]
        if missing and "pos_prompt_ids" not in first:
            raise ValueError(
                f"SSOTrainer: the {dataset_name} dataset lacks the columns {', '.join(missing)}; read a build with "
                "ssogen.training.data.load_sso_dataset."
            )
        if not is_conversational(first):
            raise ValueError(f"SSOTrainer: the {dataset_name} dataset must be conversational (lists of messages).")
        size = len(dataset) if hasattr(dataset, "__len__") else None
        # The main pair first, by TRL itself: its tokenization and its filter of prompts that fill max_length.
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if "pos_prompt_ids" in next(iter(dataset)):
            return dataset  # already prepared (TRL's evaluate prepares a dataset it is given again)
        # The steering pairs on the same rows, after TRL's filter: one dataset keeps the three pairs aligned.
        dataset = dataset.map(_tokenize_steering, fn_kwargs={"processing_class": processing_class})
        if args.max_length is not None and args.truncation_mode == "keep_start":
            # As TRL does for the main pair: a prompt that fills max_length leaves no answer token to learn from.
            limit = args.max_length
            dataset = dataset.filter(lambda e: max(len(e[p + "prompt_ids"]) for p in STEERING_PAIRS) < limit)
        if size is not None and len(dataset) < size:
            logger.warning(
                "SSOTrainer: %d of %d %s rows dropped: a prompt (x, x+ or x-) fills max_length=%s",
                size - len(dataset),
                size,
                dataset_name,
                args.max_length,
            )
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # The collator needs the steering ids and W; every other column is dropped before it, as for DPO.
        extra = [prefix + name for prefix in STEERING_PAIRS for name in _IDS] + [WEIGHT_KEY]
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *extra]))

    # ---- loss ----------------------------------------------------------------------------------------------------

    def _pair_losses(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The base loss of each row of one pair's batch ([preferred; dispreferred] rows), shape (rows,).

        Mirrors `DPOTrainer._compute_loss` of TRL 1.16 (policy forward through the fused LM head, the reference by
        `ref_model` or the adapter-disabled policy, summed log-probabilities, the loss switch) without its final mean
        over rows, which W must come before; `tests/test_training.py` checks that the mean of these per-row losses is
        TRL's loss on the same batch, for every type in `ROW_LOSS_TYPES`.
        """
        model_kwargs = {k: v for k, v in batch.items() if k != "completion_mask"}
        model_kwargs["use_cache"] = False
        completion_mask = batch["completion_mask"]
        seq_len = completion_mask.size(1) - 1
        labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
        logps = model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs[:, -seq_len:].sum(dim=1)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if is_peft_model(self.model) and self.ref_model is None:
                unwrapped = self.accelerator.unwrap_model(self.model)
                with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    ref_out = self.model(**model_kwargs, labels=labels, fused_lm_head=True)
            else:
                ref_out = self.ref_model(**model_kwargs, labels=labels, fused_lm_head=True)
        ref_logps = ref_out.log_probs[:, -seq_len:].sum(dim=1)
        chosen, rejected = (logps - ref_logps).chunk(2, dim=0)  # log-ratios against the reference
        delta = chosen - rejected
        chosen_len, rejected_len = completion_mask.sum(dim=1).clamp(min=1.0).chunk(2, dim=0)
        per_token_delta = chosen / chosen_len - rejected / rejected_len
        losses = {
            "sigmoid": lambda: -F.logsigmoid(self.beta * delta),
            "hinge": lambda: torch.relu(1 - self.beta * delta),
            "ipo": lambda: (per_token_delta - 1 / (2 * self.beta)) ** 2,
            "sigmoid_norm": lambda: -F.logsigmoid(self.beta * per_token_delta),
        }
        return sum(losses[t]() * w for t, w in zip(self.loss_types, self.loss_weights, strict=True))

    def _weights(
        self, inputs: dict[str, Any], chosen_logps: torch.Tensor, rejected_logps: torch.Tensor
    ) -> torch.Tensor:
        """W per row: the dataset's (offline) or sigmoid(-(α·π̃(y+|x) + (1-α)·π̃(y-|x))) of the policy (online)."""
        if self.args.w == "offline":
            return inputs[WEIGHT_KEY].to(chosen_logps.dtype)
        alpha = self.args.alpha
        weights = torch.sigmoid(-(alpha * chosen_logps + (1 - alpha) * rejected_logps))
        return weights.detach() if self.args.detach_w else weights

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        main = {k: v for k, v in inputs.items() if not k.startswith(_STEERING_KEYS)}
        policy = _FirstOutput(model)
        result = super()._compute_loss(policy, main, return_outputs)  # TRL's loss and metrics on the main pair
        main_loss = result[0] if return_outputs else result
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        chosen_logps, rejected_logps = mean_token_logps(policy.output.log_probs, main["completion_mask"])
        metrics = self._metrics[mode]
        metrics["sso/loss_main"].append(gather(main_loss.detach()).mean().item())
        metrics["sso/logp_chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["sso/logp_rejected"].append(gather(rejected_logps.detach()).mean().item())
        if self.args.beta_g == 0:
            return result  # the main pair only: exactly DPOTrainer, without the steering forwards
        weights = self._weights(inputs, chosen_logps, rejected_logps)
        pos, neg = (
            self._pair_losses(model, {k.removeprefix(prefix): v for k, v in inputs.items() if k.startswith(prefix)})
            for prefix in STEERING_PAIRS
        )
        loss = main_loss + self.args.beta_g * (weights * (pos + neg)).mean()
        metrics["sso/W"].append(gather(weights.detach()).mean().item())
        metrics["sso/loss_pos"].append(gather(pos.detach()).mean().item())
        metrics["sso/loss_neg"].append(gather(neg.detach()).mean().item())
        return (loss, result[1]) if return_outputs else loss
