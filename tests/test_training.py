"""SSOTrainer (`ssogen.training`): the SSO objective on TRL, term by term, and one full iteration to round 1.

    loss = mean over rows of  L(x, y+, y-) + W · β_G · [ L(x+, y+, y-) + L(x-, y°, y+) ]

Every term is checked against something computed without the trainer: TRL's own `DPOTrainer` on the published
views (`dpo`, `steer_pos`, `steer_neg`), and W from plain transformers on the policy. Most tests use a tiny randomly
initialised Llama with the bundled model's tokenizer; the ones whose assertion needs a policy with realistic
log-probabilities (online W, its gradient) use the bundled SmolLM2-135M. The iteration test builds round 1 with a
real engine from a checkpoint `examples/train_sso.py` trained on the session's round-0 build.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from trl import DPOConfig, DPOTrainer

from ssogen.errors import UsageError
from ssogen.output.views import dpo_row, steer_neg_row, steer_pos_row
from ssogen.training import SSOConfig, SSOTrainer
from ssogen.training.config import ROW_LOSS_TYPES
from ssogen.training.data import GeneratingModel, generating_model, load_sso_dataset, training_row
from ssogen.training.trainer import split_pair
from tests.conftest import REPO, TRAINER_ARGS, make_record, run_cli, tiny_config

EXAMPLE = REPO / "examples" / "train_sso.py"
EXAMPLE_FLAGS = (
    "--dataset", "--model", "--output", "--max-steps", "--loss-type", "--beta", "--beta-g", "--alpha", "--w", "--lora",
    "--learning-rate", "--batch-size", "--gradient-accumulation-steps", "--split",
)  # fmt: skip
ALPHA = 0.66

# Every row goes through whole, in all three pairs (tests/conftest.py).
COMMON_ARGS = {**TRAINER_ARGS, "per_device_train_batch_size": 3}

# Three queries whose answers differ in content and length, so every row's losses differ.
RECORDS = [
    make_record(
        0,
        prompt="How do I sort a list in Python?",
        chosen="Call sorted(items); it returns a new sorted list.",
        rejected="Lists cannot be sorted.",
        original="Use list.sort() to sort in place, or sorted() for a copy.",
    ),
    make_record(
        1,
        prompt="What is the capital of France?",
        chosen="Paris.",
        rejected="The capital of France is Berlin, a city famous for its cheese.",
        original="The capital of France is Paris.",
        system="Answer briefly.",
    ),
    make_record(
        2,
        prompt="Name a prime number.",
        chosen="Seven is prime: its only divisors are one and itself.",
        rejected="Nine.",
        original="Two.",
        context=[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"}],
    ),
]


pytestmark = pytest.mark.usefixtures("offline_training")


def tiny_model(tokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(tokenizer))


@pytest.fixture
def tiny_pair(trl_tokenizer):
    """(policy, reference): two different random models, so that no loss sits at its untrained constant."""
    return tiny_model(trl_tokenizer, 0), tiny_model(trl_tokenizer, 1)


def _trainer(trainer_class, config_class, rows, policy, ref, tokenizer, out: Path, **settings):
    """A trainer of copies of the tiny pair on `rows`, with the shared run arguments and these settings."""
    return trainer_class(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(ref),
        args=config_class(output_dir=str(out), **{**COMMON_ARGS, **settings}),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


sso_trainer = functools.partial(_trainer, SSOTrainer, SSOConfig)
dpo_trainer = functools.partial(_trainer, DPOTrainer, DPOConfig)


def batch_of(trainer, rows: list[int] | None = None) -> dict:
    rows = range(len(trainer.train_dataset)) if rows is None else rows
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in rows]))


def loss_of(trainer, batch: dict) -> float:
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def trl_row_losses(view, policy, ref, tokenizer, out: Path, **settings) -> list[float]:
    """TRL's own DPO loss of each record's pair in `view` (a published view's row function), one row at a time."""
    trainer = dpo_trainer([view(r) for r in RECORDS], policy, ref, tokenizer, out, **settings)
    return [loss_of(trainer, batch_of(trainer, [i])) for i in range(len(RECORDS))]


def mean_token_logp(model, tokenizer, prompt: list[dict], answer: str) -> torch.Tensor:
    """π̃(answer | prompt) with plain transformers: the mean log-probability of the answer's tokens, the
    assistant turn as the chat template renders it (its end-of-turn token included)."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}])["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    logits = model(torch.tensor([full_ids])).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(full_ids[1:])[:, None])[:, 0]
    return logps[len(prompt_ids) - 1 :].mean()


# ---- the rows ----------------------------------------------------------------------------------------------------


def test_training_rows_hold_the_three_pairs_conversations_as_the_published_views():
    record = RECORDS[2]
    row = training_row(record)
    assert (row["prompt"], row["chosen"], row["rejected"]) == (
        dpo_row(record)["prompt"],
        dpo_row(record)["chosen"],
        dpo_row(record)["rejected"],
    )
    assert row["prompt_pos"] == steer_pos_row(record)["prompt"]
    assert row["prompt_neg"] == steer_neg_row(record)["prompt"]
    assert row["original"] == [{"role": "assistant", "content": record["original"]}]
    # The earlier turns of the conversation come first in every prompt; the steering message first of all.
    assert row["prompt_pos"][0] == {"role": "system", "content": "be good"}
    assert row["prompt_pos"][1:] == row["prompt"]


def test_training_rows_put_the_steering_in_the_user_turn_when_generation_did():
    record = make_record(1, steering_in_user=True, system="You are terse.")
    row = training_row(record)
    assert row["prompt"] == [{"role": "user", "content": "You are terse.\n\nquestion 1"}]
    assert row["prompt_pos"] == [{"role": "user", "content": "be good\n\nYou are terse.\n\nquestion 1"}]
    assert row["prompt_neg"] == [{"role": "user", "content": "be bad\n\nYou are terse.\n\nquestion 1"}]


def test_training_rows_recompute_w_from_the_recorded_log_probs_for_another_alpha():
    record = make_record(3, logp_chosen=-0.5, logp_rejected=-2.5, weight=0.123, alpha=0.5)
    assert training_row(record)["weight"] == 0.123  # the build's own W
    assert training_row(record, alpha=0.5)["weight"] == 0.123  # the build's α: its W, to the bit
    assert training_row(record, alpha=0.9)["weight"] == pytest.approx(1 / (1 + math.exp(-(0.9 * 0.5 + 0.1 * 2.5))))


def test_generating_model_is_read_from_the_builds_settings(bundled_model, tmp_path):
    def build(settings: dict, run: dict) -> object:
        return type("B", (), {"settings": {"settings": settings, "run": run}, "run": run, "source": "b"})()

    bundled = build({"model": None}, {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert generating_model(bundled) == GeneratingModel(path=bundled_model.path, revision=None)
    assert generating_model(build({"model": str(tmp_path)}, {"model": tmp_path.name})).path == str(tmp_path)
    sha = "a" * 40
    assert generating_model(build({"model": "org/name"}, {"model": "org/name", "model_revision": sha})) == (
        GeneratingModel(path="org/name", revision=sha)
    )
    with pytest.raises(UsageError, match="not a folder on this machine"):
        generating_model(build({"model": str(tmp_path / "gone")}, {"model": "gone"}))


# ---- the config --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"loss_type": "aot"}, "loss_type"),
        ({"loss_type": ["ipo", "sft"]}, "loss_type"),
        ({"precompute_ref_log_probs": True}, "precompute_ref_log_probs"),
        ({"use_weighting": True}, "use_weighting"),
        ({"ld_alpha": 0.5}, "ld_alpha"),
        ({"f_divergence_type": "js_divergence"}, "f_divergence_type"),
        ({"w": "sometimes"}, "w"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_config_refuses_what_cannot_be_weighted_per_row_naming_the_field(setting, field, tmp_path):
    with pytest.raises(ValueError, match=rf"^SSOConfig\.{field}: "):
        SSOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **setting)


def test_config_defaults_are_the_authors_sso_settings_on_trls_dpo_defaults(tmp_path):
    config = SSOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    dpo = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert (config.beta_g, config.alpha, config.w, config.detach_w) == (0.1, 0.66, "online", False)
    assert (config.loss_type, config.beta) == (dpo.loss_type, dpo.beta)


# ---- the objective -----------------------------------------------------------------------------------------------


def test_steering_pairs_are_split_as_trl_splits_the_main_pair(tiny_pair, trl_tokenizer, tmp_path):
    trainer = sso_trainer([training_row(r) for r in RECORDS], *tiny_pair, trl_tokenizer, tmp_path)
    for row, prepared in zip(RECORDS, trainer.train_dataset, strict=True):
        main = training_row(row)
        # Our split applied to the main pair gives TRL's own token ids for it.
        assert split_pair(trl_tokenizer, main["prompt"], main["chosen"], main["rejected"], main) == (
            prepared["prompt_ids"],
            prepared["chosen_ids"],
            prepared["rejected_ids"],
        )
        assert row["system_pos"] in trl_tokenizer.decode(prepared["pos_prompt_ids"])
        assert row["system_neg"] in trl_tokenizer.decode(prepared["neg_prompt_ids"])
        assert trl_tokenizer.decode(prepared["neg_chosen_ids"]).startswith(row["original"])  # y° preferred under x-
        assert trl_tokenizer.decode(prepared["neg_rejected_ids"]).startswith(row["chosen"])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_with_beta_g_zero_the_loss_is_trls_dpo_loss_on_the_main_pairs(loss_type, tiny_pair, trl_tokenizer, tmp_path):
    sso = sso_trainer(
        [training_row(r) for r in RECORDS], *tiny_pair, trl_tokenizer, tmp_path / "s", loss_type=loss_type, beta_g=0.0
    )
    dpo = dpo_trainer([dpo_row(r) for r in RECORDS], *tiny_pair, trl_tokenizer, tmp_path / "d", loss_type=loss_type)
    sso_batch, dpo_batch = batch_of(sso), batch_of(dpo)
    assert torch.equal(sso_batch["input_ids"], dpo_batch["input_ids"])
    loss = loss_of(sso, sso_batch)
    assert loss == pytest.approx(loss_of(dpo, dpo_batch), rel=1e-6, abs=0)
    untrained = math.log(2) if loss_type == "sigmoid" else (1 / (2 * 0.1)) ** 2  # the loss when policy == reference
    assert abs(loss - untrained) > 1e-3


@pytest.mark.parametrize(
    "settings",
    [*({"loss_type": t} for t in ROW_LOSS_TYPES), {"loss_type": ["sigmoid", "ipo"], "loss_weights": [0.3, 0.7]}],
)
def test_per_row_base_losses_average_to_trls_loss_on_the_same_batch(settings, tiny_pair, trl_tokenizer, tmp_path):
    trainer = sso_trainer([training_row(r) for r in RECORDS], *tiny_pair, trl_tokenizer, tmp_path, **settings)
    batch = batch_of(trainer)
    main = {key: batch[key] for key in ("input_ids", "attention_mask", "completion_mask")}
    with torch.no_grad():
        per_row = trainer._pair_losses(trainer.model, main)
        trl_loss = DPOTrainer._compute_loss(trainer, trainer.model, main, False)
    assert per_row.shape == (len(RECORDS),)
    assert len({round(v, 6) for v in per_row.tolist()}) == len(RECORDS)  # rows differ: a real per-row loss
    assert per_row.mean().item() == pytest.approx(trl_loss.item(), rel=1e-5)


@pytest.mark.parametrize("w", ["offline", "online"])
@pytest.mark.slow
def test_doubling_beta_g_doubles_the_steering_part(w, tiny_pair, trl_tokenizer, tmp_path):
    trainer = sso_trainer([training_row(r) for r in RECORDS], *tiny_pair, trl_tokenizer, tmp_path, w=w, loss_type="ipo")
    batch = batch_of(trainer)
    losses = {}
    for beta_g in (0.0, 0.1, 0.2):
        trainer.args.beta_g = beta_g
        losses[beta_g] = loss_of(trainer, batch)
    steering = losses[0.1] - losses[0.0]
    assert steering > 1e-3
    assert losses[0.2] - losses[0.0] == pytest.approx(2 * steering, rel=1e-5)


@pytest.mark.slow
def test_offline_w_scales_each_rows_steering_losses_which_are_trls_on_the_steering_views(
    tiny_pair, trl_tokenizer, tmp_path
):
    weights = [0.0, 0.8, 0.3]  # row 0's steering pairs must not count at all
    rows = [{**training_row(r), "weight": w} for r, w in zip(RECORDS, weights, strict=True)]
    beta_g = 0.5
    trainer = sso_trainer(rows, *tiny_pair, trl_tokenizer, tmp_path / "s", w="offline", beta_g=beta_g, loss_type="ipo")
    loss = loss_of(trainer, batch_of(trainer))
    # Each term by TRL's own DPO trainer on the published views, one row at a time.
    main, pos, neg = (
        trl_row_losses(view, *tiny_pair, trl_tokenizer, tmp_path / name, loss_type="ipo")
        for view, name in ((dpo_row, "d"), (steer_pos_row, "p"), (steer_neg_row, "n"))
    )
    expected = [m + w * beta_g * (p + n) for m, w, p, n in zip(main, weights, pos, neg, strict=True)]
    assert loss == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    # Row 0's steering losses are real, so leaving out its W = 0 would change the loss beyond the tolerance.
    assert beta_g * (pos[0] + neg[0]) / len(expected) > 1e-3 * loss


@pytest.fixture(scope="module")
def smol_pair(bundled_model):
    """The bundled SmolLM2-135M as policy and reference (float32). A random model's π̃ is about -10.8, so its W is 1
    to five digits and W(1 - W), the size of W's gradient, about 0: this model's π̃ keep both measurable."""
    policy = AutoModelForCausalLM.from_pretrained(bundled_model.path, dtype=torch.float32)
    return policy, copy.deepcopy(policy)


def online_w_setup(smol_pair, tokenizer, out: Path, **settings):
    """An online-W trainer on two records, its batch, and W of each row from plain transformers on the policy."""
    records = RECORDS[:2]
    trainer = sso_trainer(
        [training_row(r) for r in records], *smol_pair, tokenizer, out, w="online", alpha=ALPHA, loss_type="ipo",
        beta_g=1.0, **settings,
    )  # fmt: skip
    policy = trainer.model
    expected = []
    for record in records:
        prompt = dpo_row(record)["prompt"]
        chosen, rejected = (mean_token_logp(policy, tokenizer, prompt, record[k]) for k in ("chosen", "rejected"))
        expected.append(torch.sigmoid(-(ALPHA * chosen + (1 - ALPHA) * rejected)))
    return trainer, batch_of(trainer), expected


def steering_losses(trainer, batch) -> list[float]:
    """Each row's unweighted steering loss L(x+, y+, y-) + L(x-, y°, y+), read off the trainer with offline W = 1 for
    that row and 0 for the others (the steering part is linear in W, as the offline test checks)."""
    args, rows = trainer.args, len(batch["sso_weight"])
    beta_g, args.beta_g = args.beta_g, 0.0
    main = loss_of(trainer, batch)
    args.beta_g, args.w = beta_g, "offline"
    losses = []
    for i in range(rows):
        one_hot = {**batch, "sso_weight": F.one_hot(torch.tensor(i), rows).float()}
        losses.append((loss_of(trainer, one_hot) - main) * rows / beta_g)
    args.w = "online"
    return losses


@pytest.mark.slow
def test_online_w_is_the_formula_on_the_policys_own_mean_token_log_probs(smol_pair, trl_tokenizer, tmp_path):
    trainer, batch, expected = online_w_setup(smol_pair, trl_tokenizer, tmp_path)
    expected = [w.item() for w in expected]
    assert all(0.5 < w < 0.995 for w in expected) and abs(expected[0] - expected[1]) > 1e-3, expected
    steering = steering_losses(trainer, batch)
    trainer.args.beta_g = 0.0
    main = loss_of(trainer, batch)
    trainer.args.beta_g = 1.0
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    metrics.clear()
    loss = loss_of(trainer, batch)
    # Each row's steering loss scaled by its own W, W computed independently of the trainer.
    assert loss - main == pytest.approx(sum(w * s for w, s in zip(expected, steering, strict=True)) / 2, rel=1e-4)
    assert metrics["sso/W"] == [pytest.approx(sum(expected) / 2, rel=1e-5)]


@pytest.mark.slow
def test_online_w_carries_its_gradient_unless_detached(smol_pair, trl_tokenizer, tmp_path):
    trainer, batch, expected = online_w_setup(smol_pair, trl_tokenizer, tmp_path)
    steering = steering_losses(trainer, batch)
    param = trainer.model.model.norm.weight

    def grad_of(value: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(value, param, retain_graph=True)[0]

    with_w = grad_of(trainer.compute_loss(trainer.model, batch))  # the authors' way, the default
    trainer.args.detach_w = True
    detached = grad_of(trainer.compute_loss(trainer.model, batch))
    # What W itself contributes, β_G · mean_i(s_i · ∇W_i) with W_i from plain transformers, is exactly the difference:
    # present by default, absent when detached.
    through_w = grad_of(sum(w * s for w, s in zip(expected, steering, strict=True)) / 2)
    assert through_w.norm() > 1e-2 * detached.norm()
    assert torch.allclose(with_w - detached, through_w, rtol=1e-3, atol=1e-3 * through_w.abs().max().item())


# ---- training ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w", ["offline", "online"])
@pytest.mark.slow
def test_two_optimiser_steps_with_gradient_accumulation_train_every_step(w, tiny_pair, trl_tokenizer, tmp_path):
    policy, _ = tiny_pair
    trainer = sso_trainer(
        [training_row(r) for r in RECORDS], *tiny_pair, trl_tokenizer, tmp_path, w=w, loss_type="ipo",
        per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3,
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 2
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2, trainer.state.log_history
    for entry in logged:
        assert all(math.isfinite(entry[k]) for k in ("loss", "sso/loss_main", "sso/loss_pos", "sso/loss_neg"))
        assert 0 < entry["sso/W"] <= 1
    before, after = policy.model.norm.weight, trainer.model.model.norm.weight
    assert not torch.equal(before, after.detach()), "the optimiser did not move the policy"


@pytest.mark.slow
def test_lora_trains_the_adapter_against_the_adapter_disabled_reference(tiny_pair, trl_tokenizer, tmp_path):
    from peft import LoraConfig, PeftModel

    policy, _ = tiny_pair
    args = SSOConfig(output_dir=str(tmp_path), **{**COMMON_ARGS, "learning_rate": 1e-2}, loss_type="ipo")
    trainer = SSOTrainer(
        model=copy.deepcopy(policy),
        args=args,
        train_dataset=Dataset.from_list([training_row(r) for r in RECORDS]),
        processing_class=trl_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert isinstance(trainer.model, PeftModel) and trainer.ref_model is None  # the reference: adapter disabled
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(e["loss"]) and 0 < e["sso/W"] <= 1 for e in logged)
    params = dict(trainer.model.named_parameters())
    lora_b = [p for name, p in params.items() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA's B starts at zero: it moved
    base = params["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert torch.equal(base, policy.model.layers[0].self_attn.q_proj.weight)  # the base stayed frozen


# ---- examples/train_sso.py ---------------------------------------------------------------------------------------


def load_example():
    spec = importlib.util.spec_from_file_location("train_sso", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_sso_help_lists_the_methods_settings():
    result = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in EXAMPLE_FLAGS:
        assert f"{flag} " in result.stdout, flag
    args = load_example().parse_args(["--dataset", "d", "--output", "o"])
    assert (args.loss_type, args.beta, args.beta_g, args.alpha, args.w) == ("ipo", 0.2, 0.1, 0.66, "online")
    assert args.model is None and args.lora is None


def write_build(folder: Path, model: Path) -> None:
    """A build folder as `ssogen build` writes it, of RECORDS, generated (it says) by `model`."""
    from ssogen.config import BuildConfig
    from ssogen.generation.plan import run_settings
    from ssogen.inputs.library import Templates
    from ssogen.inputs.models import ModelRef
    from ssogen.output.export import export_folder
    from ssogen.output.store import OutputFolder

    output = OutputFolder(folder)
    settings = run_settings(BuildConfig(model=str(model)), ModelRef(str(model), model.name, "local:x"), Templates(None))
    output.prepare(settings, overwrite=False)
    output.write_chunk([{**r, "drop_reason": None} for r in RECORDS])
    order = [r["prompt_id"] for r in RECORDS]
    export_folder(output, order, templates=Templates(None), settings=settings, seed=0, test_size=0.0)


@pytest.mark.slow
def test_train_sso_with_lora_saves_a_merged_plain_checkpoint_of_the_generating_model(
    tiny_pair, trl_tokenizer, tmp_path, capsys
):
    from ssogen.inputs.models import resolve_model

    base = tmp_path / "base"
    tiny_pair[0].save_pretrained(base)
    trl_tokenizer.save_pretrained(base)
    write_build(tmp_path / "round0", base)
    out = tmp_path / "ckpt"
    argv = f"--dataset {tmp_path / 'round0'} --output {out} --max-steps 2 --lora 4 --learning-rate 1e-2"
    code = load_example().main([*argv.split(), "--batch-size", "2", "--max-length", "512"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"model {base}" in printed  # trained the model the build's ssogen.yaml names
    assert [line.split()[:2] for line in printed.splitlines() if line.startswith("step ")] == [
        ["step", "1"],
        ["step", "2"],
    ]
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files and "adapter_config.json" not in files
    trained = AutoModelForCausalLM.from_pretrained(out)
    assert type(trained) is LlamaForCausalLM  # merged: a plain model, no adapter modules
    assert not torch.equal(
        trained.model.layers[0].self_attn.q_proj.weight, tiny_pair[0].model.layers[0].self_attn.q_proj.weight
    )
    assert AutoTokenizer.from_pretrained(out).chat_template == trl_tokenizer.chat_template
    assert resolve_model(str(out)).path == str(out)  # what `ssogen build --model` resolves


# ---- one iteration: round 0 -> train -> round 1 ------------------------------------------------------------------


def gap(model_path: str, tokenizer, rows: list[dict]) -> float:
    """Mean over rows of π̃(y+|x) − π̃(y-|x) under the model at `model_path`, with plain transformers."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        gaps = [
            mean_token_logp(model, tokenizer, row["prompt"], row["chosen"][0]["content"])
            - mean_token_logp(model, tokenizer, row["prompt"], row["rejected"][0]["content"])
            for row in rows
        ]
    return float(sum(gaps) / len(gaps))


