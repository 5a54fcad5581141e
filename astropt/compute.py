"""Model shapes and what a training run costs, before it runs: parameters, FLOPs, hours and
peak GPU memory (:func:`memory_estimate`, :func:`memory_refusal`).

:class:`GPTConfig` (an AstroPT model's shape), the paper's :data:`PRESETS` and the larger
:data:`LARGE_PRESETS` (6.5B, for FSDP) live here,
beside the formulas, so that the workflow's parse and config validation never import torch;
:mod:`astropt.model` re-exports them.

Torch-free (the workflow calls it while parsing, and on every job start): the parameter
count is the formula of :class:`astropt.model.GPT`'s layers (``tests/test_compute.py`` checks
it against the model), the FLOPs are the model's own accounting
(:meth:`astropt.model.GPT.flops_per_token`: ``6 N`` per token plus ``12 L d T`` for
attention), and the hours divide them by an assumed throughput:

- on GPUs, ``assumed_mfu`` of the card's dense bf16 peak (``train.peak_tflops``, else an
  H100's 989 TFLOP/s): the paper's sizes ran at 36-48 % MFU on one H100 (README);
- on a CPU, :data:`CPU_FLOPS_PER_THREAD` per thread, an optimistic rate (the default's 217K
  model trains at about 25 GFLOP/s on one thread of this project's machine), so the hours
  are a lower bound.

Example::

    cost = run_cost({"n_layer": 12, "n_head": 12, "n_embd": 768, "patch_size": 16,
                     "n_chan": 3, "block_size": 1024, "bias": False},
                    steps=30_000, global_batch=32)
    print(cost.describe())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

@dataclass
class GPTConfig:
    """Shape of an AstroPT model; the field names are v1's ``model_args``."""

    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # model width d
    n_chan: int = 3  # image channels (g, r, z)
    patch_size: int = 16  # patch side in pixels
    block_size: int = 1024  # maximum sequence length (position embeddings)
    dropout: float = 0.0  # dropout rate; the paper used 0
    bias: bool = False  # biases in the blocks' Linear and LayerNorm layers (v1: none)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "n_chan", "patch_size", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                f"n_head ({self.n_head}) so each head gets n_embd / n_head channels"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def input_dim(self) -> int:
        """Length of one patch vector: ``patch_size**2 * n_chan`` (768 in the paper)."""
        return self.patch_size**2 * self.n_chan

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, as stored in a checkpoint's ``model_args``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build a config from a ``model_args`` dict.

        Unknown keys (v1 checkpoints may carry extras) are ignored; missing keys
        take the dataclass defaults.
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# The paper's sweep (configs at v1.0.0), by its size labels: (n_layer, n_head, n_embd, peak learning rate).
_PAPER = {"1M": (4, 8, 128, 1e-3), "5M": (6, 8, 256, 1e-3), "12M": (6, 8, 384, 1e-3), "21M": (6, 8, 512, 1e-3),
          "89M": (12, 12, 768, 6e-4), "309M": (24, 16, 1024, 3e-4), "830M": (16, 8, 2048, 3e-4),
          "2100M": (26, 32, 2560, 1.6e-4)}
# Beyond the paper: a 7B-class shape (Llama-7B's depth and width, AstroPT's 4x MLP and patch
# head) for a cluster that trains with FSDP (``train.parallel: fsdp``). Its learning rate is
# extrapolated from the paper's (2100M: 1.6e-4), not tuned.
_LARGE = {"6.5B": (32, 32, 4096, 1.2e-4)}


def _presets(table: dict) -> dict[str, GPTConfig]:
    return {name: GPTConfig(n_layer=L, n_head=h, n_embd=d, n_chan=3, patch_size=16, block_size=1024)
            for name, (L, h, d, _) in table.items()}


PRESETS, LARGE_PRESETS = _presets(_PAPER), _presets(_LARGE)
#: Every built-in size: the paper's and the larger ones (``sizes`` may name any of them).
SIZE_PRESETS: dict[str, GPTConfig] = {**PRESETS, **LARGE_PRESETS}
#: Peak learning rates of the sweep.
PRESET_LR: dict[str, float] = {name: row[3] for name, row in {**_PAPER, **_LARGE}.items()}


