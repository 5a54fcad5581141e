"""token_index rule: join a split's tokenise parts into its index.parquet and meta.json."""

from pathlib import Path

from astropt.io import script_log
from astropt.tokenise import merge_token_groups

log = script_log(snakemake)  # noqa: F821
merge_token_groups(
    Path(snakemake.output.index).parent,  # noqa: F821
    snakemake.params.jobs,  # noqa: F821
    snakemake.config["tokens"]["max_reject_fraction"],  # noqa: F821  (a pass/fail bar: not a param)
    log=log,
)
