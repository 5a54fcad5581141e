"""AstroPT scaling-law workflow.

    download -> tokenise -> train (one job per size) -> embed -> probe
             -> scaling fit -> figures

Run everything on the embedded default (synthetic galaxies, tiny models):
    snakemake --cores 2 all
On a SLURM cluster with the paper's sweep:
    snakemake --profile profiles/slurm --configfile=config/paper.yaml all
One target:
    snakemake --profile profiles/slurm --configfile=config/paper.yaml results/probes/309M.csv
The report (every figure with its caption, the summary's numbers, each traced to its rule),
after a run:
    snakemake --report report.html
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# `snakemake --report report.html`: this description, then every figure and the summary.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/downstream.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
