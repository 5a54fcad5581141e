"""tokenise rule: spiral-ordered patch tokens of one split."""

from pathlib import Path

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.tokenise(
    snakemake.input.metadata,  # noqa: F821
    snakemake.wildcards.split,  # noqa: F821
    Path(snakemake.output.tokens).parent,  # noqa: F821
    {**snakemake.params.tokens, "workers": snakemake.config["tokens"]["workers"]},  # noqa: F821
    snakemake.params.image_size,  # noqa: F821
    snakemake.params.n_chan,  # noqa: F821
    log=log,
)
