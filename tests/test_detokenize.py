"""Answers decoded once by ssogen read exactly as vLLM's incremental detokeniser writes them, step by step."""

from __future__ import annotations

import functools
import itertools
from dataclasses import replace
from types import SimpleNamespace

import pytest

from ssogen.generation.detokenize import AnswerText
from ssogen.generation.engine import vllm_writes

TEXTS = (
    "Sure! Here are three rivers: the Nile, the Amazon and the Yangtze.",
    " A leading space, then «guillemets», émigré and naïve.",
    "中文的回答，带标点。",
    "Emoji 🙂🎉 and a flag 🇫🇷 at the end🙂",
)


def _llama_like():
    """A SentencePiece-style tokenizer as Llama 2 has it: "▁" for spaces, byte fallback for characters outside the
    vocabulary, and a decoder that strips the space its first token would begin with."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>", "<s>", "</s>", "▁", *(c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!,.:[]/")]
    chars += [f"<0x{b:02X}>" for b in range(256)]
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[], byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens(["<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _decoder(tokenizer) -> AnswerText:
    return AnswerText(tokenizer, functools.partial(vllm_writes, tokenizer))


@pytest.fixture(params=["bundled", "llama-like"])
def tokenizer_and_prompt(request, tokenizer):
    if request.param == "bundled":  # byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): a chat prompt
        from ssogen.inputs.chat import ChatFormat

        return tokenizer, ChatFormat(tokenizer).prompt_ids([{"role": "user", "content": "Answer briefly."}])
    llama = _llama_like()
    return llama, llama("[INST] Answer briefly. [/INST]")["input_ids"]


def test_every_cut_of_an_answer_decodes_to_what_vllm_writes_as_it_goes(tokenizer_and_prompt):
    tokenizer, prompt = tokenizer_and_prompt
    decode = _decoder(tokenizer)
    assert decode.enabled  # the probe agreed
    held_back = 0
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        written = vllm_writes(tokenizer, prompt, ids, False)  # vLLM's text after each step
        for length in range(1, len(ids) + 1):
            assert decode(prompt, ids[:length], stopped=False) == written[length - 1]
            held_back += tokenizer.decode(ids[:length]).endswith("\ufffd")
        # Ended by the end-of-sequence token: its text is never written.
        ended = [*ids, tokenizer.eos_token_id]
        assert decode(prompt, ended, stopped=True) == vllm_writes(tokenizer, prompt, ended, True)[-1]
    # Some cuts fell inside a character, where vLLM holds the text back: the case was tried.
    assert held_back > 0


def test_the_first_token_is_decoded_after_the_prompt_as_vllm_primes_its_stream():
    llama = _llama_like()
    prompt = llama("[INST] Hi [/INST]")["input_ids"]
    answer = llama("Hello there", add_special_tokens=False)["input_ids"]
    # Alone, the decoder strips the word-start space of the first token; after the prompt it is a space.
    assert llama.decode(answer) == "Hello there"
    assert _decoder(llama)(prompt, answer, stopped=False) == " Hello there"
    assert vllm_writes(llama, prompt, answer, False)[-1] == " Hello there"


def test_a_tokenizer_decoded_otherwise_than_vllm_writes_is_left_to_vllm(tokenizer):
    """The probe at the start: a decoder that differs from vLLM's text on any cut of its answers is not used."""
    calls = []

    def writes_capitals(prompt, ids, stopped):
        calls.append(len(ids))
        return [text.upper() for text in vllm_writes(tokenizer, prompt, ids, stopped)]

    assert not AnswerText(tokenizer, writes_capitals).enabled and calls
    # And vLLM's detokeniser missing (another vLLM version) leaves the text to vLLM too.
    assert not AnswerText(tokenizer, lambda *args: [][0]).enabled


def test_a_tokenizer_without_a_fast_backend_is_left_to_vllm():
    assert not AnswerText(SimpleNamespace(decode=lambda ids: ""), vllm_writes).enabled


def test_answers_the_engine_leaves_to_ssogen_read_as_vllm_writes_them(engine, tokenizer):
    """The same seeded requests twice, vLLM writing the text and ssogen decoding it: the same rows, whether the answer
    ended by itself or at its limit, and whether it was watched for loops while it was written."""
    from ssogen.generation.engine import LoopWatch, Request
    from ssogen.inputs.chat import ChatFormat

    chat = ChatFormat(tokenizer)
    asks = ["Say hi.", "Reply with three emoji and a word in Chinese.", "Write one sentence with the word café."]
    watch = LoopWatch(threshold=0.0, start=4, every=4)  # read every 4 tokens; nothing is a loop below 0
    requests = [
        Request(chat.prompt_ids([{"role": "user", "content": ask}]), seed, max_tokens, loop_watch=loop_watch)
        for ask, seed, max_tokens, loop_watch in itertools.product(asks, [1], [7, 13, 64], [None, watch])
    ]
    engine.reset_prefix_cache(required=True)  # both runs compute the same prompts afresh, in the same batch
    by_ssogen = engine.generate(requests, desc="decoded once")
    engine.reset_prefix_cache(required=True)
    by_vllm = engine.generate([replace(r, vllm_text=True) for r in requests], desc="vllm text")
    assert [c.token_ids for c in by_ssogen] == [c.token_ids for c in by_vllm]
    assert [c.finish_reason for c in by_ssogen] == [c.finish_reason for c in by_vllm]
    assert [c.text for c in by_ssogen] == [c.text for c in by_vllm]
    assert {c.finish_reason for c in by_ssogen} == {"stop", "length"} and all(c.text for c in by_ssogen)
