"""Galaxy embeddings from a trained model, by the paper's protocol.

AstroPT (arXiv:2405.14930, section on downstream tasks): feed the first 64 spiral tokens
(the central 8x8 patches), take the output of the last transformer block (before the
final LayerNorm) and average it over the tokens. Patches are normalised exactly as in
training (the mode is read from the checkpoint's config).

Embeddings are stored as parquet: a string column ``id`` and a fixed-size list column
``embedding`` (float32), one row per galaxy, in the token split's order.

Orientation: AstroPT v1 trained on transposed stamps (its training path cut patches from an
HWC array ``.swapaxes(0, 2)``, i.e. C, W, H) but its probe path, behind the paper's downstream
numbers, fed them untransposed. The released weights converted by :mod:`astropt.released` record
``image_transpose: true`` in their checkpoint config. ``transpose`` (config key
``embed.transpose``) chooses what the model is fed: :func:`resolve_transpose`. A transpose is a
fixed permutation of the stored tokens (:func:`transpose_index`): which spiral token goes where,
and the pixels inside each patch; it is applied to the raw tokens on the device, before the
normalisation, so it equals tokenising the transposed stamps.
"""

from __future__ import annotations

import time
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from astropt.io import atomic_write

if TYPE_CHECKING:  # torch is imported where it is used: reading embeddings does not need it
    import torch

    from astropt.model import GPT

TRANSPOSE_SETTINGS = ("auto", True, False)


def transpose_index(grid: int, patch_size: int, n_chan: int) -> tuple[np.ndarray, np.ndarray]:
    """The permutation that turns a stamp's spiral tokens into those of the transposed stamp.

    For tokens ``x`` (``(..., grid**2, patch_size**2 * n_chan)``, spiral order, patches laid out
    ``(p1 p2 c)`` as :func:`astropt.patches.patchify` writes them)::

        tokens, inner = transpose_index(grid, p, c)
        x[..., tokens, :][..., inner] == image_to_tokens(image.swapaxes(-3, -2), p)

    Patch (i, j) of the transposed stamp is patch (j, i) of the stamp, itself transposed.

    Args:
        grid: Patches per side (``image_size / patch_size``).
        patch_size: Patch side in pixels.
        n_chan: Bands.

    Returns:
        ``tokens`` (``grid**2``): token k of the transposed stamp is token ``tokens[k]`` of the
        stamp; ``inner`` (``patch_size**2 * n_chan``): the values of a patch, transposed.
    """
    from astropt.patches import spiral_order

    order = spiral_order(grid)  # token k <- raster patch order[k]
    position = np.argsort(order)  # raster patch -> token
    row, col = np.divmod(order, grid)  # the transposed stamp's patch of token k ...
    tokens = position[col * grid + row]  # ... is the stamp's patch (col, row)
    inner = np.arange(patch_size * patch_size * n_chan).reshape(patch_size, patch_size, n_chan)
    return tokens, inner.transpose(1, 0, 2).reshape(-1)


def transpose_tokens(tokens, patch_size: int, n_chan: int = 3):
    """Spiral tokens ``(..., T, D)`` (numpy or torch) of stamps -> the tokens of the transposed stamps."""
    from astropt.patches import grid_side

    idx, inner = transpose_index(grid_side(tokens.shape[-2]), patch_size, n_chan)
    if not isinstance(tokens, np.ndarray):  # a torch tensor
        import torch

        idx, inner = torch.from_numpy(idx).to(tokens.device), torch.from_numpy(inner).to(tokens.device)
    return tokens[..., idx, :][..., inner]


