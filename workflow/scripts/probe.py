"""probe rule: one run's probes (the paper's linear probes, k-fold ridge, logistic for flags)
and the bootstrap draws behind their intervals."""

from astropt.io import script_log
from astropt.probe import probe_run

log = script_log(snakemake)  # noqa: F821
probe_run(
    snakemake.input.embeddings,  # noqa: F821
    snakemake.input.metadata,  # noqa: F821
    snakemake.output.table,  # noqa: F821
    snakemake.params.probe,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    log=log,
    out_draws=snakemake.output.draws,  # noqa: F821
)