#: An optimistic CPU training throughput per thread (fp32 matmuls with AVX2 / AVX-512).
CPU_FLOPS_PER_THREAD = 50e9
#: The GPU assumed for GPU-hour estimates when ``train.peak_tflops`` is not set: an H100 SXM.
DEFAULT_GPU_PEAK_FLOPS = 989e12
DEFAULT_MFU = 0.4


def param_count(model: Mapping[str, Any], non_embedding: bool = True) -> int:
    """Parameters of an AstroPT v1 model (``model_args``), as ``GPT.get_num_params`` counts.

    Args:
        model: ``n_layer``, ``n_embd``, ``patch_size``, ``n_chan``, ``block_size``, ``bias``.
        non_embedding: Leave out the position embedding (the paper's counts do).
    """
    L, d = int(model["n_layer"]), int(model["n_embd"])
    D = int(model["patch_size"]) ** 2 * int(model.get("n_chan", 3))
    b = 1 if model.get("bias", False) else 0
    tokeniser = (D * d + d) + (d * d + d)  # Linear(D, d), Linear(d, d), with biases
    block = (
        2 * (d + b * d)  # two LayerNorms
        + 3 * d * d + b * 3 * d + d * d + b * d  # attention: qkv, output projection
        + 4 * d * d + b * 4 * d + 4 * d * d + b * d  # MLP d -> 4d -> d
    )
    head = (2 * d * d + 2 * d) + (2 * d * d + d) + (d * D + D)  # d -> 2d -> d -> D, biases
    n = tokeniser + L * block + (d + b * d) + head  # ... and the final LayerNorm
    return n if non_embedding else n + int(model["block_size"]) * d


def flops_per_token(model: Mapping[str, Any], seq_len: int) -> int:
    """Training FLOPs per token, as :meth:`astropt.model.GPT.flops_per_token`."""
    return 6 * param_count(model) + 12 * int(model["n_layer"]) * int(model["n_embd"]) * int(seq_len)


@dataclass(frozen=True)
class RunCost:
    """One training run's size and its estimated time (see the module docstring)."""

    params: int
    tokens: int
    flops: float
    gpu_hours: float  # at the assumed MFU of the assumed GPU
    cpu_hours: float  # on ``threads`` CPU threads at CPU_FLOPS_PER_THREAD (a lower bound)
    mfu: float
    gpu_peak_flops: float
    threads: int

    def describe(self) -> str:
        return (
            f"{self.params:,} parameters x {self.tokens:,} tokens: {self.flops:.3g} FLOPs; about "
            f"{format_hours(self.gpu_hours)} GPU-hours at {self.mfu:.0%} MFU of a "
            f"{self.gpu_peak_flops / 1e12:.0f} TFLOP/s GPU, or at least {format_hours(self.cpu_hours)} h "
            f"on {self.threads} CPU thread(s)"
        )


def format_hours(h: float) -> str:
    """Hours for a log line: 2 significant digits below 10, whole hours above."""
    return f"{h:.2g}" if h < 10 else f"{h:,.0f}"


def run_cost(
    model: Mapping[str, Any],
    steps: int,
    global_batch: int,
    *,
    mfu: float = DEFAULT_MFU,
    peak_tflops: float | None = None,
    threads: int = 1,
) -> RunCost:
    """The cost of training ``model`` for ``steps`` steps of ``global_batch`` galaxies.

    Each galaxy trains ``block_size - 1`` positions (the next patch of each but the last).
    """
    seq = int(model["block_size"]) - 1
    tokens = int(steps) * int(global_batch) * seq
    flops = float(flops_per_token(model, seq)) * tokens
    peak = peak_tflops * 1e12 if peak_tflops else DEFAULT_GPU_PEAK_FLOPS
    return RunCost(
        params=param_count(model),
        tokens=tokens,
        flops=flops,
        gpu_hours=flops / (mfu * peak) / 3600,
        cpu_hours=flops / (max(1, threads) * CPU_FLOPS_PER_THREAD) / 3600,
        mfu=mfu,
        gpu_peak_flops=peak,
        threads=max(1, threads),
    )


