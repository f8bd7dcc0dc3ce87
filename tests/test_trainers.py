"""Real TRL trainers consume the preference views a build writes.

Each test loads one config of a built folder exactly as a user would (`datasets.load_dataset(folder, config)`),
hands it unchanged, extra `prompt_id` / `weight` columns included, to TRL's own trainer with a tiny randomly
initialised Llama that uses the bundled model's real tokenizer and chat template, and trains two optimiser steps
on the CPU. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from transformers import LlamaForCausalLM, LlamaForSequenceClassification
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

from tests.conftest import TRAINER_ARGS, tiny_config

STEPS = 2
BATCH = 2

# Shared by DPOConfig and RewardConfig (tests/conftest.py).
COMMON_ARGS = {**TRAINER_ARGS, "max_steps": STEPS, "per_device_train_batch_size": BATCH}


pytestmark = pytest.mark.usefixtures("offline_training")


def load_view(folder: Path, config: str):
    dataset = load_dataset(str(folder), config, split="train")
    # Fewer rows than STEPS * BATCH is fine: the trainer cycles through the split until max_steps.
    assert len(dataset) > 0, f"the {config!r} view of {folder} has no train rows"
    return dataset


def assert_trained(trainer, dataset) -> None:
    """Every row survived TRL's preprocessing, both steps ran and every logged loss is a finite number."""
    assert len(trainer.train_dataset) == len(dataset), "TRL dropped rows of the view (too long or unreadable)"
    # The extra columns went in untouched; TRL's Trainer leaves them out of the batches itself.
    assert {"prompt_id", "weight"} <= set(trainer.train_dataset.column_names)
    assert trainer.state.global_step == STEPS
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses, f"no training loss was logged: {trainer.state.log_history}"
    assert all(math.isfinite(loss) for loss in losses), losses


def train_dpo(folder: Path, config: str, tokenizer, output_dir: Path):
    dataset = load_view(folder, config)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(tokenizer))
    # A model built in memory has no path TRL could reload the reference from, so pass a frozen copy of it.
    ref_model = copy.deepcopy(model)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=DPOConfig(output_dir=str(output_dir), **COMMON_ARGS),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    assert_trained(trainer, dataset)
    return dataset, trainer


def test_trl_dpo_trainer_trains_two_steps_on_the_dpo_view(built_folder, trl_tokenizer, tmp_path):
    dataset, trainer = train_dpo(built_folder, "dpo", trl_tokenizer, tmp_path)
    # TRL split prompt and answer where we meant: the answer tokens are exactly the assistant turn.
    first = trainer.train_dataset[0]
    assert trl_tokenizer.decode(first["chosen_ids"]).startswith(dataset[0]["chosen"][0]["content"])
    assert dataset[0]["prompt"][-1]["content"] in trl_tokenizer.decode(first["prompt_ids"])


def test_steering_views_train_with_dpo(built_folder, trl_tokenizer, tmp_path):
    """steer_pos puts a system turn before the user turn; the chat template must render it in the prompt."""
    dataset, trainer = train_dpo(built_folder, "steer_pos", trl_tokenizer, tmp_path)
    system = dataset[0]["prompt"][0]
    assert system["role"] == "system"
    assert system["content"] in trl_tokenizer.decode(trainer.train_dataset[0]["prompt_ids"])


def test_trl_reward_trainer_trains_two_steps_on_the_reward_view(built_folder, trl_tokenizer, tmp_path):
    dataset = load_view(built_folder, "reward")
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_config(trl_tokenizer, num_labels=1))
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(output_dir=str(tmp_path), **COMMON_ARGS),
        train_dataset=dataset,
        processing_class=trl_tokenizer,
    )
    trainer.train()
    assert_trained(trainer, dataset)
    # Each side is scored as the whole conversation: the user turn and the answer in one sequence.
    assert [turn["role"] for turn in dataset[0]["chosen"]] == ["user", "assistant"]
    chosen = trl_tokenizer.decode(trainer.train_dataset[0]["chosen_ids"])
    assert all(turn["content"] in chosen for turn in dataset[0]["chosen"])
