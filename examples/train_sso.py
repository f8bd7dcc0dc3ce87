"""Train a policy on an ssogen build with the SSO objective, and save a checkpoint the next round can build from.

    python examples/train_sso.py --dataset out/round0 --output ckpt/round1
    ssogen build --model ckpt/round1 --round 1 --parent out/round0 --output out/round1

The objective (docs/training.md): L(x, y+, y-) + W · β_G · [L(x+, y+, y-) + L(x-, y°, y+)], on TRL's DPOTrainer.
By default it trains the model that generated the dataset (its ssogen.yaml), with the authors' recipe: IPO,
β = 0.2, β_G = 0.1, α = 0.66, W recomputed online. The checkpoint is a plain Hugging Face folder (config.json,
safetensors weights, the tokenizer with its chat template); with --lora the adapter is merged into it first, so
vLLM (and `ssogen build --model`) load it like any model. Needs the `train` extra (`pip install -e ".[train]"` in
a clone).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a policy on an ssogen build with the SSO objective (TRL) and save a checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, help="A folder written by `ssogen build`, or a Hub dataset id.")
    parser.add_argument(
        "--model", default=None, help="Policy to train (folder or Hub id); default: the dataset's generating model."
    )
    parser.add_argument("--output", required=True, type=Path, help="Folder the trained checkpoint is saved to.")
    parser.add_argument("--split", default="train", help="Split of the dataset's sso config to train on.")
    parser.add_argument("--max-steps", type=int, default=-1, help="Optimiser steps; -1: one pass over the split.")
    parser.add_argument(
        "--loss-type", default="ipo", choices=["sigmoid", "ipo", "hinge", "sigmoid_norm"], help="Base loss L."
    )
    parser.add_argument("--beta", type=float, default=0.2, help="β of the base loss (the authors' train.sh: 0.2).")
    parser.add_argument("--beta-g", type=float, default=0.1, help="β_G, weight of the steering pairs.")
    parser.add_argument("--alpha", type=float, default=0.66, help="α of W.")
    parser.add_argument(
        "--w",
        default="online",
        choices=["offline", "online"],
        help="W from the policy being trained (online, as the authors) or the dataset's weight column (offline).",
    )
    parser.add_argument("--detach-w", action="store_true", help="Online W as a constant in the backward pass.")
    parser.add_argument("--lora", type=int, default=None, metavar="R", help="Train a LoRA adapter of rank R.")
    parser.add_argument("--learning-rate", type=float, default=1e-6, help="Peak learning rate.")
    parser.add_argument("--batch-size", type=int, default=2, help="Queries per device per micro-batch.")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="Micro-batches per step.")
    parser.add_argument(
        "--max-length", type=int, default=2048, help="Tokens per sequence, prompt and answer (the authors' cutoff)."
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="Weights while training and in the checkpoint; auto: bfloat16 on a GPU that has it, else float32.",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Recompute activations in the backward pass (TRL's default): the three pairs' forwards would otherwise "
        "hold theirs until the backward (about 10 GB for the bundled 135M model, 2 queries of 48-token answers).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data order and of LoRA's initialisation.")
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train, save the checkpoint into ``args.output``, and return the logged training steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssogen.output.readback import load_build
    from ssogen.training import SSOConfig, SSOTrainer, generating_model, training_dataset

    build = load_build(args.dataset)
    dataset = training_dataset(build, args.split, alpha=args.alpha)
    if args.model is not None:
        model_path, revision = args.model, None
    else:
        source = generating_model(build)
        model_path, revision = source.path, source.revision
    print(f"dataset {build.source}: {len(dataset)} {args.split} rows; model {model_path}", flush=True)

    if args.dtype == "auto":
        # CPUs train in float32: bfloat16 there is slow and rounds away small updates.
        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(model_path, revision=revision, dtype=dtype)
    peft_config = None
    if args.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora, lora_alpha=2 * args.lora, target_modules="all-linear", task_type="CAUSAL_LM"
        )

    config = SSOConfig(
        output_dir=str(args.output),
        loss_type=[args.loss_type],
        beta=args.beta,
        beta_g=args.beta_g,
        alpha=args.alpha,
        w=args.w,
        detach_w=args.detach_w,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_steps=args.max_steps,
        num_train_epochs=1,
        max_length=args.max_length,
        bf16=dtype == torch.bfloat16,
        gradient_checkpointing=args.gradient_checkpointing,
        # The reference is reloaded from the same checkpoint (TRL does it when ref_model is None), at that revision.
        model_init_kwargs={"revision": revision} if revision else None,
        logging_steps=1,
        save_strategy="no",  # the checkpoint is saved once, below, as a plain model folder
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory only helps copies to a GPU
        seed=args.seed,
    )
    trainer = SSOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train()

    policy = trainer.accelerator.unwrap_model(trainer.model)
    if args.lora is not None:
        policy = policy.merge_and_unload()  # a plain model: vLLM loads no adapter-shaped folder as a model
    args.output.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(args.output)  # safetensors
    tokenizer.save_pretrained(args.output)  # with the chat template, which the next round's build needs
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def main(argv: list[str] | None = None) -> int:
    from ssogen.errors import SsogenError

    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        steps = train(args)
    except SsogenError as exc:  # not a build, no such split, a model not found: one line, as `ssogen` prints it
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    keys = ("loss", "sso/loss_main", "sso/loss_pos", "sso/loss_neg", "sso/W", "sso/logp_chosen", "sso/logp_rejected")
    for entry in steps:
        figures = "  ".join(f"{key} {entry[key]:.4f}" for key in keys if key in entry)
        print(f"step {entry['step']}  {figures}", flush=True)
    print(f"saved {args.output}", flush=True)
    return 0 if all(math.isfinite(entry["loss"]) for entry in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
