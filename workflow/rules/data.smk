rule download:
    conda:
        "../../environment.yml"
    # Compute nodes are often cut off from the internet: on SLURM the HuggingFace download
    # runs where Snakemake runs (see README, "The paper's data").
    localrule: CFG.data["source"] == "huggingface"
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
    conda:
        "../../environment.yml"
    # One job per shard group ("part") of a split: `tokens.jobs` of them, in parallel.
    # Priorities (see train_priority in common.smk): the data first, so that training starts
    # as early as it can.
    priority: 3
    input:
        metadata=rules.download.output.metadata,
    output:
        index="results/tokens/{split}/parts/{part}.parquet",
        rejected="results/tokens/{split}/parts/{part}.rejected.csv",
        summary="results/tokens/{split}/parts/{part}.json",
    params:
        # Left out: norm, applied at load time; jobs (the part wildcard); workers, which do
        # not change the tokens, and max_reject_fraction, a pass/fail bar: the script passes
        # those two from the config, so changing them reruns nothing.
        tokens=output_params(CFG.tokens, "workers", "norm", "jobs", "max_reject_fraction"),
        image_size=CFG.data["image_size"],
        n_chan=CFG.data["n_chan"],
        image_column=image_column(),
    log:
        "logs/tokenise/{split}/{part}.log",
    benchmark:
        "logs/benchmarks/tokenise/{split}/{part}.tsv"
    threads: max(1, CFG.tokens["workers"])
    resources:
        **job_resources("tokenise"),
    script:
        # The shards themselves (results/tokens/{split}/shards/) are not outputs: Snakemake
        # would delete them before rerunning an interrupted job, which instead keeps the
        # shards it finished (each checked against a fingerprint of settings and inputs).
        "../scripts/tokenise.py"


rule token_index:
    conda:
        "../../environment.yml"
    priority: 3
    input:
        parts=token_parts,
    output:
        index="results/tokens/{split}/index.parquet",
        meta="results/tokens/{split}/meta.json",
        rejected="results/tokens/{split}/rejected.csv",
    params:
        jobs=lambda wc: CFG.token_jobs(wc.split),
    log:
        "logs/token_index/{split}.log",
    benchmark:
        "logs/benchmarks/token_index/{split}.tsv"
    threads: job_threads("token_index")
    resources:
        **job_resources("token_index"),
    script:
        "../scripts/token_index.py"


rule rejected:
    conda:
        "../../environment.yml"
    input:
        download=rules.download.output.rejected,
        splits=expand("results/tokens/{split}/rejected.csv", split=SPLITS),
    output:
        "results/tokens/rejected.csv",
    log:
        "logs/rejected/rejected.log",
    benchmark:
        "logs/benchmarks/rejected/rejected.tsv"
    threads: job_threads("rejected")
    resources:
        **job_resources("rejected"),
    script:
        "../scripts/rejected.py"
