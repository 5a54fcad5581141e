"""The workflow's stages as functions of file paths: what each Snakemake script calls.

Each function reads its inputs, calls the library module that does the work, and writes
its outputs (atomically where a half-written file could be mistaken for a result). The
scripts under ``workflow/scripts/`` only unpack ``snakemake.input/params/output``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from astropt.embed import read_embeddings


def script_log(snakemake):
    """In a workflow script: send stdout/stderr to the rule's log, keep torch to the job's
    threads; return a print-and-flush."""
    import sys

    import torch

    torch.set_num_threads(max(1, int(snakemake.threads)))
    if snakemake.log:
        sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

    def log(*args) -> None:
        print(*args, flush=True)

    return log


REJECTED_COLUMNS = ["id", "image_path", "reason"]


def download(data: dict, out_metadata: str | Path, out_rejected: str | Path, seed: int, log=print) -> pd.DataFrame:
    """Fetch, make or index the galaxies: ``metadata.parquet`` (id, split, image_path,
    properties) plus ``rejected.csv`` (galaxies dropped at this stage, with reasons)."""
    source = data["source"]
    out_dir = Path(out_metadata).parent
    if source == "synthetic":
        import shutil

        from astropt.synthetic import SyntheticConfig, generate

        shutil.rmtree(out_dir / "images", ignore_errors=True)  # no stale stamps from a larger run
        cfg = SyntheticConfig(**data["synthetic"], image_size=data["image_size"], seed=seed)
        meta = generate(out_dir, cfg, log=log)
        pd.DataFrame(columns=REJECTED_COLUMNS).to_csv(out_rejected, index=False)
        return meta
    if source == "folder":
        from astropt.sources import write_folder_source

        f = data["folder"]
        meta = write_folder_source(
            f["images"],
            f["catalogue"],
            out_metadata,
            id_column=f["id_column"],
            path_column=f["path_column"],
            split_column=f["split_column"],
            val_fraction=f["val_fraction"],
            test_fraction=f["test_fraction"],
            seed=seed,
            log=log,
        )
        written = Path(out_metadata).with_name("rejected.csv")
        if written != Path(out_rejected):
            written.replace(out_rejected)
        return meta
    if source == "huggingface":
        from astropt.hf import download_huggingface

        return download_huggingface(data["huggingface"], out_metadata, out_rejected, log=log)
    raise ValueError(f"config key 'data.source': unknown source {source!r} (synthetic, folder or huggingface)")


def collect_rejected(download_rejected: str | Path, split_rejected: dict[str, str | Path], out: str | Path, log=print) -> pd.DataFrame:
    """All galaxies dropped on the way to tokens, one CSV: stage, split, id, image_path, reason."""
    frames = []
    d = pd.read_csv(download_rejected, dtype=str, keep_default_na=False)
    frames.append(d.assign(stage="download", split=""))
    for split, path in split_rejected.items():
        frames.append(pd.read_csv(path, dtype=str, keep_default_na=False).assign(stage="tokenise", split=split))
    table = pd.concat(frames, ignore_index=True)[["stage", "split", *REJECTED_COLUMNS]]
    table.to_csv(out, index=False)
    counts = table.groupby("stage").size().to_dict() if len(table) else {}
    log(f"{len(table)} galaxies rejected in all ({counts}); listed in {out}")
    return table


def tokenise(
    metadata: str | Path,
    split: str,
    out_dir: str | Path,
    tokens: dict,
    image_size: int,
    n_chan: int = 3,
    group: int = 0,
    groups: int = 1,
    image_column: str = "image",
    log=print,
) -> dict:
    """Spiral-tokenise job ``group`` of ``groups`` of one split into ``out_dir`` (its shards
    and part index; :func:`astropt.tokenise.merge_token_groups` joins the parts)."""
    from astropt.tokenise import tokenise_group

    import pyarrow.parquet as pq

    present = set(pq.read_schema(metadata).names)
    meta = pd.read_parquet(metadata, columns=[c for c in ("id", "split", "image_path", "image_row") if c in present])
    rows = meta[meta["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{metadata}: no galaxies in split {split!r} (splits present: {sorted(meta['split'].unique())})")
    return tokenise_group(
        rows,
        image_root=Path(metadata).parent,
        out_dir=Path(out_dir),
        patch_size=tokens["patch_size"],
        image_size=image_size,
        group=group,
        groups=groups,
        shard_size=tokens["shard_size"],
        workers=tokens["workers"],
        max_reject_fraction=tokens["max_reject_fraction"],
        n_chan=n_chan,
        fit=tokens["fit"],
        nan=tokens["nan"],
        dtype=tokens["dtype"],
        image_column=image_column,
        split=split,
        log=log,
    )


# Colours the paper probes, derived from apparent magnitudes when the catalogue lacks them.
DERIVED_COLOURS = {"g_r": ("mag_g_desi", "mag_r_desi"), "r_z": ("mag_r_desi", "mag_z_desi")}


def read_metadata(path: str | Path) -> pd.DataFrame:
    """The galaxy catalogue, with the colours ``g_r`` / ``r_z`` added where they can be derived."""
    meta = pd.read_parquet(path)
    for colour, (a, b) in DERIVED_COLOURS.items():
        if colour not in meta.columns and a in meta.columns and b in meta.columns:
            meta[colour] = meta[a] - meta[b]
    return meta


def probe(
    embeddings: str | Path,
    metadata: str | Path,
    out_csv: str | Path,
    probe_cfg: dict,
    seed: int,
    threads: int = 1,
    log=print,
) -> pd.DataFrame:
    """Probes of every property: the paper's linear regression and k-fold ridge for
    regression targets, k-fold logistic regression for binary flags, with bootstrap
    intervals. Writes the long table (``astropt.probe.PROBE_COLUMNS``: one row per
    property, protocol and metric).

    ``probe_cfg`` is the config's ``probe`` section; ``seed`` sets the folds and the
    bootstrap resamples; ``threads`` caps the BLAS threads (the job's CPUs).
    """
    import time

    from threadpoolctl import threadpool_limits

    from astropt.probe import probe_properties

    ids, X = read_embeddings(embeddings)
    meta = read_metadata(metadata)
    log(
        f"probing {len(ids):,} galaxies x {X.shape[1]} dims from {embeddings}: "
        f"{probe_cfg['folds']} folds, {probe_cfg['n_boot']} bootstrap resamples, seed {seed}"
    )
    t0 = time.perf_counter()
    with threadpool_limits(max(1, int(threads))):
        table = probe_properties(
            ids,
            X,
            meta,
            properties=probe_cfg["properties"],
            flags=probe_cfg["flags"],
            mad_clip=probe_cfg["mad_clip"],
            folds=probe_cfg["folds"],
            n_boot=probe_cfg["n_boot"],
            min_class_count=probe_cfg["min_class_count"],
            seed=seed,
        )
    for (prop, protocol), rows in table.groupby(["property", "protocol"], sort=False):
        scores = "  ".join(
            f"{r.metric}={r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]" for r in rows.itertuples()
        )
        note = rows["reason"].iloc[0]
        log(f"  {prop:<28} {protocol:<11} n={rows['n'].iloc[0]:<6} {scores}" + (f"  ({note})" if note else ""))
    log(f"probed {table['property'].nunique()} properties in {time.perf_counter() - t0:.1f} s")
    table.to_csv(out_csv, index=False)
    return table


def load_sidecars(paths) -> pd.DataFrame:
    """One row per trained size from the ``ckpt.json`` sidecars, sorted by parameters."""
    rows = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        rows.append(
            {
                "size": d["size"],
                "params": d["params"],
                "val_loss": d["final_val_loss"],
                "best_val_loss": d["best_val_loss"],
                "flops": d["flops"],
                "tokens_seen": d["tokens_seen"],
                "elapsed_s": d["elapsed_s"],
            }
        )
    return pd.DataFrame(rows).sort_values("params", ignore_index=True)


def scaling(sidecars, out_fit: str | Path, out_table: str | Path, log=print) -> dict:
    """Fit the saturating power law to final validation loss vs parameters."""
    from astropt.scaling import fit_saturating_power_law, to_jsonable

    table = load_sidecars(sidecars)
    table.to_csv(out_table, index=False)
    for row in table.itertuples():
        log(f"  {row.size:>6}: {row.params:>12,} parameters, final val loss {row.val_loss:.5f}")
    if len(table) < 2:
        fit = {"n_points": len(table), "error": "a scaling fit needs at least two sizes", "data": {
            "N": table["params"].tolist(), "L": table["val_loss"].tolist()}}
        log("only one size: no fit")
    else:
        fit = fit_saturating_power_law(table["params"].to_numpy(float), table["val_loss"].to_numpy(float))
        log(json.dumps(to_jsonable(fit), indent=2))
    fit["sizes"] = table["size"].tolist()
    Path(out_fit).write_text(json.dumps(to_jsonable(fit), indent=2) + "\n")
    return fit


def figure_scaling(fit_path, table_path, out, log=print) -> None:
    from astropt.figures import plot_scaling

    fit = json.loads(Path(fit_path).read_text())
    plot_scaling(pd.read_csv(table_path), fit, out)
    log(f"wrote {out}")


def figure_downstream(probe_paths, sidecars, out_figure, out_table, log=print) -> pd.DataFrame:
    """The paper's downstream figure and ``summary.csv``: each size's probe scores relative
    to the smallest model's, with Spearman's rho between parameters and score, for every
    property, protocol and metric (``astropt.figures.downstream_table``)."""
    from astropt.figures import downstream_table, plot_downstream

    sizes = load_sidecars(sidecars).set_index("size")["params"]
    frames = []
    for p in probe_paths:
        size = Path(p).stem
        df = pd.read_csv(p)
        df["size"], df["params"] = size, int(sizes[size])
        frames.append(df)
    summary = downstream_table(pd.concat(frames, ignore_index=True))
    summary.to_csv(out_table, index=False)
    plot_downstream(summary, out_figure)
    log(f"wrote {out_figure} and {out_table}")
    return summary


def figure_umap(embeddings, probe_csv, metadata, out, umap_cfg: dict, seed: int, title: str = "", log=print) -> None:
    """UMAP of one size's embeddings as hexbin panels coloured by property."""
    from astropt.figures import plot_umap, umap_embedding

    ids, X = read_embeddings(embeddings)
    props = umap_cfg["properties"] or pd.read_csv(probe_csv)["property"].unique().tolist()
    meta = read_metadata(metadata).set_index("id")
    missing = [p for p in props if p not in meta.columns]
    if missing:
        raise ValueError(f"config key 'umap.properties': {missing} not in {metadata}")
    if len(ids) > umap_cfg["max_points"]:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), umap_cfg["max_points"], replace=False))
        ids, X = ids[keep], X[keep]
    log(f"UMAP of {len(ids):,} embeddings ({X.shape[1]} dims), n_neighbors={umap_cfg['n_neighbors']}")
    coords = umap_embedding(X, seed=seed, n_neighbors=umap_cfg["n_neighbors"])
    plot_umap(coords, meta.loc[list(ids), props].reset_index(drop=True), out, title=title)
    log(f"wrote {out}")


def figure_examples(token_dir, metadata, out, n: int = 16, seed: int = 0, log=print) -> None:
    """A grid of example galaxies of a split, rebuilt from their tokens (so it shows exactly
    what the models see, for any source), captioned with a few truths."""
    from astropt.figures import plot_examples
    from astropt.tokenise import load_tokens, tokens_to_image

    split = load_tokens(token_dir)
    meta = read_metadata(metadata).set_index("id").loc[list(split.ids)].reset_index()
    wanted = ("mag_r_desi", "redshift", "est_petro_th50")
    columns = tuple(c for c in wanted if c in meta.columns)
    patch, n_chan = split.meta["patch_size"], split.meta["n_chan"]
    plot_examples(lambda row: tokens_to_image(np.asarray(split.tokens[row]), patch, n_chan), meta, out, n=n, columns=columns, seed=seed)
    log(f"wrote {out}: {min(n, len(meta))} galaxies of {token_dir}")