def resolve_transpose(setting: str | bool, ckpt_config: dict) -> tuple[bool, str]:
    """Whether to feed a checkpoint transposed stamps, and why (a line for the log).

    Args:
        setting: ``embed.transpose``: ``"auto"`` (what the paper did: untransposed for the
            released v1 weights, which the paper probed that way; otherwise the orientation the
            model was trained on), ``True`` or ``False``.
        ckpt_config: The checkpoint's ``config`` (``source``, ``image_transpose``).
    """
    if setting not in TRANSPOSE_SETTINGS:
        raise ValueError(f"config key 'embed.transpose': {setting!r} is not one of auto, true, false")
    trained_transposed = bool(ckpt_config.get("image_transpose", False))
    released = ckpt_config.get("source") == "released"
    seen = "transposed" if trained_transposed else "untransposed"
    if setting == "auto":
        transpose = False if released else trained_transposed
        why = (
            "embed.transpose auto: untransposed stamps, as the paper's probes fed the released weights "
            "(they were trained on transposed ones; true feeds that orientation)"
            if released else f"embed.transpose auto: the orientation the model was trained on ({seen})"
        )
        return transpose, why
    transpose = bool(setting)
    fed = "transposed" if transpose else "untransposed"
    why = f"embed.transpose {str(setting).lower()}: {fed} stamps (the model was trained on {seen} ones)"
    return transpose, why


POOLINGS = ("mean", "max", "last")


def pool(h: torch.Tensor, pooling: str) -> torch.Tensor:
    """Token outputs ``(B, T, C)`` -> one vector per galaxy ``(B, C)`` (``pooling`` checked by the caller).

    ``mean`` (the paper) and ``max`` are over the T tokens; ``last`` is the output at the last
    token, which under causal attention is the only one that has seen all of them.
    """
    if pooling == "mean":
        return h.mean(dim=1)
    return h.amax(dim=1) if pooling == "max" else h[:, -1]


def _check_request(model: GPT, t: int, d: int, n_tokens: int, pooling: str, layer: int) -> None:
    """Tokens of ``t`` patches of ``d`` values each fit the model; the pooling and layer exist."""
    if d != model.config.input_dim:
        raise ValueError(f"token size ({d}) doesn't match the model's patch size ({model.config.input_dim})")
    if n_tokens > min(t, model.config.block_size):
        raise ValueError(f"n_tokens ({n_tokens}) exceeds the {min(t, model.config.block_size)} tokens available")
    if pooling not in POOLINGS:
        raise ValueError(f"config key 'embed.pooling': {pooling!r} is not one of {', '.join(POOLINGS)}")
    if not -model.config.n_layer <= layer < model.config.n_layer:
        raise ValueError(
            f"config key 'embed.layer': {layer} is out of range for a model of {model.config.n_layer} blocks"
        )


