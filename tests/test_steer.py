"""The SSO steering stages as pure functions: features, principles, system messages, cleaning, filters."""

from __future__ import annotations

import json
import random

import pytest

from ssogen.library import Feature, Templates, load_library
from ssogen.steer import (
    choose_features,
    derive_seed,
    drop_reason,
    parse_features,
    parse_principles,
    principles_schema,
    query_rng,
    selection_pattern,
    selection_prompt,
    strip_label,
    system_message,
)


@pytest.fixture(scope="module")
def library() -> list[Feature]:
    return load_library(None)


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates(None)


def test_bundled_library_has_the_seven_reference_features_plus_bound_concision(library):
    names = {f.name for f in library}
    assert names == {
        "Safety",
        "Logicality",
        "Comprehensiveness",
        "Helpfulness",
        "Literariness",
        "Accuracy",
        "Engagement",
        "Concision",
    }
    bound = {f.name: f.bound_probability for f in library if f.bound_probability > 0}
    assert bound == {"Concision": 0.2}


def test_parse_features_keeps_recognised_names_in_order_of_mention(library):
    answer = "Accuracy, safety and maybe Helpful; also Unknownness, accuracy again"
    assert parse_features(answer, library) == ["Accuracy", "Safety", "Helpfulness"]


def test_parse_features_ignores_bound_features_and_partial_words(library):
    assert parse_features("Concision, Safetyness, Logicalities", library) == []


def test_choose_features_fills_with_random_features_when_too_few_are_recognised(library):
    chosen = choose_features(["Safety"], library, 3, random.Random(1))
    selectable_names = [f.name for f in chosen if f.bound_probability == 0]
    assert len(selectable_names) == 3
    assert "Safety" in selectable_names
    assert len(set(selectable_names)) == 3


def test_choose_features_takes_k_of_the_recognised_after_shuffling(library):
    recognised = ["Safety", "Accuracy", "Engagement", "Logicality"]
    seen = set()
    for seed in range(30):
        picked = [
            f.name for f in choose_features(recognised, library, 2, random.Random(seed)) if f.bound_probability == 0
        ]
        assert len(picked) == 2 and set(picked) <= set(recognised)
        seen.add(tuple(picked))
    assert len(seen) > 3  # shuffled, not always the first two


def test_concision_is_appended_with_its_bound_probability(library):
    trials = 4000
    hits = sum(
        any(f.name == "Concision" for f in choose_features(["Safety", "Accuracy"], library, 2, random.Random(i)))
        for i in range(trials)
    )
    # 0.2 expected; 4000 trials put 3 standard deviations at about ±0.019.
    assert 0.17 < hits / trials < 0.23


def test_query_rng_and_seeds_depend_only_on_run_seed_query_and_purpose():
    assert derive_seed(0, "abc", "chosen") == derive_seed(0, "abc", "chosen")
    assert derive_seed(0, "abc", "chosen") != derive_seed(0, "abc", "rejected")
    assert derive_seed(0, "abc", "chosen") != derive_seed(1, "abc", "chosen")
    assert query_rng(3, "q").random() == query_rng(3, "q").random()


def test_system_messages_list_adjectives_and_principles_of_each_side(library, templates):
    by_name = {f.name: f for f in library}
    features = [by_name["Safety"], by_name["Accuracy"], by_name["Engagement"]]
    from ssogen.steer import library_principles

    principles = library_principles(features)
    positive = system_message(templates, features, principles, "positive")
    negative = system_message(templates, features, principles, "negative")
    assert positive.startswith("Your response should be safe, accurate and engaging.")
    assert negative.startswith("Your response should be harmful, inaccurate and boring.")
    for f in features:
        assert f.positive in positive and f.negative not in positive
        assert f.negative in negative and f.positive not in negative
    assert "Do not tell the user" in positive and "Do not tell the user" in negative


def test_template_injection_in_a_query_stays_verbatim(library, templates):
    query = "What is {{ 7*7 }}? {% for x in range(3) %}loop{% endfor %} {{ self.__init__ }}"
    rendered, _ = selection_prompt(templates, library, query, 2)
    assert query in rendered
    assert "49" not in rendered


def test_the_selection_answer_starts_with_the_prefix_the_template_sets(library, templates):
    rendered, prefix = selection_prompt(templates, library, "How do I boil an egg?", 2)
    assert prefix == "Most relevant:"
    assert rendered.endswith("Query: How do I boil an egg?")  # the prefix opens the answer, not the question
    assert "Most relevant: Safety, Helpfulness" in rendered  # as in the template's examples


def test_a_selection_template_without_an_answer_prefix_gets_none(library, tmp_path):
    import shutil

    from ssogen.library import resource_dir

    folder = tmp_path / "prompts"
    shutil.copytree(resource_dir("prompts"), folder)
    (folder / "select_features.j2").write_text("Pick {{ k }} of {{ features | length }} for: {{ query }}")
    rendered, prefix = selection_prompt(Templates(folder), library, "Hi?", 2)
    assert (rendered, prefix) == ("Pick 2 of 7 for: Hi?", "")


def test_the_selection_pattern_admits_exactly_k_feature_names(library):
    import re

    pattern = re.compile(selection_pattern(library, 2))
    assert pattern.fullmatch(" Safety, Accuracy") and pattern.fullmatch("Literariness, Safety")
    assert not pattern.fullmatch(" Safety")  # too few
    assert not pattern.fullmatch(" Safety, Accuracy, Engagement")  # too many
    assert not pattern.fullmatch(" Concision, Safety")  # a bound feature is never chosen
    assert not pattern.fullmatch(" The most relevant feature is Safety")
    assert re.compile(selection_pattern(library, 1)).fullmatch(" Engagement")


def test_generated_principles_are_parsed_and_fall_back_to_the_library_per_feature(library):
    by_name = {f.name: f for f in library}
    features = [by_name["Safety"], by_name["Accuracy"]]
    answer = json.dumps(
        {"Safety": {"positive": "Be careful.", "negative": "Be reckless."}, "Accuracy": {"positive": ""}}
    )
    parsed = parse_principles(answer, features)
    assert (parsed[0].positive, parsed[0].negative, parsed[0].source) == ("Be careful.", "Be reckless.", "generated")
    assert (parsed[1].positive, parsed[1].source) == (by_name["Accuracy"].positive, "library")
    assert all(p.source == "library" for p in parse_principles("not json {", features))
    schema = principles_schema(features)
    assert schema["required"] == ["Safety", "Accuracy"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Engaging response: Hello there.", "Hello there."),
        ("**Safe and helpful answer:** Use gloves.", "Use gloves."),
        ("## Response:\nStep one.", "Step one."),
        ("Accurate, concise response:\n\n42.", "42."),
        ("The answer: is not a label here", "is not a label here"),
        ("My response depends on: context", "My response depends on: context"),
        ("No label at all.", "No label at all."),
    ],
)
def test_strip_label_removes_only_a_leading_echoed_label(raw, clean):
    assert strip_label(raw) == clean


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        (("a", "b", "c"), None),
        (("", "b", "c"), "empty_chosen"),
        (("a", "  ", "c"), "empty_rejected"),
        (("a", "b", ""), "empty_original"),
        (("a", "a", "c"), "chosen_equals_rejected"),
        (("a", "b", "b"), "rejected_equals_original"),
        (("a", "b", "a"), "chosen_equals_original"),
    ],
)
def test_drop_reason_for_each_filter(answers, reason):
    assert drop_reason(*answers) == reason
