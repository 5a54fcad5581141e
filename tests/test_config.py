"""Config validation: bad configs stop with a message naming the key.

Run: python -m pytest tests/test_config.py -q
"""

import copy
from pathlib import Path

import pytest
import yaml

from astropt.config import ConfigError, load_config, parse_size_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_default_config_is_valid_and_complete(default):
    cfg = load_config(default)
    assert cfg.sizes == ["42K", "85K", "144K", "217K"] and cfg.seeds == [0, 1, 2]
    assert cfg.n_tokens == 64
    spec = cfg.size_spec("217K")
    assert spec.model.input_dim == 8 * 8 * 3 and spec.model.block_size == 64
    assert cfg.train_config("217K").norm == "image"


def test_paper_config_merged_over_default_is_valid(default):
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    merged = _deep_merge(default, paper)  # what Snakemake does with --configfile
    cfg = load_config(merged)
    spec = cfg.size_spec("309M")
    assert (spec.model.n_layer, spec.model.n_embd, spec.model.block_size) == (24, 1024, 1024)
    assert spec.model.input_dim == 768 and spec.lr == 3e-4
    assert cfg.resources("train", "309M").gpus == 8
    assert cfg.resources("train", "1M").gpus == 1


def test_defaults_are_filled(default):
    minimal = {"sizes": ["1M"], "data": {"source": "synthetic"}, "tokens": {"patch_size": 8}}
    cfg = load_config(minimal)
    assert cfg.train_config("1M").steps == 600
    assert cfg.raw["data"]["synthetic"]["n_train"] == 10000
    assert cfg.resources("train", "1M").mem_mb == 4000


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["train"].__setitem__("steps", "many"), "train.steps"),
        (lambda c: c["train"].__setitem__("stpes", 10), "train"),
        (lambda c: c.pop("sizes"), "sizes"),
        (lambda c: c["data"].pop("source"), "data.source"),
        (lambda c: c["tokens"].__setitem__("norm", "pixel"), "tokens.norm"),
        (lambda c: c.__setitem__("sizes", ["42K", "3M"]), "sizes[1]"),
        (lambda c: (c["custom_sizes"].__setitem__("7M", {"n_layer": 2, "n_head": 2, "n_embd": 32, "lr": 1e-3}), c["sizes"].append("7M")), "custom_sizes.7M"),
        (lambda c: c["custom_sizes"]["42K"].__setitem__("n_head", 3), "custom_sizes.42K"),
        (lambda c: c["tokens"].__setitem__("patch_size", 7), "tokens.patch_size"),
        (lambda c: c["embed"].__setitem__("n_tokens", 65), "embed.n_tokens"),
        (lambda c: c["umap"].__setitem__("sizes", ["5M"]), "umap.sizes"),
        (lambda c: c["resources"]["train"]["sizes"].__setitem__("217K", {"gpus": 3}), "train.grad_accum"),
        (lambda c: c["data"].__setitem__("source", "folder"), "data.folder.images"),
        (lambda c: c["data"].__setitem__("n_chan", 4), "data.n_chan"),
        (lambda c: c["tokens"].__setitem__("fit", "stretch"), "tokens.fit"),
        (lambda c: c["train"].__setitem__("warmup_steps", c["train"]["steps"]), "train.warmup_steps"),
        (lambda c: c["train"].__setitem__("decay_steps", c["train"]["steps"] + 100), "train.decay_steps"),
        (lambda c: c["train"].__setitem__("micro_batch", 16.5), "train.micro_batch"),
        (lambda c: c["resources"]["train"]["sizes"].__setitem__("217K", {"nodes": 2}), "resources.train"),
        (lambda c: c["resources"]["embed"]["sizes"].__setitem__("217K", {"nodes": 2, "gpus": 1}), "resources.embed"),
        (lambda c: c["train"].__setitem__("sizes", {"3M": {"micro_batch": 4}}), "train.sizes.3M"),
        (lambda c: c["train"].__setitem__("sizes", {"42K": {"steps": 4}}), "train.sizes.42K"),
        (lambda c: (c["train"].__setitem__("sizes", {"217K": {"grad_accum": 3}}),
                    c["resources"]["train"]["sizes"].__setitem__("217K", {"gpus": 2})), "train.sizes.217K.grad_accum"),
        (lambda c: c["tokens"].__setitem__("jobs", {"train": 10000}), "tokens.jobs"),
        (lambda c: c["embed"].__setitem__("layer", 2), "embed.layer"),  # 42K has 2 blocks
        (lambda c: c["embed"].__setitem__("pooling", "median"), "embed.pooling"),
        (lambda c: c["umap"].__setitem__("properties", "all"), "umap.properties"),
        (lambda c: c["figures"]["predictions"].__setitem__("size", "5M"), "figures.predictions.size"),
    ],
)
def test_bad_config_names_the_key(default, edit, key):
    bad = copy.deepcopy(default)
    edit(bad)
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert f"'{key}" in str(err.value), str(err.value)


