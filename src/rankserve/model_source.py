"""Where a model's folder comes from: a local directory, or a Hugging Face Hub repo fetched into the
standard HF cache. The one resolver that every command uses (serve, export, download, rank, embed,
eval, train), so that ``--model BAAI/bge-reranker-v2-m3`` means the same thing everywhere.

A reference is ``PATH`` (an existing folder always wins, even one spelled like ``org/name``) or a
repo id ``org/name`` with an optional ``@revision`` (a commit, tag or branch). Fetching uses
``huggingface_hub`` (the ecosystem's own client: its cache layout, locks, resumable downloads,
``HF_ENDPOINT`` mirrors, ``HF_TOKEN``), and takes only what rankserve reads: JSON configs (root and
sentence-transformers module folders such as ``1_Pooling/``), root text files (vocabularies) and
the safetensors weights. Pickle formats are never requested, and a repo that has only pickle
weights is refused before any download. rankserve's ONNX backends export from the safetensors
themselves, so a repo's ``onnx/`` or ``openvino/`` folders are never fetched either.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankserve.errors import ConfigError, ModelLoadError

log = logging.getLogger("rankserve")

# The Hub's repo id rules (huggingface_hub.utils.validate_repo_id): one slash, letters, digits, '-', '_', '.'.
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[A-Za-z0-9][\w.\-]{0,95}$")
# Weight formats that are never loaded (unpickling runs code) and so never downloaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".joblib")
TEXT_PATTERNS = ("*.json", "*.txt")  # configs, tokenizer files, vocabularies
ST_MODULE_DIR = re.compile(r"^\d+_[A-Za-z]\w*$")  # sentence-transformers modules: 1_Pooling, 2_Normalize
DEFAULT_ENDPOINT = "https://huggingface.co"
# The environment the resolver reads (the hub client's own names, and NIM's cache root).
HUB_ENV = ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "NIM_CACHE_PATH")
OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: the local folder to load, and where it came from when that was the Hub."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None  # as asked (None: the default branch)
    commit: str | None = None  # the commit the folder holds

    def describe(self) -> dict[str, Any]:
        """What /v1/metadata and ``rankserve download`` report."""
        return {"path": str(self.path), "repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}


def split_ref(ref: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); no ``@`` -> (ref, None)."""
    name, sep, revision = ref.rpartition("@") if "@" in ref else (ref, "", "")
    return (name, revision) if sep else (ref, None)


def is_hub_ref(ref: str) -> bool:
    """``ref`` names a Hub repo (``org/name[@rev]``) and no local folder of that name exists."""
    if os.path.isdir(ref):
        return False
    repo_id, revision = split_ref(ref)
    return bool(REPO_ID.match(repo_id)) and revision != "" and ".." not in repo_id


def ref_problem(ref: str) -> str | None:
    """Why ``ref`` can be neither a folder nor a repo id (None when it can be one); for config checks."""
    if os.path.isdir(ref) or is_hub_ref(ref):
        return None
    if os.path.exists(ref):
        return "a file, not a model folder"
    return (
        "not a directory, nor a Hugging Face repo id (org/name, optionally @revision); give a "
        "Hugging Face-style model folder or a repo id such as BAAI/bge-reranker-v2-m3"
    )


def served_id(ref: str) -> str:
    """The model id a reference is served as by default: the repo id, or the folder's name."""
    return split_ref(ref)[0] if is_hub_ref(ref) else Path(ref).resolve().name


