"""tokenise rule: one job's shards of a split (job `part`, e.g. 0001-of-0004)."""

from pathlib import Path

from astropt.io import script_log
from astropt.tokenise import tokenise_part

log = script_log(snakemake)  # noqa: F821
tokenise_part(
    snakemake.input.metadata,  # noqa: F821
    snakemake.wildcards.split,  # noqa: F821
    snakemake.wildcards.part,  # noqa: F821
    Path(snakemake.output.index).parent.parent,  # noqa: F821
    snakemake.params.tokens,  # noqa: F821
    snakemake.params.image_size,  # noqa: F821
    snakemake.params.n_chan,  # noqa: F821
    snakemake.params.image_column,  # noqa: F821
    # Operational settings (not params, so changing them reruns nothing) from the config.
    workers=snakemake.config["tokens"]["workers"],  # noqa: F821
    max_reject_fraction=snakemake.config["tokens"]["max_reject_fraction"],  # noqa: F821
    log=log,
)
