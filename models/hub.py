"""Encoders and adapters from the Hugging Face Hub, into the host's model folders.

:func:`fetch` downloads one repository (at a branch, tag or commit) with ``huggingface_hub``, only the files
BabelCLIP loads, into a folder with a readable name (``models/text_encoders/<repo name>`` for an encoder,
``models/babelclip/<repo name>/`` for adapters), never the Hub cache's hash folders. The order of events is what
keeps a user's folders safe:

1. the repository's file list at the revision (one API call) decides what to take: a repository whose only
   weights are pickles is refused, and nothing has been written yet;
2. an encoder's ``config.json`` and ``tokenizer_config.json`` are read from a temporary folder outside the model
   folders: custom code (``auto_map``) or an architecture BabelCLIP does not load is refused, still before
   anything is written;
3. the files download into a hidden staging folder beside the destination (``.<name>.download``, which no
   loader lists). ``huggingface_hub`` keeps a partly downloaded file there, so running the same fetch again
   after a broken connection resumes it;
4. the staged folder is checked like a local one (an encoder folder's config, weights headers and tokenizer; each
   adapter file's header) and only then renamed to the destination in one step, with a small
   ``.babelclip-source.json`` that records repository, revision and commit.

With ``HF_HUB_OFFLINE=1`` nothing goes to the network: a destination already fetched from the same repository is
returned as it is, and otherwise a copy in the Hub cache (from ``hf download`` or transformers) is checked and
copied in. A token for gated or private repositories comes from ``token=``, ``HF_TOKEN`` or ``hf auth login``.
Nothing here runs unless a user asks for a download (a command or a node that is queued).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import BabelClipError, InvalidModelFileError, StorageError, UnsafePathError

__all__ = ["KINDS", "SOURCE_FILE", "FetchResult", "HubError", "fetch", "push", "plan_files", "read_source",
           "folder_name", "destination"]

KINDS = ("encoder", "adapter")
SOURCE_FILE = ".babelclip-source.json"
#: host model folder (under ``models/``) per kind
KIND_FOLDERS = {"encoder": "text_encoders", "adapter": "babelclip"}
#: what BabelCLIP reads of an encoder repository, besides ``*.safetensors`` and ``*.safetensors.index.json``
def _encoder_files() -> tuple[str, ...]:
    from .encoder import TOKENIZER_FOLDER_FILES

    return ("config.json", *TOKENIZER_FOLDER_FILES)

#: beside adapter files: the model card and the evaluation report
ADAPTER_EXTRAS = ("README.md", "*.eval.json", "*.eval.md", "*.eval.png", "*.README.md")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
_CONFIG_FILES = ("config.json", "tokenizer_config.json")


class HubError(BabelClipError):
    """The Hub could not give what was asked (not found, gated, offline, connection broken)."""


@dataclass
class FetchResult:
    path: str  # the destination folder
    repo_id: str
    revision: str | None
    commit: str | None
    files: list[str]
    downloaded: bool  # False: the destination was already this commit (or offline and present)


def folder_name(repo_id: str) -> str:
    """The readable folder name of a repository: its name without the owner (``intfloat/multilingual-e5-small``
    -> ``multilingual-e5-small``)."""
    return repo_id.rstrip("/").split("/")[-1]


def _check_name(name: str) -> str:
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or "/" in name
            or "\\" in name or "\x00" in name or ":" in name):
        raise UnsafePathError(f"The folder name {name!r} is not a plain folder name; give a name without slashes "
                              f"or a leading dot, e.g. 'multilingual-e5-small'.")
    return name


def _check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except (HFValidationError, TypeError):
        raise InvalidModelFileError(
            f"{repo_id!r} is not a Hugging Face repository id. Give it as owner/name, e.g. "
            f"'intfloat/multilingual-e5-small'.") from None
    return repo_id


def destination(models_dir: str, kind: str, name: str) -> str:
    """``<models_dir>/text_encoders/<name>`` or ``<models_dir>/babelclip/<name>``."""
    return os.path.join(models_dir, KIND_FOLDERS[kind], _check_name(name))


def read_source(folder: str) -> dict:
    """What :func:`fetch` recorded about ``folder`` (repository, revision, commit), or ``{}``."""
    try:
        with open(os.path.join(folder, SOURCE_FILE), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _top_level(files: list[str]) -> list[str]:
    return [f for f in files if "/" not in f]


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def plan_files(repo_id: str, kind: str, files: list[str], only: str | None = None) -> list[str]:
    """The files of ``repo_id`` that BabelCLIP loads, from its file list ``files`` (repository paths).

    Only the top level counts (subfolders hold ONNX / OpenVINO / other variants). ``only`` picks one adapter file.
    Raises :class:`InvalidModelFileError` for a repository with pickle weights only or nothing usable.
    """
    top = _top_level(files)
    weights = sorted(f for f in top if f.endswith(".safetensors"))
    if only is not None:
        if kind != "adapter":
            raise InvalidModelFileError("Picking one file works for adapter repositories only.")
        if only not in weights:
            raise InvalidModelFileError(
                f"{repo_id} has no adapter file {only!r} at its top level (it has: {', '.join(weights) or 'none'}). "
                f"Give one of those, or leave the file empty to take them all.")
        weights = [only]
    if not weights:
        pickles = sorted(f for f in files if _matches(f.rsplit("/", 1)[-1], PICKLE_PATTERNS))
        if pickles:
            raise InvalidModelFileError(
                f"{repo_id} only has pickle weights ({', '.join(pickles[:4])}{', ...' if len(pickles) > 4 else ''}), "
                f"which BabelCLIP never loads because they can run code. Nothing was downloaded. Look for a "
                f"safetensors revision (the Hub's conversion bot opens one as a pull request: --revision refs/pr/N) "
                f"or another repository; a peer's adapter can be converted with `python -m babelclip convert`.")
        raise InvalidModelFileError(
            f"{repo_id} has no *.safetensors file at its top level, so it holds no {kind} BabelCLIP can load. "
            f"Nothing was downloaded. Check the repository id{' and --kind' if kind == 'encoder' else ''}.")
    if kind == "encoder":
        if "config.json" not in top:
            raise InvalidModelFileError(
                f"{repo_id} has no config.json at its top level, so it is not a transformers encoder. Nothing was "
                f"downloaded. For an adapter repository use --kind adapter.")
        keep = [f for f in top if f in _encoder_files() or f.endswith(".safetensors.index.json")]
        return sorted(set(keep) | set(weights))
    extras = [f for f in top if _matches(f, ADAPTER_EXTRAS)]
    return sorted(set(weights) | set(extras))


def _guess_kind(files: list[str]) -> str:
    return "encoder" if "config.json" in _top_level(files) else "adapter"


def _check_configs(repo_id: str, folder: str) -> None:
    """Refuse custom code and unsupported architectures from the repository's config files alone."""
    from .encoder import check_encoder_config, refuse_custom_code

    for name in _CONFIG_FILES:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidModelFileError(f"{repo_id}: {name} is not valid JSON ({e}). Nothing was downloaded; the "
                                        f"repository is damaged or not a transformers model.") from None
        if not isinstance(cfg, dict):
            raise InvalidModelFileError(f"{repo_id}: {name} is not a JSON object. Nothing was downloaded.")
        check = check_encoder_config if name == "config.json" else refuse_custom_code
        check(cfg, f"{repo_id}: {name}", " Nothing was downloaded.")


