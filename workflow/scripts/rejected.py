"""rejected rule: every galaxy dropped before training, with its stage and reason."""

from astropt.config import SPLITS
from astropt.io import script_log
from astropt.tokenise import collect_rejected

log = script_log(snakemake)  # noqa: F821
collect_rejected(
    snakemake.input.download,  # noqa: F821
    dict(zip(SPLITS, snakemake.input.splits)),  # noqa: F821
    snakemake.output[0],  # noqa: F821
    log=log,
)
