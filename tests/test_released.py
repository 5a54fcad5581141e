"""The released AstroPT v1 weights in place of training (models.source: released), offline.

A v1-format checkpoint (a real paper preset, random weights, torch.compile's `_orig_mod.` prefix,
optimiser state, tensor best_val_loss) is served as the model repo Smith42/astroPT by the fake Hub
of tests/hub_standin.py; the slow test runs the released path through the workflow.

Run: python -m pytest tests/test_released.py -q          (the workflow run is marked slow)
"""

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from astropt.checkpoint import load_model, save_checkpoint
from astropt.config import RELEASED_PATH, ConfigError, load_config, repo_file, size_digits
from astropt.embed import (
    embed_split, extract_embeddings, read_embeddings, resolve_transpose, transpose_index, transpose_tokens,
)
from astropt.model import GPT, PRESETS, GPTConfig
from astropt.released import ReleasedWeightsError, read_checkpoint, released_model
from astropt.patches import image_to_tokens
from astropt.shards import load_tokens
from conftest import ROOT
from hub_standin import FAKE_COMMIT, fake_hub, isolate_hf

REPO = "Smith42/astroPT"
PAPER_TOKENS_PER_STEP = 320 * 1023  # galaxies x positions trained (the trainer's count)


def write_v1_checkpoint(path, size: str, seed: int = 0, best_val_loss: float | None = 0.3125) -> GPT:
    """An AstroPT v1 checkpoint of a paper size (random weights), as v1's train.py saved it."""
    torch.manual_seed(seed)
    model = GPT(PRESETS[size]).eval()
    cfg = PRESETS[size]
    ckpt = {
        "model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},  # torch.compile's prefix
        "model_args": {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": 1024,
                       "bias": False, "dropout": 0.0, "n_chan": 3, "patch_size": 16, "attn_type": "causal"},
        "optimizer": {"state": {0: {"step": torch.tensor(30000.0), "exp_avg": torch.zeros(4)}},
                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "params": [0]}]},
        "iter_num": 30000,
        "config": {"batch_size": 8, "gradient_accumulation_steps": 40, "learning_rate": 1e-3, "max_iters": 30000,
                   "warmup_iters": 2000, "lr_decay_iters": 29700, "dataset": "galaxies", "compile": True},
    }
    if best_val_loss is not None:
        ckpt["best_val_loss"] = torch.tensor(best_val_loss)  # v1 kept the loss tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return model


def settings(hub, **over) -> dict:
    return {"repo": REPO, "revision": FAKE_COMMIT, "path": RELEASED_PATH, "endpoint": hub.endpoint,
            "cache_dir": None, **over}


@pytest.fixture(scope="module")
def v1_repo(tmp_path_factory):
    """A model repo folder with the 1M checkpoint at its released path."""
    root = tmp_path_factory.mktemp("astroPT")
    model = write_v1_checkpoint(root / repo_file("1M"), "1M")
    (root / "README.md").write_text("---\nlicense: mit\n---\n# stand-in of Smith42/astroPT\n")
    return root, model


# --------------------------------------------------------------------------- sizes and files


def test_size_folders_are_the_repos_zero_padded_millions():
    assert [size_digits(s) for s in PRESETS] == ["0001", "0005", "0012", "0021", "0089", "0309", "0830", "2100"]
    assert repo_file("89M") == "models/fully_trained/0089M_params/030000_ckpt.pt"
    assert repo_file("2100M") == "models/fully_trained/2100M_params/030000_ckpt.pt"
    assert repo_file("5M", "ckpts/{size}/{size_digits}.pt") == "ckpts/5M/0005.pt"
    with pytest.raises(ValueError, match="not one of the paper's sizes"):
        repo_file("144K")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['millions'\]"):
        repo_file("1M", "{millions}M_params/ckpt.pt")


def _paper(**over):
    import yaml

    cfg = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    cfg["models"] = {"source": "released"}
    for key, value in over.items():
        cfg[key] = value
    return cfg


