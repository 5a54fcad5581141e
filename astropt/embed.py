"""Galaxy embeddings from a trained model, by the paper's protocol.

AstroPT (arXiv:2405.14930, section on downstream tasks): feed the first 64 spiral tokens
(the central 8x8 patches), take the output of the last transformer block (before the
final LayerNorm) and average it over the tokens. Patches are normalised exactly as in
training (the mode is read from the checkpoint's config).

Embeddings are stored as parquet: a string column ``id`` and a fixed-size list column
``embedding`` (float32), one row per galaxy, in the token split's order.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from astropt.checkpoint import load_checkpoint, model_from_checkpoint
from astropt.model import GPT
from astropt.tokenise import load_tokens, normalise


@torch.no_grad()
def extract_embeddings(
    model: GPT,
    tokens: np.ndarray,
    n_tokens: int = 64,
    batch_size: int = 256,
    norm: str = "patch",
    device: str | torch.device = "cpu",
    log=None,
) -> np.ndarray:
    """Mean of the last block's output over the first ``n_tokens`` tokens.

    Args:
        model: a trained GPT.
        tokens: raw spiral-ordered patches, (N, T, D) uint8 (a memmap is fine).
        n_tokens: tokens fed per galaxy (the paper: 64).
        batch_size: galaxies per forward pass.
        norm: the patch normalisation the model was trained with.
        device: where to run.
        log: optional callable for progress lines.

    Returns:
        (N, n_embd) float32 embeddings.
    """
    n, t, d = tokens.shape
    if d != model.config.input_dim:
        raise ValueError(f"token size ({d}) doesn't match the model's patch size ({model.config.input_dim})")
    if n_tokens > min(t, model.config.block_size):
        raise ValueError(f"n_tokens ({n_tokens}) exceeds the {min(t, model.config.block_size)} tokens available")
    device = torch.device(device)
    model = model.to(device).eval()
    use_bf16 = device.type == "cuda"
    out = np.empty((n, model.config.n_embd), dtype=np.float32)
    t0, next_report = time.perf_counter(), 0.1
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        raw = torch.from_numpy(np.array(tokens[start:stop, :n_tokens])).to(device)
        x = normalise(raw, norm)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            h = model.forward_features(x)  # (B, n_tokens, n_embd)
        out[start:stop] = h.float().mean(dim=1).cpu().numpy()
        if log and stop / n >= next_report:
            rate = stop / (time.perf_counter() - t0)
            log(f"embedded {stop:,}/{n:,} galaxies ({rate:,.0f}/s)")
            next_report += 0.1
    return out


def write_embeddings(path: str | Path, ids, embeddings: np.ndarray) -> None:
    """Write ``id`` + ``embedding`` parquet (atomically: temp file, then rename)."""
    path = Path(path)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} ids but {len(embeddings)} embeddings")
    n, dim = embeddings.shape
    values = pa.array(embeddings.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "id": pa.array([str(i) for i in ids], type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(values, dim),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(ids, embeddings)`` written by :func:`write_embeddings`."""
    table = pq.read_table(path)
    if "id" not in table.column_names or "embedding" not in table.column_names:
        raise ValueError(f"{path}: expected columns 'id' and 'embedding', found {table.column_names}")
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    X = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
    return np.asarray(table.column("id").to_pylist(), dtype=object), X


def embed_split(
    checkpoint: str | Path,
    token_dir: str | Path,
    out: str | Path,
    n_tokens: int = 64,
    batch_size: int = 256,
    device: str = "auto",
    log=print,
) -> None:
    """Embed every galaxy of a token split with a checkpoint and write the parquet."""
    state = load_checkpoint(checkpoint)
    # The normalisation the model was trained with; AstroPT v1 used the per-patch one.
    norm = state.get("config", {}).get("norm", "patch")
    model = model_from_checkpoint(state, source=checkpoint)
    del state
    split = load_tokens(token_dir)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    log(
        f"embedding {len(split.ids):,} galaxies from {token_dir} with {checkpoint} "
        f"(first {n_tokens} tokens, last block, mean; norm '{norm}', device {dev})"
    )
    X = extract_embeddings(model, split.tokens, n_tokens, batch_size, norm, dev, log=log)
    write_embeddings(out, split.ids, X)
    log(f"wrote {out}: {X.shape[0]:,} x {X.shape[1]} embeddings")
