"""download rule: make or fetch the galaxies (images + metadata.parquet)."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
data = snakemake.params.data  # noqa: F821
if "synthetic" in data:  # worker count: not a param, so changing it reruns nothing
    data["synthetic"]["workers"] = snakemake.config["data"]["synthetic"]["workers"]  # noqa: F821
pipeline.download(
    data,
    snakemake.output.metadata,  # noqa: F821
    snakemake.output.rejected,  # noqa: F821
    snakemake.params.seed,  # noqa: F821
    log=log,
)
