"""tokenise rule: one job's shards of a split (job `group` of `groups`, from the part name)."""

from pathlib import Path

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
group, groups = (int(x) for x in snakemake.wildcards.part.split("-of-"))  # noqa: F821
pipeline.tokenise(
    snakemake.input.metadata,  # noqa: F821
    snakemake.wildcards.split,  # noqa: F821
    Path(snakemake.output.index).parent.parent,  # noqa: F821
    # Operational settings (not params, so changing them reruns nothing) from the config.
    {**snakemake.params.tokens, **{k: snakemake.config["tokens"][k] for k in ("workers", "max_reject_fraction")}},  # noqa: F821
    snakemake.params.image_size,  # noqa: F821
    snakemake.params.n_chan,  # noqa: F821
    group=group,
    groups=groups,
    image_column=snakemake.params.image_column,  # noqa: F821
    log=log,
)
