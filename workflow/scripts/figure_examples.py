"""figure_examples rule: a grid of example galaxies, rebuilt from their tokens."""

from pathlib import Path

from astropt.figures import figure_examples
from astropt.io import script_log

log = script_log(snakemake)  # noqa: F821
figure_examples(
    Path(snakemake.input.tokens).parent,  # noqa: F821
    snakemake.input.metadata,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    log=log,
)
