"""The command line: ``ssogen build``, ``push``, ``inspect``, ``audit``, ``merge``, ``bench``, ``doctor``
(``python -m ssogen``).

Owns: turning `BuildConfig`'s documented fields into flags (a YAML ``--config`` first, flags on top),
logging set-up, and mapping errors to exit codes: 2 for bad settings or input (a message, no
traceback unless ``--debug``), 1 for a failure mid-run, 130 for Ctrl-C, each with how to go on.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import types
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from ssogen import __version__
from ssogen.config import GROUPS, BuildConfig, flag, load_yaml_settings
from ssogen.errors import SsogenError, UsageError, WriteError

logger = logging.getLogger("ssogen")


HELP_WIDTH = 100
# Settings `ssogen bench` takes: it measures a build's path on one local engine and writes nothing.
BENCH_GROUPS = ("input", "method", "generation", "engine")
BENCH_RUN_SETTINGS = ("chunk_size", "reproducible")
# Settings `ssogen doctor` takes: the model and how the engine is built.
DOCTOR_SETTINGS = ("model", "model_revision", "trust_remote_code")
# The engine settings `ssogen audit` takes for its judge (same meaning and text as for a build's policy).
JUDGE_ENGINE_SETTINGS = (
    "dtype", "max_model_len", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager", "trust_remote_code",
)  # fmt: skip


METAVARS = {int: "N", float: "X", Path: "DIR"}


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, max_help_position=34, width=HELP_WIDTH)


def _field_type(name: str) -> Any:
    """The concrete type of a field such as ``int | None`` (annotations are strings here)."""
    hint = typing.get_type_hints(BuildConfig)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def setting_help(f: Field[Any]) -> str:
    """A setting's help with its one default: said in the text when there is none to print."""
    text = f.metadata["help"]
    default = f.default if f.default is not MISSING else None
    if default is True:
        text += " (default: on)"
    elif default is not None and default is not False:
        text += f" (default: {default})"
    # argparse %-formats help strings; a literal "%" in a setting's help would crash `--help`.
    return text.replace("%", "%%")


def add_setting(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str) -> None:
    """One `BuildConfig` field as a flag. SUPPRESS keeps "not given" apart from "given as the default", so flags
    only override what they name (in a --config file, or the field's own default)."""
    f = SETTING_FIELDS[name]
    kind = _field_type(name)
    options: dict[str, Any] = {"default": argparse.SUPPRESS, "help": setting_help(f)}
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["type"] = kind
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        else:
            options["metavar"] = f.metadata.get("metavar") or METAVARS.get(kind, "NAME")
    parser.add_argument(f"--{flag(name)}", **options)


def _add_settings(parser: argparse.ArgumentParser, groups: tuple[str, ...], extra: tuple[str, ...] = ()) -> dict:
    """The settings of these groups (and the `extra` ones) as flags, in argument groups; the groups by key."""
    made = {}
    for key, title in GROUPS:
        names = [f.name for f in SETTING_FIELDS.values() if f.metadata["group"] == key]
        names = [n for n in names if key in groups or n in extra]
        if names:
            made[key] = group = parser.add_argument_group(title)
            for name in names:
                add_setting(group, name)
    return made


