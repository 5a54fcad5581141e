"""figure_examples rule: a grid of example galaxies, rebuilt from their tokens."""

from pathlib import Path

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.figure_examples(
    Path(snakemake.input.tokens).parent,  # noqa: F821
    snakemake.input.metadata,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    log=log,
)