def cpu_refusal(size: str, cost: RunCost, limit_hours: float | None) -> str | None:
    """Why a run must not start on a CPU (None: it may): its lower-bound CPU time exceeds
    ``limit_hours`` (``train.max_cpu_hours``; None: no limit)."""
    if limit_hours is None or cost.cpu_hours <= limit_hours:
        return None
    return (
        f"size {size} would train on the CPU (no GPU is visible): {cost.describe()}, more than "
        f"train.max_cpu_hours = {limit_hours:g}. Train it on GPUs (the paper's sweep: "
        f"--configfile=config/paper.yaml, on a cluster with --profile profiles/slurm), pick a "
        f"size of this config, or let it run here anyway with "
        f"--config train='{{max_cpu_hours: null}}' (or set train.max_cpu_hours in the config)."
    )


def compute_table(runs) -> list[dict[str, Any]]:
    """The measured cost of every cell of a sweep (one size at one token budget), for
    ``fit.json`` and ``fit.md``.

    Args:
        runs: One row per run (:func:`astropt.runs.load_sidecars`): ``size``, ``budget``,
            ``params``, ``tokens_seen``, ``flops``, ``elapsed_s``, ``gpu_hours``.

    Returns:
        One dict per cell, fewest parameters then tokens first: ``size``, ``budget``,
        ``runs``, ``N``, ``D``, ``C_6ND`` (Chinchilla's compute), ``flops`` (6ND plus attention,
        per run), ``wall_h`` (mean hours per run), ``gpu_hours`` (per run; 0 on a CPU, None when
        not recorded) and ``flops_per_s`` (achieved throughput, mean over runs).
    """
    import pandas as pd

    runs = pd.DataFrame(runs)
    rows = []
    for (_, _, budget, size), cell in runs.groupby(["params", "tokens_seen", "budget", "size"], sort=True):
        wall = pd.to_numeric(cell["elapsed_s"], errors="coerce")
        gpu = pd.to_numeric(cell["gpu_hours"], errors="coerce")
        N, D = int(cell["params"].iloc[0]), int(cell["tokens_seen"].iloc[0])
        rows.append({
            "size": size, "budget": budget, "runs": len(cell), "N": N, "D": D, "C_6ND": 6.0 * N * D,
            "flops": float(cell["flops"].mean()),
            "wall_h": float(wall.mean() / 3600) if wall.notna().any() else None,
            "gpu_hours": float(gpu.mean()) if gpu.notna().any() else None,
            "flops_per_s": float((cell["flops"] / wall).mean()) if (wall > 0).any() else None,
        })
    return rows


# --------------------------------------------------------------------------- GPU memory

