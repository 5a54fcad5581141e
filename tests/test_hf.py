"""The ``huggingface`` source against an offline stand-in of the Hub (tests/hub_standin.py).

Nothing here touches the network or ~/.cache: huggingface_hub is pointed at a temporary HF_HOME
and at a fake Hub on 127.0.0.1.

Run: python -m pytest tests/test_hf.py -q
"""

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from astropt import hub as hub_module
from astropt.config import ConfigError, load_config
from astropt.hf import HuggingFaceSourceError, download_huggingface, read_parquet_images
from hub_standin import FAKE_COMMIT, fake_hub, isolate_hf, make_standin_dataset

SHARDS = {"train": 3, "validation": 1, "test": 2}  # 48 / 16 / 16 galaxies: 16, 16, 8 per shard
TRAIN0 = "data/train-00000-of-00003.parquet"


@pytest.fixture(autouse=True)
def hf_isolated(monkeypatch, tmp_path):
    isolate_hf(monkeypatch, tmp_path / "hf_home")
    monkeypatch.setattr(hub_module, "RETRY_WAIT_S", 0.0)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return make_standin_dataset(tmp_path_factory.mktemp("repo"), shards_per_split=SHARDS)


@pytest.fixture(scope="module")
def bad_standin(tmp_path_factory):
    return make_standin_dataset(
        tmp_path_factory.mktemp("bad_repo"), shards_per_split=SHARDS,
        duplicate_id=True, missing_metadata=True, null_image=True, corrupt_image=True, null_id=True,
        duplicate_metadata=True,
    )


@pytest.fixture
def hub(standin):
    with fake_hub(standin.root) as h:
        yield h


def hf_config(endpoint: str, **keys) -> dict:
    """The validated data.huggingface section (schema defaults filled) for the fake Hub."""
    section = {"endpoint": endpoint, "revision": FAKE_COMMIT, "workers": 3, **keys}
    return load_config({"sizes": ["1M"], "data": {"source": "huggingface", "huggingface": section}}).data["huggingface"]


def run(cfg: dict, out: Path) -> tuple[pd.DataFrame, list[str]]:
    lines: list[str] = []
    meta = download_huggingface(cfg, out / "metadata.parquet", out / "rejected.csv", log=lines.append)
    return meta, lines


def expected_rows(standin, split=None, per_split=None) -> pd.DataFrame:
    rows = standin.rows if split is None else standin.rows[standin.rows["split"] == split]
    if per_split is not None:
        rows = rows.groupby("split", sort=False).head(per_split)
    return rows.reset_index(drop=True)


# --------------------------------------------------------------------------- the download


def test_full_download_matches_the_dataset(standin, hub, tmp_path):
    meta, lines = run(hf_config(hub.endpoint), tmp_path)

    assert list(meta.columns[:4]) == ["id", "split", "image_path", "image_row"]
    assert meta["image_row"].dtype == "int64"
    assert meta.groupby("split", sort=False).size().to_dict() == {"train": 48, "validation": 16, "test": 16}
    rows = expected_rows(standin)
    assert meta["id"].tolist() == rows["dr8_id"].tolist()  # (split, file, row) order
    assert meta["image_path"].tolist() == ("hf/" + rows["file"]).tolist()
    assert meta["image_row"].tolist() == rows["row"].tolist()
    # Catalogue columns joined on dr8_id (the catalogue is shuffled and has extra galaxies).
    cat = standin.metadata.set_index("dr8_id").loc[meta["id"]].reset_index(drop=True)
    assert list(meta.columns[4:]) == list(cat.columns)
    pd.testing.assert_frame_equal(meta[cat.columns], cat, check_dtype=False)
    assert pd.read_parquet(tmp_path / "metadata.parquet").equals(meta)
    # image_path / image_row point at each galaxy's own image bytes.
    for path, group in meta.groupby("image_path"):
        got = read_parquet_images(tmp_path / path, group["image_row"].tolist())
        want = rows.set_index("dr8_id").loc[group["id"], "image"].tolist()
        assert got == want
    assert pd.read_csv(tmp_path / "rejected.csv").columns.tolist() == ["id", "image_path", "reason"]
    assert len(pd.read_csv(tmp_path / "rejected.csv")) == 0

    source = json.loads((tmp_path / "source.json").read_text())
    assert source["commit"] == FAKE_COMMIT and source["revision"] == FAKE_COMMIT
    assert source["splits"]["train"]["files"] == standin.shards["train"]
    assert source["splits"]["test"]["galaxies"] == 16
    sizes = {f["path"]: f["size"] for f in source["files"]}
    assert sizes[TRAIN0] == (standin.root / TRAIN0).stat().st_size
    assert {f["path"]: f["sha256"] for f in source["files"]}["metadata.parquet"] == hashlib.sha256(
        (standin.root / "metadata.parquet").read_bytes()).hexdigest()
    assert any(FAKE_COMMIT in line for line in lines)
    assert any("[7/7]" in line and "MB/s" in line and "ETA" in line for line in lines)
    assert not any("WARNING" in line for line in lines)  # revision pinned
    assert hub.files_downloaded() == {*[p for s in standin.shards.values() for p in s], "metadata.parquet"}
    assert not list((tmp_path / "hf").rglob("*.incomplete"))


