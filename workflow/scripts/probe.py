"""probe rule: the paper's linear probes, k-fold ridge and logistic probes from one size's embeddings."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.probe(
    snakemake.input.embeddings,  # noqa: F821
    snakemake.input.metadata,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    snakemake.params.probe,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    log=log,
)
