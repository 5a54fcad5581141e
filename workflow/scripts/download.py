"""download rule: make or fetch the galaxies (images + metadata.parquet)."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.download(snakemake.params.data, snakemake.output.metadata, snakemake.params.seed, log=log)  # noqa: F821