def test_config_released_accepts_the_paper_and_refuses_what_it_cannot_serve():
    cfg = load_config(_paper())
    assert cfg.raw["models"]["released"] == {"repo": REPO, "revision": None, "path": RELEASED_PATH,
                                             "endpoint": None, "cache_dir": None}
    tiny = {"42K": {"n_layer": 2, "n_head": 2, "n_embd": 32, "lr": 1e-3}}
    trained = load_config({"sizes": ["42K"], "custom_sizes": tiny, "data": {"source": "synthetic"}})
    assert trained.raw["models"]["source"] == "trained"
    bad = _paper(sizes=["1M", "144K"], custom_sizes={"1M": {"n_layer": 2, "n_head": 2, "n_embd": 128, "lr": 1e-3},
                                                      "144K": {"n_layer": 2, "n_head": 4, "n_embd": 64, "lr": 1e-3}},
                 tokens={"patch_size": 8}, data={"source": "synthetic", "image_size": 512, "n_chan": 3})
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "config key 'sizes[1]': '144K' has no released weights" in msg
    assert "config key 'custom_sizes.1M': overrides the paper's 1M" in msg
    assert "config key 'tokens.patch_size': the released models take 16x16 px patches, not 8" in msg
    with pytest.raises(ConfigError, match=r"'data.image_size': 1024 px makes 4096 tokens .* \(at most 512 px\)"):
        load_config(_paper(data={"source": "synthetic", "image_size": 1024}))
    with pytest.raises(ConfigError, match="names the same file"):
        load_config(_paper(models={"source": "released", "released": {"path": "one.pt"}}))
    with pytest.raises(ConfigError, match="'embed.transpose'"):
        load_config(_paper(embed={"transpose": "sideways"}))
    assert load_config(_paper(embed={"transpose": "true"})).raw["embed"]["transpose"] is True  # --config strings


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("side,patch,chans", [(64, 16, 3), (40, 8, 3), (20, 4, 2), (12, 4, 1), (16, 16, 3)])
def test_transposing_tokens_equals_tokenising_the_transposed_image(side, patch, chans):
    img = np.random.default_rng(side + patch).integers(0, 256, (3, side, side, chans), dtype=np.uint8)
    tokens = image_to_tokens(img, patch)
    want = image_to_tokens(np.ascontiguousarray(img.swapaxes(1, 2)), patch)
    np.testing.assert_array_equal(transpose_tokens(tokens, patch, chans), want)
    np.testing.assert_array_equal(transpose_tokens(torch.from_numpy(tokens), patch, chans).numpy(), want)
    np.testing.assert_array_equal(transpose_tokens(want, patch, chans), tokens)  # an involution
    # v1's training path: HWC .swapaxes(0, 2) = (C, W, H), cut into patches as (C, H, W)
    v1 = np.stack([np.moveaxis(im.swapaxes(0, 2), 0, -1) for im in img])
    np.testing.assert_array_equal(image_to_tokens(v1, patch), want)


def test_transpose_index_on_a_4x4_grid():
    tokens, inner = transpose_index(4, 2, 1)
    # token 0 is raster patch 9 = (2, 1); in the transposed stamp it holds patch (1, 2) = raster 6, token 2
    assert tokens[:4].tolist() == [2, 1, 0, 3] and tokens[-1] == 15  # the top-left corner stays put
    assert inner.tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("n_tokens", [1, 2, 5, 9, 16])
def test_embedding_transposed_on_the_device_equals_embedding_transposed_tokens(n_tokens):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, patch_size=4, n_chan=3, block_size=16)).eval()
    tokens = np.random.default_rng(n_tokens).integers(0, 256, (7, 16, 48), dtype=np.uint8)
    got = extract_embeddings(model, tokens, n_tokens=n_tokens, batch_size=3, norm="image", transpose=True)
    want = extract_embeddings(model, transpose_tokens(tokens, 4, 3), n_tokens=n_tokens, batch_size=7, norm="image")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if n_tokens > 1:
        assert not np.allclose(got, extract_embeddings(model, tokens, n_tokens=n_tokens, norm="image"))


def test_resolve_transpose():
    released = {"source": "released", "image_transpose": True, "norm": "patch"}
    assert resolve_transpose("auto", released)[0] is False  # the paper's probe path
    assert "as the paper's probes fed the released weights" in resolve_transpose("auto", released)[1]
    assert resolve_transpose(True, released)[0] is True
    assert resolve_transpose("auto", {"norm": "image"})[0] is False  # this project's models
    assert resolve_transpose("auto", {"image_transpose": True})[0] is True  # trained transposed, not the paper's
    assert resolve_transpose(False, {"image_transpose": True})[0] is False
    with pytest.raises(ValueError, match="embed.transpose"):
        resolve_transpose("yes", {})


# --------------------------------------------------------------------------- download and conversion


