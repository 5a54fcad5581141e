"""The ``huggingface`` data source: galaxies of a HuggingFace Hub dataset (``Smith42/galaxies``).

:func:`download_huggingface` fetches the parquet shards of each split (``image`` = the HF image
feature, a struct of encoded PNG/JPEG ``bytes`` and a ``path``; ``dr8_id`` = the galaxy id) and the
``metadata.parquet`` catalogue of the dataset repo at one commit, and writes the table the
``tokenise`` stage reads: one row per galaxy with ``id``, ``split``, ``image_path`` (the shard,
relative to the folder of ``metadata.parquet``), ``image_row`` (the galaxy's row in that shard) and
the catalogue's properties. Images stay inside the shards; :func:`read_parquet_images` reads the
encoded bytes of given rows of one shard.

Downloads are parallel, resumable and verified:

- files land in ``cache_dir`` under their repo paths (``hf/data/train-00000-of-00192.parquet``);
- a file is streamed into ``<name>.<hash prefix>.incomplete`` and resumes from there with an HTTP
  ``Range`` request, in the same run after a dropped connection or in a later run after an
  interruption;
- every file is checked against the size and hash the Hub lists for it (the LFS sha256, or the git
  blob id for small files kept in git); a mismatch is deleted and fetched again, up to ``retries``
  times; the verification is remembered in ``cache_dir/.astropt-verified.json`` (keyed by size and
  modification time), so a rerun over ~980 GB of cached shards rehashes nothing.

Subsets: ``max_shards`` keeps the first shards of a split (by name), ``max_galaxies`` the first
galaxies in (shard, row) order; shards past the limit are not downloaded (row counts come from the
parquet footers, read with two small ``Range`` requests per shard).

Bad rows never stop a run unless more than ``max_reject_fraction`` of a split is bad: a missing id,
a null image, an id seen before (the first usable occurrence is kept), a galaxy without a
catalogue row or with several are listed in ``rejected.csv`` with their reason. Whether an image
decodes is the tokeniser's business.

Example::

    from astropt.hf import download_huggingface
    meta = download_huggingface(cfg["data"]["huggingface"], "resources/galaxies/metadata.parquet",
                                "resources/galaxies/rejected.csv")
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from astropt.config import REJECTED_COLUMNS, SPLITS
from astropt.io import atomic_write

__all__ = [
    "HuggingFaceSourceError", "RemoteFile", "download_huggingface", "read_parquet_images",
    "SOURCE_JSON", "VERIFIED_SIDECAR",
]

REPO_TYPE = "dataset"
SOURCE_JSON = "source.json"
"""Written beside ``metadata.parquet``: repo, requested revision, commit, files with sizes and hashes."""
VERIFIED_SIDECAR = ".astropt-verified.json"
"""In ``cache_dir``: files already checked against their hash, by repo path, with size and mtime."""
CHUNK_BYTES = 8 << 20  # read unit when hashing files on disk
FOOTER_PROBE_BYTES = 64 << 10  # first Range request for a parquet footer (most footers fit)
RETRY_WAIT_S = 2.0  # wait after a network error, doubled per attempt, at most 60 s
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_CONFIG = "data.huggingface"


class HuggingFaceSourceError(RuntimeError):
    """The dataset cannot be fetched or used as configured; the message names the file or key."""


class _Cancelled(Exception):
    """Another download failed: this one stops (its partial file is kept and resumes later)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the dataset repo at the pinned commit, as the Hub lists it.

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


# --------------------------------------------------------------------------- reading shards


def read_parquet_images(path: str | Path, rows: Sequence[int], column: str = "image") -> list[bytes | None]:
    """Encoded image bytes of some rows of one parquet shard, reading only their row groups.

    Args:
        path: The shard.
        rows: Row numbers in the file (any order, repeats allowed), e.g. the ``image_row`` of the
            galaxies of one ``image_path``.
        column: The image column: an HF image feature (struct with a ``bytes`` field) or plain
            binary.

    Returns:
        One entry per requested row, in the order of ``rows``: the encoded bytes (PNG/JPEG), or
        ``None`` for a null image.

    Raises:
        ValueError: If the file has no such column, or it holds no image bytes.
        IndexError: If a row is outside the file (naming the file, the row and the row count).
    """
    pf = pq.ParquetFile(path)
    _image_leaf(pf, column, path)  # checks the column
    meta = pf.metadata
    wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
    out: list[bytes | None] = [None] * len(wanted)
    if not len(wanted):
        return out
    outside = wanted[(wanted < 0) | (wanted >= meta.num_rows)]
    if len(outside):
        raise IndexError(f"{path}: row {int(outside[0])} is outside the file ({meta.num_rows} rows)")
    starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    groups = np.searchsorted(starts, wanted, side="right") - 1
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    for idx in np.split(order, bounds):
        g = int(groups[idx[0]])
        values = _image_bytes(pf.read_row_group(g, columns=[column]).column(0).combine_chunks())
        for i, value in zip(idx, values.take(pa.array(wanted[idx] - starts[g])).to_pylist()):
            out[i] = value
    return out