def _validate(kind: str, folder: str, files: list[str], repo_id: str) -> None:
    """The checks BabelCLIP makes on a local folder of this kind, on the staged download."""
    if kind == "encoder":
        from .encoder import check_encoder_folder

        check_encoder_folder(folder)
        return
    from .adapter_file import read_adapter_spec

    for name in (f for f in files if f.endswith(".safetensors")):
        try:
            read_adapter_spec(os.path.join(folder, name))
        except BabelClipError as e:
            raise type(e)(f"{repo_id}: {e} (If this is a peer's adapter, `python -m babelclip convert` turns it "
                          f"into a BabelCLIP adapter.)") from None


def _progress_class(progress: Callable[[int, int], None] | None):
    """A tqdm class whose byte bars report ``progress(done, total)`` (huggingface_hub draws its bars with it)."""
    if progress is None:
        return None
    from tqdm.auto import tqdm

    class _Reporting(tqdm):
        """Silent (the caller shows progress its own way); counts bytes itself, as a disabled tqdm does not."""

        def __init__(self, *args, **kwargs):
            self._bytes = kwargs.get("unit") == "B"
            self._done, self._total = int(kwargs.get("initial") or 0), int(kwargs.get("total") or 0)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            self._done += int(n or 0)
            total = int(getattr(self, "total", 0) or 0) or self._total
            if self._bytes and total:
                progress(min(self._done, total), total)

    return _Reporting


