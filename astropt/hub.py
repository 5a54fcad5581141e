"""The HuggingFace Hub through ``huggingface_hub``, for the dataset (:mod:`astropt.hf`) and the
released weights (:mod:`astropt.released`).

A :class:`Hub` is one repo on one endpoint: it resolves a revision to a commit, lists files with
their size and hash (:class:`RemoteFile`), and fetches them at that commit with
``snapshot_download`` (parallel, ``hf_xet`` where the repo is on Xet, a connection dropped
mid-file resumed by the library with a ``Range`` request; a file cut off by a killed run starts
again), into a folder with the repo's paths (``local_dir``) or the ``huggingface_hub`` cache, its
progress in the log. ``huggingface_hub`` checks no content, so each file is then checked here
against its size and hash (LFS sha256, or the git blob id of a file kept in git); a bad copy is
deleted and fetched again, up to ``retries`` times. :class:`VerifiedCache` remembers files that
passed (by size and mtime), so a rerun rehashes nothing. Every Hub or network error becomes
:attr:`Hub.error`, naming the file, repo, revision, endpoint and the fix.

Example::

    hub = Hub("Smith42/galaxies", "dataset", None, None, config="data.huggingface",
              error=RuntimeError, rule="download", prefix="huggingface", keys=("token", "retries"))
    commit = hub.resolve("main", "huggingface: dataset")
    files = hub.list_files(commit)
    local = hub.fetch([files["metadata.parquet"]], commit, local_dir="resources/galaxies/hf")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from astropt.io import atomic_write, duration

__all__ = ["Hub", "RemoteFile", "VerifiedCache", "file_digest", "first_line", "VERIFIED_SIDECAR"]

VERIFIED_SIDECAR = ".astropt-verified.json"
"""In a ``local_dir``: files already checked against their hash, by repo path, with size and mtime."""
CHUNK_BYTES = 8 << 20  # read unit when hashing files on disk
RETRY_WAIT_S = 2.0  # wait after a network error, doubled per attempt, at most 60 s
LIBRARY = "astropt-workflow"  # the user agent's library name
COMMIT_RE = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, as the Hub lists it.

    Attributes:
        path: Path in the repo (``data/train-00000-of-00192.parquet``).
        size: Size in bytes.
        sha256: LFS sha256 of the content (``None`` for a file kept in git itself).
        blob_id: Git object id (sha1 of ``b"blob <size>\\0"`` + content for a file kept in git).
    """

    path: str
    size: int
    sha256: str | None
    blob_id: str

    @classmethod
    def from_entry(cls, entry: Any) -> "RemoteFile":
        """From a ``huggingface_hub`` ``RepoFile`` (an entry of ``HfApi.list_repo_tree``)."""
        lfs = entry.lfs
        return cls(entry.path, int(lfs.size if lfs else entry.size), lfs.sha256 if lfs else None, entry.blob_id)

    @property
    def hash_kind(self) -> str:
        """``"sha256"`` for LFS files, ``"git-sha1"`` for files kept in git."""
        return "sha256" if self.sha256 else "git-sha1"

    @property
    def expected_hash(self) -> str:
        """Hex digest the downloaded content must have (see :meth:`new_hasher`)."""
        return self.sha256 or self.blob_id

    def new_hasher(self) -> "hashlib._Hash":
        """A hash object that, fed the file's content, ends at :attr:`expected_hash`."""
        if self.sha256:
            return hashlib.sha256()
        h = hashlib.sha1()
        h.update(f"blob {self.size}\0".encode())
        return h