def _image_bytes(column: pa.Array) -> pa.Array:
    """The encoded bytes of an image column (null where the image or its bytes are null)."""
    if pa.types.is_struct(column.type):
        return pc.struct_field(column, "bytes")
    return column


def _image_leaf(pf: pq.ParquetFile, column: str, path: str | Path) -> int:
    """Index of the parquet leaf column holding the bytes of image column ``column``."""
    schema = pf.schema_arrow
    if column not in schema.names:
        raise ValueError(f"{path} has no image column {column!r}; its columns are {schema.names}")
    typ = schema.field(column).type
    if pa.types.is_struct(typ):
        if typ.get_field_index("bytes") < 0:
            raise ValueError(
                f"{path}: column {column!r} is a struct without a 'bytes' field ({typ}), not an image feature"
            )
        leaf = f"{column}.bytes"
    elif pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        leaf = column
    else:
        raise ValueError(f"{path}: column {column!r} holds {typ}, not image bytes (binary or struct with 'bytes')")
    pschema = pf.metadata.schema
    return next(i for i in range(len(pschema)) if pschema.column(i).path == leaf)


def _null_image_rows(pf: pq.ParquetFile, leaf: int, column: str, n_rows: int) -> np.ndarray:
    """Which of the first ``n_rows`` rows have a null image, reading images only where needed.

    A row group whose statistics count no null in the bytes column is not read at all (the
    usual case); others are read to find the null rows.
    """
    nulls = np.zeros(n_rows, dtype=bool)
    start = 0
    for g in range(pf.metadata.num_row_groups):
        if start >= n_rows:
            break
        rg = pf.metadata.row_group(g)
        stats = rg.column(leaf).statistics
        if stats is None or not stats.has_null_count or stats.null_count > 0:
            values = _image_bytes(pf.read_row_group(g, columns=[column]).column(0).combine_chunks())
            stop = min(rg.num_rows, n_rows - start)
            nulls[start : start + stop] = pc.is_null(values).to_numpy(zero_copy_only=False)[:stop]
        start += rg.num_rows
    return nulls


# --------------------------------------------------------------------------- the Hub


