"""figure_umap rule: UMAP hexbin panels of one size's embeddings."""

from astropt.figures import figure_umap
from astropt.io import script_log

log = script_log(snakemake)  # noqa: F821
figure_umap(
    snakemake.input.embeddings,  # noqa: F821
    snakemake.input.probe,  # noqa: F821
    snakemake.input.metadata,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    snakemake.params.umap,  # noqa: F821
    snakemake.params.seed,  # noqa: F821
    title=f"UMAP of {snakemake.wildcards.size} embeddings (training seed {snakemake.config['train']['seeds'][0]})",  # noqa: F821
    log=log,
)
