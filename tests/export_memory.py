"""The export's peak memory on synthetic chunks: N rows with 6 KB answers, exported in a fresh subprocess.

    python -m tests.export_memory 10000 100000     # one line per size: peak RSS, time, files, row groups

Each size gets a folder of synthetic chunks (1,000 rows each, the rows shuffled across chunks as after a merge
of shards, the worst case for putting rows back in query order), then a new Python process runs the real export
of that folder and reports its own peak RSS (``ru_maxrss``: imports included). Why a script under tests/ and
not an ``ssogen`` subcommand: it measures ssogen on made-up rows, which no user needs to do; it lives beside the
test that asserts on it (tests/test_export.py) and ships nothing in the wheel.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_WORDS = [
    "".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=random.Random(-i).randint(2, 9)))
    for i in range(4000)
]


def synthetic_text(seed: int, size: int) -> str:
    """About `size` bytes of word salad: compresses about as well as model answers do (no long repeats)."""
    rng = random.Random(seed)
    words = rng.choices(_WORDS, k=size // 5)
    return " ".join(words)[:size]


def make_folder(root: Path, rows: int, *, answer_bytes: int = 6000, chunk_size: int = 1000) -> list[str]:
    """A build folder holding `rows` synthetic records in shuffled chunks; returns the query order."""
    import pyarrow as pa

    from ssogen.config import BuildConfig
    from ssogen.generation.plan import run_settings
    from ssogen.inputs.library import Templates
    from ssogen.inputs.models import ModelRef
    from ssogen.output.store import CHUNK_SCHEMA, OutputFolder, ids_digest
    from tests.conftest import make_record

    order = [f"{i:016x}" for i in range(rows)]
    folder = OutputFolder(root)
    settings = run_settings(
        BuildConfig(), ModelRef(path="m", name="m", revision="r"), Templates(None), ids_digest(order)
    )
    folder.prepare(settings, overwrite=False)
    pool = [synthetic_text(k, answer_bytes) for k in range(256)]  # distinct per row via a prefix below
    shuffled = list(range(rows))
    random.Random(0).shuffle(shuffled)
    for start in range(0, rows, chunk_size):
        batch = []
        for i in shuffled[start : start + chunk_size]:
            record = make_record(i, drop_reason="chosen_equals_rejected" if i % 97 == 0 else None)
            record["prompt"] = f"{i}: " + pool[i % 256][:300]
            for k, role in enumerate(("chosen", "rejected", "original")):
                record[role] = f"{i}-{role} " + pool[(i * 7 + k * 31) % 256]
            batch.append(record)
        folder.write_chunk(pa.Table.from_pylist(batch, schema=CHUNK_SCHEMA))
    return order


def _child(root: Path, order_file: Path, limits: dict[str, int]) -> None:
    """In the measured process: the export of `root`, then one JSON line of figures."""
    import pyarrow.parquet as pq

    from ssogen.inputs.library import Templates
    from ssogen.output.export import ExportLimits, export_folder
    from ssogen.output.store import OutputFolder

    order = json.loads(order_file.read_text())
    folder = OutputFolder(root)
    settings = json.loads((root / "settings.json").read_text())
    started = time.perf_counter()
    with folder.lock("export benchmark"):
        result = export_folder(
            folder,
            order,
            templates=Templates(None),
            settings=settings,
            seed=0,
            test_size=0.05,
            limits=ExportLimits(**limits),
        )
    seconds = time.perf_counter() - started
    files = sorted((root / "data").glob("*/*.parquet"))
    groups = [pq.ParquetFile(p).metadata for p in files]
    print(
        json.dumps(
            {
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "seconds": seconds,
                "rows": result.kept + sum(result.dropped.values()),
                "files": len(files),
                "largest_file_mib": max(p.stat().st_size for p in files) / 2**20,
                "sso_train_files": len(result.files["sso"]["train"]),
                "largest_row_group_mib": max(
                    m.row_group(i).total_byte_size for m in groups for i in range(m.num_row_groups)
                )
                / 2**20,
                "row_groups": sum(m.num_row_groups for m in groups),
            }
        )
    )


def measure(rows: int, work: Path, *, answer_bytes: int = 6000, limits: dict[str, int] | None = None) -> dict:
    """Make the folder (in this process), export it in a new one; the child's figures."""
    import yaml

    root = work / f"rows-{rows}"
    order = make_folder(root, rows, answer_bytes=answer_bytes)
    order_file = work / f"order-{rows}.json"
    order_file.write_text(json.dumps(order))
    settings = yaml.safe_load((root / "ssogen.yaml").read_text())
    (root / "settings.json").write_text(json.dumps(settings))
    done = subprocess.run(
        [sys.executable, "-m", "tests.export_memory", "--child", str(root), str(order_file), json.dumps(limits or {})],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--answer-bytes", type=int, default=6000)
    parser.add_argument("--work", type=Path, default=None, help="Where the folders go (default: a temp folder).")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(Path(args.child[0]), Path(args.child[1]), json.loads(args.child[2]))
        return
    from ssogen.output.export import ExportLimits

    print(f"export limits: {asdict(ExportLimits())}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        for rows in args.sizes:
            figures = measure(rows, Path(work), answer_bytes=args.answer_bytes)
            print(
                f"export rows={rows} answer_bytes={args.answer_bytes} "
                + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()),
                flush=True,
            )
            import shutil

            shutil.rmtree(Path(work) / f"rows-{rows}")


if __name__ == "__main__":
    main()
