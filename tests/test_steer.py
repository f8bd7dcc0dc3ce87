"""The SSO steering stages as pure functions: features, principles, system messages, cleaning, filters."""

from __future__ import annotations

import json
import random

import pytest

from ssogen.generation.steer import (
    choose_features,
    drop_reason,
    label_pattern,
    library_principles,
    mean_scores,
    name_token_ids,
    parse_features,
    parse_principles,
    rank_features,
    selection_prompt,
    strip_label,
    system_message,
)
from ssogen.inputs.library import Feature, Templates, load_library
from ssogen.inputs.seeds import derive_seed, query_rng


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


def test_choose_features_keeps_a_ranking_in_order_and_draws_bound_features_the_same_way(library):
    ranked = ["Literariness", "Engagement", "Safety"]
    for seed in range(20):
        picked = [f.name for f in choose_features(ranked, library, 2, random.Random(seed), shuffle=False)]
        assert picked[:2] == ["Literariness", "Engagement"] and set(picked[2:]) <= {"Concision"}


def test_seeds_depend_on_run_seed_round_query_and_purpose():
    assert derive_seed(0, 0, "abc", "chosen") == derive_seed(0, 0, "abc", "chosen")
    assert derive_seed(0, 0, "abc", "chosen") != derive_seed(0, 0, "abc", "rejected")
    assert derive_seed(0, 0, "abc", "chosen") != derive_seed(1, 0, "abc", "chosen")
    assert derive_seed(0, 0, "abc", "chosen") != derive_seed(0, 1, "abc", "chosen")
    assert query_rng(3, 0, "q").random() == query_rng(3, 0, "q").random()


def test_two_rounds_with_one_seed_draw_different_features_and_samples(library):
    """Round r+1 over the same queries must not replay round r's feature draws and sampling streams."""
    ids = [f"{i:016x}" for i in range(50)]
    draws = {
        r: [tuple(f.name for f in choose_features([], library, 2, query_rng(0, r, pid))) for pid in ids] for r in (0, 1)
    }
    assert sum(a != b for a, b in zip(draws[0], draws[1], strict=True)) > 25
    assert all(derive_seed(0, 0, pid, "chosen") != derive_seed(0, 1, pid, "chosen") for pid in ids)
    concision = {r: {pid for pid, d in zip(ids, draws[r], strict=True) if "Concision" in d} for r in (0, 1)}
    assert concision[0] != concision[1]  # not the same fifth of the queries every round


def test_the_sampled_mode_shuffles_the_recognised_list_and_keeps_k(library):
    recognised = parse_features("Accuracy, Logicality, Comprehensiveness", library)
    assert recognised == ["Accuracy", "Logicality", "Comprehensiveness"]
    kept = {
        tuple(f.name for f in choose_features(recognised, library, 2, random.Random(seed)) if f.bound_probability == 0)
        for seed in range(40)
    }
    assert all(len(k) == 2 and set(k) <= set(recognised) for k in kept)
    assert len(kept) >= 4  # shuffled: not always the first two


def test_ranking_subtracts_the_calibration_so_a_name_the_model_always_prefers_does_not_win(library):
    names = [f.name for f in library if f.bound_probability == 0]
    scores = [-1.0] * len(names)
    scores[names.index("Safety")] = -0.5  # the prior favourite, a bit higher here too
    scores[names.index("Literariness")] = -3.0  # usually very unlikely, much less so here
    calibration = [-1.2] * len(names)
    calibration[names.index("Safety")] = -0.2
    calibration[names.index("Literariness")] = -6.0
    assert rank_features(library, scores)[0] == "Safety"
    assert rank_features(library, scores, calibration)[0] == "Literariness"
    assert mean_scores([[1.0, 2.0], [3.0, 6.0]]) == [2.0, 4.0]


def test_ranking_needs_a_first_token_per_feature_name(library):
    encode = {" Safety": [1], " Logicality": [2, 9], " Comprehensiveness": [3], " Helpfulness": [4, 9],
              " Literariness": [5], " Accuracy": [6], " Engagement": [7]}.__getitem__  # fmt: skip
    assert name_token_ids(library, encode, "Most relevant:") == (6, 3, 7, 4, 5, 2, 1)  # library (file) order
    clash = lambda text: [9] if text in (" Safety", " Accuracy") else [hash(text) % 1000 + 10]  # noqa: E731
    from ssogen.errors import UsageError

    with pytest.raises(UsageError, match="Accuracy and Safety start with the same token"):
        name_token_ids(library, clash, "Most relevant:")