class _Hub:
    """One dataset repo on a Hub endpoint, through ``huggingface_hub``; errors become clear messages."""

    def __init__(self, repo: str, endpoint: str | None, token: str | None):
        from huggingface_hub import HfApi
        from huggingface_hub.utils import build_hf_headers

        self.repo = repo
        self.api = HfApi(endpoint=endpoint, token=token, library_name="astropt-workflow")
        self.endpoint = self.api.endpoint
        self.token = token
        self.headers = build_hf_headers(token=token, library_name="astropt-workflow")
        self.headers["Accept-Encoding"] = "identity"  # hash and size the bytes as stored

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn ``huggingface_hub`` / network errors into :class:`HuggingFaceSourceError` about ``what``."""
        import httpx2
        from huggingface_hub.errors import (
            GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
        )

        where = f"{self.repo} on {self.endpoint}"
        try:
            yield
        except GatedRepoError as err:
            raise HuggingFaceSourceError(
                f"{what}: {where} is gated; accept its conditions on the Hub and set a token "
                f"(config key '{_CONFIG}.token', HF_TOKEN or `hf auth login`) ({_first_line(err)})"
            ) from err
        except RepositoryNotFoundError as err:
            raise HuggingFaceSourceError(
                f"{what}: dataset repo {where} not found, or private without a valid token "
                f"(config keys '{_CONFIG}.repo', '{_CONFIG}.endpoint', '{_CONFIG}.token') ({_first_line(err)})"
            ) from err
        except RevisionNotFoundError as err:
            raise HuggingFaceSourceError(
                f"{what}: revision not found in {where} (config key '{_CONFIG}.revision') ({_first_line(err)})"
            ) from err
        except RemoteEntryNotFoundError as err:
            raise HuggingFaceSourceError(f"{what}: no such file in {where} ({_first_line(err)})") from err
        except HfHubHTTPError as err:
            raise HuggingFaceSourceError(f"{what}: the Hub answered with an error ({_first_line(err)})") from err
        except httpx2.TransportError as err:
            raise HuggingFaceSourceError(
                f"{what}: cannot reach {self.endpoint} ({type(err).__name__}: {err}); check the network and "
                f"config key '{_CONFIG}.endpoint', then rerun (finished downloads are kept, partial ones resume)"
            ) from err

    def resolve(self, revision: str) -> str:
        """The commit sha of ``revision`` (a branch, tag or sha; checked to exist)."""
        with self.errors(f"resolving revision {revision!r}"):
            sha = self.api.dataset_info(self.repo, revision=revision).sha
        if not sha:
            raise HuggingFaceSourceError(f"{self.endpoint} gave no commit sha for {self.repo} at {revision!r}")
        return sha

    def list_files(self, commit: str) -> dict[str, RemoteFile]:
        """Every file of the repo at ``commit``, by path."""
        with self.errors(f"listing the files of {self.repo} at {commit}"):
            entries = list(self.api.list_repo_tree(self.repo, recursive=True, revision=commit, repo_type=REPO_TYPE))
        files = {}
        for e in entries:
            if hasattr(e, "blob_id"):  # RepoFile, not RepoFolder
                size = e.lfs.size if e.lfs else e.size
                files[e.path] = RemoteFile(e.path, int(size), e.lfs.sha256 if e.lfs else None, e.blob_id)
        return files

    def url(self, commit: str, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo, path, repo_type=REPO_TYPE, revision=commit, endpoint=self.endpoint)

    @contextlib.contextmanager
    def stream(self, commit: str, path: str, start: int = 0, end: int | None = None) -> Iterator[Any]:
        """A streamed GET of ``path`` from byte ``start`` (to ``end``, inclusive), redirects followed.

        Network errors are raised as they are (the caller retries and resumes); HTTP errors other
        than rate limits and server errors (retried here) become :class:`HuggingFaceSourceError`.
        """
        from huggingface_hub import constants
        from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

        headers = dict(self.headers)
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        with http_stream_backoff(
            "GET", self.url(commit, path), headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
            retry_on_exceptions=(),
        ) as response:
            if response.status_code >= 400:
                response.read()
                with self.errors(f"downloading {path}"):
                    hf_raise_for_status(response)
            yield response

    def read_range(self, commit: str, path: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (inclusive) of ``path``; the server must honour Range requests."""
        import httpx2

        try:
            with self.stream(commit, path, start, end) as response:
                if response.status_code != 206 and start > 0:
                    raise HuggingFaceSourceError(
                        f"{self.endpoint} ignored an HTTP Range request for {path} (status {response.status_code}); "
                        f"reading parquet footers for config key '{_CONFIG}.max_galaxies' needs them: "
                        "use max_shards instead, or max_galaxies: null"
                    )
                return response.read()[: end - start + 1]
        except httpx2.TransportError as err:
            raise HuggingFaceSourceError(
                f"reading the parquet footer of {path}: cannot reach {self.endpoint} ({type(err).__name__}: {err}); "
                "rerun when the network is back"
            ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------- downloads


class _VerifiedCache:
    """The sidecar of files already verified: ``{path: [size, mtime_ns, hash]}``, thread-safe."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        try:
            self.entries: dict[str, list] = json.loads(path.read_text())
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
    """Counts finished files and bytes; one log line per finished file with rate and ETA."""

    def __init__(self, files: int, total_bytes: int, done: list[RemoteFile], log: Callable[[str], Any]):
        self.files, self.total, self.log = files, total_bytes, log
        self.done_files, self.done_bytes = len(done), sum(f.size for f in done)
        self.transferred = 0
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.transferred += n

    def finished(self, f: RemoteFile, how: str) -> None:
        with self.lock:
            self.done_files += 1
            self.done_bytes += f.size
            dt = max(time.perf_counter() - self.t0, 1e-9)
            rate = self.transferred / dt
            left = self.total - self.done_bytes
            eta = _duration(left / rate) if rate > 0 else ("0s" if left <= 0 else "?")
            self.log(
                f"huggingface: [{self.done_files}/{self.files}] {f.path} {how}; {_size(self.done_bytes)} of "
                f"{_size(self.total)}, {rate / 1e6:.1f} MB/s, ETA {eta}"
            )


def _size(n: float) -> str:
    """Bytes in readable units: ``"43.1 kB"``, ``"5.12 GB"``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class _Downloader:
    """Parallel, resumable, verified downloads of repo files into ``cache_dir`` (repo paths mirrored)."""

    def __init__(self, hub: _Hub, commit: str, cache_dir: Path, workers: int, retries: int, log: Callable[[str], Any]):
        self.hub, self.commit, self.cache_dir = hub, commit, cache_dir
        self.workers, self.retries, self.log = workers, retries, log
        self.verified = _VerifiedCache(cache_dir / VERIFIED_SIDECAR)
        self.stop = threading.Event()

    def local(self, f: RemoteFile) -> Path:
        return self.cache_dir / PurePosixPath(f.path)

    def partial(self, f: RemoteFile) -> Path:
        """The partial download of ``f``: named after its hash, so another version never resumes it."""
        dest = self.local(f)
        return dest.with_name(f"{dest.name}.{f.expected_hash[:16]}.incomplete")

    def num_rows(self, f: RemoteFile) -> int:
        """Rows of parquet file ``f`` from its footer: the verified local copy, else two Range requests."""
        if self.verified.hit(f, self.local(f)):
            return pq.read_metadata(self.local(f)).num_rows
        probe = min(f.size, FOOTER_PROBE_BYTES)
        tail = self.hub.read_range(self.commit, f.path, f.size - probe, f.size - 1)
        if len(tail) < 8 or tail[-4:] != b"PAR1":
            raise HuggingFaceSourceError(f"{f.path} is not a parquet file (no PAR1 footer magic)")
        n = int.from_bytes(tail[-8:-4], "little")
        if n + 8 > len(tail):
            if n + 8 > f.size:
                raise HuggingFaceSourceError(f"{f.path}: corrupt parquet footer (length {n}, file {f.size} bytes)")
            tail = self.hub.read_range(self.commit, f.path, f.size - 8 - n, f.size - 1)
        return pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-8 - n :])).num_rows

    def fetch(self, files: list[RemoteFile]) -> None:
        """Make every file present and verified; raise on the first file that cannot be.

        Raises:
            HuggingFaceSourceError: On too little disk space, a file that keeps failing its size /
                hash check, lasting network errors or an HTTP error (naming the file).
        """
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cached = [f for f in files if self.verified.hit(f, self.local(f))]
        todo = [f for f in files if f not in cached]
        total = sum(f.size for f in files)
        need = sum(self._missing_bytes(f) for f in todo)
        self.log(
            f"huggingface: {len(files)} files, {_size(total)}; {len(cached)} verified in {self.cache_dir}, "
            f"{len(todo)} to check or download ({_size(need)} at most) with {self.workers} workers"
        )
        free = shutil.disk_usage(self.cache_dir).free
        if need > free:
            raise HuggingFaceSourceError(
                f"{self.cache_dir} has {_size(free)} free but the download needs up to {_size(need)} more "
                f"(config key '{_CONFIG}.cache_dir'; or take a subset with max_shards / max_galaxies)"
            )
        if not todo:
            return
        progress = _Progress(len(files), total, cached, self.log)
        self.stop.clear()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="hf-download") as pool:
            futures = [pool.submit(self._ensure, f, progress) for f in todo]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:  # on a failure or an interrupt, the other downloads stop at their next chunk
                if not all(fut.done() and fut.exception() is None for fut in futures):
                    self.stop.set()
                    for fut in futures:
                        fut.cancel()
        failed = [fut.exception() for fut in futures if not fut.cancelled() and fut.exception() is not None]
        if failed:
            raise next((err for err in failed if not isinstance(err, _Cancelled)), failed[0])

    def _missing_bytes(self, f: RemoteFile) -> int:
        """Bytes still to fetch for ``f``: a full-size copy (to verify) counts 0, a partial one its rest."""
        for path in (self.local(f), self.partial(f)):
            if path.is_file():
                return max(f.size - path.stat().st_size, 0) if path.stat().st_size <= f.size else f.size
        return f.size

    def _ensure(self, f: RemoteFile, progress: _Progress) -> None:
        """Verify a present copy of ``f`` (a truncated one is resumed), else download it."""
        dest = self.local(f)
        if dest.is_file():
            size = dest.stat().st_size
            if size == f.size and self._hash_file(f, dest) == f.expected_hash:
                self.verified.record(f, dest)
                progress.finished(f, "verified (was present)")
                return
            if size < f.size and not self.partial(f).exists():
                self.log(f"huggingface: {f.path}: {size} of {f.size} bytes present; resuming")
                dest.replace(self.partial(f))
            else:
                self.log(f"huggingface: {f.path}: present copy fails its size / {f.hash_kind} check; deleted")
                dest.unlink()
        self._download(f, progress)
        progress.finished(f, "downloaded")

    def _hash_file(self, f: RemoteFile, path: Path) -> str:
        h = f.new_hasher()
        with open(path, "rb") as fh:
            _feed(h, fh)
        return h.hexdigest()

    def _download(self, f: RemoteFile, progress: _Progress) -> None:
        import httpx2

        dest, partial = self.local(f), self.partial(f)
        dest.parent.mkdir(parents=True, exist_ok=True)
        for stale in dest.parent.glob(f"{dest.name}.*.incomplete"):
            if stale != partial:
                stale.unlink()  # a partial download of another version of this file
        failure = ""
        for attempt in range(1, self.retries + 2):
            if self.stop.is_set():
                raise _Cancelled()
            try:
                size, digest = self._attempt(f, partial, progress)
            except httpx2.TransportError as err:
                have = partial.stat().st_size if partial.exists() else 0
                failure = f"network error ({type(err).__name__}: {err}) with {have} of {f.size} bytes received"
                if attempt <= self.retries:
                    wait_s = min(RETRY_WAIT_S * 2 ** (attempt - 1), 60.0)
                    self.log(f"huggingface: {f.path}: {failure}; resuming in {wait_s:.0f}s ({attempt}/{self.retries})")
                    time.sleep(wait_s)
                    continue
                raise HuggingFaceSourceError(
                    f"{f.path}: {failure} after {attempt} attempts from {self.hub.endpoint}; check the network, "
                    f"then rerun: finished files are kept and this one resumes from {partial}"
                ) from err
            if size == f.size and digest == f.expected_hash:
                os.replace(partial, dest)
                self.verified.record(f, dest)
                return
            partial.unlink(missing_ok=True)
            failure = (
                f"expected {f.size} bytes with {f.hash_kind} {f.expected_hash}, got {size} bytes with "
                f"{f.hash_kind} {digest}"
            )
            if attempt <= self.retries:
                self.log(f"huggingface: {f.path}: {failure}; deleted, downloading again ({attempt}/{self.retries})")
        raise HuggingFaceSourceError(
            f"{f.path} from {self.hub.endpoint} failed its check {self.retries + 1} times: {failure} "
            f"(config key '{_CONFIG}.retries')"
        )

    def _attempt(self, f: RemoteFile, partial: Path, progress: _Progress) -> tuple[int, str]:
        """Download (or resume) ``f`` into ``partial``; return its size and hash."""
        start = partial.stat().st_size if partial.exists() else 0
        if start > f.size:
            partial.unlink()
            start = 0
        h = f.new_hasher()
        if start:
            with open(partial, "rb") as fh:
                _feed(h, fh, start)
        if start == f.size:
            return start, h.hexdigest()
        with self.hub.stream(self.commit, f.path, start) as response:
            if start and response.status_code != 206:  # the server sent the whole file: start over
                start, h = 0, f.new_hasher()
            with open(partial, "r+b" if start else "wb") as out:
                out.seek(start)
                out.truncate()
                size = start
                for chunk in response.iter_bytes():  # as received: a broken connection loses nothing
                    if self.stop.is_set():
                        raise _Cancelled()
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    progress.add(len(chunk))
                    if size > f.size:
                        break  # too long: fails the check
        return size, h.hexdigest()


