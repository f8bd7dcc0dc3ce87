"""`ssogen audit`: every row gets P in [0, 1] from both orders, swapping y+ and y- gives 1 − P row by row, the
`audit` config loads with `datasets`, the card and inspect's report show it, `--push` publishes it in one
commit, a reward model runs through vLLM's pooling runner, and bad input exits 2 with nothing written.

Order matters on a shared 2-core machine: the tests that start an engine of their own (the CLI in its own
process, the reward model) come first, before the session's engine (tests/conftest.py) is started for the
in-process audits, so no two engines of this file run at once.
"""

from __future__ import annotations

import io
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import HfApi
from matplotlib.image import imread
from rich.console import Console

from ssogen.cli import main
from ssogen.inputs.library import resource_dir
from ssogen.output.audit_summary import PAIRS, similar_length, summarize_audit, wilson_interval
from ssogen.reading.audit import AuditOptions, plan_audit, run_audit
from tests.conftest import make_record, run_cli
from tests.hubtest import REPO, TOKEN, Hub
from tests.test_bad_input import model_without_chat_template
from tests.test_inspect import assert_real_png, cell, inspect_text, number, table, write_build
from tests.test_publish import local_files, without_gitattributes

QUIET = Console(file=io.StringIO(), width=240)


def copy_build(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ssogen"))
    return target


def folder_state(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def audit_frame(folder: Path) -> pd.DataFrame:
    files = sorted((folder / "data" / "audit").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def sso_frame(folder: Path) -> pd.DataFrame:
    files = sorted((folder / "data" / "sso").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def synthetic_build(root: Path, n: int = 4) -> Path:
    """A folder in the layout `ssogen build` writes (no engine), recorded as built by the bundled model."""
    folder = write_build(root, [make_record(i) for i in range(n)], [])
    settings = {"run": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "round": 0, "seed": 0}, "settings": {}}
    (folder / "ssogen.yaml").write_text(yaml.safe_dump(settings))
    return folder


# --- bad input: exit 2, a message naming the culprit, nothing written (no engine starts) -----------------------


def folder_without_data(root: Path) -> Path:
    root.mkdir()
    return write_build(root, None, None)


def edited_template(tmp_path: Path, old: str, new: str) -> str:
    """A --prompts folder holding the bundled judge template with one edit."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    text = (resource_dir("prompts") / "audit_pairwise.j2").read_text()
    assert old in text
    (folder / "audit_pairwise.j2").write_text(text.replace(old, new))
    return str(folder)


BAD_INPUT = {
    "folder without sso": (lambda t, m: (str(folder_without_data(t / "b")), []), ["no data/sso", "ssogen build"]),
    "all rows dropped": (
        lambda t, m: (
            str(write_build(t / "b", None, [{"prompt_id": "d", "prompt": "q", "reason": "x", "features": []}])),
            [],
        ),
        ["no kept rows", "nothing to audit"],
    ),
    "judge without a chat template": (
        lambda t, m: (str(synthetic_build(t / "b")), ["--judge", model_without_chat_template(t, m)]),
        ["--judge", "no chat template"],
    ),
    "template missing a label": (
        lambda t, m: (str(synthetic_build(t / "b")), ["--prompts", edited_template(t, '{% set label_b = "B" -%}', "")]),
        ["--prompts", "audit_pairwise.j2", "label_b"],
    ),
    "label that is not one token": (
        lambda t, m: (
            str(synthetic_build(t / "b")),
            ["--prompts", edited_template(t, 'label_b = "B"', 'label_b = "Bravo Zulu"')],
        ),
        ["--prompts", "not a single token", "Bravo Zulu"],
    ),
    "reward kind with a chat model": (
        lambda t, m: (str(synthetic_build(t / "b")), ["--judge-kind", "reward"]),
        ["--judge-kind reward", "not a sequence-classification"],
    ),
    "limit of zero": (lambda t, m: (str(synthetic_build(t / "b")), ["--limit", "0"]), ["--limit", "at least 1"]),
    "hub id without output": (lambda t, m: ("someone/some-dataset", []), ["--output", "a Hub dataset"]),
    "bad push id": (lambda t, m: (str(synthetic_build(t / "b")), ["--push", "no-slash"]), ["ORG/NAME"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_naming_the_flag_and_writes_nothing(case, tmp_path, bundled_model, capsys):
    make, expected = BAD_INPUT[case]
    target, flags = make(tmp_path, bundled_model.path)
    before = folder_state(tmp_path)
    code = main(["audit", target, *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text in err, (case, err)
    assert "Traceback" not in err
    assert folder_state(tmp_path) == before


def test_cli_with_limit_and_sample_together_is_a_usage_error(tmp_path):
    folder = synthetic_build(tmp_path / "b")
    result = run_cli("audit", str(folder), "--limit", "2", "--sample", "2")
    assert result.returncode == 2
    assert "--sample: not allowed with argument --limit" in result.stderr
    assert not (folder / "data" / "audit").exists()


@pytest.mark.slow
def test_sample_is_seeded_and_limit_takes_the_first_rows(tmp_path):
    folder = synthetic_build(tmp_path / "b", n=12)
    ids = [make_record(i)["prompt_id"] for i in range(12)]

    def chosen(**flags) -> list[str]:
        return [r["prompt_id"] for r in plan_audit(AuditOptions(target=str(folder), **flags)).rows]

    assert chosen(limit=5) == ids[:5]
    first = chosen(sample=5, seed=3)
    assert len(set(first)) == 5 and first == chosen(sample=5, seed=3)
    assert first == [i for i in ids if i in first]  # kept in the build's order
    assert any(chosen(sample=5, seed=s) != first for s in range(4, 8))
    assert chosen(sample=50) == ids  # more than there are: every row


# --- the figures, on a table whose answers are known ------------------------------------------------------------


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81 of 263 -> 0.2553 to 0.3662; 15 of 148.
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson_interval(15, 148)
    assert (round(low, 4), round(high, 4)) == (0.0624, 0.1605)
    assert all(wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0 for n in range(1, 50))
    assert wilson_interval(0, 0) is None


def test_summary_figures_equal_pandas_on_the_same_verdicts():
    rows = []
    for i in range(20):
        for pair, (preferred, other) in PAIRS.items():
            p = (i * 0.37 + (0.2 if pair == "main" else 0.0)) % 1.0
            first, second = min(1.0, p + 0.3 * (i % 3 - 1)), max(0.0, p - 0.3 * (i % 3 - 1))
            rows.append(
                {
                    "prompt_id": f"{i:04d}", "pair": pair, "preferred": preferred, "other": other, "p": p,
                    "agrees": p > 0.5, "margin": math.log(p + 1e-9) - math.log(1 - p + 1e-9),
                    "p_preferred_first": first, "p_preferred_second": second,
                    "position_consistent": (first > 0.5) == (second > 0.5), "label_mass": 0.5,
                    "reward_preferred": None, "reward_other": None,
                    "tokens_preferred": 10 + (i * 7) % 13, "tokens_other": 10 + (i * 5) % 11,
                    "weight": 0.3 + i / 100, "features": ["Safety", "Accuracy"] if i % 2 else ["Safety"],
                    "judge": "j", "judge_kind": "pairwise", "round": 0,
                }
            )  # fmt: skip
    import pyarrow as pa

    from ssogen.output.audit_summary import AUDIT_SCHEMA

    summary = summarize_audit(pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA))
    frame = pd.DataFrame(rows)
    for pair, figures in summary.items():
        df = frame[frame["pair"] == pair]
        assert figures["rows"] == len(df)
        assert figures["accuracy"] == pytest.approx((df["p"] > 0.5).mean())
        assert figures["mean_p"] == pytest.approx(df["p"].mean())
        assert figures["inconsistent"] == pytest.approx((~df["position_consistent"]).mean())
        consistent = df[df["position_consistent"]]
        assert figures["consistent"]["rows"] == len(consistent) > 0
        assert figures["consistent"]["accuracy"] == pytest.approx((consistent["p"] > 0.5).mean())
        assert figures["preferred_longer_share"] == pytest.approx((df["tokens_preferred"] > df["tokens_other"]).mean())
        similar = df[[similar_length(a, b) for a, b in zip(df["tokens_preferred"], df["tokens_other"], strict=True)]]
        assert 0 < len(similar) < len(df)
        assert figures["similar_length"]["accuracy"] == pytest.approx((similar["p"] > 0.5).mean())
        accuracy = figures["by_feature"]["Accuracy"]
        assert accuracy["rows"] == df["features"].map(lambda f: "Accuracy" in f).sum()
        quartiles = pd.qcut(df["weight"].rank(method="first"), 4, labels=False)
        for q, group in enumerate(figures["by_weight"]):
            expected = df[quartiles == q]
            assert group["rows"] == len(expected)
            assert (group["low"], group["high"]) == (expected["weight"].min(), expected["weight"].max())
            assert group["accuracy"] == pytest.approx((expected["p"] > 0.5).mean())


# --- the real thing, in its own process: publish the audit with the dataset -----------------------------------


def test_cli_audit_push_publishes_the_dataset_with_its_audit_in_one_commit_and_a_private_repo_stays_private(
    hub: Hub, built_folder: Path, tmp_path: Path
) -> None:
    folder = copy_build(built_folder, tmp_path / "out")
    HfApi(endpoint=hub.url, token=TOKEN).create_repo(REPO, repo_type="dataset", private=True)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = run_cli("audit", str(folder), "--limit", "3", "--enforce-eager", "--push", REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # Neither --private nor --no-private: the repo keeps its visibility, and nothing asked the Hub to change it.
    assert hub.meta()["private"] is True and not [r for r in hub.requests() if "/settings" in r]
    assert f"{REPO} is private (unchanged" in result.stderr + result.stdout
    assert TOKEN not in result.stdout + result.stderr
    assert "Audit verdicts" in result.stdout and "published" in result.stdout
    # vLLM's own warnings went to the audit's engine log, which the command names; the terminal has none.
    terminal = (result.stdout + result.stderr).splitlines()
    assert [line for line in terminal if "WARNING" in line or "EngineCore" in line or "Worker pid" in line] == []
    assert "vLLM's own output: " in result.stderr

    meta = hub.meta()
    assert len(hub.commit_requests()) == 1 and len(meta["commits"]) == 2  # the repo's first + one for the round
    pushed = without_gitattributes(hub.files(meta["tags"]["round-0"]))
    assert pushed == {p: b for p, b in local_files(folder).items() if not p.startswith(".ssogen/")}
    assert any(p.startswith("data/audit/") for p in pushed) and "audit.yaml" in pushed
    header = yaml.safe_load(pushed["README.md"].decode().split("---")[1])
    audit = next(c for c in header["configs"] if c["config_name"] == "audit")
    assert audit["data_files"][0]["path"].startswith("data/audit/")
    assert len(audit_frame(folder)) == 3 * len(PAIRS)


# --- a reward model through vLLM's pooling runner ---------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, bundled_model) -> Path:
    """A tiny LlamaForSequenceClassification with random weights and the bundled model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path_factory.mktemp("reward-model")
    tokenizer = AutoTokenizer.from_pretrained(bundled_model.path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        # Padding with a token no conversation holds, so transformers scores the last token, as vLLM does.
        num_labels=1, pad_token_id=tokenizer.unk_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reward_model_scores_each_answer_through_the_pooling_runner(built_folder_seed1, reward_model, tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    # The second build (requested here, before the session's engine starts, so its build runs alone).
    folder = copy_build(built_folder_seed1, tmp_path / "out")
    options = AuditOptions(
        target=str(folder), judge=str(reward_model), judge_kind="reward", limit=4, dtype="float32", enforce_eager=True
    )
    result = run_audit(options, console=QUIET)
    audit = audit_frame(folder)
    assert set(audit["judge_kind"]) == {"reward"} and len(audit) == 4 * len(PAIRS)
    assert audit["p_preferred_first"].isna().all() and audit["position_consistent"].isna().all()
    assert (audit["margin"] == audit["reward_preferred"] - audit["reward_other"]).all()
    assert audit["p"].tolist() == pytest.approx([1 / (1 + math.exp(-m)) for m in audit["margin"]])
    assert audit["reward_preferred"].nunique() > 1  # a real score per answer, not a constant

    # The same scores as transformers' forward pass of the same weights on the same conversations.
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    model = LlamaForSequenceClassification.from_pretrained(reward_model, torch_dtype=torch.float32).eval()
    sso = sso_frame(folder).set_index("prompt_id")
    for row in audit.itertuples():
        record = sso.loc[row.prompt_id]
        for role, score in ((row.preferred, row.reward_preferred), (row.other, row.reward_other)):
            chat = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record[role]}]
            ids = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False)
            with torch.no_grad():
                expected = model(torch.tensor([ids["input_ids"]])).logits[0, 0].item()
            assert score == pytest.approx(expected, abs=2e-3), (row.prompt_id, role)
    assert result.meta["judge"]["kind"] == "reward" and result.meta["cost"]["engine_start_seconds"] > 0


# --- the bundled model judging itself, on the session's engine ------------------------------------------------


@pytest.fixture(scope="module")
def audited(built_folder, built_folder_seed1, engine, tmp_path_factory) -> Path:
    """A copy of the shared build, audited by its own policy on every row.

    Asks for the second build before the session's engine, so that build's own engine never runs beside it.
    """
    folder = copy_build(built_folder, tmp_path_factory.mktemp("audited") / "out")
    run_audit(AuditOptions(target=str(folder)), console=QUIET, engine=engine)
    return folder


def test_every_row_gets_p_in_0_1_from_both_orders_for_both_pairs(audited):
    audit, sso = audit_frame(audited), sso_frame(audited)
    for pair in PAIRS:
        assert sorted(audit[audit["pair"] == pair]["prompt_id"]) == sorted(sso["prompt_id"]), pair
    assert audit["p"].between(0, 1).all()
    assert audit["p"].tolist() == pytest.approx(
        ((audit["p_preferred_first"] + audit["p_preferred_second"]) / 2).tolist()
    )
    # The two orders were each asked: they differ (position matters to any real judge) ...
    assert (audit["p_preferred_first"] != audit["p_preferred_second"]).any()
    consistent = (audit["p_preferred_first"] > 0.5) == (audit["p_preferred_second"] > 0.5)
    assert (audit["position_consistent"] == consistent).all()
    assert audit["label_mass"].between(0, 1).all() and (audit["label_mass"] > 0).all()
    assert (audit["agrees"] == (audit["p"] > 0.5)).all()
    main_pair = audit[audit["pair"] == "main"].set_index("prompt_id")
    for record in sso.itertuples():
        assert main_pair.loc[record.prompt_id, "tokens_preferred"] == record.tokens_chosen
        assert main_pair.loc[record.prompt_id, "weight"] == record.weight


def test_swapping_chosen_and_rejected_in_the_folder_gives_exactly_one_minus_p(audited, engine, tmp_path):
    swapped = copy_build(audited, tmp_path / "swapped")
    for path in (swapped / "data" / "sso").glob("*.parquet"):
        frame = pd.read_parquet(path)
        for column in ("", "logp_", "tokens_", "finish_", "degenerate_"):
            frame[[f"{column}chosen", f"{column}rejected"]] = frame[[f"{column}rejected", f"{column}chosen"]].values
        frame.to_parquet(path, index=False)
    run_audit(AuditOptions(target=str(swapped)), console=QUIET, engine=engine)
    before = audit_frame(audited).query("pair == 'main'").set_index("prompt_id")
    after = audit_frame(swapped).query("pair == 'main'").set_index("prompt_id")
    assert list(after.index) == list(before.index)
    for pid in before.index:
        # The same two prompts, in the same batches: each order's probability becomes the other's complement.
        assert after.loc[pid, "p_preferred_first"] == pytest.approx(
            1 - before.loc[pid, "p_preferred_second"], abs=1e-12
        )
        assert after.loc[pid, "p_preferred_second"] == pytest.approx(
            1 - before.loc[pid, "p_preferred_first"], abs=1e-12
        )
        assert after.loc[pid, "p"] == pytest.approx(1 - before.loc[pid, "p"], abs=1e-12)


def test_audit_config_loads_with_datasets_and_the_card_has_its_section(audited):
    loaded = {split: ds.to_pandas() for split, ds in load_dataset(str(audited), "audit").items()}
    sso_splits = {p.name.split("-")[0]: len(pq.read_table(p)) for p in (audited / "data" / "sso").glob("*.parquet")}
    assert {split: len(df) for split, df in loaded.items()} == {s: n * len(PAIRS) for s, n in sso_splits.items()}
    audit = pd.concat(loaded.values())
    card = (audited / "README.md").read_text()
    assert "## Audit: are the pairs right?" in card
    assert "the generating policy judging its own pairs" in card
    for pair, label in (("main", "main pair: y+ ≻ y-"), ("steer_neg", "steering pair 2: y° ≻ y+")):
        accuracy = (audit[audit["pair"] == pair]["p"] > 0.5).mean()
        assert re.search(rf"\| {re.escape(label)} \| {sso_splits.get('train', 0) + sso_splits.get('test', 0)} \| "
                         rf"{accuracy:.3f} \|", card), label  # fmt: skip
    # The card's W quartiles are the same groups the audit summary makes (pandas: four equal ranks of W).
    main_pair = audit[audit["pair"] == "main"].reset_index(drop=True)
    quartile = pd.qcut(main_pair["weight"].rank(method="first"), 4, labels=False)
    for q in range(4):
        group = main_pair[quartile == q]
        cells = f"| Q{q + 1} (W {group['weight'].min():.3f}–{group['weight'].max():.3f}) | "
        cells += f"{(group['p'] > 0.5).mean():.3f} ({len(group)}) |"
        assert cells in card, cells
    # The rest of the card is still the build's.
    assert "## Features" in card and "config_name: dpo" in card
    meta = yaml.safe_load((audited / "audit.yaml").read_text())
    assert meta["judge"]["self_judging"] is True and meta["judge"]["labels"] == ["A", "B"]
    assert meta["cost"]["prompts"] == 2 * len(PAIRS) * meta["rows"]["audited"]


def test_inspect_prints_the_audit_and_its_report_has_the_plot(audited, tmp_path):
    report = tmp_path / "report"
    text = inspect_text(audited, report=report)
    audit = audit_frame(audited)
    for pair, label in (("main", "main pair: y+ ≻ y-"), ("steer_neg", "steering pair 2: y° ≻ y+")):
        rows = audit[audit["pair"] == pair]
        assert number(cell(text, "Audit verdicts", "accuracy (P > 0.5)", label)) == pytest.approx(
            (rows["p"] > 0.5).mean(), abs=5e-4
        )
        assert number(cell(text, "Audit verdicts", "mean P(preferred ≻ other)", label)) == pytest.approx(
            rows["p"].mean(), abs=5e-4
        )
        assert number(cell(text, "Audit verdicts", "position-inconsistent", label)) == pytest.approx(
            100 * (~rows["position_consistent"]).mean(), abs=0.051
        )
    _, quartiles = table(text, "Audit accuracy by W quartile (rows)")
    assert list(quartiles) == ["Q1", "Q2", "Q3", "Q4"]
    html = (report / "index.html").read_text(encoding="utf-8")
    assert 'src="audit.png"' in html and "Audit verdicts" in html
    assert_real_png(report / "audit.png")


def test_inspect_compare_shows_two_builds_audits_side_by_side(audited, built_folder_seed1, engine, tmp_path):
    other = copy_build(built_folder_seed1, tmp_path / "seed1")
    run_audit(AuditOptions(target=str(other)), console=QUIET, engine=engine)
    report = tmp_path / "report"
    text = inspect_text(audited, report=report, compare=other)
    _, rows = table(text, "Audits side by side")
    for side, folder in ((0, audited), (1, other)):
        audit = audit_frame(folder)
        main_pair = audit[audit["pair"] == "main"]
        assert number(rows["main pair: y+ ≻ y- · accuracy (P > 0.5)"][side]) == pytest.approx(
            (main_pair["p"] > 0.5).mean(), abs=5e-4
        )
    a, b, delta = rows["main pair: y+ ≻ y- · mean P(preferred ≻ other)"]
    assert number(delta) == pytest.approx(number(b) - number(a), abs=1.1e-3)
    assert "Audits side by side" in (report / "index.html").read_text(encoding="utf-8")
    assert_real_png(report / "audit.png")
    alone = tmp_path / "alone"
    inspect_text(audited, report=alone)
    assert not (imread(alone / "audit.png").shape == imread(report / "audit.png").shape
                and (imread(alone / "audit.png") == imread(report / "audit.png")).all())  # fmt: skip


def test_card_plots_folder_gets_the_audit_plot(built_folder, engine, tmp_path):
    folder = copy_build(built_folder, tmp_path / "out")
    (folder / "plots").mkdir()
    run_audit(AuditOptions(target=str(folder), limit=2), console=QUIET, engine=engine)
    assert_real_png(folder / "plots" / "audit.png")
    assert "![plots/audit.png](plots/audit.png)" in (folder / "README.md").read_text()
    assert yaml.safe_load((folder / "audit.yaml").read_text())["rows"]["audited"] == 2


def test_audit_push_keeps_a_public_repo_public_unless_private_is_asked(
    audited: Path, engine, hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)  # read at import; the CLI test sets the env
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    HfApi(endpoint=hub.url, token=TOKEN).create_repo(REPO, repo_type="dataset", private=False)
    folder = copy_build(audited, tmp_path / "out")

    run_audit(AuditOptions(target=str(folder), limit=1, push=REPO), console=QUIET, engine=engine)
    assert hub.meta()["private"] is False and not [r for r in hub.requests() if "/settings" in r]

    again = AuditOptions(target=str(folder), limit=1, push=REPO, private=True, overwrite_round=True)
    run_audit(again, console=QUIET, engine=engine)
    assert hub.meta()["private"] is True  # asked for: the one way an audit changes a repo's visibility


@pytest.mark.slow
def test_inspect_warns_when_the_judge_mostly_follows_position(tmp_path):
    from ssogen.reading.audit import write_audit

    folder = synthetic_build(tmp_path / "b", n=12)

    def verdicts(consistent: list[bool]) -> list[dict]:
        return [
            {
                "prompt_id": make_record(i)["prompt_id"], "pair": "main", "preferred": "chosen", "other": "rejected",
                "p": 0.6, "agrees": True, "margin": 0.4, "p_preferred_first": 0.9,
                "p_preferred_second": 0.6 if ok else 0.3, "position_consistent": ok, "label_mass": 0.8,
                "tokens_preferred": 3, "tokens_other": 4, "weight": 0.6, "features": ["Safety"],
                "judge": "j", "judge_kind": "pairwise", "round": 0, "split": "train",
            }
            for i, ok in enumerate(consistent)
        ]  # fmt: skip

    # Quartiles of 3 rows: where a computed Wilson bound of 0 of 3 (or 3 of 3) would miss 0 (or 1) by a rounding.
    write_audit(folder, verdicts([False] * 9 + [True] * 3), {"judge": {"model": "j", "kind": "pairwise"}})
    report = tmp_path / "report"
    text = inspect_text(folder, report=report)
    assert_real_png(report / "audit.png")  # every verdict agrees: accuracy 1 in every quartile still draws
    assert "warning: audit, main pair: y+ ≻ y-: the judge picked different answers in the two orders on 75 %" in text
    assert number(cell(text, "Audit verdicts", "position-inconsistent", "main pair: y+ ≻ y-")) == 75.0
    assert cell(text, "Audit verdicts", "95 % CI (Wilson)", "main pair: y+ ≻ y-") == "0.758–1.000"
    disagreeing = [{**v, "p": 0.4, "agrees": False} for v in verdicts([False] * 3 + [True] * 9)]
    write_audit(folder, disagreeing, {"judge": {"model": "j", "kind": "pairwise"}})
    assert "warning: audit" not in inspect_text(folder, report=report)
    assert_real_png(report / "audit.png")  # accuracy 0 everywhere draws too
    assert [p.name for p in (folder / "data" / "audit").iterdir()] == ["train-00000-of-00001.parquet"]
