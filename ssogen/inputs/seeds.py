"""Seeds of a build: every random choice derives from (run seed, round, query id, purpose).

Owns `derive_seed` (a request's seed, the split of a query) and `query_rng` (a query's own generator), so a
query's features, answers and split never depend on the other queries.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(run_seed: int, round: int, prompt_id: str, purpose: str) -> int:
    """A request seed from the run seed, the round, the query and what the request is for.

    The round is part of it so that rounds run with one `--seed` over the same queries draw new features
    and new samples, as the method's iterations expect.
    """
    digest = hashlib.sha256(f"{run_seed}:{round}:{prompt_id}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def query_rng(run_seed: int, round: int, prompt_id: str) -> random.Random:
    """Per-query random generator: a query's choices do not depend on the other queries."""
    return random.Random(derive_seed(run_seed, round, prompt_id, "features"))