def test_second_run_downloads_nothing(standin, hub, tmp_path):
    cfg = hf_config(hub.endpoint)
    first, _ = run(cfg, tmp_path)
    served = hub.bytes_served()
    second, lines = run(cfg, tmp_path)
    assert hub.bytes_served() == served  # nothing fetched again, nothing rehashed into a download
    pd.testing.assert_frame_equal(first, second)
    assert any("7 verified" in line for line in lines)


def test_max_galaxies_downloads_only_the_shards_needed(standin, hub, tmp_path):
    meta, _ = run(hf_config(hub.endpoint, max_galaxies=10), tmp_path)

    assert meta.groupby("split", sort=False).size().to_dict() == {"train": 10, "validation": 10, "test": 10}
    rows = expected_rows(standin, per_split=10)
    assert meta["id"].tolist() == rows["dr8_id"].tolist()  # the first 10 in (file, row) order
    whole = {r.file for r in hub.content_requests() if r.range is None}
    assert whole == {
        TRAIN0, "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00002.parquet", "data/test-00001-of-00002.parquet", "metadata.parquet",
    }
    # Row counts came from the shards' footers, read with small Range requests.
    footers = [r for r in hub.content_requests() if r.range]
    assert footers and all(r.status == 206 and r.body_bytes < 70_000 for r in footers)


def test_per_split_limits_and_max_shards(standin, hub, tmp_path):
    cfg = hf_config(hub.endpoint, max_shards={"train": 1}, max_galaxies={"test": 3, "validation": None})
    meta, _ = run(cfg, tmp_path)
    assert meta.groupby("split", sort=False).size().to_dict() == {"train": 16, "validation": 16, "test": 3}
    assert set(meta.loc[meta["split"] == "train", "image_path"]) == {"hf/" + TRAIN0}
    whole = {r.file for r in hub.content_requests() if r.range is None}
    assert "data/train-00001-of-00003.parquet" not in whole and "data/test-00001-of-00002.parquet" not in whole


def test_max_galaxies_above_the_split_takes_it_all(standin, hub, tmp_path):
    meta, lines = run(hf_config(hub.endpoint, max_galaxies={"validation": 1000}), tmp_path)
    assert (meta["split"] == "validation").sum() == 16
    assert any("max_galaxies 1,000 but" in line for line in lines)


# --------------------------------------------------------------------------- resuming and verifying


def test_truncated_cached_file_is_detected_and_fetched_again(standin, hub, tmp_path):
    data = (standin.root / TRAIN0).read_bytes()
    local = tmp_path / "hf" / TRAIN0
    local.parent.mkdir(parents=True)
    local.write_bytes(data[:5_000])  # e.g. copied by hand, or left by another tool
    old_partial = local.with_name(f"{local.name}.{hashlib.sha256(data).hexdigest()[:16]}.incomplete")
    old_partial.write_bytes(data[:7_000])  # astropt's former downloader resumed these

    _, lines = run(hf_config(hub.endpoint), tmp_path)
    assert [(r.range, r.body_bytes) for r in hub.content_requests(TRAIN0)] == [(None, len(data))]
    assert local.read_bytes() == data and not old_partial.exists()
    assert any(TRAIN0 in line and "present copy fails its size" in line and "got 5000 bytes" in line for line in lines)
    assert any("deleted 1 partial download(s) of an earlier astropt version" in line for line in lines)