def test_predictions_size_defaults_to_the_largest(default):
    assert load_config(default).predictions_size == "217K"
    chosen = copy.deepcopy(default)
    chosen["figures"]["predictions"]["size"] = "85K"
    assert load_config(chosen).predictions_size == "85K"


def test_size_names():
    assert parse_size_name("144K") == 144e3
    assert parse_size_name("2.1B") == 2.1e9
    assert parse_size_name("tiny") is None


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_strings_from_the_command_line_are_coerced(default):
    """`snakemake --config train='{steps: 1200}'` hands values over as strings."""
    cfg = dict(default, train={**default["train"], "steps": "1200", "compile": "true", "decay_steps": "null", "min_lr_ratio": "0.2"})
    t = load_config(cfg).train_config("42K")
    assert (t.steps, t.compile, t.decay_steps, t.min_lr_ratio) == (1200, True, None, 0.2)
    with pytest.raises(ConfigError, match="'train.steps'"):
        load_config(dict(default, train={"steps": "12.5"}))


def test_whole_number_floats_are_integers(default):
    cfg = load_config(dict(default, train={**default["train"], "micro_batch": 16.0}))
    assert cfg.train_config("42K").micro_batch == 16 and isinstance(cfg.train_config("42K").micro_batch, int)
    custom = {**default["custom_sizes"], "42K": {**default["custom_sizes"]["42K"], "n_layer": 2.0}}
    assert load_config(dict(default, custom_sizes=custom)).size_spec("42K").model.n_layer == 2


@pytest.mark.parametrize("value, expected", [("16.0", 16), ("1e3", 1000), ("32", 32)])
def test_numeric_strings_for_integer_keys(default, value, expected):
    assert load_config(dict(default, train={**default["train"], "micro_batch": value})).train_config("42K").micro_batch == expected


@pytest.mark.parametrize("value", ["nan", float("nan"), float("inf")])
def test_non_finite_numbers_are_refused_by_key(default, value):
    with pytest.raises(ConfigError, match="'train.weight_decay'"):
        load_config(dict(default, train={**default["train"], "weight_decay": value}))


def test_per_size_batch_split_and_nodes(default):
    cfg = copy.deepcopy(default)
    cfg["train"]["sizes"] = {"217K": {"micro_batch": 8, "grad_accum": 4}}
    cfg["resources"]["train"]["sizes"] = {"217K": {"gpus": 2, "nodes": 2}}
    c = load_config(cfg)
    t = c.train_config("217K")
    assert (t.micro_batch, t.grad_accum) == (8, 4) and c.train_config("42K").micro_batch == default["train"]["micro_batch"]
    r = c.resources("train", "217K")
    assert (r.gpus, r.nodes) == (2, 2) and c.resources("train", "42K").nodes == 1


def test_per_size_resources_inherit_the_rules_default(default):
    cfg = copy.deepcopy(default)
    cfg["resources"]["train"] = {"default": {"mem_mb": 600, "runtime": 7}, "sizes": {"217K": {"gpus": 1}}}
    r = load_config(cfg).resources("train", "217K")
    assert (r.gpus, r.mem_mb, r.runtime) == (1, 600, 7)  # not the schema's 4000 MB, 60 min


