"""The bundled model's one-time conversion from GGUF: a failed write leaves nothing a later run would trust, and
the conversion parses the GGUF once into the weights transformers itself loads."""

from __future__ import annotations

import pytest

from tests.conftest import error_lines
from tests.test_write_failures import run_cli_limited


@pytest.mark.slow
def test_a_failed_conversion_leaves_nothing_and_the_next_parses_the_gguf_once_into_the_weights_transformers_loads(
    tmp_path, monkeypatch
):
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

    # A file-size limit (ulimit -f) stops the conversion: one line naming the path and the cause, and no
    # half-converted model in the cache.
    cache = tmp_path / "cache"
    failed = run_cli_limited(
        "build", "--dry-run", "--limit", "1", file_size=1_000_000, env={"SSOGEN_CACHE": str(cache)}
    )
    assert failed.returncode == 1, failed.stderr[-3000:]
    (line,) = error_lines(failed.stderr)
    target = cache / "models" / "SmolLM2-135M-Instruct-Q4_1-0.1.2-bf16"
    assert line == (
        f"error: cannot write {target} (converting the bundled model): "
        "file too large: a file-size limit is in force (ulimit -f); lift it"
    )
    assert "Traceback" not in failed.stderr
    assert list((cache / "models").iterdir()) == []

    # The next run, with the limit lifted, converts.
    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    monkeypatch.setenv("SSOGEN_CACHE", str(cache))
    converted = bundled_model()
    assert converted.path == str(target) and (target / "config.json").is_file()
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