SETTING_FIELDS = {f.name: f for f in fields(BuildConfig)}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssogen",
        description="Generate Self-Steering Optimization (SSO) preference datasets with vLLM.",
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"ssogen {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="Show debug logs (vLLM's too).")
    common.add_argument("--debug", action="store_true", help="Show tracebacks of errors.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[common], help=help, description=description or help, formatter_class=_formatter
        )

    build = command(
        "build",
        "Generate an SSO dataset (no arguments: the bundled model and queries).",
        "Generate an SSO dataset: every query answered three ways (steered by positive principles, by negative "
        "ones, and unsteered), scored, and written in the Hub's dataset layout. Every setting can also come from "
        "a YAML file (--config), including the ssogen.yaml a build wrote.",
    )
    build.add_argument("--config", type=Path, metavar="YAML", help="YAML file of settings (flags override it).")
    groups = _add_settings(build, tuple(key for key, _ in GROUPS))
    groups["run"].add_argument(
        "--overwrite", action="store_true", help="Delete an earlier build in --output and start afresh."
    )
    groups["run"].add_argument(
        "--dry-run",
        action="store_true",
        help="Render and tokenise every prompt without an engine; write nothing; report speed and memory.",
    )

    features = command("features", "List the principle library: what can steer the policy.")
    add_setting(features, "principles")

    inspect = command("inspect", "Summarise a built folder or Hub dataset; optionally an HTML report.")
    inspect.add_argument("target", help="A folder written by `ssogen build`, or a Hub dataset id (ORG/NAME).")
    inspect.add_argument("--report", type=Path, metavar="DIR", help="Write an HTML report with PNG plots here.")
    inspect.add_argument("--compare", metavar="BUILD", help="Another build (e.g. the previous round) to put beside it.")

    _add_audit_parser(command)

    merge = command("merge", "Combine shard folders of one build into one dataset.")
    merge.add_argument(
        "folders", nargs="+", type=Path, help="Folders written by `ssogen build` (shards or partial runs)."
    )
    merge.add_argument("--output", type=Path, required=True, metavar="DIR", help="The merged folder.")
    merge.add_argument("--overwrite", action="store_true", help="Replace an earlier merge in --output.")

    push = command("push", "Publish a built folder to the Hub.")
    push.add_argument("folder", type=Path, help="A folder written by `ssogen build`.")
    push.add_argument("repo_id", help="Dataset repository on the Hub, ORG/NAME.")
    for name in ("private", "push_branch", "overwrite_round", "replace_repo_data"):
        add_setting(push, name)

    bench = command(
        "bench",
        "Measure the build path against one raw engine call and the reference procedure.",
        "Measure the build path on one local engine against one raw engine call over the same answers (and the "
        "SSO reference procedure), side by side; nothing is written. Takes a build's input, method, generation and "
        "engine settings.",
    )
    bench.add_argument("--config", type=Path, metavar="YAML", help="YAML file of settings (flags override it).")
    groups = _add_settings(bench, BENCH_GROUPS, BENCH_RUN_SETTINGS)
    measure = bench.add_argument_group("measurement")
    measure.add_argument(
        "--repeats", type=int, default=1, help="Measure each run this many times; report the median (default: 1)."
    )
    measure.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also measure the reference procedure, the slowest of the three runs (default: on).",
    )

    doctor = command(
        "doctor",
        "Check the engine and every stage on this machine and model, before a long build.",
        "Start the engine as `build` would, run each stage once on a few built-in queries and check what matters to "
        "a build (the vLLM version and defaults, scoring with and without the prefix cache, the ranked selection, "
        "structured principles, --reproducible's repeat, the loop checks, step counting); print one line per check "
        "and exit 0 only when every one passed.",
    )
    doctor.add_argument("--config", type=Path, metavar="YAML", help="YAML file of settings (flags override it).")
    _add_settings(doctor, ("engine",), DOCTOR_SETTINGS)
    return parser


