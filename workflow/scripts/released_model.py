"""released_model rule: one size's released AstroPT v1 checkpoint in place of training."""

from astropt.io import script_log
from astropt.released import released_model

log = script_log(snakemake)  # noqa: F821
released_model(
    snakemake.wildcards.size,  # noqa: F821
    snakemake.config["models"]["released"],  # noqa: F821  (endpoint, cache_dir: not params)
    snakemake.output.ckpt,  # noqa: F821
    snakemake.output.sidecar,  # noqa: F821
    snakemake.output.metrics,  # noqa: F821
    log=log,
)
