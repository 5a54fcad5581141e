rule train:
    conda:
        "../../environment.yml"
    # One job per run: each size once per training seed (train.seeds) and token budget
    # (train.budgets; {budget} is "" for the default budget, else e.g. "D403K/").
    priority: train_priority
    input:
        # The splits' manifests (token_index): the trainer opens each split from its manifest.
        train="results/tokens/train/index.parquet",
        val="results/tokens/validation/index.parquet",
    output:
        ckpt="results/models/{size}/{budget}seed{seed}/ckpt.pt",
        sidecar="results/models/{size}/{budget}seed{seed}/ckpt.json",
        metrics="results/models/{size}/{budget}seed{seed}/metrics.csv",
    params:
        spec=train_spec,
        launcher=train_launcher,
        out_dir=lambda wc, output: os.path.dirname(output.ckpt),
    log:
        "logs/train/{size}/{budget}seed{seed}.log",
    benchmark:
        "logs/benchmarks/train/{size}/{budget}seed{seed}.tsv"
    threads: job_threads("train")
    resources:
        **job_resources("train"),
    shell:
        # A restarted job resumes from {params.out_dir}/last.pt, which is not an output
        # (Snakemake would delete it), so an interrupted run loses at most one checkpoint
        # interval. Snakemake deletes the log before a retry; every attempt's lines are
        # also appended to {params.out_dir}/history.log.
        # `exec`: the trainer (or launcher) replaces the shell, so a signal reaches the
        # process that checkpoints on it (SIGUSR1/SIGTERM: save last.pt, exit 75, retry).
        "exec {params.launcher} -m astropt.train --spec {params.spec:q}"
        " --train-tokens {input.train:q} --val-tokens {input.val:q}"
        " --out-dir {params.out_dir} --threads {threads} >> {log} 2>&1"


if MODELS_SOURCE == "released":

    # `models.source: released`: every size's model is the paper's released checkpoint, not
    # trained. `released_model` writes the same three files as `train`, so everything
    # downstream is unchanged; with this ruleorder it makes them and `train` never runs.
    # The released weights are one run per size: train.seeds must hold one seed (checked),
    # which names the run's folder.
    ruleorder: released_model > train

    rule released_model:
        conda:
            "../../environment.yml"
        # Downloads from the Hub: on SLURM it runs where Snakemake runs (compute nodes are
        # often offline), like the huggingface download. It needs no tokens.
        localrule: True
        output:
            ckpt="results/models/{size}/seed{seed}/ckpt.pt",
            sidecar="results/models/{size}/seed{seed}/ckpt.json",
            metrics="results/models/{size}/seed{seed}/metrics.csv",
        params:
            released=released_params,
        log:
            "logs/released_model/{size}/seed{seed}.log",
        benchmark:
            "logs/benchmarks/released_model/{size}/seed{seed}.tsv"
        threads: job_threads("released_model")
        resources:
            **job_resources("released_model"),
        script:
            "../scripts/released_model.py"
