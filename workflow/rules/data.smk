rule download:
    output:
        metadata="resources/galaxies/metadata.parquet",
        images=directory("resources/galaxies/images"),
    params:
        data=CFG.data,
        seed=CFG.seed,
    log:
        "logs/download/download.log",
    benchmark:
        "logs/benchmarks/download/download.tsv"
    threads: max(1, CFG.data["synthetic"]["workers"])
    resources:
        **job_resources("download"),
    script:
        "../scripts/download.py"


rule tokenise:
    input:
        metadata=rules.download.output.metadata,
        images=rules.download.output.images,
    output:
        tokens="results/tokens/{split}/tokens.npy",
        index="results/tokens/{split}/index.parquet",
        meta="results/tokens/{split}/meta.json",
        rejected="results/tokens/{split}/rejected.csv",
    params:
        tokens=CFG.tokens,
        image_size=CFG.data["image_size"],
    log:
        "logs/tokenise/{split}.log",
    benchmark:
        "logs/benchmarks/tokenise/{split}.tsv"
    threads: max(1, CFG.tokens["workers"])
    resources:
        **job_resources("tokenise"),
    script:
        "../scripts/tokenise.py"