def extract_embeddings(
    model: GPT,
    tokens: np.ndarray,
    n_tokens: int = 64,
    batch_size: int = 256,
    norm: str = "patch",
    device: str | torch.device = "cpu",
    log=None,
    transpose: bool = False,
    layer: int = -1,
    pooling: str = "mean",
) -> np.ndarray:
    """One vector per galaxy from a block's output over the first ``n_tokens`` tokens.

    The defaults are the paper's protocol: the last block's output, before the final
    LayerNorm, averaged over the first 64 spiral tokens.

    Args:
        model: a trained GPT.
        tokens: raw spiral-ordered patches, (N, T, D) uint8 (a memmap is fine).
        n_tokens: tokens fed per galaxy (the paper: 64).
        batch_size: galaxies per forward pass.
        norm: the patch normalisation the model was trained with. ``"image"`` standardises
            over the whole stamp, as in training, however few tokens are fed: the stamp is
            read whole, normalised, then its first ``n_tokens`` tokens are taken.
        device: where to run.
        log: optional callable for progress lines.
        transpose: feed the transposed stamps (:func:`transpose_index`, on the device): the first
            ``n_tokens`` spiral tokens of each stamp's transpose.
        layer: block whose output is taken (0 the first, -1 the last; later blocks are skipped).
        pooling: ``mean``, ``max`` or ``last`` (:func:`pool`).

    Returns:
        (N, n_embd) float32 embeddings.
    """
    import torch

    from astropt.patches import grid_side, normalise

    n, t, d = tokens.shape
    _check_request(model, t, d, n_tokens, pooling, layer)
    device = torch.device(device)
    model = model.to(device).eval()
    use_bf16 = device.type == "cuda"
    # Leading tokens read per galaxy: all of them when the normalisation needs the whole stamp.
    read = t if norm == "image" else n_tokens
    if transpose:
        idx, inner = transpose_index(grid_side(t), model.config.patch_size, model.config.n_chan)
        idx = idx[:n_tokens]
        if norm != "image":
            read = int(idx.max()) + 1  # a full ring of the spiral maps onto itself: usually n_tokens
        idx_t, inner_t = torch.from_numpy(idx).to(device), torch.from_numpy(inner).to(device)
    out = np.empty((n, model.config.n_embd), dtype=np.float32)
    t0, next_report = time.perf_counter(), 0.1
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        raw = torch.from_numpy(np.array(tokens[start:stop, :read])).to(device)
        x = normalise(raw, norm)  # over the whole stamp for "image", each patch for "patch"
        if transpose:  # a permutation: it commutes with either normalisation
            x = x.index_select(1, idx_t).index_select(2, inner_t)  # (B, n_tokens, D), transposed stamps
        x = x[:, :n_tokens]
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            h = model.forward_features(x, layer=layer)  # (B, n_tokens, n_embd)
        out[start:stop] = pool(h.float(), pooling).cpu().numpy()
        if log and stop / n >= next_report:
            rate = stop / (time.perf_counter() - t0)
            log(f"embedded {stop:,}/{n:,} galaxies ({rate:,.0f}/s)")
            next_report += 0.1
    return out


def _block_name(layer: int, n_layer: int) -> str:
    """``layer`` in words for the log: 'block 3 of 4' or 'last block'."""
    if not -n_layer <= layer < n_layer:
        return f"block {layer} (out of range: {n_layer} blocks)"
    index = layer % n_layer
    return "last block" if index == n_layer - 1 else f"block {index + 1} of {n_layer}"


def write_embeddings(path: str | Path, ids, embeddings: np.ndarray) -> None:
    """Write ``id`` + ``embedding`` parquet (atomically: temp file, then rename)."""
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
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


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
    transpose: str | bool = "auto",
    layer: int = -1,
    pooling: str = "mean",
) -> None:
    """Embed every galaxy of a token split with a checkpoint and write the parquet.

    ``token_dir`` is the split's folder or its manifest ``index.parquet`` (:func:`astropt.shards.load_tokens`);
    ``transpose`` is ``embed.transpose`` (``"auto"``, True, False): see :func:`resolve_transpose`;
    ``layer`` and ``pooling`` as :func:`extract_embeddings`.
    """
    import torch

    from astropt.checkpoint import load_checkpoint, model_from_checkpoint
    from astropt.shards import load_tokens

    state = load_checkpoint(checkpoint)
    ckpt_config = state.get("config") or {}
    # The normalisation the model was trained with; AstroPT v1 used the per-patch one.
    norm = ckpt_config.get("norm", "patch")
    flip, why = resolve_transpose(transpose, ckpt_config)
    model = model_from_checkpoint(state, source=checkpoint)
    del state
    split = load_tokens(token_dir)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    log(
        f"embedding {len(split.ids):,} galaxies from {token_dir} with {checkpoint} "
        f"(first {n_tokens} tokens, {_block_name(layer, model.config.n_layer)}, {pooling}; "
        f"norm '{norm}', device {dev})"
    )
    log(why)
    X = extract_embeddings(
        model, split.tokens, n_tokens, batch_size, norm, dev, log=log, transpose=flip, layer=layer, pooling=pooling
    )
    write_embeddings(out, split.ids, X)
    log(f"wrote {out}: {X.shape[0]:,} x {X.shape[1]} embeddings")
