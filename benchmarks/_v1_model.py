"""An AstroPT v1-style GPT and training step, the reference of ``train_throughput.py``.

Written from ``shared/docs/astropt-facts.md`` (own code, v1's structure and settings), not
from ``astropt.model``, so that timing the two side by side compares this project's step
with what v1 ran:

* model: MLP tokeniser (Linear(D, d), ReLU, Linear(d, d), ReLU), learned absolute positions,
  pre-LayerNorm blocks without biases (fused qkv Linear and output projection; MLP d -> 4d ->
  d with the tanh-approximated GELU written out element by element, as v1's ``new_gelu`` was),
  final LayerNorm, MLP head (d -> 2d -> d -> D) and the Huber loss. Attention calls
  ``F.scaled_dot_product_attention`` (causal), which v1, like nanoGPT, used whenever PyTorch
  provides it (>= 2.0); a hand-written masked softmax would make the reference slower than
  v1 was. Parameter names equal v1's state-dict names (and therefore this project's), so one
  model's weights load into the other;
* optimiser: AdamW, betas from the caller, weight decay on the >= 2-D parameters only, the
  fused kernel on CUDA;
* step (:func:`v1_train_step`): micro-batches of 8 galaxies, gradient accumulation to the
  global batch, bf16 autocast on CUDA; within each micro-step the forward runs first, then
  the *next* micro-batch is copied to the device with a plain ``.to(device)`` from pinned
  memory (v1's "prefetch" line: a blocking copy, so the host waits for the forward before it
  can launch the backward), then the backward; gradient clipping, optimiser step,
  ``zero_grad(set_to_none=True)``. v1 wrapped the model in ``torch.compile`` (the caller
  does). v1's ``GradScaler`` was disabled under bf16 (a no-op) and is left out.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["V1_MICRO_BATCH", "V1GPT", "v1_optimizer", "v1_patch_normalise", "v1_train_step"]

V1_MICRO_BATCH = 8
"""Galaxies per forward pass in the paper's runs (all sizes up to 830M)."""


def v1_gelu(x: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU written out: ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class V1LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias (eps 1e-5)."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class V1Attention(nn.Module):
    """Causal multi-head self-attention: one qkv Linear, SDPA, an output Linear; no biases."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head, self.n_embd = n_head, n_embd
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class V1MLP(nn.Module):
    """d -> 4d -> d with :func:`v1_gelu`; no biases."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(v1_gelu(self.c_fc(x)))


class V1Block(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = V1LayerNorm(n_embd)
        self.attn = V1Attention(n_embd, n_head)
        self.ln_2 = V1LayerNorm(n_embd)
        self.mlp = V1MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class V1GPT(nn.Module):
    """AstroPT v1's GPT over patch vectors (dropout 0, as in the paper).

    Args:
        n_layer, n_head, n_embd: Transformer shape.
        block_size: Number of learned positions.
        input_dim: Values per patch vector (768 for 16x16 px x 3 bands).
    """

    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, input_dim: int):
        super().__init__()
        d, D = n_embd, input_dim
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Sequential(nn.Linear(D, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU()),
                wpe=nn.Embedding(block_size, d),
                h=nn.ModuleList([V1Block(d, n_head) for _ in range(n_layer)]),
                ln_f=V1LayerNorm(d),
            )
        )
        self.lm_head = nn.Sequential(
            nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, D)
        )
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def get_num_params(self) -> int:
        """All parameters minus the position embedding (the paper's count)."""
        return sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted next patches ``(B, T, D)`` and their Huber loss to ``targets``."""
        pos = torch.arange(x.shape[1], dtype=torch.long, device=x.device)
        h = self.transformer.wte(x) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            h = block(h)
        pred = self.lm_head(self.transformer.ln_f(h))
        return pred, F.huber_loss(pred, targets)


def v1_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                 device_type: str) -> torch.optim.AdamW:
    """AdamW with weight decay on the >= 2-D parameters only; fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **extra)


def v1_patch_normalise(tokens: torch.Tensor) -> torch.Tensor:
    """v1's per-patch standardisation on the host: ``(x - mean) / (std + 1e-8)`` over each
    patch's values, torch's default (unbiased) std; float32 out."""
    x = tokens.to(torch.float32)
    return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + 1e-8)


def v1_train_step(model: nn.Module, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                  batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                  current: tuple[torch.Tensor, torch.Tensor], accum: int, device: torch.device,
                  bf16: bool, grad_clip: float, loss_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step the v1 way (see the module docstring).

    Args:
        model: The (possibly compiled) :class:`V1GPT`.
        params: Its parameters, for gradient clipping.
        optimizer: From :func:`v1_optimizer`.
        batches: Host micro-batches ``(X, Y)`` (pinned on CUDA), as v1's DataLoader yielded them.
        current: The micro-batch already on the device (fetched during the previous step).
        accum: Micro-batches per optimiser step.
        device: The training device.
        bf16: Run forward passes under bf16 autocast.
        grad_clip: Gradient-norm clip (0: none).
        loss_out: A 0-d device tensor the step's mean loss is added to (for the loss-curve
            check; one extra tiny kernel per micro-step, no host synchronisation).

    Returns:
        The next micro-batch, already on the device, to pass as ``current`` next time.
    """
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    x, y = current
    for _ in range(accum):
        with autocast:
            _, loss = model(x, y)
            loss = loss / accum
        hx, hy = next(batches)
        x, y = hx.to(device), hy.to(device)  # blocking copy, as v1's ``X.to(device)``
        loss.backward()
        loss_out += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return x, y