def _add_audit_parser(command: Any) -> None:
    audit = command(
        "audit",
        "Judge whether a build's pairs are right (pairwise judge or reward model), before training on them.",
    )
    audit.add_argument("target", help="A folder written by `ssogen build`, or a Hub dataset id (ORG/NAME).")
    judge = audit.add_argument_group("the judge")
    judge.add_argument("--judge", metavar="MODEL", help="Judge model: folder or Hub id; not given, the build's policy.")
    judge.add_argument(
        "--judge-kind",
        choices=("pairwise", "reward"),
        default="pairwise",
        help="pairwise: a chat model's verdict in both orders; reward: a sequence-classification reward model "
        "(default: pairwise).",
    )
    judge.add_argument("--prompts", type=Path, metavar="DIR", help="Folder holding your audit_pairwise.j2.")
    for name in JUDGE_ENGINE_SETTINGS:
        add_setting(judge, name)
    rows = audit.add_argument_group("the rows")
    subset = rows.add_mutually_exclusive_group()
    subset.add_argument("--limit", type=int, metavar="N", help="Judge only the first N rows.")
    subset.add_argument("--sample", type=int, metavar="N", help="Judge N rows drawn at random (seeded by --seed).")
    rows.add_argument("--seed", type=int, default=0, metavar="N", help="Seed of --sample (default: 0).")
    out = audit.add_argument_group("output and publishing")
    out.add_argument("--output", type=Path, metavar="DIR", help="Write the audited dataset here (needed for a Hub id).")
    out.add_argument(
        "--push",
        nargs="?",
        const=True,
        metavar="ORG/NAME",
        help="Publish the folder with its audit; without a value, to the build's --push-to-hub (or the Hub target).",
    )
    for name in ("private", "push_branch", "overwrite_round"):
        add_setting(out, name)


def build_config(args: argparse.Namespace, takes: set[str] | None = None) -> BuildConfig:
    """Settings from ``--config`` (if any), then every flag given on the command line.

    ``takes``: the settings this command reads (None: all); a --config file's others are named and left out.
    """
    values: dict[str, Any] = load_yaml_settings(args.config) if args.config else {}
    if takes is not None and (unread := sorted(set(values) - takes)):
        logger.warning("ssogen %s does not read these settings of %s: %s", args.command, args.config, ", ".join(unread))
        values = {k: v for k, v in values.items() if k in takes}
    for f in fields(BuildConfig):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return BuildConfig(**values)


