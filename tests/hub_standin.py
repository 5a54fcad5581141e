"""An offline stand-in for the ``Smith42/galaxies`` dataset and the HuggingFace Hub that serves it.

- :func:`make_standin_dataset` writes a small dataset folder with the real one's layout and schema:
  ``data/{split}-0000k-of-0000n.parquet`` shards with ``image`` (the HF image feature:
  struct{bytes: PNG bytes, path}) and ``dr8_id`` (string), a root ``metadata.parquet`` keyed by
  ``dr8_id`` with the real catalogue's column names (from :mod:`astropt.synthetic`, which also draws
  the stamps), and a ``README.md`` kept in git (not LFS). Bad rows can be planted.
- :func:`fake_hub` serves such a folder over HTTP on 127.0.0.1 at a fake commit, with the endpoints
  ``huggingface_hub`` 2.x calls: ``GET /api/datasets/{repo}/revision/{rev}`` (repo info, revision
  -> commit), ``GET /api/datasets/{repo}/tree/{rev}[/{path}]`` (files with sizes, git oids and LFS
  sha256), ``HEAD``/``GET /datasets/{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``;
  LFS files answer ``302`` with ``X-Linked-Etag`` / ``X-Linked-Size`` to a second server on another
  port, the "CDN", like the Hub's redirect to its storage). Content supports HTTP ``Range``
  (``206`` + ``Content-Range``, ``416`` past the end). No Xet headers are sent, so clients use plain
  HTTP. Every request is recorded (:attr:`FakeHub.requests`), and faults can be injected: wrong bytes
  (:attr:`FakeHub.corrupt`) or a connection dropped mid-file, once (:attr:`FakeHub.drop_after`) or
  at every request (:attr:`FakeHub.always_drop`).
  ``repo_type="model"`` serves the folder as a model repo instead (``/api/models/...``,
  ``/{repo}/resolve/...``).

Example (a workflow test)::

    from hub_standin import FAKE_COMMIT, UNSET_ENV, fake_hub, hf_env_vars, make_standin_dataset

    standin = make_standin_dataset(tmp_path / "repo", n_per_split={"train": 64, "validation": 16, "test": 32})
    with fake_hub(standin.root) as hub:
        config["data"] = {"source": "huggingface", "image_size": 32,
                          "huggingface": {"endpoint": hub.endpoint, "revision": FAKE_COMMIT}}
        env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}  # no HF_TOKEN etc.
        subprocess.run([... "snakemake" ...], env={**env, **hf_env_vars(tmp_path / "hf_home")})
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "validation", "test")
FAKE_REPO = "Smith42/galaxies"
FAKE_COMMIT = hashlib.sha1(b"astropt hub stand-in").hexdigest()
"""The commit the fake Hub serves (40 hex digits); ``main`` resolves to it."""
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


# --------------------------------------------------------------------------- the dataset


@dataclass
class Standin:
    """A stand-in dataset on disk.

    Attributes:
        root: The dataset folder (what :func:`fake_hub` serves).
        shards: Repo paths of each split's shards, in name order.
        rows: Every shard row: ``split``, ``file`` (repo path), ``row``, ``dr8_id``, ``image`` (bytes or
            None), in (split, file, row) order.
        metadata: The ``metadata.parquet`` table as written (shuffled, with extra galaxies).
        planted: Planted bad rows (only those asked for): ``duplicate_id``, ``missing_metadata``,
            ``duplicate_metadata``, ``null_image``, ``corrupt_image``, each the dr8_id of that row,
            and ``null_id``, the "file row n" of the row without an id.
    """

    root: Path
    shards: dict[str, list[str]]
    rows: pd.DataFrame
    metadata: pd.DataFrame
    planted: dict[str, str] = field(default_factory=dict)


def make_standin_dataset(
    root: str | Path,
    n_per_split: dict[str, int] | None = None,
    shards_per_split: int | dict[str, int] = 2,
    image_size: int = 32,
    seed: int = 0,
    row_group_size: int = 8,
    extra_metadata_rows: int = 5,
    duplicate_id: bool = False,
    missing_metadata: bool = False,
    null_image: bool = False,
    corrupt_image: bool = False,
    null_id: bool = False,
    duplicate_metadata: bool = False,
) -> Standin:
    """Write a small dataset with the schema and layout of ``Smith42/galaxies``.

    Stamps are synthetic galaxies (:func:`astropt.synthetic.render_batch`) saved as PNG; their truths
    form ``metadata.parquet`` (``dr8_id`` plus ``redshift``, ``mag_r_desi``, ``mass_med_photoz``,
    vote fractions ... ), shuffled and with ``extra_metadata_rows`` galaxies that have no image.

    Args:
        root: Folder to write (created).
        n_per_split: Galaxies per split (default train 48, validation 16, test 16).
        shards_per_split: Shards per split (one int for all, or per split).
        image_size: Stamp side in pixels.
        seed: Seed of the galaxies.
        row_group_size: Parquet row group size of the shards (small, so that tests cross groups).
        extra_metadata_rows: Catalogue rows of galaxies that are in no shard.
        duplicate_id: The first row of the last test shard gets the id of train row 1.
        missing_metadata: Train row 2 has no catalogue row.
        null_image: Train row 3 has a null image.
        corrupt_image: Validation row 0 holds bytes that are not an image (the download keeps it).
        null_id: Train row 4 has a null dr8_id.
        duplicate_metadata: Train row 5 has two catalogue rows.

    Returns:
        The :class:`Standin` describing what was written.
    """
    from PIL import Image

    from astropt.synthetic import SyntheticConfig, render_batch, sample_properties

    root = Path(root)
    counts = {"train": 48, "validation": 16, "test": 16, **(n_per_split or {})}
    cfg = SyntheticConfig(
        n_train=counts["train"], n_val=counts["validation"], n_test=counts["test"], image_size=image_size, seed=seed
    )
    props = sample_properties(cfg)
    props["dr8_id"] = [f"{330000 + seed * 1000 + i // 97}_{1000 + i % 97 * 13}" for i in range(len(props))]
    images = []
    for stamp in render_batch(props, cfg):
        buf = io.BytesIO()
        Image.fromarray(stamp, mode="RGB").save(buf, format="PNG")
        images.append(buf.getvalue())
    props["image"] = images

    by_split = {s: props[props["split"] == s].reset_index(drop=True) for s in SPLITS}
    planted: dict[str, str] = {}
    if duplicate_id:
        planted["duplicate_id"] = by_split["train"].loc[1, "dr8_id"]
    if missing_metadata:
        planted["missing_metadata"] = by_split["train"].loc[2, "dr8_id"]
    if null_image:
        planted["null_image"] = by_split["train"].loc[3, "dr8_id"]
        by_split["train"].at[3, "image"] = None
    if corrupt_image:
        planted["corrupt_image"] = by_split["validation"].loc[0, "dr8_id"]
        by_split["validation"].at[0, "image"] = b"this is not a PNG file"
    if duplicate_metadata:
        planted["duplicate_metadata"] = by_split["train"].loc[5, "dr8_id"]
    if null_id:
        by_split["train"].at[4, "dr8_id"] = None

    shards: dict[str, list[str]] = {}
    rows = []
    for split in SPLITS:
        n_shards = shards_per_split[split] if isinstance(shards_per_split, dict) else shards_per_split
        parts = np.array_split(np.arange(len(by_split[split])), n_shards)
        if duplicate_id and split == "test":
            by_split[split].loc[parts[-1][0], "dr8_id"] = planted["duplicate_id"]
        shards[split] = []
        for k, idx in enumerate(parts):
            name = f"data/{split}-{k:05d}-of-{n_shards:05d}.parquet"
            part = by_split[split].loc[idx]
            image = pa.array(
                [None if b is None else {"bytes": b, "path": f"{gid}.png"}
                 for b, gid in zip(part["image"], part["dr8_id"])],
                type=IMAGE_TYPE,
            )
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                pa.table({"image": image, "dr8_id": pa.array(part["dr8_id"], pa.string())}), path,
                row_group_size=row_group_size,
            )
            shards[split].append(name)
            if null_id and split == "train" and k == 0:
                planted["null_id"] = f"{name} row 4"
            rows.append(pd.DataFrame({
                "split": split, "file": name, "row": np.arange(len(part)),
                "dr8_id": part["dr8_id"].to_numpy(), "image": part["image"].to_numpy(),
            }))

    own = ("id", "split", "image_path", "image", "dr8_id")
    truths = [c for c in props.columns if not c.startswith("_") and c not in own]
    metadata = props[["dr8_id", *truths]]
    if missing_metadata:
        metadata = metadata[metadata["dr8_id"] != planted["missing_metadata"]]
    if duplicate_metadata:
        metadata = pd.concat([metadata, metadata[metadata["dr8_id"] == planted["duplicate_metadata"]]])
    rng = np.random.default_rng(seed)
    extra = metadata.sample(n=extra_metadata_rows, random_state=seed).assign(
        dr8_id=[f"999999_{i}" for i in range(extra_metadata_rows)]
    )
    metadata = pd.concat([metadata, extra], ignore_index=True)
    metadata = metadata.iloc[rng.permutation(len(metadata))].reset_index(drop=True)
    metadata.to_parquet(root / "metadata.parquet", index=False, row_group_size=32)
    (root / "README.md").write_text("---\nlicense: cc-by-sa-4.0\n---\n# Stand-in of Smith42/galaxies for tests\n")
    return Standin(root, shards, pd.concat(rows, ignore_index=True), metadata, planted)


# --------------------------------------------------------------------------- the Hub


@dataclass(frozen=True)
class ServedFile:
    """A file of the served repo: its bytes are read from disk at each request."""

    path: str
    local: Path
    size: int
    blob_id: str  # git oid: of the LFS pointer for LFS files, of the content otherwise
    sha256: str | None  # LFS oid (content sha256), None for files kept in git


@dataclass
class Served:
    """One request the fake Hub answered."""

    server: str  # "hub" or "cdn"
    method: str
    url: str
    status: int
    file: str | None  # repo path, for content requests (resolve / CDN)
    range: str | None  # the Range header, if any
    authorized: bool  # an Authorization header was sent
    body_bytes: int  # file bytes sent in the body


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """A Hub and a CDN on 127.0.0.1 serving one dataset folder at :data:`FAKE_COMMIT`.

    Attributes:
        endpoint: Base URL to give ``huggingface_hub`` (config key ``data.huggingface.endpoint``).
        requests: Every request answered, in order.
        corrupt: Repo paths served with one byte flipped (same size: only the hash can tell).
        drop_after: Repo path -> n: the next content GET of that file sends n body bytes (of what it
            should send), then closes the connection; the entry is then removed.
        always_drop: Repo path -> n: like ``drop_after``, for every content GET of that file.
    """

    def __init__(
        self,
        root: str | Path,
        repo: str = FAKE_REPO,
        commit: str = FAKE_COMMIT,
        branches: tuple[str, ...] = ("main",),
        lfs_suffixes: tuple[str, ...] = (".parquet",),
        repo_type: str = "dataset",
    ):
        self.root, self.repo, self.commit, self.branches = Path(root), repo, commit, branches
        self.routes = _routes(repo_type)  # "model": /api/models/... and /{repo}/resolve/...
        self.files: dict[str, ServedFile] = {}
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            rel = path.relative_to(self.root).as_posix()
            data = path.read_bytes()
            if rel.endswith(lfs_suffixes):
                sha = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                self.files[rel] = ServedFile(rel, path, len(data), _git_oid(pointer.encode()), sha)
            else:
                self.files[rel] = ServedFile(rel, path, len(data), _git_oid(data), None)
        self.by_sha = {f.sha256: f for f in self.files.values() if f.sha256}
        self.requests: list[Served] = []
        self.corrupt: set[str] = set()
        self.drop_after: dict[str, int] = {}
        self.always_drop: dict[str, int] = {}
        self.lock = threading.Lock()
        self.hub_server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "hub"))
        self.cdn_server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "cdn"))
        self.endpoint = f"http://127.0.0.1:{self.hub_server.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self.cdn_server.server_address[1]}"
        self.threads = [
            threading.Thread(target=s.serve_forever, daemon=True, kwargs={"poll_interval": 0.05})
            for s in (self.hub_server, self.cdn_server)
        ]

    def content_requests(self, path: str | None = None) -> list[Served]:
        """GET requests that sent file bytes (of ``path`` only, if given)."""
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.file and (path is None or r.file == path)
                    and r.status in (200, 206)]

    def bytes_served(self, path: str | None = None) -> int:
        """File bytes sent in all (or ``path``'s) GET responses."""
        return sum(r.body_bytes for r in self.content_requests(path))

    def files_downloaded(self) -> set[str]:
        """Repo paths of which some bytes were sent."""
        return {r.file for r in self.content_requests() if r.body_bytes}

    def content(self, f: ServedFile) -> bytes:
        data = f.local.read_bytes()
        if f.path in self.corrupt:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        return data

    def resolve(self, rev: str) -> str | None:
        """The commit a revision names, or None."""
        return self.commit if rev == self.commit or rev in self.branches else None

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for s in (self.hub_server, self.cdn_server):
            s.shutdown()
            s.server_close()


@contextlib.contextmanager
def fake_hub(root: str | Path, **kwargs) -> Iterator[FakeHub]:
    """Serve dataset folder ``root`` as a Hub for the duration of the block.

    Args:
        root: The folder (e.g. :attr:`Standin.root`).
        **kwargs: :class:`FakeHub` options (``repo``, ``commit``, ``branches``, ``lfs_suffixes``,
            ``repo_type``: ``"dataset"`` (default) or ``"model"``).

    Yields:
        The running :class:`FakeHub`; ``hub.endpoint`` is its URL.
    """
    hub = FakeHub(root, **kwargs)
    hub.start()
    try:
        yield hub
    finally:
        hub.close()


def _routes(repo_type: str) -> dict[str, re.Pattern]:
    """The Hub's URL patterns for a repo type: datasets under /api/datasets/ and /datasets/, models
    under /api/models/ and at the top level."""
    api, files = {"dataset": ("datasets", "/datasets"), "model": ("models", "")}[repo_type]
    return {
        "info": re.compile(rf"/api/{api}/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)"),
        "tree": re.compile(rf"/api/{api}/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"),
        "resolve": re.compile(rf"{files}/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
    }


_ROUTES = _routes("dataset")
_CDN_ROUTE = re.compile(r"/lfs/(?P<sha>[0-9a-f]{64})")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _handler(hub: FakeHub, server: str) -> type[BaseHTTPRequestHandler]:
    """The request handler class of the fake Hub (``server="hub"``) or of its CDN."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def _route(self) -> None:
            url = urlsplit(self.path)
            path = url.path
            if server == "cdn":
                m = _CDN_ROUTE.fullmatch(path)
                f = hub.by_sha.get(m["sha"]) if m else None
                if f is None:
                    return self._error(404, "EntryNotFound", "no such LFS object")
                return self._content(f, {"ETag": f'"{f.sha256}"'})
            for name, pattern in hub.routes.items():
                m = pattern.fullmatch(path)
                if m:
                    break
            else:
                return self._error(404, None, f"no route for {path}")
            if unquote(m["repo"]) != hub.repo:
                return self._error(404, "RepoNotFound", "Repository not found")
            commit = hub.resolve(unquote(m["rev"]))
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(m['rev'])}")
            if name == "info":
                siblings = [{"rfilename": p} for p in hub.files]
                return self._json({"id": hub.repo, "sha": commit, "private": False, "siblings": siblings})
            if name == "tree":
                return self._tree(unquote(m["path"] or ""), parse_qs(url.query))
            f = hub.files.get(unquote(m["path"]))
            if f is None:
                return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
            headers = {"X-Repo-Commit": commit, "ETag": f'"{f.blob_id}"'}
            if f.sha256:  # LFS: redirect to the CDN, as the Hub does
                headers.update({
                    "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                    "Location": f"{hub.cdn}/lfs/{f.sha256}", "Content-Length": "0",
                })
                return self._send(302, headers, b"")
            return self._content(f, headers)

        def _tree(self, folder: str, query: dict) -> None:
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            prefix = folder.rstrip("/") + "/" if folder else ""
            entries, dirs = [], set()
            for p, f in hub.files.items():
                if not p.startswith(prefix):
                    continue
                rest = p[len(prefix):].split("/")
                for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                    dirs.add(prefix + "/".join(rest[:depth]))
                if recursive or len(rest) == 1:
                    entry = {"type": "file", "oid": f.blob_id, "size": f.size, "path": p}
                    if f.sha256:
                        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                    entries.append(entry)
            if folder and not entries and not dirs:
                return self._error(404, "EntryNotFound", f"{folder} does not exist")
            entries += [{"type": "directory", "oid": _git_oid(d.encode()), "size": 0, "path": d} for d in sorted(dirs)]
            self._json(entries)

        def _content(self, f: ServedFile, headers: dict[str, str]) -> None:
            data = hub.content(f)
            headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            status, rng = 200, self.headers.get("Range")
            if rng:
                m = _RANGE.fullmatch(rng.strip())
                if not m or not (m[1] or m[2]):
                    return self._error(416, None, "bad range", {"Content-Range": f"bytes */{len(data)}"})
                if m[1]:
                    start, end = int(m[1]), min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
                else:
                    start, end = max(len(data) - int(m[2]), 0), len(data) - 1
                if start >= len(data) or start > end:
                    return self._error(416, None, "range not satisfiable", {"Content-Range": f"bytes */{len(data)}"})
                data = data[start : end + 1]
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
            headers["Content-Length"] = str(len(data))
            body = b"" if self.command == "HEAD" else data
            cut = None
            if self.command == "GET":
                with hub.lock:
                    cut = hub.drop_after.pop(f.path, hub.always_drop.get(f.path))
            self._send(status, headers, body if cut is None else body[:cut], file=f.path, drop=cut is not None)

        def _json(self, payload) -> None:
            body = json.dumps(payload).encode()
            self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body)

        def _error(self, status: int, code: str | None, message: str, extra: dict | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
                headers["X-Error-Message"] = message
            self._send(status, headers, body)

        def _send(self, status: int, headers: dict[str, str], body: bytes, file: str | None = None,
                  drop: bool = False) -> None:
            if self.command == "HEAD":
                body = b""
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            with hub.lock:
                hub.requests.append(Served(
                    server=server, method=self.command, url=self.path, status=status, file=file,
                    range=self.headers.get("Range"), authorized="authorization" in {k.lower() for k in self.headers},
                    body_bytes=len(body) if file else 0,
                ))
            if drop:  # the connection breaks mid-body
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


# --------------------------------------------------------------------------- isolation


def hf_env_vars(hf_home: str | Path) -> dict[str, str]:
    """Environment for a process that must talk only to a fake Hub: a fresh HF_HOME (no token,
    no cache under ~), online, no telemetry, no proxy for 127.0.0.1.

    These are only the variables to set: also remove the ones in :data:`UNSET_ENV` (``HF_TOKEN``,
    ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``...) from the environment you pass on."""
    return {
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


UNSET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
             "HF_TOKEN_PATH", "HF_OIDC_RESOURCE", "HF_HUB_CACHE")


def isolate_hf(monkeypatch, hf_home: str | Path) -> None:
    """Point this process's ``huggingface_hub`` at an empty ``hf_home`` (pytest ``monkeypatch``).

    Sets the variables of :func:`hf_env_vars`, unsets :data:`UNSET_ENV`, and patches the
    constants ``huggingface_hub`` read at import time, so no token or cache under ~ is used.
    """
    from huggingface_hub import constants

    hf_home = Path(hf_home)
    for key, value in hf_env_vars(hf_home).items():
        monkeypatch.setenv(key, value)
    for key in UNSET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    os.makedirs(hf_home, exist_ok=True)
