"""The Hub's names and card metadata vocabulary that ssogen writes: repo ids, license ids and language codes.

Owns: where ssogen itself installs from (`SOURCE_REPO`, named in every card), checking an ``ORG/NAME`` repo id
(`validate_repo_id`), the list of license ids the Hub accepts in a card's ``license:`` field (checked when the
settings are validated, so a typo fails before any generation instead of at push time), and the parsing and
checking of ``--language``. The license list is the Hub's own (https://huggingface.co/docs/hub/repositories-licenses);
a license missing from it is published as ``other`` with a LICENSE file, as the Hub asks.
"""

from __future__ import annotations

import difflib
import re

from ssogen.errors import UsageError

LICENSES_URL = "https://huggingface.co/docs/hub/repositories-licenses"
# Where ssogen installs from until it is on PyPI (docs/install.md): the card's install line names it. <org> is a
# placeholder until the repository is public, and pip refuses it rather than fetching anyone's code.
SOURCE_REPO = "https://github.com/<org>/ssogen"

HUB_LICENSES = frozenset(
    {
        "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
        "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd",
        "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5",
        "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
        "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
        "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
        "etalab-2.0", "eupl-1.1", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0",
        "isc", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0",
        "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2",
        "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "unknown", "other",
    }
)  # fmt: skip

# ISO 639-1 / 639-3 codes, optionally with a region or script (en, fr, yue, pt-BR, zh-Hant), as the card takes.
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")


def license_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a card license (None when the Hub accepts it)."""
    if isinstance(value, str) and value in HUB_LICENSES:
        return None
    text = str(value)
    close = difflib.get_close_matches(text.lower(), sorted(HUB_LICENSES), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return (
        f"{text!r} is not a license id the Hub accepts{hint}; use an id from {LICENSES_URL}, "
        f"or `other` (then add a LICENSE file to the dataset)"
    )


def language_codes(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"en, fr"`` (or a YAML list) as the card's ``language:`` list; empty when none is given."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [p.strip() for p in parts if p.strip()]


def language_problem(value: str | list[str] | tuple[str, ...] | None) -> str | None:
    """What is wrong with ``value`` as ``--language`` (None when every code is well formed)."""
    codes = language_codes(value)
    if not codes:
        return "must name at least one language code, e.g. en or en,fr"
    bad = [c for c in codes if not _LANGUAGE.fullmatch(c)]
    if bad:
        return f"{', '.join(map(repr, bad))} is not a language code; give ISO 639 codes such as en, fr or pt-BR"
    return None


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a valid ``ORG/NAME`` Hub id, else raise :class:`UsageError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as _hf_validate_repo_id

    problem = f"--push-to-hub expects a Hub dataset id of the form ORG/NAME, got {repo_id!r}"
    # The Hub's own validator also accepts a bare NAME (it means the user's namespace);
    # ssogen wants the owner spelled out so a push never lands somewhere unexpected.
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise UsageError(problem)
    try:
        _hf_validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(f"{problem}: {err}") from None
    return repo_id
