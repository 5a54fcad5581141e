"""embed rule: one size's embeddings of the configured split (the paper's protocol)."""

from astropt.io import script_log
from astropt.embed import embed_split

log = script_log(snakemake)  # noqa: F821
cfg = snakemake.params.embed  # noqa: F821
embed_split(
    snakemake.input.ckpt,  # noqa: F821
    snakemake.input.tokens,  # noqa: F821  (the split's manifest, index.parquet)
    snakemake.output[0],  # noqa: F821
    n_tokens=cfg["n_tokens"],
    batch_size=snakemake.config["embed"]["batch_size"],  # noqa: F821  (not a param: no reruns)
    log=log,
    # auto / true / false, from the validated config (the default filled in)
    transpose=snakemake.config["embed"].get("transpose", "auto"),  # noqa: F821
    layer=cfg["layer"],
    pooling=cfg["pooling"],
)
