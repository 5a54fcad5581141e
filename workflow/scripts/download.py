"""download rule: make or fetch the galaxies (images + metadata.parquet)."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
data = snakemake.params.data  # noqa: F821
source = data["source"]
# Operational settings (worker counts, retries, the access token, a mirror's URL) are not
# params, so changing them reruns nothing: they come from the validated config.
for key in snakemake.config["data"].get(source, {}):  # noqa: F821
    if key not in data.get(source, {}):
        data.setdefault(source, {})[key] = snakemake.config["data"][source][key]  # noqa: F821
pipeline.download(
    data,
    snakemake.output.metadata,  # noqa: F821
    snakemake.output.rejected,  # noqa: F821
    snakemake.params.seed,  # noqa: F821
    log=log,
)
