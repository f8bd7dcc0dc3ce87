"""The principle library and the prompt templates: the editable text behind the SSO method.

Owns: loading and validating ``principles/*.yaml`` (one feature per file), the sandboxed Jinja
environment that renders ``prompts/*.j2`` (queries, principles and model outputs are always passed as
data, never as template source), and the content hashes recorded with every dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from ssogen.errors import UsageError

REQUIRED_FIELDS = ("name", "adjectives", "meaning", "positive", "negative")
# The reference queries that calibrate the ranked feature selection (one JSON string per line).
CALIBRATION_FILE = "selection_calibration.jsonl"
BUNDLED_CALIBRATION_SIZE = 90
# The files that shape generation (hashed into a build's fingerprint), then the card's template.
GENERATION_TEMPLATES = ("select_features.j2", "generate_principles.j2", "steering_system.j2", CALIBRATION_FILE)
TEMPLATES = (*GENERATION_TEMPLATES[:3], "dataset_card.md.j2")


@dataclass(frozen=True)
class Feature:
    """One feature of the library: a quality with a good and a bad side."""

    name: str
    good: str
    bad: str
    meaning: str
    positive: str
    negative: str
    # >0 marks a "bound" feature: never chosen by the model, appended with this probability.
    bound_probability: float = 0.0


def resource_dir(name: str) -> Path:
    """The bundled ``prompts``/``principles`` folder, in a wheel install or a source checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "_resources" / name
    if installed.is_dir():
        return installed
    return package.parent / name


def load_library(folder: Path | None) -> list[Feature]:
    """Read every ``*.yaml`` in the folder, validated; sorted by file name for a stable order."""
    folder = folder or resource_dir("principles")
    if not folder.is_dir():
        raise UsageError(f"--principles: {folder} is not a folder of principle YAML files.")
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise UsageError(f"--principles: {folder} holds no *.yaml files; add one file per feature.")
    features = [_load_feature(path) for path in files]
    names = [f.name.lower() for f in features]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UsageError(f"--principles: feature name(s) {', '.join(duplicated)} appear in more than one file.")
    if not any(f.bound_probability == 0 for f in features):
        raise UsageError(f"--principles: {folder} has only bound features; add at least one selectable one.")
    return features


def _load_feature(path: Path) -> Feature:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"--principles: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--principles: {path} must be a mapping with fields {', '.join(REQUIRED_FIELDS)}.")
    for key in REQUIRED_FIELDS:
        if key not in data or data[key] in (None, ""):
            raise UsageError(f"--principles: {path} is missing the field '{key}'.")
    adjectives = data["adjectives"]
    if not (isinstance(adjectives, list) and len(adjectives) == 2 and all(isinstance(a, str) for a in adjectives)):
        raise UsageError(f"--principles: {path}: field 'adjectives' must be a list [good, bad] of two words.")
    for key in ("name", "meaning", "positive", "negative"):
        if not isinstance(data[key], str):
            raise UsageError(f"--principles: {path}: field '{key}' must be text.")
    probability = data.get("bound_probability", 0.0)
    if not isinstance(probability, int | float) or not 0.0 <= probability <= 1.0:
        raise UsageError(f"--principles: {path}: field 'bound_probability' must be a number in [0, 1].")
    return Feature(
        name=data["name"].strip(),
        good=adjectives[0].strip(),
        bad=adjectives[1].strip(),
        meaning=data["meaning"].strip(),
        positive=data["positive"].strip(),
        negative=data["negative"].strip(),
        bound_probability=float(probability),
    )


def _join_and(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c' — how the steering message lists adjectives."""
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


class Templates:
    """Sandboxed renderer for the prompt templates of one folder."""

    def __init__(self, folder: Path | None, required: tuple[str, ...] = TEMPLATES) -> None:
        """``required``: the templates checked at once (a command that needs only its own names just those)."""
        self.folder = folder or resource_dir("prompts")
        if not self.folder.is_dir():
            raise UsageError(f"--prompts: {self.folder} is not a folder of Jinja templates.")
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(self.folder),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self.env.filters["join_and"] = _join_and
        for name in required:
            self._load(name)

    def _load(self, name: str) -> Any:
        try:
            return self.env.get_template(name)
        except TemplateError as exc:
            raise UsageError(f"--prompts: {self.folder / name}: {exc}") from None

    def calibration_queries(self) -> list[str]:
        """The reference queries of the ranked feature selection (`CALIBRATION_FILE`), validated."""
        path = self.folder / CALIBRATION_FILE
        if not path.is_file():
            raise UsageError(
                f"--prompts: {path} is missing; --feature-selection ranked calibrates on it (copy the bundled one "
                f"from {resource_dir('prompts') / CALIBRATION_FILE}), or use --feature-selection sampled."
            )
        queries: list[str] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                query = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(
                    f"--prompts: {path}, line {number}: not JSON ({exc.msg}); write one JSON string per line."
                ) from None
            if not isinstance(query, str) or not query.strip():
                raise UsageError(f"--prompts: {path}, line {number}: each line must be a non-empty JSON string.")
            queries.append(query)
        if len(queries) < 8:
            raise UsageError(
                f"--prompts: {path} holds {len(queries)} queries; the calibration needs at least 8 varied ones "
                f"(the bundled file has {BUNDLED_CALIBRATION_SIZE})."
            )
        return queries

    def render(self, name: str, **data: Any) -> str:
        return str(self.render_module(name, **data)).strip()

    def render_module(self, name: str, **data: Any) -> Any:
        """The rendered template (``str()`` of it) with the values it ``{% set %}`` at its top level."""
        try:
            return self._load(name).make_module(data)
        except TemplateError as exc:
            raise UsageError(f"--prompts: {self.folder / name} failed to render: {exc}") from None


def files_hash(paths: list[Path]) -> str:
    """Content hash of files (names and bytes), to record exactly what a build used."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
