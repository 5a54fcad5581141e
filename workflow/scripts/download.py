"""download rule: make, index or fetch the galaxies (metadata.parquet, rejected.csv)."""

from astropt.io import script_log
from astropt.sources import download

log = script_log(snakemake)  # noqa: F821
download(
    snakemake.params.data,  # noqa: F821
    snakemake.output.metadata,  # noqa: F821
    snakemake.output.rejected,  # noqa: F821
    snakemake.params.seed,  # noqa: F821
    config_data=snakemake.config["data"],  # noqa: F821  (operational keys: not params)
    log=log,
)
