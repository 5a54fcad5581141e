rule embed:
    input:
        ckpt="results/models/{size}/ckpt.pt",
        tokens=f"results/tokens/{EMBED_SPLIT}/index.parquet",
    output:
        "results/embeddings/{size}.parquet",
    params:
        embed=output_params(CFG.embed, "batch_size"),
    log:
        "logs/embed/{size}.log",
    benchmark:
        "logs/benchmarks/embed/{size}.tsv"
    threads: job_threads("embed")
    resources:
        **job_resources("embed"),
    script:
        "../scripts/embed.py"


rule probe:
    input:
        embeddings="results/embeddings/{size}.parquet",
        metadata=rules.download.output.metadata,
    output:
        "results/probes/{size}.csv",
    params:
        probe=output_params(CFG.probe),
        seed=CFG.seed,  # folds and bootstrap resamples
    log:
        "logs/probe/{size}.log",
    threads: job_threads("probe")
    resources:
        **job_resources("probe"),
    script:
        "../scripts/probe.py"


rule scaling:
    input:
        sidecars=expand("results/models/{size}/ckpt.json", size=SIZES),
    output:
        fit="results/scaling/fit.json",
        table="results/scaling/losses.csv",
        md="results/scaling/fit.md",
        tex="results/scaling/fit.tex",
        csv="results/scaling/fit.csv",
    log:
        "logs/scaling/scaling.log",
    threads: job_threads("scaling")
    resources:
        **job_resources("scaling"),
    script:
        "../scripts/scaling.py"


rule summary:
    input:
        sidecars=expand("results/models/{size}/ckpt.json", size=SIZES),
        fit="results/scaling/fit.json",
        probes=expand("results/probes/{size}.csv", size=SIZES),
        downstream="results/probes/summary.csv",
    output:
        md="results/summary.md",
        html=report(
            "results/summary.html",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "logs/summary/summary.log",
    threads: job_threads("summary")
    resources:
        **job_resources("summary"),
    script:
        "../scripts/summary.py"