def test_released_model_downloads_verifies_and_converts(v1_repo, tmp_path, monkeypatch):
    root, original = v1_repo
    isolate_hf(monkeypatch, tmp_path / "hf_home")
    lines = []
    out = {k: tmp_path / "models/1M" / f
           for k, f in (("ckpt", "ckpt.pt"), ("sidecar", "ckpt.json"), ("metrics", "metrics.csv"))}
    with fake_hub(root, repo=REPO, repo_type="model", lfs_suffixes=(".pt",)) as hub:
        unpinned = released_model("1M", settings(hub, revision=None), out["ckpt"], out["sidecar"], out["metrics"],
                                  log=lines.append)
        first = len(hub.content_requests(repo_file("1M")))
        sidecar = released_model("1M", settings(hub), out["ckpt"], out["sidecar"], out["metrics"], log=lines.append)
        assert len(hub.content_requests(repo_file("1M"))) == first == 1  # the second run used the cache
    text = "\n".join(lines)
    assert f"revision 'main' = commit {FAKE_COMMIT}" in text
    assert f"Pin it for reproducibility: revision: {FAKE_COMMIT}" in text
    assert "optimiser state left out" in text
    assert unpinned["released"]["revision"] is None and unpinned["released"]["commit"] == FAKE_COMMIT

    blob = (root / repo_file("1M")).read_bytes()
    assert json.loads(out["sidecar"].read_text()) == json.loads(json.dumps(sidecar))
    assert sidecar["released"] == {
        "repo": REPO, "repo_type": "model", "endpoint": hub.endpoint, "revision": FAKE_COMMIT, "commit": FAKE_COMMIT,
        "file": "models/fully_trained/0001M_params/030000_ckpt.pt", "size": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    assert sidecar["source"] == "released" and sidecar["image_transpose"] is True
    assert sidecar["size"] == "1M" and sidecar["params"] == 1_067_520 and sidecar["steps"] == 30000
    assert sidecar["final_val_loss"] == sidecar["best_val_loss"] == 0.3125
    assert "best_val_loss" in sidecar["val_loss_note"]
    assert sidecar["tokens_seen"] == 30000 * PAPER_TOKENS_PER_STEP
    assert sidecar["flops"] == sidecar["tokens_seen"] * original.flops_per_token(1023)
    assert sidecar["train"]["micro_batch"] * sidecar["train"]["grad_accum"] == 320 and sidecar["lr"] == 1e-3

    model = load_model(out["ckpt"])  # this project's layout, weights_only
    for (k, v), (k2, v2) in zip(model.state_dict().items(), original.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    ckpt = read_checkpoint(out["ckpt"])
    assert "optimizer" not in ckpt and ckpt["iter_num"] == 30000 and ckpt["best_val_loss"] == 0.3125
    assert ckpt["config"]["norm"] == "patch" and ckpt["config"]["image_transpose"] is True
    assert ckpt["config"]["source"] == "released" and ckpt["v1_config"]["max_iters"] == 30000
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])

    metrics = pd.read_csv(out["metrics"])
    assert len(metrics) == 1 and metrics["step"].iloc[0] == 30000 and metrics["val_loss"].iloc[0] == 0.3125
    assert metrics["lr"].iloc[0] == pytest.approx(1e-4) and np.isnan(metrics["train_loss"].iloc[0])


def test_a_corrupt_download_is_deleted_and_fails_naming_the_hashes(v1_repo, tmp_path, monkeypatch):
    root, _ = v1_repo
    isolate_hf(monkeypatch, tmp_path / "hf_home")
    path = repo_file("1M")
    out = [tmp_path / f for f in ("ckpt.pt", "ckpt.json", "metrics.csv")]
    with fake_hub(root, repo=REPO, repo_type="model", lfs_suffixes=(".pt",)) as hub:
        hub.corrupt.add(path)
        with pytest.raises(ReleasedWeightsError, match=r"failed its check 3 times: expected \d+ bytes with sha256") \
                as err:
            released_model("1M", settings(hub), *out, log=lambda *a: None)
        assert len(hub.content_requests(path)) == 3
    assert hashlib.sha256((root / path).read_bytes()).hexdigest() in str(err.value)
    assert not any(p.is_file() and p.stat().st_size > 1000 for p in (tmp_path / "hf_home").rglob("*"))
    assert not any(p.exists() for p in out)