#: Bytes one block saves for backward per token: ``a * n_embd + 16 + 4 * n_head`` (LayerNorm
#: statistics, attention log-sum-exp), ``a`` by dtype. Counted from the ops of
#: :class:`astropt.model.Block` with flash attention (SDPA) and checked against the tensors
#: autograd saves (``tests/test_compute.py``): float32 keeps both LayerNorm inputs (4 + 4),
#: the attention's input (4), q, k, v (12) and output (4), the MLP's input (4), its 4d-wide
#: hidden layer before and after GELU (16 + 16): 64; bf16 autocast keeps the same in bf16
#: but the LayerNorm inputs (fp32): 36.
BLOCK_BYTES_PER_WIDTH = {"float32": 64, "bfloat16": 36}
#: Share of a GPU's memory a training run may plan to use; the rest holds the CUDA context,
#: the cuBLAS / NCCL workspaces and the caching allocator's fragmentation.
USABLE_GPU_FRACTION = 0.9
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one GPU of a training run, by part, in bytes (see :func:`memory_estimate`)."""

    weights: float  # fp32 parameters (this rank's shard under FSDP)
    grads: float  # fp32 gradients (this rank's shard under FSDP)
    optimizer: float  # AdamW's two fp32 moments (this rank's shard under FSDP)
    unsharded: float  # FSDP: blocks gathered for compute (with prefetch) and their gradients
    weight_copies: float  # bf16 casts of the weights that autocast saves for backward
    activations: float  # what autograd saves for backward, one micro-batch, plus the batch

    @property
    def total(self) -> float:
        return (self.weights + self.grads + self.optimizer + self.unsharded + self.weight_copies
                + self.activations)

    @property
    def total_gb(self) -> float:
        """The total in GB of 2**30 bytes (``torch.cuda.max_memory_allocated`` / 2**30)."""
        return self.total / GIB

    def describe(self) -> str:
        parts = [("weights", self.weights), ("gradients", self.grads), ("AdamW", self.optimizer),
                 ("gathered blocks", self.unsharded), ("bf16 weight copies", self.weight_copies),
                 ("activations", self.activations)]
        return f"{self.total_gb:.1f} GB (" + ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts if v) + ")"


def activation_bytes(model: Mapping[str, Any], micro_batch: int, seq_len: int, dtype: str = "bfloat16",
                     checkpointing: bool = False) -> float:
    """Bytes autograd saves for backward in one micro-batch's forward, plus the batch itself.

    Per token: each block :data:`BLOCK_BYTES_PER_WIDTH` (with ``checkpointing``, only its
    fp32 input, and one block's full set while it is recomputed); outside the blocks, the MLP
    tokeniser's and the head's inputs and ReLU outputs (``16 d + 6 D`` bytes in bf16, ``28 d
    + 8 D`` in float32) and the normalised batch (``4 D``, float32, one more position).
    """
    L, d, h = int(model["n_layer"]), int(model["n_embd"]), int(model["n_head"])
    D = int(model["patch_size"]) ** 2 * int(model.get("n_chan", 3))
    block = BLOCK_BYTES_PER_WIDTH[dtype] * d + 16 + 4 * h
    blocks = (L * 4 * d + block) if checkpointing else L * block
    outside = (16 * d + 6 * D) if dtype == "bfloat16" else (28 * d + 8 * D)
    tokens = micro_batch * seq_len
    return float(tokens * (blocks + outside) + micro_batch * (seq_len + 1) * 4 * D)


def _linear_weights(model: Mapping[str, Any]) -> tuple[int, int]:
    """Weights of the Linear layers inside the blocks and outside them (tokeniser, head)."""
    d = int(model["n_embd"])
    D = int(model["patch_size"]) ** 2 * int(model.get("n_chan", 3))
    return int(model["n_layer"]) * 12 * d * d, (D * d + d * d) + (4 * d * d + d * D)


def memory_estimate(model: Mapping[str, Any], micro_batch: int, *, parallel: str = "ddp",
                    dtype: str = "bfloat16", ranks: int = 1, checkpointing: bool = False,
                    pad_positions: bool = False) -> MemoryEstimate:
    """Peak memory of one GPU training ``model`` (``model_args``) as :mod:`astropt.train` does.

    Args:
        model: The size's shape (``n_layer``, ``n_head``, ``n_embd``, ``patch_size``,
            ``n_chan``, ``block_size``).
        micro_batch: Galaxies per forward pass on each rank (``train.micro_batch``).
        parallel: ``ddp`` (every rank holds the whole model, its gradients and AdamW's
            moments: 16 bytes per parameter) or ``fsdp`` (each rank a ``1 / ranks`` shard of
            them, plus the blocks gathered for compute: two blocks' weights with prefetch and
            one's gradients, and the unsharded root: tokeniser, positions and head).
        dtype: ``bfloat16`` (autocast: the bf16 weight casts each Linear saves for backward
            count too) or ``float32``.
        ranks: GPUs of the run, all nodes together (sharding divides by it).
        checkpointing: Activation checkpointing per block (``train.activation_checkpointing``).
        pad_positions: All ``block_size`` positions trained (``train.pad_positions``), not
            ``block_size - 1``.
    """
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    n = param_count(model, non_embedding=False)
    shard = max(1, ranks) if parallel == "fsdp" else 1
    in_blocks, outside = _linear_weights(model)
    d, L = int(model["n_embd"]), int(model["n_layer"])
    per_block = in_blocks // L + 2 * d  # and its two LayerNorms
    unsharded = 0.0
    if parallel == "fsdp" and shard > 1:
        root = n - L * per_block
        unsharded = 4.0 * (3 * per_block + 2 * root)
    copies = 2.0 * (outside + (0 if checkpointing else in_blocks)) if dtype == "bfloat16" else 0.0
    seq = int(model["block_size"]) - (0 if pad_positions else 1)
    return MemoryEstimate(
        weights=4.0 * n / shard, grads=4.0 * n / shard, optimizer=8.0 * n / shard, unsharded=unsharded,
        weight_copies=copies, activations=activation_bytes(model, micro_batch, seq, dtype, checkpointing),
    )


def memory_refusal(size: str, model: Mapping[str, Any], micro_batch: int, grad_accum: int, *, parallel: str,
                   dtype: str, ranks: int, checkpointing: bool, pad_positions: bool,
                   gpu_mem_gb: float) -> str | None:
    """Why a training run cannot fit its GPUs (None: it fits): its :func:`memory_estimate`
    exceeds :data:`USABLE_GPU_FRACTION` of ``gpu_mem_gb``. The message names the size and
    what would fit: a smaller micro-batch, FSDP, activation checkpointing, more GPUs."""
    limit = gpu_mem_gb * USABLE_GPU_FRACTION
    setting = dict(parallel=parallel, dtype=dtype, ranks=ranks, checkpointing=checkpointing,
                   pad_positions=pad_positions)

    def need(mb: int = micro_batch, **change) -> MemoryEstimate:
        """The estimate with some settings changed."""
        return memory_estimate(model, mb, **{**setting, **change})

    est = need()
    if est.total_gb <= limit:
        return None
    key = f"train.sizes.{size}"
    fixes = []
    batch = micro_batch * grad_accum  # the global batch, kept: a micro-batch must split it evenly over the ranks
    fitting = next((mb for mb in range(micro_batch - 1, 0, -1)
                    if batch % (mb * ranks) == 0 and need(mb).total_gb <= limit), None)
    if fitting:
        fixes.append(f"{key}.micro_batch: {fitting} with grad_accum: {batch // fitting} (the same global batch of "
                     f"{batch} galaxies; {need(fitting).total_gb:.1f} GB)")
    if parallel == "ddp" and ranks > 1 and need(parallel="fsdp").total_gb <= limit:
        fixes.append(f"{key}.parallel: fsdp ({need(parallel='fsdp').total_gb:.1f} GB)")
    if not checkpointing and need(checkpointing=True).total_gb <= limit:
        fixes.append(f"{key}.activation_checkpointing: true ({need(checkpointing=True).total_gb:.1f} GB)")
    if not fixes:  # more GPUs under FSDP (as many as split the accumulation), at this micro-batch or at 1
        more = next(((r, mb) for mb in dict.fromkeys((micro_batch, 1)) for r in (2 ** k for k in range(11))
                     if r > ranks and (batch // mb) % r == 0
                     and need(mb, parallel="fsdp", checkpointing=True, ranks=r).total_gb <= limit), None)
        fixes.append(
            f"{key}.parallel: fsdp with activation_checkpointing: true on {more[0]} GPUs (resources.train.sizes."
            f"{size}){f' and {key}.micro_batch: 1 with grad_accum: {batch}' if more[1] != micro_batch else ''}"
            if more else "a GPU with more memory: no number of GPUs under FSDP that splits the batch holds it")
    return (
        f"size {size} needs about {est.describe()} per GPU to train (micro_batch {micro_batch}, parallel "
        f"{parallel}, {dtype}, {ranks} GPU(s){', activation checkpointing' if checkpointing else ''}), more than "
        f"{USABLE_GPU_FRACTION:.0%} of the {gpu_mem_gb:g} GB declared in resources.train (gpu_mem_gb). "
        f"What fits: " + "; or ".join(fixes) + " (astropt.compute.memory_estimate)"
    )