# One step of two queries at this learning rate moved the gap by 0.14 (the 9-query build of 48-token answers;
# two steps moved it by 0.22): the margin is a third of that. Measured numbers: docs/training.md.
LOOP_STEPS = 1
LOOP_LEARNING_RATE = "2e-5"
LOOP_GAP_MARGIN = 0.05


@pytest.mark.engine
def test_one_iteration_trains_round_0_into_a_checkpoint_that_builds_round_1(
    built_folder, bundled_model, trl_tokenizer, tmp_path, capsys
):
    round0, checkpoint, round1 = built_folder, tmp_path / "ckpt-round1", tmp_path / "round1"
    settings0 = yaml.safe_load((round0 / "ssogen.yaml").read_text())["settings"]

    # Train, as a user runs it (its `--help` runs as a script above): the model defaults to the one that
    # generated round 0 (the bundled one).
    argv = ["--dataset", str(round0), "--output", str(checkpoint), "--max-steps", str(LOOP_STEPS),
            "--learning-rate", LOOP_LEARNING_RATE, "--batch-size", "2"]  # fmt: skip
    code = load_example().main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert f"model {bundled_model.path}" in printed
    steps = [line for line in printed.splitlines() if line.startswith("step ")]
    assert len(steps) == LOOP_STEPS, printed
    print("\n".join(steps))

    # The direction the objective pushes: y+ up against y- under x, on the rows trained on.
    rows = load_sso_dataset(str(round0))
    before, after = gap(bundled_model.path, trl_tokenizer, rows), gap(str(checkpoint), trl_tokenizer, rows)
    print(f"mean π̃(y+|x) − π̃(y-|x) over {len(rows)} rows: base {before:.4f}, trained {after:.4f}")
    assert after > before + LOOP_GAP_MARGIN, (before, after)

    # Round 1 from the checkpoint, on the same query file (a few queries, short answers).
    query_options = [
        arg
        for key in ("query_column", "query_split", "query_config")
        if settings0.get(key)
        for arg in (f"--{key.replace('_', '-')}", str(settings0[key]))
    ]
    build = run_cli(
        "build", "--model", str(checkpoint), "--round", "1", "--parent", str(round0),
        "--queries", settings0["queries"], *query_options,
        "--limit", "3", "--max-new-tokens", "32", "--enforce-eager", "--output", str(round1),
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    saved = yaml.safe_load((round1 / "ssogen.yaml").read_text())
    assert saved["run"]["round"] == 1 and saved["settings"]["round"] == 1
    assert saved["settings"]["parent"] == str(round0)
    assert saved["settings"]["model"] == str(checkpoint) and saved["run"]["model"] == checkpoint.name
    card = (round1 / "README.md").read_text()
    assert f"`{checkpoint.name}`" in card and "SSO round **1**" in card
    assert f"Previous round's dataset: `{round0}`" in card  # a local folder: named, not linked

    inspect = run_cli("inspect", str(round1), "--compare", str(round0))
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    assert "round 1" in inspect.stdout and "round 0" in inspect.stdout, inspect.stdout