def test_dropped_connection_resumes_in_the_same_run(standin, hub, tmp_path, caplog, monkeypatch):
    """huggingface_hub resumes a file whose connection broke with a Range request, and says so."""
    from huggingface_hub import constants, file_download

    # It resumes after the last whole chunk it received (10 MB): chunks of 1 kB for a 45 kB shard.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1000)
    monkeypatch.setattr(file_download.time, "sleep", lambda s: None)  # its pause before resuming
    hub.drop_after[TRAIN0] = 3_000
    with caplog.at_level("WARNING", logger="huggingface_hub"):
        _, lines = run(hf_config(hub.endpoint), tmp_path)
    requests = hub.content_requests(TRAIN0)
    assert [r.range for r in requests] == [None, "bytes=3000-"]
    assert (tmp_path / "hf" / TRAIN0).read_bytes() == (standin.root / TRAIN0).read_bytes()
    assert "Trying to resume download" in caplog.text
    assert any("[7/7]" in line for line in lines)


def test_a_connection_that_keeps_dropping_is_a_clear_error(standin, hub, tmp_path, monkeypatch):
    """After huggingface_hub's own resumptions and `retries` more attempts: the file, the Hub, the fix."""
    from huggingface_hub import file_download

    monkeypatch.setattr(file_download.time, "sleep", lambda s: None)  # its pause before resuming
    hub.always_drop[TRAIN0] = 0
    with pytest.raises(HuggingFaceSourceError) as err:
        run(hf_config(hub.endpoint, retries=1), tmp_path)
    message = str(err.value)
    where = f"dataset repo Smith42/galaxies at {FAKE_COMMIT}"
    assert f"downloading {TRAIN0}: cannot reach {hub.endpoint} for {where}" in message
    assert "check the network" in message and "finished files are kept" in message
    assert not (tmp_path / "hf" / TRAIN0).exists()
    assert all((tmp_path / "hf" / p).is_file() for p in hub.files_downloaded() - {TRAIN0})  # kept for the rerun
    assert not list((tmp_path / "hf").rglob("*.incomplete"))