def _feed(h: "hashlib._Hash", fh, limit: int | None = None) -> None:
    """Feed ``limit`` bytes (all when None) of an open file into hash ``h``."""
    left = limit
    while left is None or left > 0:
        block = fh.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
        if not block:
            break
        h.update(block)
        if left is not None:
            left -= len(block)


# --------------------------------------------------------------------------- selection


def _per_split(value: int | dict | None, split: str) -> int | None:
    """A limit for one split: ``value`` itself (int or None) or its entry for ``split`` (absent = None)."""
    return value.get(split) if isinstance(value, dict) else value


def _split_files(files: dict[str, RemoteFile], split: str, pattern: str, repo: str, commit: str) -> list[RemoteFile]:
    """The files matching a split's glob pattern, sorted by path (``*`` matches across ``/`` too)."""
    matched = sorted(p for p in files if fnmatch.fnmatchcase(p, pattern))
    if not matched:
        folder = pattern.rsplit("/", 1)[0] + "/" if "/" in pattern else ""
        nearby = sorted(p for p in files if p.startswith(folder)) or sorted(files)
        shown = ", ".join(nearby[:6]) + (f", ... ({len(nearby)} in all)" if len(nearby) > 6 else "")
        raise HuggingFaceSourceError(
            f"config key '{_CONFIG}.splits.{split}': pattern {pattern!r} matches no file of {repo} at commit "
            f"{commit}; files there: {shown or 'none'}"
        )
    return [files[p] for p in matched]