def test_wrong_file_wrong_model_and_bad_settings_are_explained(v1_repo, tmp_path, monkeypatch):
    root, _ = v1_repo
    isolate_hf(monkeypatch, tmp_path / "hf_home")
    write_v1_checkpoint(root.parent / "other" / repo_file("1M"), "5M")  # the 5M model where 1M should be
    out = [tmp_path / f for f in ("ckpt.pt", "ckpt.json", "metrics.csv")]
    quiet = {"log": lambda *a: None}
    with fake_hub(root, repo=REPO, repo_type="model", lfs_suffixes=(".pt",)) as hub:
        with pytest.raises(ReleasedWeightsError, match=r"0001M_params/020000_ckpt.pt \(size 1M\) is not in .* holds: "
                                                       r"models/fully_trained/0001M_params/030000_ckpt.pt"):
            released_model("1M", settings(hub, path=RELEASED_PATH.replace("030000", "020000")), *out, **quiet)
        with pytest.raises(ReleasedWeightsError, match=r"no such file or folder .*config key 'models.released.path'"):
            released_model("5M", settings(hub), *out, **quiet)  # no 0005M_params folder
        with pytest.raises(ReleasedWeightsError, match=r"config key 'models.released.revision'"):
            released_model("1M", settings(hub, revision="v9"), *out, **quiet)
        with pytest.raises(ReleasedWeightsError, match=r"config keys 'models.released.repo'"):
            released_model("1M", settings(hub, repo="someone/else"), *out, **quiet)
    with fake_hub(root.parent / "other", repo=REPO, repo_type="model", lfs_suffixes=(".pt",)) as hub:
        with pytest.raises(ReleasedWeightsError, match=r"not the paper's 1M model: n_layer 6 \(expected 4\), n_embd 256"):
            released_model("1M", settings(hub), *out, **quiet)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ReleasedWeightsError, match="HF_HUB_OFFLINE"):
        released_model("1M", settings(hub), *out, **quiet)


