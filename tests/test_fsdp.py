"""Training under FSDP (``train.parallel: fsdp``), activation checkpointing and padded positions:
each learns what one plain process learns; an FSDP run killed outright resumes to the same end.

Two gloo ranks on the CPU stand in for GPUs (the collectives are the same).

Run: python -m pytest tests/test_fsdp.py -q
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from astropt.checkpoint import load_checkpoint, load_model
from astropt.config import spec_to_json
from astropt.train import train

from conftest import ROOT
from slurm_cluster import _children as descendants  # every process below a pid, from /proc

CURVE = ["step", "tokens_seen", "train_loss", "val_loss", "lr"]


def _single(spec, cfg, micro_tokens, out):
    return train(spec, cfg, micro_tokens / "train", micro_tokens / "validation", out, log=lambda *a: None)


def _ranks(spec, cfg, micro_tokens, out, prelude="", wait=True):
    """``astropt.train`` on 2 gloo ranks under torchrun."""
    code = prelude + "import sys, astropt.train as T\nsys.exit(T.main(sys.argv[1:]))\n"
    script = out.parent / f"{out.name}_main.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(code)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--spec", json.dumps(spec_to_json(spec, cfg)), "--train-tokens", str(micro_tokens / "train"),
           "--val-tokens", str(micro_tokens / "validation"), "--out-dir", str(out), "--threads", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if not wait:
        return proc
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process(micro_tokens, tiny_spec, tiny_train, tmp_path):
    """FSDP (2 ranks, each block sharded, activation checkpointing on) follows the plain
    single-process loss curve at the same global batch, and its ckpt.pt is the v1 layout:
    the whole model, gathered, loading with load_model and equal to the single run's."""
    cfg = dataclasses.replace(tiny_train, steps=20, grad_accum=2, micro_batch=8, checkpoint_interval=10)
    single = _single(tiny_spec, cfg, micro_tokens, tmp_path / "single")
    fsdp_cfg = dataclasses.replace(cfg, parallel="fsdp", activation_checkpointing=True)
    log = _ranks(tiny_spec, fsdp_cfg, micro_tokens, tmp_path / "fsdp")
    assert "x 2 rank(s) (FSDP), activation checkpointing" in log
    sharded = pd.read_csv(tmp_path / "fsdp" / "metrics.csv")
    np.testing.assert_allclose(sharded["train_loss"], single["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(sharded["val_loss"].dropna(), single["val_loss"].dropna(), rtol=1e-4)
    ckpt = load_checkpoint(tmp_path / "fsdp" / "ckpt.pt")
    assert set(ckpt) == {"model", "model_args", "iter_num", "best_val_loss", "config"}
    assert all(type(t) is torch.Tensor for t in ckpt["model"].values())  # plain tensors, not shards
    ours, theirs = load_model(tmp_path / "fsdp" / "ckpt.pt"), load_model(tmp_path / "single" / "ckpt.pt")
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)


_SLOW_STEPS = """
import time
import astropt.train as _T
_real = _T.lr_at
def _slow(*args):  # 0.2 s per step, so the test can kill the run between checkpoints
    time.sleep(0.2)
    return _real(*args)
_T.lr_at = _slow
"""


@pytest.mark.slow
def test_fsdp_run_killed_outright_resumes_to_the_same_end(micro_tokens, tiny_spec, tiny_train, tmp_path):
    """SIGKILL to every process of a 2-rank FSDP run after its second checkpoint: last.pt is
    intact (the gathered state), and the rerun resumes from it (the sharded optimiser state
    put back on each rank) and ends on the uninterrupted single-process curve."""
    cfg = dataclasses.replace(tiny_train, steps=40, grad_accum=2, micro_batch=8, checkpoint_interval=5,
                              log_interval=5, eval_interval=20)
    ref = _single(tiny_spec, cfg, micro_tokens, tmp_path / "ref")
    fsdp_cfg = dataclasses.replace(cfg, parallel="fsdp")
    out = tmp_path / "run"
    proc = _ranks(tiny_spec, fsdp_cfg, micro_tokens, out, prelude=_SLOW_STEPS, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if load_checkpoint(out / "last.pt")["iter_num"] >= 10:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    for pid in [proc.pid, *descendants(proc.pid)]:  # the whole job, as SLURM kills it: agent and ranks
        os.kill(pid, signal.SIGKILL)
    log, _ = proc.communicate(timeout=60)
    state = load_checkpoint(out / "last.pt")
    assert 10 <= state["iter_num"] < 40 and state["iter_num"] % 5 == 0, log[-3000:]
    assert not (out / "ckpt.pt").exists()
    assert isinstance(next(iter(state["optimizer"]["state"])), str)  # FSDP's layout: state by parameter name
    rerun = _ranks(tiny_spec, fsdp_cfg, micro_tokens, out)
    assert f"resuming 20K from {out / 'last.pt'} at step {state['iter_num']}/40" in rerun
    resumed = pd.read_csv(out / "metrics.csv")
    pd.testing.assert_frame_equal(resumed[CURVE], ref[CURVE], rtol=1e-4)


def test_checkpointing_and_padded_positions_learn_the_same(micro_tokens, tiny_spec, tiny_train, tmp_path):
    """Activation checkpointing recomputes the same activations; feeding all block_size
    positions with the last one's loss left out gives the same loss (causal attention): both
    follow the plain run's curve."""
    cfg = dataclasses.replace(tiny_train, steps=15)
    plain = _single(tiny_spec, cfg, micro_tokens, tmp_path / "plain")
    ckpt = _single(tiny_spec, dataclasses.replace(cfg, activation_checkpointing=True), micro_tokens, tmp_path / "ac")
    padded = _single(tiny_spec, dataclasses.replace(cfg, pad_positions=True), micro_tokens, tmp_path / "pad")
    pd.testing.assert_frame_equal(ckpt[CURVE], plain[CURVE], rtol=1e-6)
    pd.testing.assert_frame_equal(padded[CURVE], plain[CURVE], rtol=1e-4)  # other matmul shapes: other rounding
    assert padded["tokens_seen"].iloc[-1] == 15 * 16 * 15  # trained positions: still block_size - 1


def test_padded_positions_give_the_same_loss_and_gradients(tiny_spec):
    """One batch: the padded forward's loss and every gradient equal the unpadded ones."""
    from astropt.model import GPT
    from astropt.train import step_loss

    torch.manual_seed(0)
    model = GPT(tiny_spec.model)
    x = torch.randn(4, tiny_spec.model.block_size, tiny_spec.model.input_dim)
    loss = step_loss(model, x)
    loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    padded = step_loss(model, x, pad_positions=True)
    padded.backward()
    torch.testing.assert_close(padded, loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], msg=name)


@pytest.mark.slow
def test_fsdp_with_torch_compile(micro_tokens, tiny_spec, tiny_train, tmp_path):
    """config/paper.yaml compiles (train.compile): the compiled FSDP model (2 ranks) learns what
    one plain process learns."""
    cfg = dataclasses.replace(tiny_train, steps=10, grad_accum=2, micro_batch=8, eval_interval=5)
    single = _single(tiny_spec, cfg, micro_tokens, tmp_path / "single")
    _ranks(tiny_spec, dataclasses.replace(cfg, parallel="fsdp", compile=True), micro_tokens, tmp_path / "compiled")
    compiled = pd.read_csv(tmp_path / "compiled" / "metrics.csv")
    np.testing.assert_allclose(compiled["train_loss"], single["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(compiled["val_loss"].dropna(), single["val_loss"].dropna(), rtol=1e-4)