def _hub_error(e: Exception, repo_id: str, revision: str | None, staging: str | None = None,
               action: str = "download") -> BabelClipError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(e, GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its terms on its Hugging Face page, then give a token (--token, "
                        f"HF_TOKEN or `hf auth login`) of the account that accepted them.")
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{repo_id} has no revision {revision!r}. Give a branch, tag or commit that exists.")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"{repo_id} was not found on the Hub, or it is private and no valid token was given (--token, "
                        f"HF_TOKEN or `hf auth login`). Check the repository id.")
    kept = (f" The files already downloaded are kept in {staging!r}: run the same fetch again to download the rest."
            if staging else "")
    return HubError(f"Could not {action} {repo_id}: {type(e).__name__}: {str(e)[:300]}.{kept}")


def _is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _walk(folder: str) -> list[str]:
    files = []
    for root, _dirs, names in os.walk(folder):
        files += [os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/") for n in names]
    return files


def _offline_kind(repo_id: str, revision: str | None, models_dir: str | None, name: str) -> str:
    """Without the Hub's file list: the kind of a folder already fetched from ``repo_id``, else of its cached copy."""
    if models_dir is not None:
        for kind in KINDS:
            if read_source(destination(models_dir, kind, name)).get("repo_id") == repo_id:
                return kind
    snapshot = _cached_snapshot(repo_id, revision)
    return _guess_kind(_walk(snapshot)) if snapshot else "encoder"


def _offline(repo_id: str, kind: str, revision: str | None, dest: str, only: str | None, parent: str,
             name: str) -> FetchResult:
    source = read_source(dest)
    if source.get("repo_id") == repo_id and (revision is None or revision in (source.get("revision"),
                                                                              source.get("commit"))):
        return FetchResult(dest, repo_id, source.get("revision"), source.get("commit"), source.get("files", []), False)
    if os.path.exists(dest):
        held = source.get("repo_id") or "files not fetched from the Hub"
        wanted = repo_id + ("@" + revision if revision else "")
        raise HubError(f"HF_HUB_OFFLINE is set and {dest!r} holds {held}, not {wanted}. Unset HF_HUB_OFFLINE to "
                       f"download it, or choose another folder name.")
    snapshot = _cached_snapshot(repo_id, revision)
    if snapshot is None:
        raise HubError(f"HF_HUB_OFFLINE is set and {repo_id} is neither in {dest!r} nor in the Hugging Face cache. "
                       f"Unset HF_HUB_OFFLINE to download it, or copy its files into {dest!r}.")
    wanted = plan_files(repo_id, kind, _walk(snapshot), only)
    if kind == "encoder":
        _check_configs(repo_id, snapshot)
    staging = os.path.join(parent, f".{name}.download")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for f in wanted:
        shutil.copyfile(os.path.join(snapshot, f), os.path.join(staging, f))  # the cache holds links: copy bytes
    commit = os.path.basename(os.path.normpath(snapshot))
    return _finish(staging, dest, kind, repo_id, revision, commit, wanted, overwrite=False)


def _cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The Hub cache's snapshot folder of ``repo_id`` at ``revision`` (branch, tag or commit; default main)."""
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir()
    except Exception:  # no cache folder yet, or one this version cannot read
        return None
    for repo in cache.repos:
        if repo.repo_id != repo_id or repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            if (revision or "main") in rev.refs or (revision and rev.commit_hash.startswith(revision)):
                return str(rev.snapshot_path)
    return None


def _finish(staging: str, dest: str, kind: str, repo_id: str, revision: str | None, commit: str | None,
            files: list[str], overwrite: bool) -> FetchResult:
    try:
        _validate(kind, staging, files, repo_id)
    except BabelClipError:
        shutil.rmtree(staging, ignore_errors=True)  # what failed the checks would fail them again: not kept
        raise
    shutil.rmtree(os.path.join(staging, ".cache"), ignore_errors=True)  # huggingface_hub's resume bookkeeping
    record = {"repo_id": repo_id, "revision": revision, "commit": commit, "files": files,
              "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(staging, SOURCE_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    old = None
    try:
        if os.path.exists(dest):
            if not overwrite:
                raise InvalidModelFileError(f"{dest!r} already exists. Choose another folder name, or overwrite it.")
            old = dest + f".old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(staging, dest)
    except OSError as e:
        if old and not os.path.exists(dest):
            os.replace(old, dest)
            old = None
        raise StorageError(f"Could not move the download into {dest!r}: {e}. The files are in {staging!r}.") from None
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return FetchResult(dest, repo_id, revision, commit, files, True)


def fetch(repo_id: str, models_dir: str | None = None, *, kind: str | None = None, revision: str | None = None,
          name: str | None = None, dest: str | None = None, only: str | None = None, overwrite: bool = False,
          reuse: bool = False, token: str | bool | None = None, endpoint: str | None = None,
          progress: Callable[[int, int], None] | None = None) -> FetchResult:
    """Download ``repo_id`` (at ``revision``: branch, tag or commit; default the main branch) into the host's
    model folders (see the module doc).

    Args:
        models_dir: the host's ``models`` folder; the destination is ``<models_dir>/text_encoders/<name>`` or
            ``<models_dir>/babelclip/<name>``. Or give ``dest``, the destination folder itself.
        kind: ``"encoder"`` or ``"adapter"``; default: encoder when the repository has a ``config.json``.
        name: the folder name (default: the repository's name, without the owner).
        only: one adapter file of the repository (default: all of them).
        overwrite: replace a destination that holds something else (a destination already at the same commit is
            left as it is and reported as not downloaded).
        reuse: a destination already fetched from ``repo_id`` (at ``revision``, when one is given) is returned
            without asking the Hub for a newer commit (what a node that runs on every queue wants).
        token: for gated and private repositories (default: ``HF_TOKEN`` or the saved login).
        endpoint: another Hub (default: ``HF_ENDPOINT`` or huggingface.co).
        progress: called with (bytes done, bytes total) while downloading.
    """
    _check_repo_id(repo_id)
    if kind is not None and kind not in KINDS:
        raise InvalidModelFileError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}.")
    if dest is None and models_dir is None:
        raise InvalidModelFileError("Give the host's models folder (models_dir) or the destination folder (dest).")
    name = _check_name(name or folder_name(repo_id))
    if reuse and (kind is not None or dest is not None):
        here = dest or destination(models_dir, kind, name)
        source = read_source(here)
        if source.get("repo_id") == repo_id and (revision in (None, source.get("revision"), source.get("commit"))) \
                and (only is None or only in source.get("files", [])):
            return FetchResult(here, repo_id, source.get("revision"), source.get("commit"), source["files"], False)
    if _is_offline():
        kind = kind or _offline_kind(repo_id, revision, models_dir, name)
        dest = os.path.abspath(dest or destination(models_dir, kind, name))
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        return _offline(repo_id, kind, revision, dest, only, parent, os.path.basename(dest))

    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.repo_info(repo_id, revision=revision, files_metadata=False)
    except Exception as e:  # huggingface_hub / httpx errors: mapped to typed messages
        raise _hub_error(e, repo_id, revision) from None
    files = [s.rfilename for s in (info.siblings or [])]
    kind = kind or _guess_kind(files)
    wanted = plan_files(repo_id, kind, files, only)
    dest = os.path.abspath(dest or destination(models_dir, kind, name))
    source = read_source(dest)
    if source.get("repo_id") == repo_id and source.get("commit") == info.sha and set(wanted) <= set(source["files"]):
        return FetchResult(dest, repo_id, revision, info.sha, source["files"], False)
    overwrite = overwrite or source.get("repo_id") == repo_id  # another revision of the same repository: an update
    if os.path.exists(dest) and not overwrite:
        what = f"{source['repo_id']}@{str(source.get('commit'))[:12]}" if source else "files not fetched from the Hub"
        raise InvalidModelFileError(f"{dest!r} already exists and holds {what}. Choose another folder name (--name), "
                                    f"or overwrite it (--overwrite). Nothing was downloaded.")
    if kind == "encoder":
        with tempfile.TemporaryDirectory(prefix="babelclip-config-") as tmp:
            try:
                for f in (f for f in _CONFIG_FILES if f in wanted):
                    hf_hub_download(repo_id, f, revision=info.sha, local_dir=tmp, token=token, endpoint=endpoint)
            except Exception as e:
                raise _hub_error(e, repo_id, revision) from None
            _check_configs(repo_id, tmp)
    parent = os.path.dirname(dest)
    staging = os.path.join(parent, f".{os.path.basename(dest)}.download")
    try:
        os.makedirs(staging, exist_ok=True)
    except OSError as e:
        raise StorageError(f"Cannot create {staging!r}: {e}. Check the permissions of {parent!r}.") from None
    try:
        snapshot_download(repo_id, revision=info.sha, local_dir=staging, allow_patterns=wanted, token=token,
                          endpoint=endpoint, tqdm_class=_progress_class(progress))
    except Exception as e:
        raise _hub_error(e, repo_id, revision, staging) from None
    return _finish(staging, dest, kind, repo_id, revision, info.sha, wanted, overwrite)


def _eval_files(adapter_path: str) -> list[str]:
    stem = adapter_path[: -len(".safetensors")]
    return [stem + ext for ext in (".eval.json", ".eval.md", ".eval.png") if os.path.isfile(stem + ext)]


def push(adapter_path: str | os.PathLike, repo_id: str, *, private: bool | None = None, revision: str | None = None,
         token: str | bool | None = None, endpoint: str | None = None, license: str | None = None,
         base_model: str | None = None, message: str | None = None) -> str:
    """Share an adapter: create ``repo_id`` if needed and commit the adapter file, its model card as
    ``README.md`` and its evaluation report (``<stem>.eval.{json,md,png}``, when present) in one commit.

    The adapter is checked first (a file that is not a BabelCLIP adapter is never uploaded). Returns the URL of the
    commit. ``token``: an access token with write permission (default: ``HF_TOKEN`` or the saved login).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from .adapter_file import read_adapter_spec
    from .card import evaluation_beside, model_card

    path = os.path.abspath(os.fspath(adapter_path))
    _check_repo_id(repo_id)
    spec = read_adapter_spec(path)
    extras = _eval_files(path)
    card = model_card(spec, evaluation=evaluation_beside(path), repo_id=repo_id, base_model=base_model, license=license)
    operations = [CommitOperationAdd(path_in_repo=os.path.basename(path), path_or_fileobj=path),
                  CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")),
                  *(CommitOperationAdd(path_in_repo=os.path.basename(p), path_or_fileobj=p) for p in extras)]
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, revision=revision,
                                 commit_message=message or f"Add BabelCLIP adapter {spec.name}",
                                 commit_description=spec.describe())
    except Exception as e:
        from huggingface_hub.errors import HfHubHTTPError

        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, HfHubHTTPError) and status in (401, 403):
            raise HubError(f"The Hub refused to write to {repo_id} ({status}): give a token with write access "
                           f"(--token, HF_TOKEN or `hf auth login`) of an account that may write there.") from None
        raise _hub_error(e, repo_id, revision, action="upload to") from None
    return str(info.commit_url)