def _select(
    dl: _Downloader, split: str, shards: list[RemoteFile], max_shards: int | None, max_galaxies: int | None, log
) -> list[tuple[RemoteFile, int | None]]:
    """Shards of one split to use, each with the rows to keep (None = all), in name order."""
    if max_shards is not None:
        shards = shards[:max_shards]
    if max_galaxies is None:
        return [(f, None) for f in shards]
    picked: list[tuple[RemoteFile, int | None]] = []
    have = 0
    with ThreadPoolExecutor(max_workers=dl.workers) as pool:
        for i in range(0, len(shards), dl.workers):
            batch = shards[i : i + dl.workers]
            for f, n in zip(batch, pool.map(dl.num_rows, batch)):
                keep = min(n, max_galaxies - have)
                picked.append((f, None if keep == n else keep))
                have += keep
                if have >= max_galaxies:
                    return picked
    log(
        f"huggingface: split {split}: max_galaxies {max_galaxies:,} but the {len(shards)} shard(s) hold "
        f"{have:,} rows; using all of them"
    )
    return picked


# --------------------------------------------------------------------------- the source


def download_huggingface(
    cfg: dict, out_metadata: str | Path, out_rejected: str | Path, log: Callable[[str], Any] = print
) -> pd.DataFrame:
    """Fetch the configured HuggingFace dataset and write the workflow's download outputs.

    Steps: resolve the revision to a commit; list the repo; pick each split's shards by glob
    pattern (sorted by name) and cut them to ``max_shards`` / ``max_galaxies``; download them and
    ``metadata_file`` in parallel, resuming partial files and verifying sizes and hashes; index
    every galaxy (shard, row); reject bad rows; join the catalogue rows of the kept galaxies.

    Args:
        cfg: The validated ``data.huggingface`` config section: ``repo``, ``revision``
            (None = "main", logged as a warning), ``endpoint``, ``token`` (None = HF_TOKEN or the
            cached login), ``splits`` ({split: glob}), ``metadata_file`` (None = no catalogue),
            ``id_column``, ``image_column``, ``max_shards`` and ``max_galaxies`` (None, an int for
            every split, or {split: int or None}), ``workers``, ``retries``, ``cache_dir``
            (None = ``hf/`` beside ``out_metadata``) and ``max_reject_fraction``.
        out_metadata: The metadata parquet to write. Columns: ``id`` (str), ``split``
            (train / validation / test), ``image_path`` (the shard, relative to the folder of
            ``out_metadata``), ``image_row`` (int64, the galaxy's row in that shard), then the
            catalogue's columns (its id column dropped; a column named like one of the four gets a
            ``meta_`` prefix). Rows ordered by split (train, validation, test), shard, row.
            ``source.json`` is written beside it (repo, revision, commit, files, sizes, hashes).
        out_rejected: CSV of the rows left out: ``id``, ``image_path``, ``reason``.
        log: Called with progress lines and a summary.

    Returns:
        The metadata table (as written).

    Raises:
        HuggingFaceSourceError: On an unknown repo or revision, a split pattern that matches
            nothing, a missing metadata file or column, a shard without the id or image column,
            lasting network errors, a file failing its size / hash check ``retries + 1`` times,
            too little disk space (each naming the file or config key), or when more than
            ``max_reject_fraction`` of a split is rejected (with counts and examples).
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise HuggingFaceSourceError(
            "HF_HUB_OFFLINE is set, but the huggingface source needs the Hub to list and fetch the dataset: "
            "unset it for the download rule (or run that rule where the network is reachable)"
        )
    out_metadata, out_rejected = Path(out_metadata), Path(out_rejected)
    out_dir = out_metadata.parent
    cache_dir = Path(cfg["cache_dir"]) if cfg["cache_dir"] else out_dir / "hf"
    hub = _Hub(cfg["repo"], cfg["endpoint"], cfg["token"])
    requested = cfg["revision"]
    commit = hub.resolve(requested or "main")
    log(f"huggingface: dataset {cfg['repo']} on {hub.endpoint}, revision {requested or 'main'!r} = commit {commit}")
    if requested is None or not _COMMIT_RE.fullmatch(requested):
        log(
            f"huggingface: WARNING: config key '{_CONFIG}.revision' is "
            f"{'not set (main)' if requested is None else repr(requested)}, not a commit sha: reruns may see "
            f"other data. Pin it for reproducibility: revision: {commit}"
        )
    files = hub.list_files(commit)
    dl = _Downloader(hub, commit, cache_dir, cfg["workers"], cfg["retries"], log)

    selected: dict[str, list[tuple[RemoteFile, int | None]]] = {}
    for split in SPLITS:
        shards = _split_files(files, split, cfg["splits"][split], cfg["repo"], commit)
        selected[split] = _select(
            dl, split, shards, _per_split(cfg["max_shards"], split), _per_split(cfg["max_galaxies"], split), log
        )
    meta_file = None
    if cfg["metadata_file"]:
        meta_file = files.get(cfg["metadata_file"])
        if meta_file is None:
            top = sorted(p for p in files if "/" not in p)
            raise HuggingFaceSourceError(
                f"config key '{_CONFIG}.metadata_file': {cfg['metadata_file']!r} is not in {cfg['repo']} at commit "
                f"{commit}; files at its top level: {', '.join(top) or 'none'}"
            )
    wanted = list(dict.fromkeys([f for s in SPLITS for f, _ in selected[s]] + ([meta_file] if meta_file else [])))
    dl.fetch(wanted)

    index, rejected = _index_galaxies(selected, dl, out_dir, cfg["id_column"], cfg["image_column"])
    if meta_file is not None:
        index, more = _join_metadata(index, dl.local(meta_file), cfg["id_column"], log)
        rejected = pd.concat([rejected, more], ignore_index=True)
    _check_rejects(index, rejected, cfg["max_reject_fraction"])

    meta = index.drop(columns=["_shard"]).reset_index(drop=True)
    source = {
        "repo": cfg["repo"],
        "repo_type": REPO_TYPE,
        "endpoint": hub.endpoint,
        "revision": requested,
        "commit": commit,
        "splits": {
            s: {
                "pattern": cfg["splits"][s],
                "files": [f.path for f, _ in selected[s]],
                "rows": int(sum(dl.num_rows(f) if keep is None else keep for f, keep in selected[s])),
                "galaxies": int((meta["split"] == s).sum()),
            }
            for s in SPLITS
        },
        "metadata_file": meta_file.path if meta_file else None,
        "files": [{"path": f.path, "size": f.size, f.hash_kind: f.expected_hash} for f in wanted],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_metadata, lambda p: meta.to_parquet(p, index=False))
    atomic_write(out_rejected, lambda p: rejected[REJECTED_COLUMNS].to_csv(p, index=False))
    atomic_write(out_dir / SOURCE_JSON, lambda p: p.write_text(json.dumps(source, indent=1) + "\n"))

    counts = meta["split"].value_counts()
    reasons = rejected["reason"].str.replace(r" \(.*", "", regex=True).value_counts()
    log(
        f"huggingface: kept {len(meta):,} galaxies ("
        + ", ".join(f"{s} {int(counts.get(s, 0)):,}" for s in SPLITS)
        + f"), rejected {len(rejected):,}"
        + (" (" + ", ".join(f"{r}: {n:,}" for r, n in reasons.items()) + ")" if len(rejected) else "")
        + f"; wrote {out_metadata}"
    )
    return meta


def _index_galaxies(
    selected: dict[str, list[tuple[RemoteFile, int | None]]], dl: _Downloader, out_dir: Path, id_column: str,
    image_column: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per usable galaxy (id, split, image_path, image_row, _shard) plus the rejected rows.

    Rejected: rows without an id, with a null image, or with an id already seen (in split order
    train, validation, test, then shard and row order; the first usable occurrence is kept).
    """
    parts, rejected = [], []
    for split in SPLITS:
        for f, keep in selected[split]:
            path = dl.local(f)
            pf = pq.ParquetFile(path)
            missing = [c for c in (id_column, image_column) if c not in pf.schema_arrow.names]
            if missing:
                raise HuggingFaceSourceError(
                    f"{f.path} has no column(s) {missing} (config keys '{_CONFIG}.id_column', "
                    f"'{_CONFIG}.image_column'); its columns are {pf.schema_arrow.names}"
                )
            n = pf.metadata.num_rows if keep is None else keep
            ids = pf.read(columns=[id_column]).column(0).slice(0, n)
            if not pa.types.is_string(ids.type):
                ids = pc.cast(ids, pa.string())
            rel = Path(os.path.relpath(path, out_dir)).as_posix()
            part = pd.DataFrame({
                "id": ids.to_pandas(),
                "split": split,
                "image_path": rel,
                "image_row": np.arange(n, dtype=np.int64),
                "_shard": len(parts),
            })
            part["_null_image"] = _null_image_rows(pf, _image_leaf(pf, image_column, f.path), image_column, n)
            parts.append(part)
    table = pd.concat(parts, ignore_index=True)

    no_id = table["id"].isna()
    where = "missing id (row " + table.loc[no_id, "image_row"].astype(str) + ")"
    rejected.append(table.loc[no_id].assign(id="", reason=where))
    null_image = ~no_id & table["_null_image"]
    rejected.append(table.loc[null_image].assign(reason="null image"))
    usable = table[~no_id & ~null_image]
    dup = usable["id"].duplicated(keep="first")
    if dup.any():
        first = usable[~dup].set_index("id").loc[usable.loc[dup, "id"]]
        reasons = ("duplicate id (first in " + first["image_path"] + " row " + first["image_row"].astype(str) + ")")
        rejected.append(usable.loc[dup].assign(reason=reasons.to_numpy()))
    index = usable[~dup].drop(columns=["_null_image"]).reset_index(drop=True)
    index["id"] = index["id"].astype(str)
    rejected_df = pd.concat(rejected, ignore_index=True).sort_values(["_shard", "image_row"], kind="stable")
    return index, rejected_df[["id", "image_path", "reason", "split"]].reset_index(drop=True)


