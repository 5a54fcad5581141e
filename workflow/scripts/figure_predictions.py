"""figure_predictions rule: example galaxies beside the model's next-patch predictions."""

from pathlib import Path

from astropt.io import script_log
from astropt.predict import figure_predictions

log = script_log(snakemake)  # noqa: F821
figure_predictions(
    snakemake.input.ckpt,  # noqa: F821
    Path(snakemake.input.tokens).parent,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    galaxies=snakemake.params.galaxies,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    size=snakemake.params.size,  # noqa: F821
    log=log,
)
