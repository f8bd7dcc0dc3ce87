"""Prompts tokenised in remembered pieces: the same ids as whole, and whole again where that is not sure."""

from __future__ import annotations

import logging
import string
from pathlib import Path

import pytest

from ssogen.config import BuildConfig
from ssogen.generation.plan import plan_build
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.pieces import PieceTokenizer, _cut_before

QUERIES = Path(__file__).parent / "data" / "queries.jsonl"


def _whole(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _sentencepiece_like(
    prepend_scheme: str | None, *, lstrip: bool = False, single_word: bool = False, merge_colon_space: bool = False
):
    """A character-level tokenizer with SentencePiece's "▁" pre-tokeniser and a two-token chat template.

    ``merge_colon_space`` adds one merge, ":" + "▁", and makes the pre-tokeniser leave words together, so that merge
    runs across the space after a colon (as in a SentencePiece model trained without splitting at whitespace).
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>", "▁", "\n", "\t", *(c for c in string.printable if not c.isspace())]
    vocab = {c: i for i, c in enumerate(chars)}
    merges = [(":", "▁")] if merge_colon_space else []
    vocab |= {a + b: len(vocab) + i for i, (a, b) in enumerate(merges)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    if prepend_scheme is not None:  # None: no pre-tokeniser at all, the model's merges see the whole piece
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme=prepend_scheme, split=not merge_colon_space
        )
    backend.add_special_tokens([AddedToken("<|user|>", lstrip=lstrip, single_word=single_word), AddedToken("<|end|>")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    return tokenizer


def test_every_prompt_of_the_projects_queries_gets_the_ids_of_its_whole_text_and_shared_pieces_are_tokenised_once(
    tmp_path,
):
    from ssogen.generation.doctor import _Doctor

    plan = plan_build(BuildConfig(queries=str(QUERIES), output=tmp_path / "out"))
    assert plan.chat.pieces.enabled and plan.chat.pieces.cuts, "the bundled byte-level BPE should be cut in pieces"
    doctor = _Doctor(None, plan, lambda name: None)  # its prompt check reads no engine
    doctor.queries = plan.queries.queries
    (check,) = doctor.prompt_pieces()  # x+, x-, x and the selection prompt of each query, against whole texts
    total = 4 * len(plan.queries.queries)
    assert check.passed and check.measured == f"on: {total} of {total} prompts equal to their whole text", check
    assert plan.chat.pieces.enabled
    # Each query's user turn serves x+, x- and x, and the selection prompt's library part is tokenised once.
    hits = plan.chat.pieces._piece_ids.cache_info().hits
    assert hits >= 3 * len(plan.queries.queries), hits


def test_a_tokenizer_that_marks_only_its_first_piece_is_tokenised_whole():
    tokenizer = _sentencepiece_like("first")  # "▁" before the text's start only: pieces alone would each get one
    chat = ChatFormat(tokenizer)
    assert not chat.pieces.enabled
    turn = [{"role": "user", "content": "Name two rivers."}, {"role": "user", "content": "And a lake."}]
    assert chat.prompt_ids(turn) == _whole(tokenizer, chat.prompt_text(turn))


@pytest.mark.parametrize("scheme", ["always", "never"])
def test_a_sentencepiece_tokenizer_that_marks_every_piece_alike_is_tokenised_in_pieces(scheme):
    tokenizer = _sentencepiece_like(scheme)
    chat = ChatFormat(tokenizer)
    assert chat.pieces.enabled and chat.pieces.cuts
    turn = [{"role": "user", "content": "Query: name two rivers"}, {"role": "user", "content": " and a lake."}]
    assert chat.prompt_ids(turn, vary=("name two rivers",)) == _whole(tokenizer, chat.prompt_text(turn))


@pytest.mark.parametrize(
    ("scheme", "merge_colon_space"),
    [(None, False), ("never", True)],
    ids=["no pre-tokeniser", "merges across the space before a varying part"],
)
def test_a_tokenizer_that_could_merge_across_a_cut_gets_pieces_between_added_tokens_but_no_cut_inside_them(
    scheme, merge_colon_space
):
    tokenizer = _sentencepiece_like(scheme, merge_colon_space=merge_colon_space)
    if merge_colon_space:  # the cut before " x" would give other ids
        assert _whole(tokenizer, "Query: x") != _whole(tokenizer, "Query:") + _whole(tokenizer, " x")
    chat = ChatFormat(tokenizer)
    assert chat.pieces.enabled and not chat.pieces.cuts
    turn = [{"role": "user", "content": "Query: name two rivers"}]
    assert chat.prompt_ids(turn, vary=("name two rivers",)) == _whole(tokenizer, chat.prompt_text(turn))


def test_an_added_token_that_swallows_the_spaces_before_it_takes_them_along_in_pieces_too():
    tokenizer = _sentencepiece_like("never", lstrip=True)
    pieces = PieceTokenizer(tokenizer)
    assert pieces.enabled
    text = "Name two rivers.   <|user|>And a lake.<|end|>  <|user|> Three. <|end|>"
    assert pieces.encode(text) == _whole(tokenizer, text)
    assert _whole(tokenizer, "a <|user|>") == _whole(tokenizer, "a<|user|>")  # the spaces went with the token


def test_an_added_token_the_pieces_cannot_name_leaves_that_prompt_tokenised_whole():
    tokenizer = _sentencepiece_like("never", lstrip=True)
    pieces = PieceTokenizer(tokenizer)
    pieces._added = {}  # as for a token whose own text holds the whitespace it strips: found, but not by its name
    text = "Name two rivers.   <|user|>And a lake.<|end|>"
    assert pieces.encode(text) == _whole(tokenizer, text)


def test_a_tokenizer_with_single_word_added_tokens_is_tokenised_whole():
    assert not PieceTokenizer(_sentencepiece_like("never", single_word=True)).enabled


def test_a_piece_whose_ids_differ_from_the_whole_text_switches_pieces_off_with_a_warning(tokenizer, caplog):
    pieces = PieceTokenizer(tokenizer)
    assert pieces.enabled
    text = "<|im_start|>user\nWhat is a river?<|im_end|>\n"
    right = _whole(tokenizer, text)
    pieces._piece_ids = lambda piece: (0,)  # the probe passed; a later piece goes wrong
    with caplog.at_level(logging.WARNING, logger="ssogen.inputs.pieces"):
        assert pieces.encode(text) == right
    assert not pieces.enabled
    assert "tokenised whole" in caplog.text
    later = "<|im_start|>user\nAnd a lake?<|im_end|>"
    assert pieces.encode(later) == _whole(tokenizer, later)


def test_the_cut_before_a_varying_part_falls_only_before_a_space_after_a_non_space():
    cut = _cut_before("Pick one.\nQuery: rivers of Spain", ["rivers of Spain"])
    assert cut == ["Pick one.\nQuery:", " rivers of Spain"]
    assert _cut_before('Query: "rivers"', ["rivers"]) == ['Query: "rivers"']  # a quote before it: no cut
    assert _cut_before("Query:\n rivers", ["rivers"]) == ["Query:\n rivers"]  # whitespace before the space
    assert _cut_before("Query: lakes", ["rivers"]) == ["Query: lakes"]
    assert _cut_before("Query: rivers", [""]) == ["Query: rivers"]
    two = "Accuracy: Check facts.\n\nSafety: Warn of risks.\n\nDo not tell."
    assert _cut_before(two, ["Warn of risks.", "Check facts."]) == [
        "Accuracy:",
        " Check facts.\n\nSafety:",
        " Warn of risks.\n\nDo not tell.",
    ]
