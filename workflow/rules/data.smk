rule download:
    output:
        metadata="resources/galaxies/metadata.parquet",
        rejected="resources/galaxies/rejected.csv",
    params:
        data=download_params(),
        seed=CFG.seed,
    log:
        "logs/download/download.log",
    benchmark:
        "logs/benchmarks/download/download.tsv"
    threads: max(1, CFG.data["synthetic"]["workers"]) if CFG.data["source"] == "synthetic" else 1
    resources:
        **job_resources("download"),
    script:
        "../scripts/download.py"


rule tokenise:
    input:
        metadata=rules.download.output.metadata,
    output:
        tokens="results/tokens/{split}/tokens.npy",
        index="results/tokens/{split}/index.parquet",
        meta="results/tokens/{split}/meta.json",
        rejected="results/tokens/{split}/rejected.csv",
    params:
        # norm is applied at load time and workers do not change the tokens: both left out.
        tokens=output_params(CFG.tokens, "workers", "norm"),
        image_size=CFG.data["image_size"],
        n_chan=CFG.data["n_chan"],
    log:
        "logs/tokenise/{split}.log",
    benchmark:
        "logs/benchmarks/tokenise/{split}.tsv"
    threads: max(1, CFG.tokens["workers"])
    resources:
        **job_resources("tokenise"),
    script:
        "../scripts/tokenise.py"


rule rejected:
    input:
        download=rules.download.output.rejected,
        splits=expand("results/tokens/{split}/rejected.csv", split=SPLITS),
    output:
        "results/tokens/rejected.csv",
    log:
        "logs/rejected/rejected.log",
    threads: job_threads("rejected")
    resources:
        **job_resources("rejected"),
    script:
        "../scripts/rejected.py"
