"""rejected rule: every galaxy dropped before training, with its stage and reason."""

from astropt import pipeline
from astropt.config import SPLITS

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.collect_rejected(
    snakemake.input.download,  # noqa: F821
    dict(zip(SPLITS, snakemake.input.splits)),  # noqa: F821
    snakemake.output[0],  # noqa: F821
    log=log,
)