def test_system_messages_have_the_reference_shape(library, templates):
    by_name = {f.name: f for f in library}
    for names in (["Safety", "Accuracy"], ["Safety", "Accuracy", "Engagement"]):
        features = [by_name[n] for n in names]
        principles = library_principles(features)
        for side in ("positive", "negative"):
            message = system_message(templates, features, principles, side)
            adjectives = [f.good if side == "positive" else f.bad for f in features]
            joined = ", ".join(adjectives[:-1]) + " and " + adjectives[-1]
            lines = message.split("\n")
            assert lines[0] == f"Your response should be {joined}. Follow these detailed guidelines:"
            # Each principle labelled with its feature's name, blank lines between, then the closing request.
            blocks = message.split("\n\n")
            assert len(blocks) == len(features) + 2
            for block, feature in zip(blocks[1:-1], features, strict=True):
                text = feature.positive if side == "positive" else feature.negative
                assert block == f"{feature.name}: {text}"
            assert blocks[-1].startswith("Do not tell the user")
    safe = system_message(templates, [by_name["Safety"]], library_principles([by_name["Safety"]]), "negative")
    assert safe.startswith("Your response should be Unsafe. Follow")


def test_the_library_uses_the_reference_adjective_pairs(library):
    pairs = {f.name: (f.good, f.bad) for f in library}
    assert pairs == {
        "Safety": ("Safe", "Unsafe"),
        "Logicality": ("Logical", "Illogical"),
        "Comprehensiveness": ("Comprehensive", "Incomplete"),
        "Helpfulness": ("Helpful", "Unhelpful"),
        "Literariness": ("Literary", "Boring"),
        "Accuracy": ("Accurate", "Inaccurate"),
        "Engagement": ("Engaging", "Dull"),
        "Concision": ("Concise", "Verbose"),
    }


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

    from ssogen.inputs.library import resource_dir

    folder = tmp_path / "prompts"
    shutil.copytree(resource_dir("prompts"), folder)
    (folder / "select_features.j2").write_text("Pick {{ k }} of {{ features | length }} for: {{ query }}")
    rendered, prefix = selection_prompt(Templates(folder), library, "Hi?", 2)
    assert (rendered, prefix) == ("Pick 2 of 7 for: Hi?", "")


def test_generated_principles_are_parsed_and_fall_back_to_the_library_per_feature(library):
    by_name = {f.name: f for f in library}
    parsed = parse_principles(json.dumps({"positive": "Be careful.", "negative": "Be reckless."}), by_name["Safety"])
    assert (parsed.positive, parsed.negative, parsed.source) == ("Be careful.", "Be reckless.", "generated")
    cut = parse_principles('{"positive": "Be thorough and', by_name["Accuracy"])  # an answer cut by its limit
    assert (cut.positive, cut.source) == (by_name["Accuracy"].positive, "library")
    assert parse_principles(json.dumps({"positive": ""}), by_name["Safety"]).source == "library"
    assert parse_principles(None, by_name["Safety"]).source == "library"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Engaging response: Hello there.", "Hello there."),
        ("**Safe and Helpful Response:** Use gloves.", "Use gloves."),
        ("## Response:\nStep one.", "Step one."),
        ("Accurate, concise response:\n\n42.", "42."),
        ("Dull and inaccurate reply: fine.", "fine."),
        ("Answer: 42", "Answer: 42"),  # an ordinary opening, never a steering label
        ("Final answer: 7", "Final answer: 7"),
        ("Correct answer: (B) Paris", "Correct answer: (B) Paris"),
        ("My response depends on: context", "My response depends on: context"),
        ("No label at all.", "No label at all."),
    ],
)
def test_strip_label_removes_only_a_leading_steering_label(library, raw, clean):
    assert strip_label(raw, label_pattern(library)) == clean


NO_LOOPS = {"chosen": False, "rejected": False, "original": False}


@pytest.mark.parametrize(
    ("answers", "loops", "reason"),
    [
        (("a", "b", "c"), {}, None),
        (("", "b", "c"), {}, "empty_chosen"),
        (("a", "  ", "c"), {}, "empty_rejected"),
        (("a", "b", ""), {}, "empty_original"),
        (("a", "a", "c"), {}, "chosen_equals_rejected"),
        (("a", "b", "b"), {}, "rejected_equals_original"),
        (("a", "b", "a"), {}, "chosen_equals_original"),
        (("a", "b", "c"), {"chosen": True}, "degenerate_chosen"),
        (("a", "b", "c"), {"original": True}, "degenerate_original"),
        (("a", "b", "c"), {"rejected": True}, None),  # a looping y- is kept (and flagged): the policy's failure
        # A loop decides before emptiness: the other answers of a looping query are abandoned, maybe empty.
        (("a", "", ""), {"chosen": True}, "degenerate_chosen"),
        (("", "", "c"), {"original": True}, "degenerate_original"),
    ],
)
def test_drop_reason_for_each_filter_and_the_row_policy_on_loops(answers, loops, reason):
    texts = dict(zip(("chosen", "rejected", "original"), answers, strict=True))
    assert drop_reason(texts, NO_LOOPS | loops) == reason
