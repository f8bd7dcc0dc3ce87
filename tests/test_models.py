"""The bundled model's one-time conversion from GGUF: parsed once, and the weights transformers itself loads."""

from __future__ import annotations


def test_the_bundled_gguf_is_parsed_once_and_converts_to_the_weights_transformers_loads(tmp_path, monkeypatch):
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssogen.inputs.models import bundled_model

    parsed: list[str] = []
    plain_reader = gguf.GGUFReader

    class CountingReader(plain_reader):  # type: ignore[misc, valid-type]
        def __init__(self, path, *args, **kwargs):
            parsed.append(str(path))
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    monkeypatch.setenv("SSOGEN_CACHE", str(tmp_path / "cache"))
    converted = bundled_model()
    # transformers alone parses it three times: tokenizer, config, weights.
    assert len(parsed) == 1 and parsed[0].endswith(".gguf")
    assert gguf.GGUFReader is CountingReader  # the sharing ends with the conversion

    gguf_file = parsed[0]
    folder, name = gguf_file.rsplit("/", 1)
    expected = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16).state_dict()
    got = {}
    for shard in sorted(tmp_path.glob("cache/models/*/*.safetensors")):
        got.update(load_file(shard))
    assert got, "no safetensors written"
    for key, tensor in got.items():
        assert torch.equal(tensor, expected[key]), key
    assert set(expected) - set(got) <= {"lm_head.weight"}  # tied to the embedding, so saved once

    ours = AutoTokenizer.from_pretrained(converted.path)
    theirs = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    text = "def is_palindrome(s):\n    return s == s[::-1]  # ¿qué? 🙂"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
