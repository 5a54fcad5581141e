rule embed:
    conda:
        "../../environment.yml"
    priority: 2  # a finished run's embedding and probes before the next run's training
    input:
        ckpt="results/models/{size}/seed{seed}/ckpt.pt",
        tokens=f"results/tokens/{EMBED_SPLIT}/index.parquet",
    output:
        "results/embeddings/{size}/seed{seed}.parquet",
    params:
        embed=output_params(CFG.embed, "batch_size"),
    log:
        "logs/embed/{size}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/embed/{size}/seed{seed}.tsv"
    threads: job_threads("embed")
    resources:
        **job_resources("embed"),
    script:
        "../scripts/embed.py"


rule probe:
    conda:
        "../../environment.yml"
    # One run's probes, and the bootstrap draws behind their intervals (probe_size combines
    # the runs of a size from them).
    priority: 2
    input:
        embeddings="results/embeddings/{size}/seed{seed}.parquet",
        metadata=rules.download.output.metadata,
    output:
        table="results/probes/{size}/seed{seed}.csv",
        draws="results/probes/{size}/seed{seed}.draws.parquet",
    params:
        probe=output_params(CFG.probe),
        seed=CFG.seed,  # folds and bootstrap resamples: the same for every run
    log:
        "logs/probe/{size}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/probe/{size}/seed{seed}.tsv"
    threads: job_threads("probe")
    resources:
        **job_resources("probe"),
    script:
        "../scripts/probe.py"


rule probe_size:
    conda:
        "../../environment.yml"
    # A size's probes over its runs: mean, between-run spread, intervals that resample runs
    # and then galaxies. The target users ask for: results/probes/309M.csv.
    input:
        tables=size_runs("results/probes/{size}/seed{seed}.csv"),
        draws=size_runs("results/probes/{size}/seed{seed}.draws.parquet"),
    output:
        "results/probes/{size}.csv",
    params:
        n_boot=CFG.probe["n_boot"],
        seed=CFG.seed,
    log:
        "logs/probe_size/{size}.log",
    benchmark:
        "logs/benchmarks/probe_size/{size}.tsv"
    threads: job_threads("probe")
    resources:
        **job_resources("probe"),
    script:
        "../scripts/probe_size.py"


rule downstream:
    conda:
        "../../environment.yml"
    # The table behind the downstream figure and the summary's probe lines: each size's scores
    # relative to the smallest model's, and Spearman's rho between parameters and score.
    input:
        probes=runs("results/probes/{size}/seed{seed}.csv"),
        sidecars=runs("results/models/{size}/seed{seed}/ckpt.json"),
    output:
        "results/probes/summary.csv",
    log:
        "logs/downstream/downstream.log",
    benchmark:
        "logs/benchmarks/downstream/downstream.tsv"
    threads: job_threads("probe")
    resources:
        **job_resources("probe"),
    script:
        "../scripts/downstream.py"


rule scaling:
    conda:
        "../../environment.yml"
    # The fit over N (and C) of the default budget's runs; with train.budgets, also Chinchilla's
    # fit of L(N, D) over every run of the grid, its IsoFLOP profiles and held-out corner.
    input:
        sidecars=grid_runs("results/models/{size}/{budget}seed{seed}/ckpt.json"),
    output:
        fit="results/scaling/fit.json",
        table="results/scaling/losses.csv",
        md="results/scaling/fit.md",
        tex="results/scaling/fit.tex",
        csv="results/scaling/fit.csv",
    params:
        scaling=output_params(CFG.raw["scaling"]),
        holdout=CFG.holdout_size,
        seed=CFG.seed,  # bootstrap resamples
    log:
        "logs/scaling/scaling.log",
    benchmark:
        "logs/benchmarks/scaling/scaling.tsv"
    threads: job_threads("scaling")
    resources:
        **job_resources("scaling"),
    script:
        "../scripts/scaling.py"


rule summary:
    conda:
        "../../environment.yml"
    input:
        sidecars=runs("results/models/{size}/seed{seed}/ckpt.json"),
        fit="results/scaling/fit.json",
        probes=expand("results/probes/{size}.csv", size=SIZES),
        downstream=rules.downstream.output[0],
    output:
        md="results/summary.md",
        html=report(
            "results/summary.html",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "logs/summary/summary.log",
    benchmark:
        "logs/benchmarks/summary/summary.tsv"
    threads: job_threads("summary")
    resources:
        **job_resources("summary"),
    script:
        "../scripts/summary.py"