def file_digest(path: str | Path, remote: RemoteFile) -> tuple[int, str]:
    """Size and hash (of the kind ``remote`` expects: sha256, or git's blob sha1) of a local file."""
    h = remote.new_hasher()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _size(n: float) -> str:
    """Bytes in readable units: ``"43.1 kB"``, ``"5.12 GB"``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


class VerifiedCache:
    """The sidecar of files already verified: ``{path: [size, mtime_ns, hash]}``, thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.entries = {}

    def hit(self, f: RemoteFile, local: Path) -> bool:
        """Whether ``local`` was verified as ``f`` and has not changed since (size, mtime)."""
        try:
            st = local.stat()
        except FileNotFoundError:
            return False
        with self.lock:
            entry = self.entries.get(f.path)
        return entry == [f.size, st.st_mtime_ns, f.expected_hash] and st.st_size == f.size

    def record(self, f: RemoteFile, local: Path) -> None:
        with self.lock:
            self.entries[f.path] = [f.size, local.stat().st_mtime_ns, f.expected_hash]
            atomic_write(self.path, lambda p: p.write_text(json.dumps(self.entries, indent=0, sort_keys=True)))


class _Progress:
    """Log lines of a fetch, fed by ``snapshot_download``'s progress bars (:meth:`bar_class`).

    One line per finished file: files and bytes done, rate and ETA. Bytes are counted from the
    library's "Reconstructing" bar (bytes written to disk, also for Xet downloads).
    """

    def __init__(self, n_files: int, total: int, log: Callable[[str], Any], prefix: str):
        self.n_files, self.total, self.log, self.prefix = n_files, total, log, prefix
        self.files_done = self.bytes_done = self.streamed = 0
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()

    def start(self, files_done: int, bytes_done: int) -> None:
        """Before a ``snapshot_download`` call: what is already present and verified."""
        with self.lock:
            self.files_done, self.bytes_done = files_done, bytes_done

    def add(self, n_bytes: int) -> None:
        with self.lock:
            self.bytes_done += n_bytes
            self.streamed += n_bytes

    def file_done(self) -> None:
        with self.lock:
            self.files_done += 1
            rate = self.streamed / max(time.perf_counter() - self.t0, 1e-9)
            left = max(self.total - self.bytes_done, 0)
            eta = duration(left / rate) if rate > 0 else ("0s" if left == 0 else "?")
            self.log(
                f"{self.prefix}: [{min(self.files_done, self.n_files)}/{self.n_files}] files; "
                f"{_size(min(self.bytes_done, self.total))} of {_size(self.total)}, {rate / 1e6:.1f} MB/s, ETA {eta}"
            )

    def bar_class(self) -> type:
        """A ``tqdm_class`` for ``snapshot_download``: draws nothing, counts into this object."""
        progress = self

        class Bar:
            def __init__(self, *args, desc: str = "", unit: str = "it", total=None, initial=0, **kwargs):
                self.n, self.total = initial, total
                self.kind = "files" if unit != "B" else ("bytes" if desc.startswith("Reconstructing") else "")

            def update(self, n: int | float | None = 1) -> None:
                self.n += n or 0
                if self.kind == "files":
                    progress.file_done()
                elif self.kind == "bytes":
                    progress.add(int(n or 0))

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                pass

            def noop(self, *args, **kwargs) -> None:
                pass

            close = refresh = set_description = set_description_str = set_postfix_str = noop
            format_dict = {"rate": None}

        return Bar


def _exact(path: str) -> str:
    """An ``allow_patterns`` glob matching exactly ``path``."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def _transient(err: BaseException) -> bool:
    """Whether a failed ``snapshot_download`` may succeed when tried again (network, server, short file)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, XetDownloadError

    if isinstance(err, HfHubHTTPError):
        status = getattr(err.response, "status_code", None)
        return status is None or status >= 500 or status == 429
    if isinstance(err, OfflineModeIsEnabled):
        return False
    short = isinstance(err, OSError) and "Consistency check failed" in str(err)  # a file cut short
    return short or isinstance(err, (httpx2.TransportError, LocalEntryNotFoundError, XetDownloadError))


