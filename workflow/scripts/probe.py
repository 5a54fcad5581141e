"""probe rule: linear probes of every property from one size's embeddings."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.probe(
    snakemake.input.embeddings,  # noqa: F821
    snakemake.input.metadata,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    snakemake.params.probe,  # noqa: F821
    log=log,
)
