"""The workflow configuration: one dict, validated once, handed out as typed pieces.

The Snakefile calls :func:`load_config` on Snakemake's ``config`` dict before any job
runs. Validation is two-staged:

1. JSON schema (``workflow/schemas/config.schema.yaml``): types, ranges, unknown and missing keys.
   Keys left out take the schema's defaults.
2. Cross-key checks the schema cannot express: size names known, custom sizes named
   after their parameter count, patch size dividing the image, GPUs dividing the
   gradient accumulation; with ``models.source: released``, only the paper's sizes and
   tokens the released weights take (their file in the repo: :func:`repo_file`).

Every error names the config key at fault (``train.steps``, ``sizes[2]`` ...) and is
raised as :class:`ConfigError`, so a bad config stops the workflow before any job.

Example::

    cfg = load_config(yaml.safe_load(open("config/config.yaml")))
    spec = cfg.size_spec("416K")        # SizeSpec(name, model=GPTConfig, lr)
    cfg.train_config("416K", seed=1).steps, cfg.resources("train", "416K").gpus
    cfg.seeds                           # [0, 1, 2]: one training job per size and seed
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from astropt.compute import PRESET_LR, PRESETS, SIZE_PRESETS, GPTConfig, memory_refusal

#: The workflow's config schema (the snakemake-workflows place: the Snakefile applies it with
#: ``snakemake.utils.validate`` too). The library is installed from its checkout (``pip install -e .``).
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
SPLITS = ("train", "validation", "test")
# Columns of every rejected.csv (galaxies dropped, with the reason).
REJECTED_COLUMNS = ["id", "image_path", "reason"]
# Custom size names must match their parameter count to within this factor.
NAME_TOLERANCE = 0.25
# Fewest galaxies a probe is fitted on (astropt.probe; here so that the parse checks it
# without importing scikit-learn).
PROBE_MIN_ROWS = 10

#: Coverage of every interval the workflow reports (fits, probes, predictions).
CI_LEVEL = 0.95
#: Default bootstrap resamples of the fits over runs (``scaling.n_boot``).
N_BOOT = 1000
# Rules whose resources are set per model size.
PER_SIZE_RULES = ("train", "embed")


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


@lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON schema of the config (parsed once)."""
    if not SCHEMA_PATH.is_file():
        raise ConfigError(f"the config schema {SCHEMA_PATH} is missing: install astropt from its checkout "
                          f"(`pip install --no-deps -e .` in the repository), which holds workflow/schemas/")
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------- typed pieces


