"""The workflow's stages as functions of file paths: what each Snakemake script calls.

Each function reads its inputs, calls the library module that does the work, and writes
its outputs (atomically where a half-written file could be mistaken for a result). The
scripts under ``workflow/scripts/`` only unpack ``snakemake.input/params/output``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from astropt.config import REJECTED_COLUMNS
from astropt.io import atomic_write


def script_log(snakemake):
    """In a workflow script: send stdout/stderr to the rule's log, keep torch and the BLAS
    libraries to the job's threads; return a print-and-flush.

    Torch is not imported here (about 2 s per job): jobs that never use it (probes, fits,
    figures, summary) do not pay for it; for those that do, ``OMP_NUM_THREADS`` sets its
    thread count when it is imported.
    """
    import os
    import sys

    threads = max(1, int(snakemake.threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if snakemake.log:
        sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

    def log(*args) -> None:
        print(*args, flush=True)

    return log


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
    out_draws: str | Path | None = None,
) -> pd.DataFrame:
    """Probes of every property from one run's embeddings: the paper's linear regression and
    k-fold ridge for regression targets, k-fold logistic regression for binary flags, with
    bootstrap intervals. Writes the long table (``astropt.probe.PROBE_COLUMNS``: one row per
    property, protocol and metric) and, to ``out_draws``, the bootstrap draws of every metric
    (``astropt.probe.DRAW_COLUMNS``, parquet) that :func:`aggregate_probes` combines over runs.

    ``probe_cfg`` is the config's ``probe`` section; ``seed`` sets the folds and the
    bootstrap resamples (the same for every run, so that the runs' draws pair up);
    ``threads`` caps the BLAS threads (the job's CPUs).
    """
    import time

    from threadpoolctl import threadpool_limits

    from astropt.embed import read_embeddings
    from astropt.probe import probe_properties

    ids, X = read_embeddings(embeddings)
    meta = read_metadata(metadata)
    log(
        f"probing {len(ids):,} galaxies x {X.shape[1]} dims from {embeddings}: "
        f"{probe_cfg['folds']} folds, {probe_cfg['n_boot']} bootstrap resamples, seed {seed}"
    )
    t0 = time.perf_counter()
    with threadpool_limits(max(1, int(threads))):
        table, draws = probe_properties(
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
            return_draws=True,
        )
    for (prop, protocol), rows in table.groupby(["property", "protocol"], sort=False):
        scores = "  ".join(
            f"{r.metric}={r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]" for r in rows.itertuples()
        )
        note = rows["reason"].iloc[0]
        first = rows.iloc[0]
        dropped = f" (of {first.n_total}: {first.n_missing} missing, {first.n_clipped} clipped)" if first.n < first.n_total else ""
        log(f"  {prop:<28} {protocol:<11} n={first.n:<6}{dropped} {scores}" + (f"  ({note})" if note else ""))
    log(f"probed {table['property'].nunique()} properties in {time.perf_counter() - t0:.1f} s")
    atomic_write(out_csv, lambda tmp: table.to_csv(tmp, index=False))
    if out_draws is not None:
        atomic_write(out_draws, lambda tmp: draws.to_parquet(tmp, index=False))
    return table


def run_name(path: str | Path) -> tuple[str, int]:
    """``(size, seed)`` of a run's file: ``results/models/{size}/seed{seed}/...`` or
    ``results/models/{size}/D<tokens>/seed{seed}/...`` (the folder), or
    ``results/{stage}/{size}/seed{seed}.ext`` (the file name)."""
    path = Path(path)
    above = path.parent.parent
    folder_size = above.parent.name if run_budget(path) else above.name  # .../{size}/D403K/seed0/
    for size, stem in ((folder_size, path.parent.name), (path.parent.name, path.name.split(".")[0])):
        if stem.startswith("seed") and stem[4:].isdigit():
            return size, int(stem[4:])
    raise ValueError(f"{path}: not a run's file (expected .../{{size}}/seed{{n}}/... or .../{{size}}/seed{{n}}.ext)")


def aggregate_probes(tables, draws, out_csv: str | Path, n_boot: int, seed: int, log=print) -> pd.DataFrame:
    """One size's probes over its runs (``results/probes/{size}.csv``): the mean of its runs,
    their spread and an interval that resamples runs, then galaxies
    (:func:`astropt.probe.aggregate_runs`)."""
    from astropt.probe import aggregate_runs

    by_run = {f"seed{run_name(p)[1]}": pd.read_csv(p) for p in tables}
    runs_draws = {f"seed{run_name(p)[1]}": pd.read_parquet(p) for p in draws}
    table = aggregate_runs(by_run, runs_draws, n_boot=n_boot, seed=seed)
    size = run_name(tables[0])[0]
    log(f"{size}: probes of {len(by_run)} run(s) ({', '.join(by_run)}): mean, between-run sd, "
        f"intervals over runs and galaxies ({n_boot} replicates)")
    for r in table.itertuples():
        log(f"  {r.property:<28} {r.protocol:<11} {r.metric:<16} {r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]"
            f" sd {r.run_sd:.4f} over {r.n_runs} runs")
    atomic_write(out_csv, lambda tmp: table.to_csv(tmp, index=False))
    return table


#: Provenance of a run read from its ``ckpt.json`` (``astropt.train.provenance``).
PROVENANCE_COLUMNS = ("data_seed", "threads", "cpu_capability", "cpu", "gpu", "torch", "host")


def run_budget(path: str | Path) -> str:
    """The token budget in a run's path: ``"D403K"`` for ``results/models/{size}/D403K/seed{n}/...``,
    ``""`` for the size's default budget (``results/models/{size}/seed{n}/...``)."""
    folder = Path(path).parent.parent.name
    return folder if re.fullmatch(r"D[0-9.]+[KMGT]?", folder) else ""


def load_sidecars(paths) -> pd.DataFrame:
    """One row per run from the ``ckpt.json`` sidecars (``results/models/{size}/seed{seed}/``,
    or ``.../{size}/D<tokens>/seed{seed}/`` for another token budget), sorted by parameters,
    tokens, then seed. ``seed`` is the run's training seed (from its folder); ``budget`` its
    tokens as a folder name (``D806K``), ``default_budget`` whether it is the size's default
    budget (``train.steps``: the runs the fit over N, the probes and the maps use); the run's
    provenance (:data:`PROVENANCE_COLUMNS`: data seed, threads, CPU kernels or GPU, torch)
    follows, None where the sidecar does not record it (the released weights)."""
    from astropt.config import format_tokens

    rows = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        prov = d.get("provenance") or {}
        budget = run_budget(p)
        rows.append(
            {
                "size": d["size"],
                "seed": run_name(p)[1],
                "budget": budget or f"D{format_tokens(int(d['tokens_seen']))}",
                "default_budget": not budget,
                "params": d["params"],
                "val_loss": d["final_val_loss"],
                "best_val_loss": d["best_val_loss"],
                "flops": d["flops"],
                "tokens_seen": d["tokens_seen"],
                "elapsed_s": d["elapsed_s"],
                # None for the released weights (their cost is not recorded)
                "gpu_hours": d.get("gpu_hours"),
                **{col: prov.get(col) for col in PROVENANCE_COLUMNS},
            }
        )
    table = pd.DataFrame(rows).sort_values(["params", "tokens_seen", "seed"], ignore_index=True)
    for col in ("elapsed_s", "gpu_hours"):  # None (released weights) -> NaN
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table


def scaling(sidecars, out_fit, out_table, out_md, out_tex, out_csv=None, scaling_cfg: dict | None = None,
            holdout: str | None = None, seed: int = 0, log=print) -> dict:
    """Fit every run's final validation loss against parameters N and training compute C
    (:func:`astropt.scaling.fit_study`: both laws, analytic and bootstrap intervals, the held-out
    size). Writes ``losses.csv`` (one row per run, :func:`load_sidecars`), ``fit.json`` and the
    fit table as markdown, LaTeX and CSV cells (``out_csv``: the report's caption shows it).

    ``scaling_cfg`` is the config's ``scaling`` section (estimator, n_boot); ``holdout`` the size
    to hold out (resolved from ``scaling.holdout``); ``seed`` seeds the bootstrap.
    """
    from astropt.scaling import fit_study, fit_table, table_cells, table_latex, table_markdown

    cfg = {"estimator": "least_squares", "n_boot": 1000, **(scaling_cfg or {})}
    table = load_sidecars(sidecars)
    atomic_write(out_table, lambda tmp: table.to_csv(tmp, index=False))
    for row in table.itertuples():
        log(f"  {row.size:>6} {row.budget:>7} seed {row.seed}: {row.params:>12,} parameters, {row.flops:.3g} training FLOPs, "
            f"final val loss {row.val_loss:.5f}")
    bad = table[~(table["flops"] > 0)]
    if len(bad):
        raise ValueError(f"runs {(bad['size'] + '/' + bad['budget'] + '/seed' + bad['seed'].astype(str)).tolist()} "
                         f"have no positive 'flops' in their ckpt.json: retrain them to record the training compute")
    from astropt.compute import compute_markdown, compute_table

    main = table[table["default_budget"]].reset_index(drop=True)
    fit = fit_study(main, estimator=cfg["estimator"], n_boot=cfg["n_boot"], holdout=holdout, seed=seed, log=log)
    if table["budget"].nunique() > 1 or not table["default_budget"].all():
        from astropt.chinchilla import grid_study

        fit["grid"] = grid_study(table, n_boot=cfg["n_boot"], seed=seed, log=log)
    fit["cost"] = compute_table(table)  # "compute" holds the fit over C
    atomic_write(out_fit, lambda tmp: tmp.write_text(json.dumps(fit, indent=2) + "\n"))
    fits = fit_table(fit)
    md, tex = table_markdown(fits), table_latex(fits)
    if "grid" in fit:
        from astropt.chinchilla import grid_latex, grid_markdown

        md, tex = f"{md}\n{grid_markdown(fit['grid'])}", f"{tex}\n{grid_latex(fit['grid'])}"
    md = f"{md}\n{compute_markdown(fit['cost'])}"
    atomic_write(out_md, lambda tmp: tmp.write_text(md))
    atomic_write(out_tex, lambda tmp: tmp.write_text(tex))
    if out_csv is not None:
        header, rows, notes = table_cells(fits)
        # The note column spelled out: the report shows this table without the notes below it.
        spelled = [[*r[:-1], notes[int(r[-1].strip("()")) - 1] if r[-1] else ""] for r in rows]
        atomic_write(out_csv, lambda tmp: pd.DataFrame(spelled, columns=header).to_csv(tmp, index=False))
    if fit["n_sizes"] < 2:
        log(f"only one size ({', '.join(fit['sizes'])}): no fit; {out_fit} and the tables say so")
    log(md)
    h = fit["holdout"]
    log(f"held-out size: {h.get('verdict') or h.get('reason')}")
    log(f"wrote {out_fit}, {out_md} and {out_tex}")
    return fit


def figure_grid(fit_path, table_path, out_isoflop, out_frontier, out_loss_tokens, log=print) -> None:
    """The N x D grid's figures from ``fit.json``'s ``grid`` section and every run of
    ``losses.csv``: IsoFLOP profiles, the compute-optimal frontier, loss against tokens."""
    from astropt.figures import plot_frontier, plot_isoflop, plot_loss_tokens

    fit = json.loads(Path(fit_path).read_text())
    grid = fit.get("grid") or {"reason": "train.budgets lists one budget: there is no N x D grid"}
    table = pd.read_csv(table_path)
    for plot, out in ((plot_isoflop, out_isoflop), (plot_frontier, out_frontier), (plot_loss_tokens, out_loss_tokens)):
        plot(table, grid, out)
        log(f"wrote {out}")


def figure_scaling(fit_path, table_path, metrics_paths, out, log=print) -> None:
    """The scaling figure: every run's final validation loss against parameters and against
    training compute with the fits of ``fit.json`` (bootstrap band, held-out size), and each
    run's validation curve against cumulative FLOPs from its ``metrics.csv``."""
    from astropt.figures import plot_scaling

    fit = json.loads(Path(fit_path).read_text())
    metrics = {"{}/seed{}".format(*run_name(p)): pd.read_csv(p) for p in metrics_paths}
    table = pd.read_csv(table_path)
    if "default_budget" in table:  # the grid's other budgets are drawn by figure_grid
        table = table[table["default_budget"]].reset_index(drop=True)
    plot_scaling(table, fit, out, metrics=metrics)
    log(f"wrote {out}")


def _layer_words(layer: int) -> str:
    """``embed.layer`` in words: -1 'the last block', -2 'the block before the last', 0 'block 1'."""
    if layer == -1:
        return "the last block's output"
    if layer < 0:
        return f"the output of block {-layer} from the end"
    return f"the output of block {layer + 1}"


def run_context(config: dict) -> dict[str, str]:
    """A few words on what was run (data, tokens, models), for the summary's first lines."""
    data, sizes = config["data"], config["sizes"]
    source = data["source"]
    where = {
        "synthetic": "synthetic Legacy-Survey-like galaxies",
        "folder": f"the stamps in {data.get('folder', {}).get('images')}",
        "huggingface": f"the HuggingFace dataset {data.get('huggingface', {}).get('repo', '')}",
    }.get(source, source)
    models = config.get("models", {}).get("source", "train")
    seeds = config["train"].get("seeds", [0])
    trained = (
        f"trained here for {config['train']['steps']:,} steps each, once per training seed "
        f"({', '.join(map(str, seeds))}; data seed {config.get('seed', 0)})"
        if models != "released" else "the released AstroPT v1 weights (not trained here)"
    )
    return {
        "data": f"Data: {where}, {data['image_size']} px stamps, {config['tokens']['patch_size']} px patches.",
        "models": f"Models: {', '.join(sizes)}, {trained}.",
        "embed": (
            f"Embeddings: {config['embed']['split']} split, first {config['embed']['n_tokens']} tokens, "
            f"{_layer_words(config['embed'].get('layer', -1))}, {config['embed'].get('pooling', 'mean')} pooling."
        ),
    }


def summary(sidecars, fit_path, probe_paths, downstream_csv, out_md, out_html, config: dict, log=print) -> str:
    """``results/summary.md`` (and the same as HTML for the report): the headline numbers and
    their tables (:mod:`astropt.summary`), every number read from the files named in it."""
    from astropt.summary import build_summary, to_html, to_markdown

    losses = load_sidecars(sidecars)
    fit = json.loads(Path(fit_path).read_text())
    probes = {Path(p).stem: pd.read_csv(p) for p in probe_paths}
    downstream = pd.read_csv(downstream_csv)
    blocks = build_summary(losses, fit, probes, downstream, context=run_context(config), fit_table=_fit_table(fit))
    text = to_markdown(blocks)
    Path(out_md).write_text(text)
    Path(out_html).write_text(to_html(blocks))
    log(text)
    return text


def _fit_table(fit: dict):
    """The fitted parameters as (header, rows, notes) for the summary: astropt.scaling's table."""
    from astropt.scaling import fit_table, table_cells

    return table_cells(fit_table(fit))


def figure_loss_curves(metrics_paths, sidecars, out, log=print) -> None:
    """Training and validation loss curves of every size (``results/models/{size}/metrics.csv``),
    smallest model first."""
    from astropt.figures import plot_loss_curves

    runs = load_sidecars(sidecars)
    order = [f"{r.size}/seed{r.seed}" for r in runs.itertuples()]
    by_run = {"{}/seed{}".format(*run_name(p)): p for p in metrics_paths}
    unknown = sorted(set(by_run) - set(order))
    if unknown:
        raise ValueError(f"metrics of runs {unknown} have no ckpt.json sidecar among {list(sidecars)}")
    curves = {name: pd.read_csv(by_run[name]) for name in order if name in by_run}
    plot_loss_curves(curves, out)
    log(f"wrote {out}: loss curves of {len(curves)} runs ({', '.join(curves)})")


def figure_downstream(probe_paths, sidecars, out_figure, out_table, log=print) -> pd.DataFrame:
    """The paper's downstream figure and ``summary.csv``: each size's probe scores (the mean of
    its runs, with their spread) relative to the smallest model's, with Spearman's rho between
    parameters and the run means and the share of seeds whose own sweep agrees, for every
    property, protocol and metric (``astropt.figures.downstream_table``). ``probe_paths`` are
    the runs' tables, ``results/probes/{size}/seed{seed}.csv``."""
    from astropt.figures import downstream_table, plot_downstream

    sizes = load_sidecars(sidecars).drop_duplicates("size").set_index("size")["params"]
    frames = []
    for p in probe_paths:
        size, seed = run_name(p)
        df = pd.read_csv(p)
        df["size"], df["params"], df["seed"] = size, int(sizes[size]), seed
        frames.append(df)
    summary = downstream_table(pd.concat(frames, ignore_index=True))
    summary.to_csv(out_table, index=False)
    plot_downstream(summary, out_figure)
    log(f"wrote {out_figure} and {out_table}")
    return summary


def _panel_title(column: str) -> str:
    """A UMAP panel's title: the paper's label over the column name (M_g, then
    mag_abs_g_photoz on a second line) for the paper's properties, else the column name."""
    from astropt.probe import PAPER_PROPERTIES

    label = PAPER_PROPERTIES.get(column, column)
    return column if label == column else f"{label}\n({column})"


def umap_properties(setting, meta_columns, probe_csv) -> tuple[dict[str, str], list[str]]:
    """The UMAP panels: ``{column: panel title}`` and the paper's properties the catalogue lacks.

    ``setting`` is ``umap.properties``: ``"paper"`` (the paper's twelve, :data:`PAPER_PROPERTIES`,
    those in the catalogue), ``"probed"`` or None (every property in ``probe_csv``) or a list of
    columns (each must be in the catalogue).
    """
    from astropt.probe import PAPER_PROPERTIES

    columns = set(meta_columns)
    if setting == "paper":
        kept = {c: _panel_title(c) for c in PAPER_PROPERTIES if c in columns}
        lacking = [c for c in PAPER_PROPERTIES if c not in columns]
        if not kept:
            raise ValueError(
                f"config key 'umap.properties': the catalogue has none of the paper's properties "
                f"{list(PAPER_PROPERTIES)}; list columns to map instead"
            )
        return kept, lacking
    if setting is None or setting == "probed":
        props = pd.read_csv(probe_csv)["property"].unique().tolist()
    else:
        props = list(setting)
    missing = [p for p in props if p not in columns]
    if missing:
        raise ValueError(f"config key 'umap.properties': {missing} not in the catalogue")
    return {p: _panel_title(p) for p in props}, []


def figure_umap(embeddings, probe_csv, metadata, out, umap_cfg: dict, seed: int, title: str = "", log=print) -> None:
    """UMAP of one size's embeddings as hexbin panels coloured by property (by default the
    paper's twelve, :func:`umap_properties`)."""
    from astropt.embed import read_embeddings
    from astropt.figures import plot_umap, umap_embedding

    ids, X = read_embeddings(embeddings)
    meta = read_metadata(metadata).set_index("id")
    panels, lacking = umap_properties(umap_cfg["properties"], meta.columns, probe_csv)
    props = list(panels)
    if lacking:
        log(f"the catalogue {metadata} lacks {len(lacking)} of the paper's properties: {', '.join(lacking)}")
        from astropt.probe import PAPER_PROPERTIES

        missing = "not in the catalogue: " + ", ".join(PAPER_PROPERTIES[c] for c in lacking)  # short labels
        title = f"{title}\n({missing})" if title else missing
    if len(ids) > umap_cfg["max_points"]:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), umap_cfg["max_points"], replace=False))
        ids, X = ids[keep], X[keep]
    log(f"UMAP of {len(ids):,} embeddings ({X.shape[1]} dims), n_neighbors={umap_cfg['n_neighbors']}")
    coords = umap_embedding(X, seed=seed, n_neighbors=umap_cfg["n_neighbors"])
    values = meta.loc[list(ids), props].reset_index(drop=True).rename(columns=panels)
    plot_umap(coords, values, out, title=title)
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