def test_training_seeds_make_runs_and_seed_only_training(default):
    c = load_config(default)
    assert c.seeds == default["train"]["seeds"]
    t0, t1 = c.train_config("217K", seed=c.seeds[0]), c.train_config("217K", seed=c.seeds[1])
    assert (t0.seed, t1.seed) == (c.seeds[0], c.seeds[1]) and t0.data_seed == t1.data_seed == c.seed
    assert {k: v for k, v in t0.to_dict().items() if k != "seed"} == {k: v for k, v in t1.to_dict().items() if k != "seed"}
    other_data = load_config(dict(default, seed=7))
    assert other_data.train_config("217K", seed=c.seeds[0]).seed == t0.seed  # the data's seed is not the runs'


def test_scaling_and_clip_keys(default):
    c = load_config(default)
    assert c.holdout_size == "217K" == c.largest_size
    assert load_config(dict(default, scaling={"holdout": None})).holdout_size is None
    assert load_config(dict(default, scaling={"holdout": "85K"})).holdout_size == "85K"
    with pytest.raises(ConfigError, match="'scaling.holdout': '3M'"):
        load_config(dict(default, scaling={"holdout": "3M"}))
    with pytest.raises(ConfigError, match="scaling.estimator"):
        load_config(dict(default, scaling={"estimator": "lasso"}))
    assert c.probe["mad_clip"] == {"paper": 3.0, "ridge_cv": None}
    assert load_config(dict(default, probe={"mad_clip": {"ridge_cv": 2.5}})).probe["mad_clip"] == {"paper": 3.0, "ridge_cv": 2.5}
    assert load_config(dict(default, probe={"mad_clip": 4})).probe["mad_clip"] == 4  # one number: both protocols
    with pytest.raises(ConfigError, match="probe.mad_clip"):
        load_config(dict(default, probe={"mad_clip": {"logistic_cv": 3}}))


def test_released_weights_take_one_seed(default):
    cfg = dict(default, sizes=["1M"], models={"source": "released"}, data={"source": "synthetic", "image_size": 64},
               tokens={"patch_size": 16}, embed={"n_tokens": 16}, umap={"sizes": None},
               train={**default["train"], "seeds": [0, 1]})
    with pytest.raises(ConfigError, match="train.seeds.*released weights are one run per size"):
        load_config(cfg)


def test_no_budgets_is_one_default_budget_per_size(default):
    cfg = load_config(default)
    assert not cfg.grid
    (b,) = cfg.budgets("42K")
    # 800 steps x 16 galaxies x 63 trained positions
    assert (b.label, b.path, b.steps, b.tokens) == ("", "", 800, 800 * 16 * 63)
    assert cfg.train_config("42K", budget=b) == cfg.train_config("42K")


def test_budgets_as_multiples_and_tokens(default):
    default["train"]["budgets"] = ["0.25x", 403200, "2x"]
    cfg = load_config(default)
    assert cfg.grid
    got = [(b.label, b.steps, b.tokens) for b in cfg.budgets("85K")]
    assert got == [("D202K", 200, 201600), ("D403K", 400, 403200), ("", 800, 806400), ("D1.61M", 1600, 1612800)]
    assert cfg.budget("85K", "D403K/").steps == 400 and cfg.budget("85K", "").label == ""
    with pytest.raises(ConfigError, match="no token budget 'D999K'.*D202K"):
        cfg.budget("85K", "D999K")
    # each run's cosine ends at its own last step; the warm-up stays
    short = cfg.train_config("85K", seed=1, budget=cfg.budget("85K", "D202K"))
    assert (short.steps, short.last_decay_step, short.warmup_steps, short.seed) == (200, 200, 100, 1)


def test_per_size_budgets_and_scaled_decay(default):
    default["train"]["budgets"] = {"42K": ["0.5x"], "default": ["2x"]}
    default["train"]["decay_steps"] = 760
    cfg = load_config(default)
    assert [b.steps for b in cfg.budgets("42K")] == [400, 800]
    assert [b.steps for b in cfg.budgets("217K")] == [800, 1600]
    assert cfg.train_config("42K", budget=cfg.budgets("42K")[0]).decay_steps == 380  # 760 x 400 / 800
    assert cfg.train_config("42K").decay_steps == 760