@dataclass(frozen=True)
class SizeSpec:
    """One model size: its name, architecture and peak learning rate."""

    name: str
    model: GPTConfig
    lr: float


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the model (see the schema for each key)."""

    steps: int = 600
    micro_batch: int = 32
    grad_accum: int = 1
    warmup_steps: int = 30
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_galaxies: int | None = 1024
    log_interval: int = 50
    checkpoint_interval: int = 200
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False
    pad_positions: bool = False
    peak_tflops: float | None = None
    # Filled per run from `train.seeds` (initialisation and data order), not from `train:`.
    seed: int = 0
    # Filled from the top-level `seed` (the data's): recorded with the run, used by nothing.
    data_seed: int | None = None
    norm: Literal["patch", "image"] = "image"
    threads: int = 1

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    @property
    def last_decay_step(self) -> int:
        return self.decay_steps if self.decay_steps is not None else self.steps

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: Training settings added after runs existed, by their default: they enter the train rule's
#: spec (its params) only when set otherwise, so that upgrading reruns no finished training
#: job. They change how a step is computed, not what is learned, so the run's fingerprint
#: leaves them out (FSDP's checkpoint layout enters it: astropt.train.run_fingerprint).
LATER_TRAIN_KEYS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                    if f.name in ("parallel", "activation_checkpointing", "pad_positions")}


def spec_to_json(spec: SizeSpec, cfg: TrainConfig) -> dict:
    """What the ``train`` rule passes to this module: the size and its training settings.

    The thread count is left out (it is the job's, given with ``--threads``), so a
    different CPU allocation does not make Snakemake rerun training; so are
    :data:`LATER_TRAIN_KEYS` at their defaults.
    """
    train = {k: v for k, v in cfg.to_dict().items()
             if k != "threads" and not (k in LATER_TRAIN_KEYS and v == LATER_TRAIN_KEYS[k])}
    return {"size": spec.name, "model": spec.model.to_dict(), "lr": spec.lr, "train": train}


def spec_from_json(d: dict) -> tuple[SizeSpec, TrainConfig]:
    """Inverse of :func:`spec_to_json`."""
    return (
        SizeSpec(name=d["size"], model=GPTConfig.from_dict(d["model"]), lr=float(d["lr"])),
        TrainConfig.from_dict(d["train"]),
    )


@dataclass(frozen=True)
class Resources:
    """Cluster resources of one job."""

    gpus: int = 0  # per node
    cpus: int = 1  # per node
    mem_mb: int = 4000  # per node
    runtime: int = 60
    nodes: int = 1
    gpu_mem_gb: float | None = None  # memory of one GPU (GB of 2**30 bytes); None: not checked


@dataclass(frozen=True)
class Budget:
    """One token budget of a size (``train.budgets``): its optimiser steps and training tokens.

    ``label`` names the run's folder: ``""`` for the size's default budget (``train.steps``:
    results/models/{size}/seed{seed}/), ``D<tokens>`` for the others
    (results/models/{size}/D403K/seed{seed}/).
    """

    label: str
    steps: int
    tokens: int

    @property
    def path(self) -> str:
        """The ``{budget}`` part of a run's path: ``""`` or ``"D403K/"``."""
        return f"{self.label}/" if self.label else ""


@dataclass
class Config:
    """The validated workflow configuration (defaults filled in)."""

    raw: dict = field(repr=False)

    @property
    def seed(self) -> int:
        return self.raw["seed"]

    @property
    def sizes(self) -> list[str]:
        return list(self.raw["sizes"])

    @property
    def seeds(self) -> list[int]:
        """Training seeds (``train.seeds``): each size is trained once per seed."""
        return list(self.raw["train"]["seeds"])

    @property
    def holdout_size(self) -> str | None:
        """The size the scaling rule holds out and predicts (``scaling.holdout``): None (off),
        the largest size by parameter count (``largest``), or the size named."""
        chosen = self.raw["scaling"]["holdout"]
        if chosen == "largest":
            return self.largest_size
        return chosen

    @property
    def largest_size(self) -> str:
        """The size with the most parameters (by its name: 416K, 2100M)."""
        return max(self.sizes, key=lambda s: (parse_size_name(s) or 0.0))

    @property
    def data(self) -> dict:
        return self.raw["data"]

    @property
    def tokens(self) -> dict:
        return self.raw["tokens"]

    def token_jobs(self, split: str) -> int:
        """Tokenise jobs (shard groups) of a split: `tokens.jobs`, one number or per split."""
        jobs = self.tokens["jobs"]
        return int(jobs.get(split, 1)) if isinstance(jobs, dict) else int(jobs)

    @property
    def embed(self) -> dict:
        return self.raw["embed"]

    @property
    def probe(self) -> dict:
        return self.raw["probe"]

    @property
    def umap(self) -> dict:
        return self.raw["umap"]

    @property
    def n_tokens(self) -> int:
        """Tokens per galaxy: (image_size / patch_size) squared."""
        return (self.data["image_size"] // self.tokens["patch_size"]) ** 2

    @property
    def umap_sizes(self) -> list[str]:
        return self.umap["sizes"] if self.umap["sizes"] is not None else self.sizes

    @property
    def predictions_size(self) -> str:
        """The model shown in the next-patch prediction figure: `figures.predictions.size`,
        else the largest size (by parameter count)."""
        chosen = self.raw["figures"]["predictions"]["size"]
        return chosen if chosen is not None else self.largest_size

    def size_spec(self, name: str) -> SizeSpec:
        """Architecture and LR of a size, adapted to this config's patches and image size."""
        custom = self.raw["custom_sizes"]
        tokens = dict(n_chan=self.data["n_chan"], patch_size=self.tokens["patch_size"], block_size=self.n_tokens)
        if name in custom:
            shape = dict(custom[name])
            lr = shape.pop("lr")
            model = GPTConfig(**shape, **tokens)
        elif name in SIZE_PRESETS:
            model, lr = dataclasses.replace(SIZE_PRESETS[name], **tokens), PRESET_LR[name]
        else:
            raise ConfigError(f"config key 'sizes': unknown size {name!r}; {_known_sizes(custom)}")
        return SizeSpec(name=name, model=model, lr=float(lr))

    def train_config(self, name: str, seed: int | None = None, budget: Budget | None = None) -> TrainConfig:
        """The trainer's settings for one run of a size (threads from that size's resources);
        ``seed`` is its training seed (default the first of ``train.seeds``), ``budget`` its
        token budget (default: ``train.steps``). Another budget's schedule is scaled to its
        steps: the cosine decay ends at its last step (a set ``decay_steps`` is scaled in
        proportion); the warm-up stays ``train.warmup_steps``."""
        tc = TrainConfig.from_dict(  # keys that are no TrainConfig field (sizes, seeds...) are dropped
            {
                **self.raw["train"],
                **self.raw["train"]["sizes"].get(name, {}),
                "seed": self.seeds[0] if seed is None else int(seed),
                "data_seed": self.seed,
                "norm": self.tokens["norm"],
                "threads": self.resources("train", name).cpus,
            }
        )
        if budget is not None and budget.steps != tc.steps:
            if tc.decay_steps is not None:
                tc.decay_steps = max(tc.warmup_steps + 1, round(tc.decay_steps * budget.steps / tc.steps))
            tc.steps = budget.steps
        return tc

    def budgets(self, name: str) -> list[Budget]:
        """The token budgets a size is trained for (``train.budgets``), fewest tokens first;
        the default budget (``train.steps``) is always among them."""
        listed = self.raw["train"]["budgets"]
        if isinstance(listed, dict):
            listed = listed.get(name, listed.get("default", []))
        tc = self.train_config(name)  # tokens per step: global batch x the block_size - 1 trained positions
        per_step, default_steps = tc.micro_batch * tc.grad_accum * (self.n_tokens - 1), tc.steps
        steps = {default_steps}
        for entry in listed or []:
            steps.add(budget_steps(entry, default_steps, per_step))
        return [
            Budget("" if n == default_steps else f"D{format_tokens(n * per_step)}", n, n * per_step)
            for n in sorted(steps)
        ]

    def budget(self, name: str, label: str) -> Budget:
        """A size's budget by its label (``""`` or ``D403K``, a trailing ``/`` allowed)."""
        label = label.rstrip("/")
        for b in self.budgets(name):
            if b.label == label:
                return b
        known = ", ".join(b.label or "(default)" for b in self.budgets(name))
        raise ConfigError(f"size {name} has no token budget {label!r} in train.budgets (its budgets: {known})")

    @property
    def grid(self) -> bool:
        """Whether any size is trained for more than one token budget (an N x D grid)."""
        return any(len(self.budgets(s)) > 1 for s in self.sizes)

    def resources(self, rule: str, size: str | None = None) -> Resources:
        """Resources of one job: per size for train and embed, `resources.default` otherwise."""
        res = self.raw["resources"]
        if rule not in PER_SIZE_RULES:
            return Resources(**res["default"])
        return Resources(**{**res[rule]["default"], **res[rule]["sizes"].get(size, {})})


# --------------------------------------------------------------------------- loading


def load_config(config: dict | str | Path) -> Config:
    """Validate a config (a dict or a YAML path), fill defaults, check cross-key rules.

    Raises:
        ConfigError: naming every offending key.
    """
    if isinstance(config, (str, Path)):
        with open(config) as f:
            config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a mapping of keys to values, got {type(config).__name__}")
    raw = _coerce(copy.deepcopy(config), schema(), schema())
    _validate(raw)
    _fill_defaults(raw, schema(), schema())
    _validate(raw)
    cfg = Config(raw=raw)
    _check_semantics(cfg)
    return cfg


def _key_path(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _validate(raw: dict) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    lines = []
    for e in errors:
        key = _key_path(e.absolute_path)
        if e.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", e.message)
            name = f"{key}.{missing[0]}" if missing and key != "(top level)" else (missing[0] if missing else key)
            lines.append(f"config key '{name}' is missing: {e.message}")
        elif e.validator == "additionalProperties":
            lines.append(f"config key '{key}': unknown key(s): {e.message}")
        elif e.validator == "oneOf" and e.context:
            # the branch that got furthest into the value (['-2x']: its item, not "not null")
            best = max(e.context, key=lambda c: len(c.relative_path))
            why = best.message
            if best.validator == "pattern" and "budget" in key:
                why = f"{best.instance!r} is neither a number of tokens nor a multiple such as '0.5x'"
            lines.append(f"config key '{_key_path([*e.absolute_path, *best.relative_path])}': {why}")
        else:
            lines.append(f"config key '{key}': {e.message}")
    raise ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _coerce(instance: Any, node: dict, root: dict) -> Any:
    """Turn strings into the numbers/booleans/nulls the schema asks for.

    Snakemake hands values given with ``--config key=value`` (and nested ones) over as
    strings; ``"1200"`` for an integer key is meant as 1200.
    """
    node = _resolve(node, root)
    if isinstance(instance, dict):
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        for key, value in instance.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                instance[key] = _coerce(value, sub, root)
        return instance
    if isinstance(instance, list) and isinstance(node.get("items"), dict):
        return [_coerce(v, node["items"], root) for v in instance]
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(instance, float) and not math.isfinite(instance) and ("number" in types or "integer" in types):
        return str(instance)  # NaN passes range checks: as a string the schema refuses it, naming the key
    if isinstance(instance, float) and "integer" in types and "number" not in types and instance.is_integer():
        return int(instance)  # 16.0 (YAML "16.0", JSON 16.0) for an integer key: meant as 16
    if not isinstance(instance, str):
        return instance
    text = instance.strip()
    if "null" in types and text.lower() in ("null", "none", "~"):
        return None
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "integer" in types or "number" in types:
        try:
            value = float(text)
        except ValueError:
            return instance
        if not math.isfinite(value):
            return instance  # "nan" / "inf": left a string, so the schema refuses it
        if "integer" in types and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if "integer" in types and "number" not in types and value.is_integer():
            return int(value)  # "16.0", "1e3"
        if "number" in types:
            return value
    return instance


def _resolve(node: dict, root: dict) -> dict:
    if "$ref" in node:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, root) if "$ref" in target else merged
    return node


def _fill_defaults(instance: Any, node: dict, root: dict) -> Any:
    node = _resolve(node, root)
    if not isinstance(instance, dict):
        return instance
    props = node.get("properties", {})
    for key, sub in props.items():
        sub_r = _resolve(sub, root)
        if key not in instance and "default" in sub_r:
            instance[key] = copy.deepcopy(sub_r["default"])
        if key in instance:
            _fill_defaults(instance[key], sub_r, root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in instance:
            if key not in props:
                _fill_defaults(instance[key], extra, root)
    return instance


def known_sizes(cfg: Config) -> list[str]:
    """Every size name a target may use: the config's sizes, its custom sizes and the presets."""
    return list(dict.fromkeys([*cfg.sizes, *cfg.raw["custom_sizes"], *SIZE_PRESETS]))


def _known_sizes(custom: dict) -> str:
    return f"known: presets {', '.join(SIZE_PRESETS)}" + (
        f"; custom_sizes {', '.join(custom)}" if custom else "; add it under custom_sizes"
    )


def parse_size_name(name: str) -> float | None:
    """Parameter count a size name states (``"144K"`` -> 144e3, ``"2.1B"`` -> 2.1e9), else None."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMB])", name)
    if not m:
        return None
    return float(m.group(1)) * {"K": 1e3, "M": 1e6, "B": 1e9}[m.group(2)]


def _check_semantics(cfg: Config) -> None:
    """The cross-key checks, in order (a later check may assume an earlier one passed)."""
    problems: list[str] = []
    for check in (_check_sizes, _check_data, _check_schedule, _check_outputs, _check_resources):
        check(cfg, problems)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _check_sizes(cfg: Config, problems: list[str]) -> None:
    """The patch size against the image; every size known; custom sizes named by their count."""
    raw = cfg.raw
    custom = raw["custom_sizes"]
    image, patch = raw["data"]["image_size"], raw["tokens"]["patch_size"]
    if image % patch:
        problems.append(
            f"config key 'tokens.patch_size': {patch} does not divide data.image_size {image}"
        )
    for i, name in enumerate(raw["sizes"]):
        if name not in custom and name not in SIZE_PRESETS:
            problems.append(f"config key 'sizes[{i}]': unknown size {name!r}; {_known_sizes(custom)}")
    # Custom sizes in use are checked against their names (the count depends on the patch
    # size, so a size defined for another config -- e.g. the default's under paper.yaml --
    # is only checked when used).
    for name, c in custom.items():
        if name not in raw["sizes"]:
            continue
        if c["n_embd"] % c["n_head"]:
            problems.append(
                f"config key 'custom_sizes.{name}': n_embd {c['n_embd']} is not divisible "
                f"by n_head {c['n_head']}"
            )
            continue
        stated = parse_size_name(name)
        if stated is None:
            problems.append(
                f"config key 'custom_sizes.{name}': name it by parameter count, e.g. '144K' or '2M'"
            )
            continue
        if not problems:
            from astropt.compute import param_count

            try:
                n = param_count(cfg.size_spec(name).model.to_dict())
            except ValueError as err:
                problems.append(f"config key 'custom_sizes.{name}': {err}")
                continue
            if abs(n - stated) > NAME_TOLERANCE * stated:
                problems.append(
                    f"config key 'custom_sizes.{name}': the model has {n:,} parameters; "
                    f"rename it (e.g. {_format_count(n)!r}) or change its shape"
                )


def _check_data(cfg: Config, problems: list[str]) -> None:
    """The data source's own keys (bands, folder fractions, the Hub, released weights)."""
    raw = cfg.raw
    if raw["data"]["source"] == "synthetic" and raw["data"]["n_chan"] != 3:
        problems.append("config key 'data.n_chan': synthetic stamps have 3 bands (g, r, z)")
    if raw["data"]["source"] == "folder":
        for key in ("images", "catalogue"):
            if not raw["data"]["folder"][key]:
                problems.append(f"config key 'data.folder.{key}' is missing: required when data.source is 'folder'")
        fr = raw["data"]["folder"]
        if fr["val_fraction"] + fr["test_fraction"] >= 1:
            problems.append("config key 'data.folder.val_fraction': val_fraction + test_fraction must be below 1")
    if raw["data"]["source"] == "huggingface":
        problems += _check_huggingface(raw["data"]["huggingface"])
    problems += _check_models(raw)


def _check_schedule(cfg: Config, problems: list[str]) -> None:
    """Warm-up and decay within the steps; then (on an otherwise valid config) the budgets and
    the embedded split's size."""
    raw = cfg.raw
    tr = raw["train"]
    if tr["warmup_steps"] >= tr["steps"]:
        problems.append(f"config key 'train.warmup_steps': {tr['warmup_steps']} is not below train.steps ({tr['steps']})")
    if tr["decay_steps"] is not None and not tr["warmup_steps"] < tr["decay_steps"] <= tr["steps"]:
        problems.append(
            f"config key 'train.decay_steps': {tr['decay_steps']} must lie after the warm-up "
            f"({tr['warmup_steps']}) and at most train.steps ({tr['steps']})"
        )
    if not problems:
        problems += _check_budgets(cfg)
        problems += _check_split_size(raw)


def _check_outputs(cfg: Config, problems: list[str]) -> None:
    """What the embeddings, the fits and the figures name: tokens, layer, holdout, sizes shown."""
    raw, custom = cfg.raw, cfg.raw["custom_sizes"]
    embed_tokens = raw["embed"]["n_tokens"]
    if embed_tokens > cfg.n_tokens:
        problems.append(
            f"config key 'embed.n_tokens': {embed_tokens} exceeds the {cfg.n_tokens} tokens per galaxy"
        )
    holdout = raw["scaling"]["holdout"]
    if holdout not in (None, "largest") and holdout not in raw["sizes"]:
        problems.append(f"config key 'scaling.holdout': {holdout!r} is not 'largest', null or one of sizes {raw['sizes']}")
    if raw["models"]["source"] == "released" and len(raw["train"]["seeds"]) > 1:
        problems.append(
            f"config key 'train.seeds': the released weights are one run per size; "
            f"{raw['train']['seeds']} asks for {len(raw['train']['seeds'])} (use one seed with models.source released)"
        )
    problems += [f"config key 'umap.sizes': {s!r} is not one of sizes {raw['sizes']}"
                 for s in raw["umap"]["sizes"] or [] if s not in raw["sizes"]]
    shown = raw["figures"]["predictions"]["size"]
    if shown is not None and shown not in raw["sizes"]:
        problems.append(f"config key 'figures.predictions.size': {shown!r} is not one of sizes {raw['sizes']}")
    if isinstance(raw["umap"]["properties"], str) and raw["umap"]["properties"] not in ("paper", "probed"):
        problems.append(
            f"config key 'umap.properties': {raw['umap']['properties']!r} is not 'paper', 'probed' or a list of columns"
        )
    for s in raw["sizes"]:
        if (s in custom or s in SIZE_PRESETS) and not problems:
            n_layer = cfg.size_spec(s).model.n_layer
            layer = raw["embed"]["layer"]
            if not -n_layer <= layer < n_layer:
                problems.append(
                    f"config key 'embed.layer': {layer} is out of range for size {s} ({n_layer} blocks: "
                    f"use 0..{n_layer - 1} or -1..-{n_layer})"
                )


def _check_resources(cfg: Config, problems: list[str]) -> None:
    """Per-size settings name known sizes; ranks divide gradient accumulation; one-node embedding;
    each GPU training run fits the GPU memory its resources declare (:func:`gpu_memory_refusal`)."""
    raw, custom = cfg.raw, cfg.raw["custom_sizes"]
    for s in raw["train"]["sizes"]:
        if s not in raw["sizes"] and s not in custom and s not in SIZE_PRESETS:
            problems.append(f"config key 'train.sizes.{s}': unknown size {s!r}")
    for rule in PER_SIZE_RULES:
        for s in raw["resources"][rule]["sizes"]:
            if s not in custom and s not in SIZE_PRESETS:
                problems.append(f"config key 'resources.{rule}.sizes.{s}': unknown size {s!r}")
    for s in raw["sizes"]:
        if s in custom or s in SIZE_PRESETS:
            if cfg.resources("embed", s).nodes > 1:
                problems.append(f"config key 'resources.embed' of size {s}: only training runs on several nodes (nodes must be 1)")
            res = cfg.resources("train", s)
            ranks = max(res.gpus, 1) * res.nodes
            if res.nodes > 1 and res.gpus < 1:
                problems.append(f"config key 'resources.train' of size {s}: nodes {res.nodes} needs gpus >= 1 per node")
            accum = cfg.train_config(s).grad_accum
            if ranks > 1 and accum % ranks:
                key = f"train.sizes.{s}.grad_accum" if "grad_accum" in raw["train"]["sizes"].get(s, {}) else "train.grad_accum"
                problems.append(
                    f"config key '{key}': {accum} is not divisible "
                    f"by the {ranks} ranks ({res.gpus} GPUs x {res.nodes} node(s)) of size {s} (resources.train)"
                )
    if not problems and raw["models"]["source"] == "trained":  # every GPU run fits its declared gpu_mem_gb
        problems += [f"config key 'resources.train' of size {s}: {why}"
                     for s in cfg.sizes if (why := gpu_memory_refusal(cfg, s))]


def gpu_memory_refusal(cfg: Config, size: str) -> str | None:
    """Why a size's training run cannot fit the GPU memory ``resources.train`` declares for it
    (:func:`astropt.compute.memory_refusal`); None when it fits, runs on the CPU or no
    ``gpu_mem_gb`` is set. Also for a size a target asks for outside ``sizes``."""
    res = cfg.resources("train", size)
    if res.gpus < 1 or res.gpu_mem_gb is None:
        return None
    tc = cfg.train_config(size)
    return memory_refusal(
        size, cfg.size_spec(size).model.to_dict(), tc.micro_batch, tc.grad_accum, parallel=tc.parallel,
        dtype="float32" if tc.dtype == "float32" else "bfloat16", ranks=res.gpus * res.nodes,
        checkpointing=tc.activation_checkpointing, pad_positions=tc.pad_positions, gpu_mem_gb=res.gpu_mem_gb,
    )


def _check_budgets(cfg: Config) -> list[str]:
    """Checks of ``train.budgets``: known sizes, every budget past the warm-up, distinct folder
    names, and no grid of the released weights (one run per size)."""
    raw, problems = cfg.raw, []
    listed = raw["train"]["budgets"]
    if listed is None:
        return problems
    if raw["models"]["source"] == "released":
        return ["config key 'train.budgets': the released weights are one run per size (set it to null)"]
    if isinstance(listed, dict):
        for s in listed:
            if s != "default" and s not in raw["custom_sizes"] and s not in SIZE_PRESETS:
                problems.append(f"config key 'train.budgets.{s}': unknown size {s!r}")
    warmup = raw["train"]["warmup_steps"]
    for s in raw["sizes"]:
        budgets = cfg.budgets(s)
        short = [b for b in budgets if b.steps <= warmup]
        if short:
            problems.append(
                f"config key 'train.budgets': size {s}'s budget of {short[0].tokens:,} tokens is "
                f"{short[0].steps} steps, not more than train.warmup_steps ({warmup}): give it more tokens"
            )
        labels = [b.label for b in budgets]
        if len(set(labels)) < len(labels):
            problems.append(
                f"config key 'train.budgets': two budgets of size {s} round to the same folder name "
                f"({', '.join(labels)}): make them further apart"
            )
    return problems


def _check_split_size(raw: dict) -> list[str]:
    """The embedded split must hold enough galaxies for the probes' folds, where the config alone
    fixes its size (synthetic data); otherwise every probe would come out empty, after the training has run."""
    split, folds = raw["embed"]["split"], raw["probe"]["folds"]
    key = {"train": "n_train", "validation": "n_val", "test": "n_test"}[split]
    n, need = int(raw["data"]["synthetic"][key]), max(PROBE_MIN_ROWS, 2 * folds)
    if raw["data"]["source"] != "synthetic" or n >= need:
        return []
    return [
        f"config key 'data.synthetic.{key}': {n} galaxies in the '{split}' split (embed.split) are too few for "
        f"the probes ({folds}-fold cross-validation with 2 galaxies per fold, and {PROBE_MIN_ROWS} to fit one: "
        f"at least {need}); give it more galaxies or lower probe.folds"
    ]


def input_problems(cfg: Config) -> list[str]:
    """Files the config names that do not exist, checked where the workflow starts (so that
    `snakemake -n` says so, before any job): the folder source's image folder and catalogue."""
    problems = []
    if cfg.data["source"] == "folder":
        folder = cfg.data["folder"]
        if folder["images"] and not Path(folder["images"]).is_dir():
            problems.append(f"config key 'data.folder.images': {folder['images']!r} is not a folder "
                            f"(relative paths start from {Path.cwd()})")
        if folder["catalogue"] and not Path(folder["catalogue"]).is_file():
            problems.append(f"config key 'data.folder.catalogue': {folder['catalogue']!r} is not a file "
                            f"(relative paths start from {Path.cwd()})")
    return problems


def _check_huggingface(hf: dict) -> list[str]:
    """Checks of ``data.huggingface`` the schema cannot express (used when it is the source).

    Each split needs its own shards: two splits with the same pattern would hold the same galaxies.
    """
    problems = []
    first: dict[str, str] = {}
    for split in SPLITS:
        pattern = hf["splits"][split]
        if pattern in first:
            problems.append(
                f"config key 'data.huggingface.splits.{split}': pattern {pattern!r} is also the pattern of "
                f"split {first[pattern]!r}; each split needs its own shards"
            )
        first.setdefault(pattern, split)
    return problems


RELEASED_PATH = "models/fully_trained/{size_digits}M_params/030000_ckpt.pt"
"""Default ``models.released.path``: the paper's checkpoints in the model repo ``Smith42/astroPT``."""
_PLACEHOLDERS = ("size", "size_digits")
"""Fields of ``models.released.path``: the size's name (``89M``) and its millions, zero-padded (``0089``)."""
_RELEASED = "models.released"


def size_digits(size: str) -> str:
    """The repo's folder number of a paper size: its millions, zero-padded to four digits.

    ``"1M"`` -> ``"0001"``, ``"89M"`` -> ``"0089"``, ``"2100M"`` -> ``"2100"``.

    Raises:
        ValueError: If ``size`` is not one of the paper's sizes (:data:`astropt.model.PRESETS`).
    """
    if size not in PRESETS:
        raise ValueError(
            f"{size!r} is not one of the paper's sizes ({', '.join(PRESETS)}): there are no released weights for it"
        )
    return f"{int(size.removesuffix('M')):04d}"


def repo_file(size: str, pattern: str = RELEASED_PATH) -> str:
    """Path of a paper size's checkpoint in the repo: ``pattern`` with ``{size}`` / ``{size_digits}`` filled.

    Raises:
        ValueError: For a size without released weights, or a pattern with other fields.
    """
    fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    unknown = [f for f in fields if f not in _PLACEHOLDERS]
    if unknown:
        raise ValueError(
            f"config key '{_RELEASED}.path': unknown field(s) {unknown} in {pattern!r}; "
            f"known: {{size}} (e.g. 89M) and {{size_digits}} (e.g. 0089)"
        )
    return pattern.format(size=size, size_digits=size_digits(size))


def _check_models(raw: dict) -> list[str]:
    """Checks of a config with ``models.source: released`` that the schema cannot express.

    Only the paper's sizes have released weights, with their own shapes (a ``custom_sizes``
    entry of the same name would change it); the tokens must fit them: 16 px patches of 3 bands, at most ``block_size`` (1024) per galaxy; and no two
    sizes may map to the same file.

    Returns:
        One line per problem, each naming its config key (empty: fine).
    """
    if raw["models"]["source"] != "released":
        return []
    problems = []
    sizes = [s for s in raw["sizes"] if s in PRESETS]
    for i, name in enumerate(raw["sizes"]):
        if name not in PRESETS:
            problems.append(
                f"config key 'sizes[{i}]': {name!r} has no released weights (models.source: released); "
                f"the paper's sizes are {', '.join(PRESETS)}"
            )
        elif name in raw["custom_sizes"]:
            problems.append(
                f"config key 'custom_sizes.{name}': overrides the paper's {name}, but the released weights have the "
                f"paper's shape (models.source: released): remove it"
            )
    image, patch, chans = raw["data"]["image_size"], raw["tokens"]["patch_size"], raw["data"]["n_chan"]
    p = PRESETS["1M"]  # every preset has the same patches, bands and block size
    if patch != p.patch_size:
        problems.append(
            f"config key 'tokens.patch_size': the released models take {p.patch_size}x{p.patch_size} px patches, "
            f"not {patch} (models.source: released)"
        )
    if chans != p.n_chan:
        problems.append(
            f"config key 'data.n_chan': the released models take {p.n_chan} bands (g, r, z), not {chans}"
        )
    if patch == p.patch_size and (image // patch) ** 2 > p.block_size:
        problems.append(
            f"config key 'data.image_size': {image} px makes {(image // patch) ** 2} tokens per galaxy, more "
            f"than the released models' {p.block_size} positions (at most {int(math.isqrt(p.block_size)) * patch} px)"
        )
    pattern = raw["models"]["released"]["path"]
    try:
        files = {s: repo_file(s, pattern) for s in sizes}
    except ValueError as err:
        problems.append(str(err))
    else:
        by_file: dict[str, list[str]] = {}
        for s, f in files.items():
            by_file.setdefault(f, []).append(s)
        for f, same in by_file.items():
            if len(same) > 1:
                problems.append(
                    f"config key '{_RELEASED}.path': {pattern!r} names the same file ({f}) for sizes "
                    f"{', '.join(same)}; use {{size_digits}} or {{size}}"
                )
    return problems


def budget_steps(entry: float | str, default_steps: int, tokens_per_step: int) -> int:
    """Optimiser steps of one ``train.budgets`` entry: tokens (a number) or a multiple of the
    default budget (a string ending in ``x``), rounded to whole steps (at least 1)."""
    text = str(entry).strip()
    if text.endswith("x"):
        steps = float(text[:-1]) * default_steps
    else:
        steps = float(text) / tokens_per_step
    return max(1, round(steps))


def format_tokens(n: int) -> str:
    """Tokens in a folder name, 3 significant digits: 403200 -> ``403K``, 1612800 -> ``1.61M``."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale * 0.9995:  # 999,600 -> 1M, not 1e+03K
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _format_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v >= 10 else f"{v:.1f}{unit}".replace(".0", "")
    return str(n)
