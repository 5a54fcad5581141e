"""The AstroPT GPT: a causal transformer that predicts the next image patch.

Follows AstroPT v1 (tag v1.0.0, arXiv:2405.14930), which in turn follows
Karpathy's nanoGPT ``model.py``. Differences from a text GPT:

- tokens are continuous patch vectors (``patch_size**2 * n_chan`` values, 768
  for 16x16x3), embedded by a small MLP ("MLP tokeniser") instead of a lookup;
- the head is an MLP back to a patch vector, not a vocabulary;
- the loss is the Huber loss to the true next patch.

Parameter and state-dict names match v1 checkpoints exactly, so released
weights load with :func:`astropt.checkpoint.load_model`.

Example::

    import torch
    from astropt.model import GPT, PRESETS

    model = GPT(PRESETS["1M"])
    x = torch.randn(2, 1023, model.config.input_dim)  # (B, T, D) patch vectors
    pred, loss = model(x[:, :-1], targets=x[:, 1:])   # next-patch prediction
    emb = model.forward_features(x[:, :64]).mean(1)   # (B, n_embd) embedding
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# The shapes live in the torch-free astropt.compute (the workflow reads them on every parse).
from astropt.compute import PRESET_LR, PRESETS, GPTConfig

__all__ = ["GPTConfig", "GPT", "Block", "CausalSelfAttention", "MLP", "PRESETS", "PRESET_LR"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused query/key/value projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, sequence length, n_embd
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network d -> 4d -> d with tanh-approximated GELU."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """AstroPT v1: a GPT over image-patch vectors.

    Args:
        config: Model shape; see :class:`GPTConfig`.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        d, D = config.n_embd, config.input_dim
        self.transformer = nn.ModuleDict(
            dict(
                # "MLP tokeniser": patch vector -> embedding (these Linears keep biases, as in v1)
                wte=nn.Sequential(nn.Linear(D, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU()),
                wpe=nn.Embedding(config.block_size, d),  # learned absolute positions
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(d, bias=config.bias),
            )
        )
        # head: embedding -> predicted next patch vector
        self.lm_head = nn.Sequential(
            nn.Linear(d, 2 * d),
            nn.ReLU(),
            nn.Linear(2 * d, d),
            nn.ReLU(),
            nn.Linear(d, D),
        )

        #: Recompute each block's activations in backward instead of keeping them
        #: (``train.activation_checkpointing``); set by the trainer, training only.
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        # GPT-2 scaled init of the residual projections: keeps the residual stream's
        # variance from growing with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (works on the meta device).

        Args:
            non_embedding: Leave out the position embedding, as the paper's counts do.
                The MLP tokeniser is counted: it is a real part of the network.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), PaLM / nanoGPT style.

        ``6 N + 12 L H Q T`` with N = :meth:`get_num_params`, L layers and
        H * Q = n_embd (heads times head size), T = ``seq_len``.
        """
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"Input must be (B, T, D) patch vectors, got shape {tuple(x.shape)}")
        _, T, D = x.shape
        if D != self.config.input_dim:
            raise ValueError(
                f"Input patch size ({D}) doesn't match model ({self.config.input_dim} = "
                f"patch_size {self.config.patch_size}**2 * n_chan {self.config.n_chan})"
            )
        if T > self.config.block_size:
            raise ValueError(
                f"Input sequence length ({T}) exceeds model block_size ({self.config.block_size})"
            )

    def forward_features(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Run the trunk: tokeniser, positions and blocks, without the final LayerNorm.

        This is the representation the paper's embeddings are taken from (``layer=-1``).

        Args:
            x: Patch vectors, shape (B, T, input_dim).
            layer: Block whose output is returned: 0 the first, -1 the last (Python indexing);
                later blocks are not run.

        Returns:
            Output of that transformer block, shape (B, T, n_embd).

        Raises:
            ValueError: If ``layer`` is outside ``-n_layer .. n_layer - 1``.
        """
        self._check_input(x)
        n_layer = len(self.transformer.h)
        if not -n_layer <= layer < n_layer:
            raise ValueError(f"layer {layer} is out of range for a model of {n_layer} blocks")
        last = layer % n_layer
        T = x.shape[1]
        pos = torch.arange(T, dtype=torch.long, device=x.device)  # (T,)
        tok_emb = self.transformer.wte(x)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C)
        h = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for block in self.transformer.h[: last + 1]:
            if self.activation_checkpointing and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return h  # (B, T, C)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and head: (B, T, n_embd) -> (B, T, input_dim)."""
        return self.lm_head(self.transformer.ln_f(h))

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predict the next patch at every position.

        Args:
            x: Patch vectors, shape (B, T, input_dim), T <= block_size.
            targets: The true next patches, same shape as ``x``; if given, the
                Huber loss (delta 1, mean over all values) is returned.

        Returns:
            ``(pred, loss)``: predictions (B, T, input_dim) and the loss, or None
            when no targets are given.
        """
        pred = self.forward_head(self.forward_features(x))  # (B, T, D)
        loss = None
        if targets is not None:
            if targets.shape != pred.shape:
                raise ValueError(
                    f"Targets shape {tuple(targets.shape)} doesn't match predictions "
                    f"{tuple(pred.shape)}"
                )
            loss = F.huber_loss(pred.float(), targets.float())
        return pred, loss

    def configure_optimizer(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str,
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on the >= 2-D parameters (matrices, embeddings) only.

        Biases and LayerNorm weights are not decayed, as in nanoGPT.

        Args:
            weight_decay: Decoupled weight decay for the 2-D parameters.
            learning_rate: Initial learning rate (the trainer's schedule sets it each step).
            betas: AdamW betas; the paper used (0.9, 0.95).
            device_type: "cuda" selects the fused AdamW kernel; elsewhere the multi-tensor
                (foreach) one, which on a CPU thread saves the per-parameter Python loop
                (about 4 % of the smallest default model's step).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device_type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)
