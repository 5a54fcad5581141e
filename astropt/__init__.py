"""AstroPT: scaling-law studies of large observation models for astronomy.

The library behind the Snakemake workflow: synthetic and real galaxy data,
spiral patch tokenisation, the AstroPT v1 GPT, training, embeddings, linear
probes, power-law fits and figures. Each stage is a module that the thin
scripts under ``workflow/scripts/`` call.
"""

__version__ = "0.1.0"
