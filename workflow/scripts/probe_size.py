"""probe_size rule: a size's probes over its runs (mean, between-run spread, intervals that
resample runs, then galaxies): results/probes/{size}.csv."""

from astropt.io import script_log
from astropt.probe import probe_size

log = script_log(snakemake)  # noqa: F821
probe_size(
    snakemake.input.tables,  # noqa: F821
    snakemake.input.draws,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    n_boot=snakemake.params.n_boot,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    log=log,
)