def test_corrupted_cached_file_is_detected_and_fetched_again(standin, hub, tmp_path):
    cfg = hf_config(hub.endpoint)
    run(cfg, tmp_path)
    local = tmp_path / "hf" / TRAIN0
    data = bytearray(local.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, other bytes
    st = local.stat()
    local.write_bytes(bytes(data))
    os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a rewrite: mtime moves on
    served = hub.bytes_served()

    _, lines = run(cfg, tmp_path)
    assert hub.bytes_served() - served == len(data)  # that file only, in full
    assert [r for r in hub.content_requests(TRAIN0) if r.status == 200][-1].body_bytes == len(data)
    assert local.read_bytes() == (standin.root / TRAIN0).read_bytes()
    assert any(TRAIN0 in line and "sha256 check; deleted" in line for line in lines)


def test_wrong_bytes_from_the_server_fail_after_retries(standin, hub, tmp_path):
    hub.corrupt.add(TRAIN0)
    with pytest.raises(HuggingFaceSourceError) as err:
        run(hf_config(hub.endpoint, retries=1), tmp_path)
    message = str(err.value)
    assert TRAIN0 in message and "2 times" in message
    assert hashlib.sha256((standin.root / TRAIN0).read_bytes()).hexdigest() in message  # expected
    assert len([r for r in hub.content_requests(TRAIN0) if r.status == 200]) == 2
    assert not (tmp_path / "hf" / TRAIN0).exists()
    assert not list((tmp_path / "hf" / "data").glob("train-00000-*.incomplete"))
    assert not (tmp_path / "metadata.parquet").exists()


def test_files_kept_in_git_are_checked_by_blob_id(standin, tmp_path):
    with fake_hub(standin.root, lfs_suffixes=()) as hub:
        meta, _ = run(hf_config(hub.endpoint, metadata_file=None), tmp_path)
    source = json.loads((tmp_path / "source.json").read_text())
    assert all("git-sha1" in f for f in source["files"]) and source["metadata_file"] is None
    assert list(meta.columns) == ["id", "split", "image_path", "image_row"]
    assert len(meta) == 80


# --------------------------------------------------------------------------- bad data


def test_rejected_lists_every_bad_row_with_its_reason(bad_standin, tmp_path):
    planted = bad_standin.planted
    with fake_hub(bad_standin.root) as hub:
        meta, lines = run(hf_config(hub.endpoint), tmp_path)
    rejected = pd.read_csv(tmp_path / "rejected.csv", dtype=str, keep_default_na=False)
    assert rejected.columns.tolist() == ["id", "image_path", "reason"]
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    assert reasons == {
        planted["duplicate_id"]: f"duplicate id (first in hf/{TRAIN0} row 1)",
        planted["missing_metadata"]: "no metadata row",
        planted["null_image"]: "null image",
        "": "missing id (row 4)",
        planted["duplicate_metadata"]: "duplicate metadata rows (2 rows with this id)",
    }
    assert planted["null_id"] == f"{TRAIN0} row 4"
    dup = rejected[rejected["id"] == planted["duplicate_id"]]
    assert dup["image_path"].tolist() == ["hf/data/test-00001-of-00002.parquet"]
    kept = meta.set_index("id")
    assert kept.loc[planted["duplicate_id"], "split"] == "train"  # the first occurrence stays
    for bad in ("missing_metadata", "null_image", "duplicate_metadata"):
        assert planted[bad] not in kept.index
    # Undecodable bytes are the tokeniser's business: kept here.
    row = kept.loc[planted["corrupt_image"]]
    assert read_parquet_images(tmp_path / row["image_path"], [row["image_row"]]) == [b"this is not a PNG file"]
    assert not any(i.startswith("999999_") for i in meta["id"])  # catalogue-only galaxies
    assert len(meta) == 75
    assert any("rejected 5" in line for line in lines)


def test_catalogue_columns_named_like_ours_are_renamed(standin, tmp_path):
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(standin.root, root)
    cat = pd.read_parquet(root / "metadata.parquet").assign(split="dr8-north", image_row=-1.0)
    cat.to_parquet(root / "metadata.parquet", index=False)
    with fake_hub(root) as hub:
        meta, lines = run(hf_config(hub.endpoint), tmp_path / "out")
    assert set(meta["split"]) == {"train", "validation", "test"}
    assert (meta["meta_split"] == "dr8-north").all() and (meta["meta_image_row"] == -1.0).all()
    assert any("renamed" in line and "meta_split" in line for line in lines)


def test_too_many_rejects_stop_the_run(bad_standin, tmp_path):
    with fake_hub(bad_standin.root) as hub, pytest.raises(RuntimeError) as err:
        run(hf_config(hub.endpoint, max_reject_fraction=0.01), tmp_path)
    message = str(err.value)
    assert "4 of 48 rows of split train rejected" in message and "max_reject_fraction" in message
    assert "null image" in message
    assert not (tmp_path / "metadata.parquet").exists()


# --------------------------------------------------------------------------- configuration and errors


def test_unpinned_revision_logs_a_warning(standin, hub, tmp_path):
    _, lines = run(hf_config(hub.endpoint, revision=None), tmp_path)
    warning = [line for line in lines if "WARNING" in line]
    assert len(warning) == 1 and "revision" in warning[0] and FAKE_COMMIT in warning[0]
    assert json.loads((tmp_path / "source.json").read_text())["commit"] == FAKE_COMMIT


def test_unknown_revision_and_repo_are_clear_errors(hub, tmp_path):
    with pytest.raises(HuggingFaceSourceError, match=r"revision not found .*data\.huggingface\.revision"):
        run(hf_config(hub.endpoint, revision="v9.9"), tmp_path)
    with pytest.raises(HuggingFaceSourceError, match=r"nobody/nothing .*not found"):
        run(hf_config(hub.endpoint, repo="nobody/nothing"), tmp_path)


def test_pattern_matching_nothing_names_it_and_what_exists(hub, tmp_path):
    with pytest.raises(HuggingFaceSourceError) as err:
        run(hf_config(hub.endpoint, splits={"test": "data/tst-*.parquet"}), tmp_path)
    message = str(err.value)
    assert "data.huggingface.splits.test" in message and "'data/tst-*.parquet'" in message
    assert "data/test-00000-of-00002.parquet" in message


def test_missing_columns_name_the_shard(hub, tmp_path):
    with pytest.raises(HuggingFaceSourceError) as err:
        run(hf_config(hub.endpoint, id_column="objid", metadata_file=None), tmp_path)
    assert TRAIN0 in str(err.value) and "'objid'" in str(err.value) and "dr8_id" in str(err.value)


def test_unreachable_hub_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HuggingFaceSourceError, match=rf"cannot reach http://127.0.0.1:{port}"):
        run(hf_config(f"http://127.0.0.1:{port}"), tmp_path)


