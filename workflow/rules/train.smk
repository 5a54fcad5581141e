rule train:
    input:
        train="results/tokens/train/index.parquet",
        val="results/tokens/validation/index.parquet",
    output:
        ckpt="results/models/{size}/ckpt.pt",
        sidecar="results/models/{size}/ckpt.json",
        metrics="results/models/{size}/metrics.csv",
    params:
        spec=train_spec,
        launcher=train_launcher,
        train_dir=lambda wc, input: os.path.dirname(input.train),
        val_dir=lambda wc, input: os.path.dirname(input.val),
        out_dir=lambda wc, output: os.path.dirname(output.ckpt),
    log:
        "logs/train/{size}.log",
    benchmark:
        "logs/benchmarks/train/{size}.tsv"
    threads: job_threads("train")
    resources:
        **job_resources("train"),
    shell:
        # A restarted job resumes from {params.out_dir}/last.pt, which is not an output
        # (Snakemake would delete it), so an interrupted run loses at most one checkpoint
        # interval; the log is appended to, so it keeps the interrupted attempt's lines.
        # `exec`: the trainer (or launcher) replaces the shell, so a signal reaches the
        # process that checkpoints on it (SIGUSR1/SIGTERM: save last.pt, exit 75, retry).
        "exec {params.launcher} -m astropt.train --spec {params.spec:q}"
        " --train-tokens {params.train_dir} --val-tokens {params.val_dir}"
        " --out-dir {params.out_dir} --threads {threads} >> {log} 2>&1"