class Payload:  # anything but tensors and plain data
    pass


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    torch.save({"model": {}, "model_args": {}, "trap": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        read_checkpoint(tmp_path / "evil.pt")


def test_embed_split_feeds_released_weights_as_the_paper_did_unless_asked(micro_tokens, tmp_path):
    """A converted checkpoint records image_transpose; embed.transpose auto feeds untransposed stamps."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, patch_size=8, block_size=16)).eval()
    config = {"norm": "patch", "source": "released", "image_transpose": True}
    save_checkpoint(tmp_path / "r.pt",
                    {"model": model.state_dict(), "model_args": model.config.to_dict(), "config": config})
    split = load_tokens(micro_tokens / "test")
    lines = []
    for setting in ("auto", True, False):
        embed_split(tmp_path / "r.pt", micro_tokens / "test", tmp_path / f"{setting}.parquet", n_tokens=4,
                    device="cpu", log=lines.append, transpose=setting)
    auto, true, false = (read_embeddings(tmp_path / f"{s}.parquet")[1] for s in ("auto", True, False))
    np.testing.assert_array_equal(auto, false)
    flipped = transpose_tokens(np.asarray(split.tokens), 8, 3)
    np.testing.assert_allclose(true, extract_embeddings(model, flipped, n_tokens=4), rtol=1e-5, atol=1e-6)
    assert not np.allclose(true, false)
    assert any("untransposed stamps, as the paper's probes" in line for line in lines)


# --------------------------------------------------------------------------- the workflow


@pytest.mark.slow
def test_released_weights_through_the_workflow(tmp_path):
    """models.source: released end to end: no training; download -> ckpt.pt/json/metrics -> embed
    -> probes -> scaling fit and figures, on micro synthetic stamps with the paper's 16 px patches."""
    import yaml

    from hub_standin import UNSET_ENV, hf_env_vars
    from test_workflow import _jobs, _scratch_workflow, snakemake

    repo = tmp_path / "astroPT"
    originals = {s: write_v1_checkpoint(repo / repo_file(s), s, seed=i, best_val_loss=loss)
                 for i, (s, loss) in enumerate((("1M", 0.42), ("5M", 0.38)))}
    config = {
        "seed": 0,
        "sizes": ["1M", "5M"],
        "data": {"source": "synthetic", "image_size": 64,
                 "synthetic": {"n_train": 8, "n_val": 8, "n_test": 128, "workers": 1}},
        "tokens": {"patch_size": 16, "norm": "patch", "workers": 1, "shard_size": 100},
        "embed": {"n_tokens": 16, "batch_size": 64},
        "probe": {"properties": ["redshift", "mag_r_desi", "est_petro_th50"]},
        "umap": {"sizes": ["1M"]},
        "train": {"seeds": [0]},  # the released weights are one run per size
    }
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
    env.update(hf_env_vars(tmp_path / "hf_home"))
    work = _scratch_workflow(tmp_path)
    cfg = tmp_path / "released.yaml"
    targets = ("results/probes/1M.csv", "results/probes/5M.csv", "results/figures/scaling.png",
               "results/figures/downstream.png", "results/figures/umap_1M.png", "results/figures/loss_curves.png",
               "results/figures/predictions.png", "results/summary.md")
    with fake_hub(repo, repo=REPO, repo_type="model", lfs_suffixes=(".pt",)) as hub:
        config["models"] = {"source": "released", "released": {"endpoint": hub.endpoint, "revision": FAKE_COMMIT}}
        cfg.write_text(yaml.safe_dump(config))
        dry = snakemake("-n", "--cores", "2", f"--configfile={cfg}", *targets, cwd=work, env=env)
        assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
        jobs = _jobs(dry.stdout)
        assert jobs["released_model"] == 2 and "train" not in jobs and jobs["tokenise"] == 1  # test split only
        proc = snakemake("--cores", "2", f"--configfile={cfg}", *targets, cwd=work, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        assert hub.files_downloaded() == {repo_file("1M"), repo_file("5M")}
        # Where the cache lives or which mirror serves it reruns nothing.
        config["models"]["released"]["cache_dir"] = str(tmp_path / "elsewhere")
        cfg.write_text(yaml.safe_dump(config))
        dry = snakemake("-n", "--cores", "2", f"--configfile={cfg}", *targets, cwd=work, env=env)
        assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]

    assert not (work / "logs/train").exists() and not (work / "results/tokens/train/index.parquet").exists()
    split = load_tokens(work / "results/tokens/test")
    for size, original in originals.items():
        side = json.loads((work / f"results/models/{size}/seed0/ckpt.json").read_text())
        assert side["source"] == "released" and side["released"]["commit"] == FAKE_COMMIT
        assert side["released"]["sha256"] == hashlib.sha256((repo / repo_file(size)).read_bytes()).hexdigest()
        assert side["steps"] == 30000 and side["params"] == original.get_num_params()
        assert len(pd.read_csv(work / f"results/models/{size}/seed0/metrics.csv")) == 1
        # embed.transpose auto: the paper's probe path, untransposed stamps
        ids, X = read_embeddings(work / f"results/embeddings/{size}/seed0.parquet")
        assert list(ids) == list(split.ids)
        np.testing.assert_allclose(X, extract_embeddings(original, split.tokens, n_tokens=16, norm="patch"),
                                   rtol=1e-4, atol=1e-5)
        assert "untransposed stamps, as the paper's probes" in (work / f"logs/embed/{size}/seed0.log").read_text()
        probes = pd.read_csv(work / f"results/probes/{size}.csv")
        assert set(probes["property"]) == {"redshift", "mag_r_desi", "est_petro_th50"}
    fit = json.loads((work / "results/scaling/fit.json").read_text())
    assert fit["n_points"] == 2 and fit["sizes"] == ["1M", "5M"]
    losses = pd.read_csv(work / "results/scaling/losses.csv")
    assert losses["val_loss"].tolist() == pytest.approx([0.42, 0.38])
    for fig in ("scaling.png", "downstream.png", "umap_1M.png", "loss_curves.png", "predictions.png"):
        assert (work / "results/figures" / fig).stat().st_size > 10_000
    # The released weights saw transposed stamps: the predictions are made in that orientation.
    assert "(norm 'patch', transposed stamps fed" in (work / "logs/figures/predictions.log").read_text()
    summary = (work / "results/summary.md").read_text()
    assert "the released AstroPT v1 weights (not trained here)" in summary and "0.42 (1M) to 0.38 (5M)" in summary

    # The training orientation instead: only the embeddings and what follows them are redone.
    config["embed"]["transpose"] = True
    cfg.write_text(yaml.safe_dump(config))
    dry = snakemake("-n", "--cores", "2", f"--configfile={cfg}", *targets, cwd=work, env=env)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert set(_jobs(dry.stdout)) == {"embed", "probe", "probe_size", "downstream", "figure_downstream", "figure_umap", "summary",
                                      "total"}, dry.stdout[-3000:]
    proc = snakemake("--cores", "2", f"--configfile={cfg}", *targets, cwd=work, env=env)  # no Hub needed now
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    flipped = transpose_tokens(np.asarray(split.tokens), 16, 3)
    _, X = read_embeddings(work / "results/embeddings/1M/seed0.parquet")
    np.testing.assert_allclose(X, extract_embeddings(originals["1M"], flipped, n_tokens=16, norm="patch"),
                               rtol=1e-4, atol=1e-5)
