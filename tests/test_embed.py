"""Embeddings by the paper's protocol: first n spiral tokens, last block (pre-LayerNorm), mean.

Run: python -m pytest tests/test_embed.py -q
"""

import numpy as np
import pytest
import torch

from astropt.checkpoint import save_checkpoint
from astropt.embed import embed_split, extract_embeddings, read_embeddings, write_embeddings
from astropt.model import GPT, GPTConfig
from astropt.patches import normalise
from astropt.shards import load_tokens


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, patch_size=8, block_size=16)).eval()


@pytest.fixture
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (10, 16, 192), dtype=np.uint8)


def test_protocol(model, tokens):
    emb = extract_embeddings(model, tokens, n_tokens=8, batch_size=4, norm="patch")
    x = normalise(torch.from_numpy(tokens[:, :8]), "patch")
    with torch.no_grad():
        h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(8))
        for block in model.transformer.h:
            h = block(h)  # the last block's output, before ln_f
    np.testing.assert_allclose(emb, h.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    assert emb.shape == (10, 32) and emb.dtype == np.float32


def _block_outputs(model, tokens, n):
    """Every block's output for the first n tokens, written out by hand (the reference)."""
    x = normalise(torch.from_numpy(tokens[:, :n]), "patch")
    outs = []
    with torch.no_grad():
        h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(n))
        for block in model.transformer.h:
            h = block(h)
            outs.append(h)
    return outs


@pytest.mark.parametrize("layer", [0, -2, 1, -1])
@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_layer_and_pooling(model, tokens, layer, pooling):
    emb = extract_embeddings(model, tokens, n_tokens=8, batch_size=4, norm="patch", layer=layer, pooling=pooling)
    h = _block_outputs(model, tokens, 8)[layer]
    want = {"mean": h.mean(dim=1), "max": h.amax(dim=1), "last": h[:, -1]}[pooling]
    np.testing.assert_allclose(emb, want.numpy(), rtol=1e-5, atol=1e-6)


def test_layers_and_poolings_differ(model, tokens):
    base = extract_embeddings(model, tokens, n_tokens=8)
    assert not np.allclose(base, extract_embeddings(model, tokens, n_tokens=8, layer=0))
    assert not np.allclose(base, extract_embeddings(model, tokens, n_tokens=8, pooling="last"))


def test_bad_layer_or_pooling_is_named(model, tokens):
    with pytest.raises(ValueError, match="embed.layer.*2 blocks"):
        extract_embeddings(model, tokens, n_tokens=8, layer=2)
    with pytest.raises(ValueError, match="embed.layer"):
        extract_embeddings(model, tokens, n_tokens=8, layer=-3)
    with pytest.raises(ValueError, match="embed.pooling.*'median'"):
        extract_embeddings(model, tokens, n_tokens=8, pooling="median")


def test_only_the_first_tokens_count_and_batching_does_not_matter(model, tokens):
    a = extract_embeddings(model, tokens, n_tokens=8, batch_size=3)
    changed = tokens.copy()
    changed[:, 8:] = 255 - changed[:, 8:]
    np.testing.assert_allclose(a, extract_embeddings(model, changed, n_tokens=8, batch_size=100), rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_explained(model, tokens):
    with pytest.raises(ValueError, match="token size"):
        extract_embeddings(model, tokens[..., :100])
    with pytest.raises(ValueError, match="exceeds"):
        extract_embeddings(model, tokens, n_tokens=17)


def test_parquet_round_trip(tmp_path):
    ids = np.array(["a", "007", "c"], dtype=object)
    X = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    write_embeddings(tmp_path / "e.parquet", ids, X)
    ids2, X2 = read_embeddings(tmp_path / "e.parquet")
    assert list(ids2) == list(ids)
    np.testing.assert_array_equal(X2, X)


def test_embed_split_uses_the_checkpoints_normalisation(micro_tokens, model, tmp_path):
    for norm in ("image", "patch"):
        save_checkpoint(tmp_path / f"{norm}.pt", {"model": model.state_dict(), "model_args": model.config.to_dict(), "config": {"norm": norm}})
        embed_split(tmp_path / f"{norm}.pt", micro_tokens / "test", tmp_path / f"{norm}.parquet", n_tokens=16, log=lambda *a: None)
    split = load_tokens(micro_tokens / "test")
    ids, X = read_embeddings(tmp_path / "image.parquet")
    assert list(ids) == list(split.ids)
    np.testing.assert_allclose(X, extract_embeddings(model, split.tokens, n_tokens=16, norm="image"), rtol=1e-5, atol=1e-6)
    assert not np.allclose(X, read_embeddings(tmp_path / "patch.parquet")[1])


@pytest.mark.parametrize("transpose", [False, True])
def test_image_normalisation_spans_the_whole_stamp_whatever_is_fed(model, tokens, transpose):
    """Training standardises each stamp over all its tokens; embedding the first n tokens must
    use the same statistics, not those of the n fed tokens (a bug until issue 10)."""
    from astropt.embed import transpose_tokens

    emb = extract_embeddings(model, tokens, n_tokens=4, norm="image", transpose=transpose)
    raw = torch.from_numpy(tokens)
    if transpose:
        raw = transpose_tokens(raw, patch_size=8, n_chan=3)
    x = normalise(raw, "image")[:, :4]  # whole stamp normalised, then the first 4 tokens
    with torch.no_grad():
        expected = model.forward_features(x).mean(dim=1).numpy()
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    fed_only = normalise(raw[:, :4], "image")  # what the old code fed
    with torch.no_grad():
        wrong = model.forward_features(fed_only).mean(dim=1).numpy()
    assert not np.allclose(emb, wrong, atol=1e-3)
