"""scaling rule: fit the saturating power law to final validation losses."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.scaling(snakemake.input.sidecars, snakemake.output.fit, snakemake.output.table, log=log)  # noqa: F821
