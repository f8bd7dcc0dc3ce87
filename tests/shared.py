"""The shared prompt sets (other people's text, beside this repository in ../shared/data): for the measurement
scripts only. The tests never read them; a clone without them passes `make test`."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    """The shared prompt sets' folder (``SSOGEN_SHARED_DATA`` overrides); a clear error when it is missing."""
    folder = Path(os.environ.get("SSOGEN_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (folder / "user_oriented_instructions.jsonl").is_file():
        raise SystemExit(
            f"the shared prompt sets are missing at {folder}: this measurement reads them; "
            "set SSOGEN_SHARED_DATA to a folder holding user_oriented_instructions.jsonl"
        )
    return folder