def bench_settings() -> set[str]:
    """The settings `ssogen bench` reads."""
    return {f.name for f in fields(BuildConfig) if f.metadata["group"] in BENCH_GROUPS} | set(BENCH_RUN_SETTINGS)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if verbose:
        import os

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_build(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.dry_run:
        from ssogen.generation.pipeline import dry_run

        print(dry_run(config).line())
        return 0
    from ssogen.output.store import SETTINGS_FILE, OutputFolder

    config.validate()  # a mistyped flag must not create the output folder
    if config.push_to_hub:
        _preflight_push(config, config.push_to_hub)
    resume = f"finished chunks are kept in {config.output}; run the same command again to resume"
    try:
        # One writer per output folder, taken before the model loads so a second build stops at once (exit 2);
        # held through the push of --push-to-hub.
        with OutputFolder(config.output).lock("ssogen build"):
            return _build_and_push(args, config, resume)
    except WriteError as exc:  # no space, a quota, read-only, a file-size limit: once fixed, a re-run resumes
        if (config.output / SETTINGS_FILE).is_file():
            raise WriteError(f"{exc}\n{resume}") from exc
        raise


def _build_and_push(args: argparse.Namespace, config: BuildConfig, resume: str) -> int:
    from ssogen.generation.engine import EngineError
    from ssogen.generation.pipeline import build

    try:
        try:
            # vLLM's own output goes to a log file in the folder unless the user asked to see everything.
            summary = build(config, overwrite=args.overwrite, engine_log=not (args.verbose or args.debug))
        except EngineError as exc:
            if _interrupted.is_set():  # the engine stopped because the user (or a scheduler) stopped us
                raise KeyboardInterrupt from exc
            raise EngineError(f"{exc}\n{resume}") from exc
    except KeyboardInterrupt:
        print(f"interrupted: {resume}", file=sys.stderr)
        return 130
    for line in summary.lines():
        logger.info("%s", line)
    logger.info("wrote %s", config.output)
    if config.push_to_hub:
        from ssogen.hub.publish import push_folder

        result = push_folder(config.output, config.push_to_hub, **_push_options(config))
        logger.info("%s", result.line())
    return 0


def _push_options(config: BuildConfig) -> dict[str, Any]:
    """The settings a push (and the checks before it) takes from a build's settings."""
    return {
        "round": config.round,
        "private": config.private,
        "push_branch": config.push_branch,
        "overwrite_round": config.overwrite_round,
        "replace_repo_data": config.replace_repo_data,
    }


def _preflight_push(config: BuildConfig, repo_id: str) -> None:
    """Before any generation: everything that would make the final push fail (token, access, tag, files)."""
    from ssogen.hub.publish import preflight_push

    line = preflight_push(repo_id, folder=config.output, **_push_options(config))
    logger.info("--push-to-hub checked before the build: %s", line)


def _cmd_push(args: argparse.Namespace) -> int:
    import yaml

    from ssogen.hub.publish import push_folder
    from ssogen.hubmeta import validate_repo_id
    from ssogen.output.store import SETTINGS_FILE, OutputFolder

    validate_repo_id(args.repo_id)
    settings_path = args.folder / SETTINGS_FILE
    if not settings_path.is_file():
        raise SsogenError(f"{args.folder} holds no {SETTINGS_FILE}; is it a folder written by `ssogen build`?")
    round_number = int((yaml.safe_load(settings_path.read_text()) or {}).get("run", {}).get("round", 0))
    with OutputFolder(args.folder).lock("ssogen push", read_only=True):  # no build rewrites it meanwhile
        result = push_folder(
            args.folder,
            args.repo_id,
            round=round_number,
            private=getattr(args, "private", None),
            push_branch=getattr(args, "push_branch", None),
            overwrite_round=getattr(args, "overwrite_round", False),
            replace_repo_data=getattr(args, "replace_repo_data", False),
        )
    logger.info("%s", result.line())
    return 0


_interrupted = threading.Event()


def _interrupt(signum: int, frame: object) -> None:
    # Remembered because the interrupt may not be what surfaces: Ctrl-C reaches vLLM's engine processes
    # too, and the main thread can see their exit (an engine error) before, or instead of, its own
    # KeyboardInterrupt.
    _interrupted.set()
    raise KeyboardInterrupt


def _cmd_features(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ssogen.inputs.library import load_library, resource_dir

    principles = getattr(args, "principles", None)
    library = load_library(principles)
    table = Table(
        title=f"principle library: {principles or resource_dir('principles')}",
        caption="bound: appended to a query's features with this probability instead of chosen by the policy",
        show_lines=True,
    )
    table.add_column("feature", no_wrap=True)
    table.add_column("good / bad", no_wrap=True)
    table.add_column("meaning")
    table.add_column("bound", no_wrap=True)  # appended by chance instead of chosen by the policy
    for feature in library:
        bound = f"p = {feature.bound_probability:g}" if feature.bound_probability else "-"
        table.add_row(feature.name, f"{feature.good} / {feature.bad}", feature.meaning, bound)
    Console(width=max(Console().width, 100)).print(table)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ssogen.reading.inspect import run_inspect

    return run_inspect(args.target, args.report, args.compare)


def _cmd_audit(args: argparse.Namespace) -> int:
    from dataclasses import fields as dataclass_fields

    from ssogen.reading.audit import AuditOptions, run_audit

    # Flags left out keep AuditOptions' defaults (the settings' flags are not set at all when not given).
    options = AuditOptions(
        **{f.name: getattr(args, f.name) for f in dataclass_fields(AuditOptions) if hasattr(args, f.name)}
    )
    engine_log = _engine_log_file("audit", args)
    run_audit(options, engine_log=engine_log)
    if engine_log and Path(engine_log).exists():
        print(f"vLLM's own output: {engine_log}", file=sys.stderr, flush=True)
    return 0


def _engine_log_file(command: str, args: argparse.Namespace) -> str | None:
    """Where a command that keeps no build folder of its own sends vLLM's output: a temporary log, or the
    terminal (None) under -v / --debug, as for a build."""
    if args.verbose or args.debug:
        return None
    return str(Path(tempfile.gettempdir()) / f"ssogen-{command}-{os.getpid()}.log")


def _cmd_merge(args: argparse.Namespace) -> int:
    from ssogen.output.merge import merge

    try:
        result = merge(args.folders, args.output, overwrite=args.overwrite)
    except WriteError as exc:
        raise WriteError(
            f"{exc}\nmerged chunks are kept in {args.output}; run the same command again to resume"
        ) from exc
    dropped = sum(result.dropped.values())
    logger.info("merged %d folders into %s: kept %d, dropped %d", len(args.folders), args.output, result.kept, dropped)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ssogen.generation.doctor import doctor_command

    takes = {f.name for f in fields(BuildConfig) if f.metadata["group"] == "engine"} | set(DOCTOR_SETTINGS)
    config = build_config(args, takes)
    # vLLM's own output goes to a temporary log, as for bench; -v / --debug keep it on the terminal.
    log_file = _engine_log_file("doctor", args)
    status = doctor_command(config, log_file=log_file)
    if log_file and Path(log_file).exists():
        print(f"vLLM's own output: {log_file}", file=sys.stderr, flush=True)
    return status


def _cmd_bench(args: argparse.Namespace) -> int:
    from ssogen.generation.bench import bench_line, run_bench
    from ssogen.generation.engine import Engine
    from ssogen.generation.plan import engine_settings, plan_build

    if args.repeats < 1:
        raise UsageError(f"--repeats: {args.repeats} must be at least 1.")
    config = build_config(args, bench_settings())
    plan = plan_build(config)
    # A bench writes nothing into an output folder; vLLM's own output goes to a temporary log.
    log_file = _engine_log_file("bench", args)
    with Engine(engine_settings(config, plan.model, log_file=log_file)) as engine:
        result = run_bench(
            engine,
            plan,
            args.repeats,
            reproducible=config.reproducible,
            reference=args.reference,
            log=lambda line: print(line, flush=True),
        )
        start, slots = engine.stats.start_seconds, engine.max_num_seqs
    for name in result.measured:
        print(
            f"median {name:>9}: wall {result.median(name, 'wall_seconds'):7.2f}s  "
            f"answer tokens {result.median(name, 'answer_tokens'):7.0f}  "
            f"{result.median(name, 'tokens_per_second'):7.1f} tok/s  steps {result.median(name, 'steps'):7.0f}  "
            f"sequences/step {result.median(name, 'sequences_per_step'):6.1f}  "
            f"host {result.median(name, 'host_us_per_token'):6.1f} us/token, "
            f"alone {result.median(name, 'alone_us_per_token'):6.1f} us/token"
        )
    extra = {
        "mode": "reproducible" if config.reproducible else "continuous",
        "chunk_size": config.chunk_size,
        "queries": len(plan.queries.queries),
        "max_new_tokens": config.max_new_tokens,
        "max_num_seqs": slots,
        "repeats": args.repeats,
        "engine_start_s": f"{start:.1f}",
    }
    if log_file:
        print(f"vLLM's own output: {log_file}", flush=True)
    print(bench_line(result.ratios() | result.host(), extra), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    _setup_logging(args.verbose)
    # A pre-empted job gets SIGTERM: stop as on Ctrl-C, keeping every finished chunk.
    _interrupted.clear()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    handlers = {
        "build": _cmd_build,
        "push": _cmd_push,
        "bench": _cmd_bench,
        "merge": _cmd_merge,
        "inspect": _cmd_inspect,
        "features": _cmd_features,
        "audit": _cmd_audit,
        "doctor": _cmd_doctor,
    }
    try:
        return handlers[args.command](args)
    except SsogenError as exc:
        if _interrupted.is_set():
            print("interrupted", file=sys.stderr)
            return 130
        if args.debug:
            logger.exception("error")
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