def hub_cache() -> Path:
    """The Hugging Face cache, read from the environment at call time: ``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else NIM's ``NIM_CACHE_PATH/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    if env.get("NIM_CACHE_PATH"):
        return Path(env["NIM_CACHE_PATH"]).expanduser() / "huggingface" / "hub"
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "huggingface", "hub")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in OFFLINE_VALUES


def resolve(ref: str | None, revision: str | None = None) -> ModelSource:
    """The folder to load for ``ref`` (None: the packaged default model), fetching a Hub repo into
    the cache first. ``revision`` applies when ``ref`` has no ``@rev`` of its own. Blocking."""
    if ref is None:
        from rankserve.models.model_dir import default_model_dir

        return ModelSource(default_model_dir())
    if os.path.isdir(ref):
        if revision:
            log.warning("--revision %s ignored: %s is a local folder", revision, ref)
        return ModelSource(Path(ref))
    problem = ref_problem(ref)
    if problem:
        raise ConfigError(f"invalid model={ref!r}: {problem}")
    repo_id, own = split_ref(ref)
    return fetch(repo_id, own or revision)


# -- what is fetched -------------------------------------------------------------------------
def wanted(paths: Iterable[str]) -> list[str]:
    """The repo files rankserve reads, from a repo's file list: JSON and text files at the root and
    JSON in sentence-transformers module folders, and the root safetensors weights
    (``model.safetensors`` alone when present; never Mistral's duplicate ``consolidated``)."""
    paths = list(paths)
    keep = []
    for path in paths:
        folder, _, name = path.rpartition("/")
        if not folder and any(fnmatch.fnmatch(name, p) for p in TEXT_PATTERNS):
            keep.append(path)
        elif folder and ST_MODULE_DIR.match(folder) and name.endswith(".json"):
            keep.append(path)
    weights = [p for p in paths if "/" not in p and p.endswith(".safetensors") and not p.startswith("consolidated")]
    if "model.safetensors" in weights:
        weights = ["model.safetensors"]
    return sorted(keep + weights)


def check_weights(repo_id: str, commit: str, paths: list[str], chosen: list[str]) -> None:
    """A repo with no safetensors weights is refused before anything large is downloaded, naming
    its pickle files and how to convert them."""
    if any(p.endswith(".safetensors") for p in chosen):
        return
    pickles = sorted(p for p in paths if p.endswith(PICKLE_SUFFIXES))
    where = f"{repo_id!r} (commit {commit[:12]})"
    if pickles:
        raise ModelLoadError(
            f"{where} has only pickle weights ({', '.join(pickles[:4])}{' ...' if len(pickles) > 4 else ''}): "
            "rankserve never loads pickle, because unpickling runs code. Use a revision with safetensors (the "
            "Hub often has an 'Adding safetensors' pull request: --revision refs/pr/N), or convert it yourself: "
            "transformers' AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True), then "
            "serve that folder"
        )
    raise ModelLoadError(f"{where} has no model.safetensors (nor sharded safetensors) at its root: nothing to load")


def check_space(repo_id: str, cache: Path, needed: int) -> None:
    """Refuse up front when the files still to fetch do not fit the cache's free space."""
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise ModelLoadError(
            f"{repo_id!r} needs {needed / 2**20:,.1f} MiB more in the Hugging Face cache {cache}, "
            f"which has {free / 2**20:,.1f} MiB free: free some space or set HF_HUB_CACHE elsewhere"
        )


def missing_bytes(snapshot: Path, files: dict[str, int]) -> int:
    return sum(size for path, size in files.items() if not (snapshot / path).exists())


# -- fetching --------------------------------------------------------------------------------
def fetch(repo_id: str, revision: str | None) -> ModelSource:
    """``repo_id`` at ``revision`` into the HF cache (or found there when offline); ModelLoadError
    naming the repo for every way this can fail."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RevisionResolutionError
    from huggingface_hub.hf_api import RepoFile

    for name in ("httpx", "httpx2"):  # one INFO line per HTTP request otherwise
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    cache = hub_cache()
    api = HfApi(endpoint=endpoint(), token=os.environ.get("HF_TOKEN") or None)
    if offline():
        return from_cache(repo_id, revision, cache, "HF_HUB_OFFLINE is set")
    try:
        resolved = api.resolve_revision(repo_id, revision=revision, cache_dir=cache)
        commit = resolved.resolved
        tree = cached_tree(repo_id, commit, cache)  # a commit's files never change: list them once
        if tree is None:
            tree = {
                f.path: f.size
                for f in api.list_repo_tree(repo_id, revision=commit, recursive=True)
                if isinstance(f, RepoFile)
            }
    except HfHubHTTPError as exc:
        raise hub_error(repo_id, revision, exc) from None
    except Exception as exc:
        if isinstance(exc, RevisionResolutionError) and exc.__cause__ is not None:
            exc = exc.__cause__  # the Hub was unreachable and no ref was cached: said by from_cache
        if not unreachable(exc):
            raise
        return from_cache(repo_id, revision, cache, f"{endpoint()} cannot be reached ({type(exc).__name__}: {exc})")
    chosen = wanted(tree)
    check_weights(repo_id, commit, list(tree), chosen)
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    check_space(repo_id, cache, missing_bytes(storage / "snapshots" / commit, {p: tree[p] for p in chosen}))
    log.info(
        "fetching %s@%s (commit %s) from %s: %d files, %.1f MiB, into %s",
        repo_id,
        revision or "main",
        commit,
        endpoint(),
        len(chosen),
        sum(tree[p] for p in chosen) / 2**20,
        cache,
    )
    try:
        path = snapshot_download(
            repo_id, revision=resolved, cache_dir=cache, allow_patterns=chosen, endpoint=endpoint(), token=api.token
        )
    except HfHubHTTPError as exc:
        raise hub_error(repo_id, revision, exc) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise ModelLoadError(
                f"{repo_id!r}: the disk holding the Hugging Face cache {cache} is full ({exc}); "
                "the partial download resumes on the next start once there is space"
            ) from None
        raise ModelLoadError(
            f"{repo_id!r}: the download from {endpoint()} failed ({type(exc).__name__}: {exc}); "
            "start again to resume it"
        ) from None
    except Exception as exc:  # a connection dropped mid-file: the .incomplete blob resumes next time
        raise ModelLoadError(
            f"{repo_id!r}: the download from {endpoint()} failed ({type(exc).__name__}: {exc}); "
            "start again to resume it"
        ) from None
    log.info("model %s@%s is commit %s in %s", repo_id, revision or "main", commit, path)
    return ModelSource(Path(path), repo_id, revision, commit)


def cached_tree(repo_id: str, commit: str, cache: Path) -> dict[str, int] | None:
    """The file listing (path -> size) the hub client cached for ``commit``, None when it has none."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError

    try:
        return {f.path: f.size for f in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache)}
    except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError, OSError):
        return None