def test_offline_mode_and_a_full_disk_are_clear_errors(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HuggingFaceSourceError, match="HF_HUB_OFFLINE"):
        run(hf_config(hub.endpoint), tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_module.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(HuggingFaceSourceError, match=r"has 1 kB free but the download needs up to .* more"):
        run(hf_config(hub.endpoint), tmp_path)
    assert not hub.content_requests()


def test_token_goes_to_the_hub_only_and_is_never_written(standin, hub, tmp_path):
    secret = "hf_not_a_real_token_123"
    _, lines = run(hf_config(hub.endpoint, token=secret), tmp_path)
    assert all(r.authorized for r in hub.requests if r.server == "hub")
    assert not any(r.authorized for r in hub.requests if r.server == "cdn")  # not sent off the Hub
    written = "\n".join(lines) + (tmp_path / "source.json").read_text()
    assert secret not in written


@pytest.mark.parametrize(
    "keys, key",
    [
        ({"max_galaxies": {"train": 10, "dev": 5}}, "data.huggingface.max_galaxies"),
        ({"max_galaxies": 0}, "data.huggingface.max_galaxies"),
        ({"max_shards": {"test": -1}}, "data.huggingface.max_shards.test"),
        ({"splits": {"test": "data/train-*.parquet"}}, "data.huggingface.splits.test"),
        ({"endpoint": "huggingface.co"}, "data.huggingface.endpoint"),
        ({"workers": 0}, "data.huggingface.workers"),
    ],
)
def test_bad_huggingface_config_names_the_key(keys, key):
    with pytest.raises(ConfigError) as err:
        hf_config(keys.pop("endpoint", "http://127.0.0.1:1"), **keys)
    assert f"'{key}" in str(err.value), str(err.value)


# --------------------------------------------------------------------------- reading images


def test_read_parquet_images_reads_only_the_row_groups_needed(standin, monkeypatch):
    path = standin.root / TRAIN0  # 16 rows, row groups of 8
    want = standin.rows.set_index(["file", "row"]).loc[TRAIN0, "image"]
    read = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile, "read_row_group", lambda self, i, **kw: read.append(i) or original(self, i, **kw)
    )

    rows = [9, 2, 9, 15, 0]
    assert read_parquet_images(path, rows) == [want[r] for r in rows]
    assert sorted(read) == [0, 1]
    read.clear()
    assert read_parquet_images(path, [12]) == [want[12]] and read == [1]
    assert read_parquet_images(path, []) == []


def test_read_parquet_images_nulls_and_errors(bad_standin):
    path = bad_standin.root / TRAIN0
    assert read_parquet_images(path, [3]) == [None]  # the planted null image
    with pytest.raises(IndexError, match=r"row 16 is outside .*16 rows"):
        read_parquet_images(path, [0, 16])
    with pytest.raises(ValueError, match="no image column 'picture'"):
        read_parquet_images(path, [0], column="picture")


def test_fake_hub_serves_huggingface_hub_downloads(standin, hub, tmp_path):
    """The stand-in speaks the protocol huggingface_hub itself expects (HEAD, redirect, ETag, size)."""
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(
        "Smith42/galaxies", TRAIN0, repo_type="dataset", revision=FAKE_COMMIT, endpoint=hub.endpoint,
        local_dir=tmp_path / "local",
    )
    assert Path(local).read_bytes() == (standin.root / TRAIN0).read_bytes()
    assert any(r.method == "HEAD" for r in hub.requests)
