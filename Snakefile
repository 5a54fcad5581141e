"""AstroPT scaling-law workflow.

    download -> tokenise -> train (one job per size) -> embed -> probe
             -> scaling fit -> figures

Run everything on the embedded default (synthetic galaxies, tiny models):
    snakemake --cores 2 all
On a SLURM cluster with the paper's sweep:
    snakemake --profile profiles/slurm --configfile=config/paper.yaml all
One target:
    snakemake --profile profiles/slurm --configfile=config/paper.yaml results/probes/309M.csv
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/downstream.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