def unreachable(exc: BaseException) -> bool:
    """The Hub could not be reached (no route, refused, timed out, offline mode): the hub client's
    HTTP library raises its own transport errors, which are not ``ConnectionError``s."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(
        c.__name__ == "TransportError" for c in type(exc).__mro__
    )


def from_cache(repo_id: str, revision: str | None, cache: Path, why: str) -> ModelSource:
    """The cached snapshot of ``repo_id`` at ``revision`` with no network: the files the online
    path would have taken, checked complete against the tree listing the hub client cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    listed = cached_tree(repo_id, revision or "main", cache)
    # None: filled by another tool (or an older client); the loader then checks what it needs
    patterns = wanted(listed) if listed is not None else None
    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache, local_files_only=True, allow_patterns=patterns
            )
        )
    except LocalEntryNotFoundError as exc:
        incomplete = "incomplete" in str(exc)
        raise ModelLoadError(
            f"{repo_id!r}@{revision or 'main'}: {why}, and the Hugging Face cache {cache} "
            f"{'holds only part of it (an interrupted download)' if incomplete else 'does not hold it'}; run "
            f"`rankserve download {repo_id}{'@' + revision if revision else ''}` with network access (or copy a "
            "filled cache there) first"
        ) from None
    log.info("model %s@%s from the cache (%s): commit %s in %s", repo_id, revision or "main", why, path.name, path)
    return ModelSource(path, repo_id, revision, path.name)


def hub_error(repo_id: str, revision: str | None, exc: Exception) -> ModelLoadError:
    """The hub client's error said for an operator, with the repo id and what to do."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    at = endpoint()
    if isinstance(exc, GatedRepoError):
        return ModelLoadError(
            f"{repo_id!r} is a gated repo on {at}: accept its terms on the Hub, then set HF_TOKEN "
            "to a token of an account with access"
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelLoadError(
            f"revision {revision!r} not found in {repo_id!r} on {at} (give a branch, tag or commit that exists)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelLoadError(
            f"repo {repo_id!r} not found on {at}; if it is private, set HF_TOKEN to a token with access"
        )
    if status == 401:
        return ModelLoadError(f"{at} refused the token for {repo_id!r} (HTTP 401): check HF_TOKEN")
    return ModelLoadError(f"{repo_id!r}: {at} answered HTTP {status}: {exc}")