@dataclass
class Hub:
    """One repo on one Hub endpoint; every error becomes :attr:`error` with a message saying what to fix.

    ``endpoint`` None: ``HF_ENDPOINT``, else huggingface.co (the URL used, after init); ``token``
    None: ``HF_TOKEN`` or the cached login. ``config`` is the config section named in messages
    (holding ``repo``, ``revision``, ``endpoint`` and the ``keys`` it also has: ``token``,
    ``retries``, ``path``, ``cache_dir``, ``max_galaxies``); ``rule`` the workflow rule that
    fetches; ``prefix`` starts the lines sent to ``log``.
    """

    repo: str
    repo_type: str
    endpoint: str | None
    token: str | None
    config: str
    error: type[Exception]
    rule: str
    prefix: str
    keys: tuple[str, ...] = ()
    log: Callable[[str], Any] = print

    def __post_init__(self) -> None:
        from huggingface_hub import HfApi

        self.api = HfApi(endpoint=self.endpoint, token=self.token, library_name=LIBRARY)
        self.endpoint = self.api.endpoint

    def _key(self, name: str) -> str:
        return f" (config key '{self.config}.{name}')" if name in self.keys else ""

    @contextlib.contextmanager
    def errors(self, what: str, revision: str | None = None) -> Iterator[None]:
        """Turn ``huggingface_hub`` / network errors into :attr:`error` about ``what`` (at ``revision``)."""
        import httpx2
        from huggingface_hub.errors import (
            GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RemoteEntryNotFoundError,
            RepositoryNotFoundError, RevisionNotFoundError,
        )

        repo = f"{self.repo_type} repo {self.repo}{f' at {revision}' if revision else ''}"
        where = f"{repo} on {self.endpoint}"
        token = f"config key '{self.config}.token', " if "token" in self.keys else ""
        try:
            yield
        except GatedRepoError as err:
            raise self.error(
                f"{what}: {where} is gated; accept its conditions on the Hub and set a token ({token}HF_TOKEN or "
                f"`hf auth login`) ({first_line(err)})"
            ) from err
        except RepositoryNotFoundError as err:
            keys = ", ".join(f"'{self.config}.{k}'" for k in ("repo", "endpoint", "token") if k != "token" or token)
            raise self.error(
                f"{what}: {where} not found, or private without a valid token (config keys {keys}) ({first_line(err)})"
            ) from err
        except RevisionNotFoundError as err:
            raise self.error(
                f"{what}: revision not found in {where} (config key '{self.config}.revision') ({first_line(err)})"
            ) from err
        except RemoteEntryNotFoundError as err:
            raise self.error(
                f"{what}: no such file or folder in {where}{self._key('path')} ({first_line(err)})"
            ) from err
        except (httpx2.TransportError, LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
            cause = err.__cause__ if isinstance(err, LocalEntryNotFoundError) and err.__cause__ else err
            raise self.error(
                f"{what}: cannot reach {self.endpoint} for {repo} ({type(cause).__name__}: "
                f"{first_line(cause)}); check the network, HF_HUB_OFFLINE and config key '{self.config}.endpoint', "
                "then rerun (finished files are kept)"
            ) from err
        except HfHubHTTPError as err:
            raise self.error(f"{what}: {where} answered with an error ({first_line(err)}); rerun later") from err

    def resolve(self, requested: str | None, label: str) -> str:
        """The commit sha of revision ``requested`` (None: ``main``), logged after ``label``.

        A revision that is not a commit sha gets a warning naming the commit to pin.
        """
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise self.error(
                f"HF_HUB_OFFLINE is set, but {self.repo_type} repo {self.repo} is listed and fetched from the Hub "
                f"(and checked against its listing): unset it for the {self.rule} rule, which runs where Snakemake "
                "runs, or run that rule where the network is reachable"
            )
        revision = requested or "main"
        with self.errors(f"resolving revision {revision!r}"):
            commit = self.api.repo_info(self.repo, revision=revision, repo_type=self.repo_type).sha
        if not commit:
            raise self.error(f"{self.endpoint} gave no commit sha for {self.repo} at {revision!r}")
        self.log(f"{label} {self.repo} on {self.endpoint}, revision {revision!r} = commit {commit}")
        if requested is None or not COMMIT_RE.fullmatch(requested):
            self.log(
                f"{self.prefix}: WARNING: config key '{self.config}.revision' is "
                f"{'not set (main)' if requested is None else repr(requested)}, not a commit sha: a rerun may get "
                f"other files. Pin it for reproducibility: revision: {commit}"
            )
        return commit

    def list_files(self, commit: str, folder: str | None = None) -> dict[str, RemoteFile]:
        """The files of the repo at ``commit`` (recursively), or of one ``folder`` (not recursively), by path."""
        from huggingface_hub.hf_api import RepoFile

        with self.errors(f"listing {folder or 'the files'}", commit):
            entries = list(self.api.list_repo_tree(
                self.repo, path_in_repo=folder or None, recursive=not folder, revision=commit,
                repo_type=self.repo_type,
            ))
        return {e.path: RemoteFile.from_entry(e) for e in entries if isinstance(e, RepoFile)}

    def open(self, commit: str, f: RemoteFile, block_size: int):
        """``f`` at ``commit`` as a read-only file (``HfFileSystem``: HTTP Range reads of ``block_size``)."""
        from huggingface_hub import HfFileSystem

        fs = HfFileSystem(endpoint=self.endpoint, token=self.token)
        root = {"dataset": "datasets/", "model": ""}[self.repo_type]
        return fs.open(f"{root}{self.repo}@{commit}/{f.path}", "rb", block_size=block_size, size=f.size)

    def fetch(
        self, files: list[RemoteFile], commit: str, *, local_dir: str | Path | None = None,
        cache_dir: str | Path | None = None, verified: VerifiedCache | None = None, workers: int = 8, retries: int = 0,
    ) -> dict[str, Path]:
        """Make every file present at ``commit`` and verified (see the module doc); return the local paths.

        Args:
            files: The files (from :meth:`list_files`).
            commit: The commit sha.
            local_dir: Folder of the files, repo paths mirrored; None: the ``huggingface_hub``
                cache, under ``cache_dir`` (None: ``HF_HUB_CACHE``).
            verified: Files already verified in ``local_dir`` (rehashed otherwise).
            workers: Parallel downloads (and hashes).
            retries: Further attempts after a network error or a copy failing its check.

        Returns:
            The local path of each file, by repo path.

        Raises:
            error: Too little disk space, a file failing its check ``retries + 1`` times, lasting
                network errors or a Hub error (naming the file).
        """
        root = Path(local_dir) if local_dir is not None else self._snapshot_folder(commit, cache_dir)
        done = {f.path for f in files if verified is not None and verified.hit(f, root / f.path)}
        self._plan(files, done, root, workers)
        present = [f for f in files if f.path not in done and (root / f.path).is_file()]
        ok = len(present) - len(self._verify(present, root, verified, workers, done, "present copy"))
        if ok:
            self.log(f"{self.prefix}: {ok} present file(s) verified against their hash")
        progress = _Progress(len(files), sum(f.size for f in files), self.log, self.prefix)
        error, failures = None, {}
        for attempt in range(retries + 1):
            todo = [f for f in files if f.path not in done]
            if not todo:
                return {f.path: root / f.path for f in files}
            if attempt:
                why = f"network error ({type(error).__name__}: {first_line(error)})" if error else "failed checks"
                self.log(f"{self.prefix}: {len(todo)} file(s) left after {why}; again ({attempt}/{retries})")
                if error is not None:
                    time.sleep(min(RETRY_WAIT_S * 2 ** (attempt - 1), 60.0))
            progress.start(len(done), sum(f.size for f in files if f.path in done))
            error = self._download(todo, commit, local_dir, cache_dir, workers, progress)
            failures = self._verify([f for f in todo if (root / f.path).is_file()], root, verified, workers, done)
        left = [f.path for f in files if f.path not in done]
        if not left:
            return {f.path: root / f.path for f in files}
        if failures:
            path, failure = next(iter(failures.items()))
            raise self.error(
                f"{path} from {self.repo} on {self.endpoint} failed its check {retries + 1} times: {failure}; "
                f"the bad copy was deleted{self._key('retries')}"
            )
        what = f"downloading {', '.join(left[:3])}{f' and {len(left) - 3} more' if len(left) > 3 else ''}"
        if error is None:
            raise self.error(f"{what}: {self.repo} at {commit} sent no such file into {root}")
        try:
            with self.errors(what, commit):
                raise error
        except self.error:
            raise
        except Exception as err:  # not a Hub or network error: name the files anyway
            raise self.error(f"{what} at {commit}: {type(err).__name__}: {first_line(err)}; rerun") from err

    def _snapshot_folder(self, commit: str, cache_dir: str | Path | None) -> Path:
        """Where ``snapshot_download`` puts the files of ``commit`` in the cache."""
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
        return cache / repo_folder_name(repo_id=self.repo, repo_type=self.repo_type) / "snapshots" / commit

    def _plan(self, files: list[RemoteFile], done: set[str], root: Path, workers: int) -> None:
        """Log what is there and what is to fetch; stop when the disk cannot hold it."""
        todo = [f for f in files if f.path not in done]
        full = [f for f in todo if (root / f.path).is_file() and (root / f.path).stat().st_size == f.size]
        need = sum(f.size for f in todo) - sum(f.size for f in full)
        self.log(
            f"{self.prefix}: {len(files)} file(s), {_size(sum(f.size for f in files))}; {len(done)} verified in "
            f"{root}, {len(todo)} to check or download ({_size(need)} at most) with {workers} worker(s)"
        )
        free = shutil.disk_usage(next(p for p in (root, *root.parents) if p.exists())).free
        if need > free:
            raise self.error(
                f"{root} has {_size(free)} free but the download needs up to {_size(need)} more{self._key('cache_dir')}"
                + ("; or take a subset with max_shards / max_galaxies" if "max_galaxies" in self.keys else "")
            )

    def _download(
        self, todo: list[RemoteFile], commit: str, local_dir, cache_dir, workers: int, progress: _Progress
    ) -> BaseException | None:
        """One ``snapshot_download`` of ``todo``; a network error is returned (to retry), others raised."""
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(
                self.repo, repo_type=self.repo_type, revision=commit, local_dir=local_dir, cache_dir=cache_dir,
                endpoint=self.endpoint, token=self.token, allow_patterns=[_exact(f.path) for f in todo],
                max_workers=workers, tqdm_class=progress.bar_class(), library_name=LIBRARY,
            )
        except Exception as err:
            if _transient(err):
                return err
            with self.errors(f"downloading {todo[0].path}" + (f" and {len(todo) - 1} more" if len(todo) > 1 else ""),
                             commit):
                raise
        return None

    def _verify(
        self, files: list[RemoteFile], root: Path, verified: VerifiedCache | None, workers: int, done: set[str],
        what: str = "download",
    ) -> dict[str, str]:
        """Hash local copies; add those that pass to ``done``, delete the others; return their failures."""
        def check(f: RemoteFile) -> str | None:
            local = root / f.path
            size, digest = file_digest(local, f)
            if size == f.size and digest == f.expected_hash:
                if verified is not None:
                    verified.record(f, local)
                return None
            local.resolve().unlink(missing_ok=True)  # in the cache: the blob the snapshot entry links to
            local.unlink(missing_ok=True)
            kind = f.hash_kind
            return f"expected {f.size} bytes with {kind} {f.expected_hash}, got {size} bytes with {kind} {digest}"

        failures = {}
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files) or 1))) as pool:
            for f, failure in zip(files, pool.map(check, files)):
                if failure is None:
                    done.add(f.path)
                else:
                    failures[f.path] = failure
                    self.log(
                        f"{self.prefix}: {f.path}: {what} fails its size / {f.hash_kind} check; deleted ({failure})"
                    )
        return failures
