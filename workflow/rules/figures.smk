rule figure_scaling:
    conda:
        "../../environment.yml"
    input:
        fit=rules.scaling.output.fit,
        table=rules.scaling.output.table,
        csv=rules.scaling.output.csv,  # shown in the report's caption
        metrics=runs("results/models/{size}/seed{seed}/metrics.csv"),
    output:
        report(
            "results/figures/scaling.png",
            caption="../report/scaling.rst",
            category="Scaling",
        ),
    log:
        "logs/figures/scaling.log",
    benchmark:
        "logs/benchmarks/figures/scaling.tsv"
    threads: job_threads("figures")
    resources:
        **job_resources("figures"),
    script:
        "../scripts/figure_scaling.py"


rule figure_grid:
    conda:
        "../../environment.yml"
    # The N x D grid (train.budgets): IsoFLOP profiles, the compute-optimal frontier, loss
    # against tokens; from fit.json's "grid" section and every run's row of losses.csv.
    input:
        fit=rules.scaling.output.fit,
        table=rules.scaling.output.table,
    output:
        isoflop=report("results/figures/isoflop.png", caption="../report/isoflop.rst", category="Scaling"),
        frontier=report("results/figures/frontier.png", caption="../report/frontier.rst", category="Scaling"),
        loss_tokens=report("results/figures/loss_tokens.png", caption="../report/loss_tokens.rst", category="Scaling"),
    log:
        "logs/figures/grid.log",
    benchmark:
        "logs/benchmarks/figures/grid.tsv"
    threads: job_threads("figures")
    resources:
        **job_resources("figures"),
    script:
        "../scripts/figure_grid.py"


rule figure_loss_curves:
    conda:
        "../../environment.yml"
    input:
        metrics=runs("results/models/{size}/seed{seed}/metrics.csv"),
        sidecars=runs("results/models/{size}/seed{seed}/ckpt.json"),
    output:
        report(
            "results/figures/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="Training",
        ),
    log:
        "logs/figures/loss_curves.log",
    benchmark:
        "logs/benchmarks/figures/loss_curves.tsv"
    threads: job_threads("figures")
    resources:
        **job_resources("figures"),
    script:
        "../scripts/figure_loss_curves.py"


rule figure_downstream:
    conda:
        "../../environment.yml"
    input:
        rules.downstream.output,
    output:
        report(
            "results/figures/downstream.png",
            caption="../report/downstream.rst",
            category="Downstream",
        ),
    log:
        "logs/figures/downstream.log",
    benchmark:
        "logs/benchmarks/figures/downstream.tsv"
    threads: job_threads("figures")
    resources:
        **job_resources("figures"),
    script:
        "../scripts/figure_downstream.py"


rule figure_umap:
    conda:
        "../../environment.yml"
    priority: 2  # (about a minute on one core) as soon as its run is probed, not last
    input:
        # The map is of one run (the first seed's); its probe table names the probed properties
        # (umap.properties: probed), so the map need not wait for the size's other runs.
        embeddings=f"results/embeddings/{{size}}/seed{FIRST_SEED}.parquet",
        probe=f"results/probes/{{size}}/seed{FIRST_SEED}.csv",
        metadata=rules.download.output.metadata,
    output:
        report(
            "results/figures/umap_{size}.png",
            caption="../report/umap.rst",
            category="UMAP",
            subcategory="{size}",
        ),
    params:
        umap=output_params(CFG.umap, "sizes"),  # which sizes get a map is not this map's business
        seed=CFG.seed,
    log:
        "logs/figures/umap_{size}.log",
    benchmark:
        "logs/benchmarks/figures/umap_{size}.tsv"
    threads: job_threads("figures")
    resources:
        **job_resources("figures"),
    script:
        "../scripts/figure_umap.py"


rule figure_examples:
    conda:
        "../../environment.yml"
    priority: 2  # early, beside the training runs, not in the last minute
    input:
        tokens=f"results/tokens/{EMBED_SPLIT}/index.parquet",
        metadata=rules.download.output.metadata,
    output:
        report(
            "results/figures/examples.png",
            caption="../report/examples.rst",
            category="Data",
        ),
    params:
        seed=CFG.seed,
    log:
        "logs/figures/examples.log",
    benchmark:
        "logs/benchmarks/figures/examples.tsv"
    threads: job_threads("figures")
    resources:
        **job_resources("figures"),
    script:
        "../scripts/figure_examples.py"


rule figure_predictions:
    conda:
        "../../environment.yml"
    priority: 2
    input:
        ckpt=f"results/models/{CFG.predictions_size}/seed{FIRST_SEED}/ckpt.pt",
        tokens=f"results/tokens/{EMBED_SPLIT}/index.parquet",
    output:
        report(
            "results/figures/predictions.png",
            caption="../report/predictions.rst",
            category="Model",
        ),
    params:
        galaxies=CFG.raw["figures"]["predictions"]["galaxies"],
        size=f"{CFG.predictions_size} (seed {FIRST_SEED})",
        seed=CFG.seed,
    log:
        "logs/figures/predictions.log",
    benchmark:
        "logs/benchmarks/figures/predictions.tsv"
    threads: job_threads("figures")
    resources:
        **job_resources("figures"),
    script:
        "../scripts/figure_predictions.py"