def _join_metadata(
    index: pd.DataFrame, path: Path, id_column: str, log: Callable[[str], Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join the catalogue rows of the indexed galaxies (reading only those rows of ``path``).

    Galaxies without a catalogue row, or with several, are rejected.
    """
    dataset = pads.dataset(path, format="parquet")
    if id_column not in dataset.schema.names:
        raise HuggingFaceSourceError(
            f"metadata file {path} has no id column {id_column!r} (config key '{_CONFIG}.id_column'); "
            f"its columns are {dataset.schema.names}"
        )
    key = pc.field(id_column)
    if not pa.types.is_string(dataset.schema.field(id_column).type):
        key = key.cast(pa.string())
    table = dataset.to_table(filter=key.isin(pa.array(index["id"].to_numpy(), type=pa.string())))
    cat = table.to_pandas()
    cat[id_column] = cat[id_column].astype(str)
    reserved = ("id", "split", "image_path", "image_row", "_shard")
    clashes = {c: f"meta_{c}" for c in cat.columns if c in reserved and c != id_column}
    if clashes:
        log(f"huggingface: metadata columns renamed to avoid clashes: {clashes}")
        cat = cat.rename(columns=clashes)
    rows_per_id = cat[id_column].value_counts()
    several = rows_per_id[rows_per_id > 1]
    no_row = ~index["id"].isin(rows_per_id.index)
    multi = index["id"].isin(several.index)
    n_rows = index.loc[multi, "id"].map(several).astype(str)
    rejected = pd.concat([
        index.loc[no_row].assign(reason="no metadata row"),
        index.loc[multi].assign(reason="duplicate metadata rows (" + n_rows + " rows with this id)"),
    ]).sort_values(["_shard", "image_row"], kind="stable")
    kept = index[~no_row & ~multi]
    cat = cat[~cat[id_column].isin(several.index)].rename(columns={id_column: "id"})
    joined = kept.merge(cat, on="id", how="left", validate="one_to_one", sort=False)
    return joined, rejected[["id", "image_path", "reason", "split"]].reset_index(drop=True)


def _check_rejects(index: pd.DataFrame, rejected: pd.DataFrame, max_fraction: float) -> None:
    """Raise when more than ``max_fraction`` of a split's rows were rejected."""
    for split in SPLITS:
        bad = rejected[rejected["split"] == split]
        n = len(bad) + int((index["split"] == split).sum())
        if n and len(bad) / n > max_fraction:
            examples = "; ".join(f"{r.id or '(no id)'} in {r.image_path}: {r.reason}" for r in bad.head(5).itertuples())
            raise HuggingFaceSourceError(
                f"{len(bad):,} of {n:,} rows of split {split} rejected ({len(bad) / n:.0%} > config key "
                f"'{_CONFIG}.max_reject_fraction' {max_fraction}); e.g. {examples}"
            )
