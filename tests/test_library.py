"""Principle library loading and validation, sandboxed templates, and the chat-template system-role fallback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssogen.errors import UsageError
from ssogen.generation.steer import library_principles, system_message
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.library import Templates, load_library, resource_dir

FEATURE = """name: {name}
adjectives: [Good, Bad]
meaning: m
positive: p
negative: n
"""


def write_library(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def test_a_feature_missing_a_field_names_the_file_and_the_field(tmp_path):
    folder = write_library(tmp_path / "lib", ok=FEATURE.format(name="Ok"), broken="name: X\nadjectives: [A, B]\n")
    with pytest.raises(UsageError, match=r"broken\.yaml is missing the field 'meaning'"):
        load_library(folder)


def test_malformed_yaml_names_the_file(tmp_path):
    folder = write_library(tmp_path / "lib", bad="name: [unclosed\n")
    with pytest.raises(UsageError, match=r"bad\.yaml is not valid YAML"):
        load_library(folder)


def test_adjectives_must_be_a_good_bad_pair(tmp_path):
    folder = write_library(tmp_path / "lib", one=FEATURE.format(name="One").replace("[Good, Bad]", "[Good]"))
    with pytest.raises(UsageError, match=r"one\.yaml: field 'adjectives'"):
        load_library(folder)


def test_users_can_add_and_remove_features_without_code(tmp_path):
    folder = tmp_path / "lib"
    shutil.copytree(resource_dir("principles"), folder)
    (folder / "literariness.yaml").unlink()
    (folder / "humour.yaml").write_text(FEATURE.format(name="Humour"))
    names = {f.name for f in load_library(folder)}
    assert "Humour" in names and "Literariness" not in names


def test_jinja_syntax_in_a_principle_file_is_rendered_verbatim(tmp_path):
    evil = "You answer {{ 7*7 }} times. {% raise %} {{ ''.__class__.__mro__ }}"
    folder = write_library(
        tmp_path / "lib", evil=FEATURE.format(name="Evil").replace("positive: p", f'positive: "{evil}"')
    )
    features = load_library(folder)
    message = system_message(Templates(None), features, library_principles(features), "positive")
    assert evil in message


def test_user_templates_run_in_the_sandbox(tmp_path):
    folder = tmp_path / "prompts"
    shutil.copytree(resource_dir("prompts"), folder)
    (folder / "steering_system.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    templates = Templates(folder)
    with pytest.raises(UsageError, match=r"steering_system\.j2 failed to render"):
        templates.render("steering_system.j2", adjectives=[], principles=[], side="positive")


def test_bundled_templates_and_library_are_found():
    assert (resource_dir("prompts") / "select_features.j2").is_file()
    assert len(load_library(None)) == 8


def test_system_message_goes_into_the_user_turn_when_the_template_rejects_a_system_role(tokenizer):
    import copy

    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    chat = ChatFormat(strict)
    assert chat.supports_system is False
    messages = chat.with_system("Be kind.", [{"role": "user", "content": "Hi"}])
    assert messages == [{"role": "user", "content": "Be kind.\n\nHi"}]
    assert "Be kind.\n\nHi" in chat.prompt_text(messages)


def test_system_message_is_a_system_turn_when_the_template_supports_it(tokenizer):
    chat = ChatFormat(tokenizer)
    assert chat.supports_system is True
    messages = chat.with_system("Be kind.", [{"role": "user", "content": "Hi"}])
    assert messages[0] == {"role": "system", "content": "Be kind."}


def test_a_tokenizer_without_chat_template_is_refused(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(UsageError, match="no chat template"):
        ChatFormat(plain)