def figure_predictions(
    checkpoint, token_dir, out, galaxies: int = 6, seed: int = 0, size: str = "", log=print
) -> pd.DataFrame:
    """Galaxies of a split beside a model's next-patch predictions and their difference
    (:mod:`astropt.predict`), normalised and oriented as the checkpoint was trained.

    ``galaxies`` rows are drawn at random (``seed``) and shown in split order; ``size`` names
    the model in the title (default: the checkpoint's folder). Returns the galaxies shown:
    ``id`` and ``loss`` (each one's Huber loss in normalised units, as in training)."""
    import torch

    from astropt.checkpoint import load_checkpoint, model_from_checkpoint
    from astropt.predict import next_patch_predictions, plot_predictions
    from astropt.tokenise import load_tokens

    state = load_checkpoint(checkpoint)
    ckpt_config = state.get("config") or {}
    norm = ckpt_config.get("norm", "patch")  # AstroPT v1 used the per-patch one
    transpose = bool(ckpt_config.get("image_transpose", False))
    step = state.get("iter_num")
    model = model_from_checkpoint(state, source=checkpoint)
    del state
    split = load_tokens(token_dir)
    patch, n_chan = split.meta["patch_size"], split.meta["n_chan"]
    if (patch, n_chan) != (model.config.patch_size, model.config.n_chan):
        raise ValueError(
            f"{token_dir} holds {patch}px patches of {n_chan} bands but {checkpoint} was trained on "
            f"{model.config.patch_size}px patches of {model.config.n_chan}: tokenise with the model's settings"
        )
    n = min(galaxies, len(split.ids))
    if n < 1:
        raise ValueError(f"{token_dir} holds no galaxies to show")
    rows = np.sort(np.random.default_rng(seed).choice(len(split.ids), size=n, replace=False))
    raw = np.asarray(split.tokens[rows])  # (n, T, D) as stored
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log(
        f"next-patch predictions of {n} galaxies of {token_dir} by {checkpoint} (norm '{norm}', "
        f"{'transposed' if transpose else 'untransposed'} stamps fed, device {device})"
    )
    pred, loss = next_patch_predictions(model, raw, norm=norm, transpose=transpose, device=device)
    name = size or Path(checkpoint).parent.name
    at = f", step {step:,}" if isinstance(step, int) else ""
    how = "image normalisation" if norm == "image" else "per-patch normalisation: patch shapes only"
    title = (
        f"{name} model ({model.get_num_params():,} parameters{at}), {how}; mean loss {loss.mean():.4f}\n"
        "each patch predicted from the true patches before it in the centre-out spiral"
        + (" of the transposed stamp (trained so)" if transpose else "")
        + "; dashed box: the first patch, with nothing to predict it from"
    )
    ids = [str(i) for i in split.ids[rows]]
    plot_predictions(raw, pred, ids, out, patch, n_chan, title=title, losses=loss)
    log(f"wrote {out}: per-galaxy loss {', '.join(f'{v:.4f}' for v in loss)}")
    return pd.DataFrame({"id": ids, "loss": loss})