@pytest.mark.parametrize(
    "budgets, match",
    [
        (["-2x"], r"train\.budgets\[0\]'.*neither a number of tokens nor a multiple"),
        (["0.1x"], r"size 42K's budget of 80,640 tokens is 80 steps, not more than train.warmup_steps \(100\)"),
        ({"99K": ["2x"]}, r"train\.budgets\.99K': unknown size"),
        ([1008000, 1009008], r"round to the same folder name"),
        ("2x", r"train\.budgets"),
    ],
)
def test_bad_budgets_name_the_key(default, budgets, match):
    default["train"]["budgets"] = budgets
    with pytest.raises(ConfigError, match=match):
        load_config(default)


def test_budgets_from_the_command_line(default):
    default["train"]["budgets"] = ["0.5x", "4.0e5"]  # --config train='{budgets: [0.5x, 4.0e5]}'
    assert [b.label for b in load_config(default).budgets("42K")] == ["D400K", "D403K", ""]


def test_grid_config_merged_over_default_is_valid(default):
    grid = yaml.safe_load((ROOT / "config/grid.yaml").read_text())
    cfg = load_config(_deep_merge(default, grid))
    assert cfg.grid and cfg.seeds == [0, 1] and len(cfg.sizes) >= 4
    assert all([b.steps for b in cfg.budgets(s)] == [200, 400, 800] for s in cfg.sizes)


def test_a_split_too_small_for_the_probes_stops_before_any_job(default):
    default["data"]["synthetic"]["n_test"] = 3
    with pytest.raises(ConfigError, match=r"'data\.synthetic\.n_test': 3 galaxies in the 'test' split .* at least 10"):
        load_config(default)
    default["embed"]["split"] = "validation"  # the split embedded is the one checked
    assert load_config(default).embed["split"] == "validation"
    default["probe"]["folds"] = 600
    with pytest.raises(ConfigError, match=r"'data\.synthetic\.n_val': 1024 galaxies .* at least 1200"):
        load_config(default)


def test_missing_folder_inputs_are_named(default, tmp_path):
    from astropt.config import input_problems

    default["data"]["source"] = "folder"
    default["data"]["folder"] = {"images": str(tmp_path / "stamps"), "catalogue": str(tmp_path / "cat.csv")}
    problems = input_problems(load_config(default))
    assert len(problems) == 2 and "'data.folder.images'" in problems[0] and "is not a folder" in problems[0]
    (tmp_path / "stamps").mkdir()
    (tmp_path / "cat.csv").write_text("id\n1\n")
    assert input_problems(load_config(default)) == []


def test_gpu_memory_is_checked_before_any_job(default):
    """With resources.train.*.gpu_mem_gb, a run that cannot fit its GPUs is refused at load,
    naming the size and what fits; FSDP with activation checkpointing makes 6.5B fit."""
    paper = _deep_merge(default, yaml.safe_load((ROOT / "config/paper.yaml").read_text()))
    paper["resources"]["train"]["default"]["gpu_mem_gb"] = 80
    load_config(paper)  # the paper's sizes fit an 80 GB card as configured (2100M: ~58 GB)
    big = copy.deepcopy(paper)
    big["sizes"] = [*big["sizes"], "6.5B"]
    big["resources"]["train"]["sizes"]["6.5B"] = {"nodes": 2, "gpus": 8, "cpus": 64, "mem_mb": 512000}
    big["train"]["sizes"]["6.5B"] = {"micro_batch": 10, "grad_accum": 32}
    with pytest.raises(ConfigError) as err:
        load_config(big)
    message = str(err.value)
    assert "config key 'resources.train' of size 6.5B: size 6.5B needs about 155.3 GB" in message
    assert "train.sizes.6.5B.parallel: fsdp" in message and "2100M" not in message
    big["train"]["sizes"]["6.5B"].update(parallel="fsdp", activation_checkpointing=True)
    cfg = load_config(big)
    assert cfg.train_config("6.5B").parallel == "fsdp" and cfg.train_config("2100M").parallel == "ddp"
    assert cfg.size_spec("6.5B").model.n_embd == 4096
    small = copy.deepcopy(paper)
    small["resources"]["train"]["sizes"]["2100M"]["gpu_mem_gb"] = 40  # a 40 GB card
    with pytest.raises(ConfigError, match=r"size 2100M needs about 58\.3 GB .* 40 GB declared"):
        load_config(small)
    cpu = copy.deepcopy(default)
    cpu["resources"]["train"]["default"]["gpu_mem_gb"] = 1  # no GPU asked for: nothing to check
    load_config(cpu)
