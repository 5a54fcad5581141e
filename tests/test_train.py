"""Training: schedule, data order, outputs, resume after interruption or a stop signal, DDP.

Run: python -m pytest tests/test_train.py -q
"""

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import astropt.train as T
from astropt.checkpoint import load_checkpoint, load_model
from astropt.config import spec_to_json
from astropt.record import RunRecord
from astropt.shards import load_tokens
from astropt.train import METRIC_COLUMNS, NonFiniteLossError, lr_at, sample_indices, train

from conftest import ROOT


def _run(spec, cfg, micro_tokens, out):
    return train(spec, cfg, micro_tokens / "train", micro_tokens / "validation", out, log=lambda *a: None)


def test_lr_schedule(tiny_train):
    cfg = dataclasses.replace(tiny_train, steps=100, warmup_steps=10, decay_steps=90, min_lr_ratio=0.1)
    lrs = [lr_at(s, 1.0, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert max(lrs) <= 1.0 and lrs[10] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 40 / 80)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay
    assert lrs[90] == lrs[99] == pytest.approx(0.1)


def test_sample_order_is_a_permutation_per_epoch_and_rank_disjoint():
    n, seed = 100, 3
    epoch0 = sample_indices(0, n, n, seed)
    assert sorted(epoch0) == list(range(n))
    assert not np.array_equal(epoch0, sample_indices(n, n, n, seed))  # next epoch reshuffled
    # a step of global batch 4 x 8 split over 2 ranks (m = k * world + rank) is disjoint
    micro, accum, world, step = 8, 4, 2, 5
    per_rank = [
        np.concatenate([sample_indices((step * accum + k * world + r) * micro, micro, n, seed) for k in range(accum // world)])
        for r in range(world)
    ]
    assert not set(per_rank[0]) & set(per_rank[1])
    np.testing.assert_array_equal(sample_indices(250, 10, n, seed), sample_indices(250, 10, n, seed))


def test_train_writes_outputs_and_learns(micro_tokens, tiny_spec, tiny_train, tmp_path):
    lines = []
    metrics = train(tiny_spec, tiny_train, micro_tokens / "train", micro_tokens / "validation", tmp_path,
                    log=lambda *a: lines.append(" ".join(map(str, a))))
    # before the first step, the run's cost: the FLOPs the metrics will count, and an estimate
    plan = next(i for i, line in enumerate(lines) if "plan:" in line)
    assert f"{metrics['flops'].iloc[-1]:.3g} FLOPs for {40 * 16 * 15:,} tokens" in lines[plan]
    assert "CPU thread(s)" in lines[plan]
    assert not any("step " in line for line in lines[:plan])
    assert list(pd.read_csv(tmp_path / "metrics.csv").columns) == METRIC_COLUMNS
    val = metrics["val_loss"].dropna().to_numpy()
    assert len(val) == 4 and val[-1] < val[0]
    assert metrics["tokens_seen"].iloc[-1] == 40 * 16 * 15
    assert (metrics["flops"] > 0).all() and metrics["elapsed_s"].is_monotonic_increasing
    side = json.loads((tmp_path / "ckpt.json").read_text())
    assert side["final_val_loss"] == pytest.approx(val[-1]) and side["params"] > 0
    assert list(side) == ["size", "params", "steps", "tokens_seen", "flops", "final_val_loss", "best_val_loss",
                          "elapsed_s", "gpu_hours", "peak_mem_gb", "tokens_per_s", "mfu", "device", "ranks", "seed",
                          "provenance", "model_args", "lr", "train"]  # the layout of every earlier ckpt.json
    record = RunRecord.read(tmp_path / "ckpt.json")
    assert (tmp_path / "ckpt.json").read_text() == record.to_json()
    assert record.steps == 40 and record.tokens_seen == metrics["tokens_seen"].iloc[-1] and record.mfu is None
    assert record.flops == metrics["flops"].iloc[-1] and record.seed == tiny_train.seed and record.ranks == 1
    model = load_model(tmp_path / "ckpt.pt")
    assert model.config == tiny_spec.model
    assert "optimizer" not in load_checkpoint(tmp_path / "ckpt.pt")  # final checkpoint is lean
    assert not (tmp_path / "last.pt").exists()  # a finished run leaves nothing to resume


def test_interrupted_run_resumes_to_the_same_result(micro_tokens, tiny_spec, tiny_train, tmp_path, monkeypatch):
    ref = _run(tiny_spec, tiny_train, micro_tokens, tmp_path / "ref")

    saves = {"n": 0}
    real_save = T.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        saves["n"] += 1
        if saves["n"] == 2:  # checkpoint at step 20 written, then the job is killed
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_spec, tiny_train, micro_tokens, tmp_path / "cut")
    assert not (tmp_path / "cut" / "ckpt.pt").exists()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iter_num"] == 20
    monkeypatch.setattr(T, "save_checkpoint", real_save)

    resumed = _run(tiny_spec, tiny_train, micro_tokens, tmp_path / "cut")
    cols = ["step", "tokens_seen", "train_loss", "val_loss", "lr"]
    pd.testing.assert_frame_equal(resumed[cols], ref[cols], rtol=1e-6)


def test_stop_signal_checkpoints_at_the_step_and_resumes_exactly(micro_tokens, tiny_spec, tiny_train, tmp_path, monkeypatch):
    """SIGUSR1 (SLURM's warning before a time limit) between checkpoints: state saved at the
    next step boundary, including the half-filled loss window, and the resumed run's
    metrics equal an uninterrupted run's."""
    ref = _run(tiny_spec, tiny_train, micro_tokens, tmp_path / "ref")
    before = signal.getsignal(signal.SIGUSR1)
    real = T.lr_at

    def signal_during_step_13(step, *args):
        if step == 13:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(step, *args)

    monkeypatch.setattr(T, "lr_at", signal_during_step_13)
    with pytest.raises(T.Checkpointed, match="SIGUSR1 at step 14"):
        _run(tiny_spec, tiny_train, micro_tokens, tmp_path / "cut")
    assert signal.getsignal(signal.SIGUSR1) == before  # handler put back
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert state["iter_num"] == 14 and state["window"]["steps"] == 4  # steps 11-14 not logged yet
    monkeypatch.setattr(T, "lr_at", real)
    resumed = _run(tiny_spec, tiny_train, micro_tokens, tmp_path / "cut")
    cols = ["step", "tokens_seen", "train_loss", "val_loss", "lr"]
    pd.testing.assert_frame_equal(resumed[cols], ref[cols], rtol=1e-6)


_SLOW_TRAIN = """
import sys, time
import astropt.train as T
real = T.lr_at
def slow(*args):  # ~30 ms per step, so the test can hit a random one
    time.sleep(0.03)
    return real(*args)
T.lr_at = slow
sys.exit(T.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGUSR1", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_killed_or_signalled_process_resumes(micro_tokens, tiny_spec, tiny_train, tmp_path, sig):
    """A training process hit at a random step: SIGKILL (no warning) loses at most the steps
    since the last checkpoint, SIGUSR1 / SIGTERM checkpoint first and exit with status 75;
    either way last.pt is intact and the rerun ends where an uninterrupted run ends."""
    cfg = dataclasses.replace(tiny_train, steps=60, checkpoint_interval=5, log_interval=5, eval_interval=20)
    ref = _run(tiny_spec, cfg, micro_tokens, tmp_path / "ref")
    out = tmp_path / "run"
    # the splits' manifests, as the train rule passes them
    args = ["--spec", json.dumps(spec_to_json(tiny_spec, cfg)), "--train-tokens", str(micro_tokens / "train" / "index.parquet"),
            "--val-tokens", str(micro_tokens / "validation" / "index.parquet"), "--out-dir", str(out), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_TRAIN, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600  # a failsafe: on a busy machine torch's import alone can take minutes
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random(sig).uniform(0.0, 0.8))  # somewhere in steps ~5-35
    proc.send_signal(getattr(signal, sig))
    log, _ = proc.communicate(timeout=120)
    state = load_checkpoint(out / "last.pt")  # never corrupt
    assert 5 <= state["iter_num"] < 60, log
    assert not (out / "ckpt.pt").exists()
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL and state["iter_num"] % 5 == 0
    else:
        assert proc.returncode == T.EXIT_CHECKPOINTED, log
        assert f"{sig}: checkpointed at step {state['iter_num']}/60" in log
    rerun = subprocess.run([sys.executable, "-m", "astropt.train", *args], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resuming 20K from {out / 'last.pt'} at step {state['iter_num']}/60" in rerun.stdout
    history = (out / "history.log").read_text()  # both attempts' lines
    assert "training 20K" in history and f"at step {state['iter_num']}/60" in history
    resumed = pd.read_csv(out / "metrics.csv")
    cols = ["step", "tokens_seen", "train_loss", "val_loss", "lr"]
    pd.testing.assert_frame_equal(resumed[cols], ref[cols], rtol=1e-6)


def _interrupt_after_first_checkpoint(monkeypatch):
    real_save = T.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_checkpoint", save_then_die)
    return lambda: monkeypatch.setattr(T, "save_checkpoint", real_save)


def test_changed_config_starts_afresh_and_keeps_old_state(micro_tokens, tiny_spec, tiny_train, tmp_path, monkeypatch):
    restore = _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_spec, tiny_train, micro_tokens, tmp_path)
    restore()
    metrics = _run(tiny_spec, dataclasses.replace(tiny_train, steps=20), micro_tokens, tmp_path)
    assert (tmp_path / "last.pt.old").exists()
    assert metrics["step"].iloc[0] == 5 and metrics["step"].iloc[-1] == 20


def test_changed_data_starts_afresh(micro_tokens, tiny_spec, tiny_train, tmp_path, monkeypatch):
    """Same settings, other galaxies (e.g. the data were regenerated): no stale resume."""
    import shutil

    other = tmp_path / "tokens"
    shutil.copytree(micro_tokens / "train", other / "train")
    shutil.copytree(micro_tokens / "validation", other / "validation")
    restore = _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_spec, tiny_train, other, tmp_path / "run")
    restore()
    idx = pd.read_parquet(other / "train" / "index.parquet")
    idx["id"] = idx["id"] + "x"  # other ids, same shape
    idx.to_parquet(other / "train" / "index.parquet")
    metrics = _run(tiny_spec, tiny_train, other, tmp_path / "run")
    assert (tmp_path / "run" / "last.pt.old").exists() and metrics["step"].iloc[0] == 5


def test_unreadable_resume_state_is_set_aside(micro_tokens, tiny_spec, tiny_train, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    metrics = _run(tiny_spec, dataclasses.replace(tiny_train, steps=10), micro_tokens, tmp_path)
    assert (tmp_path / "last.pt.corrupt").exists() and metrics["step"].iloc[-1] == 10


def test_non_finite_loss_stops_with_the_step(micro_tokens, tiny_spec, tiny_train, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = T.normalise

    def poisoned(x, mode):  # training batches from step 13 on carry a NaN
        out = real(x, mode)
        if torch.is_grad_enabled():  # training, not evaluation
            calls["n"] += 1
            if calls["n"] > 12:
                out[0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(T, "normalise", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"at step 13 ") as err:
        _run(tiny_spec, dataclasses.replace(tiny_train, log_interval=1), micro_tokens, tmp_path)
    assert "last.pt" in str(err.value)
    assert not (tmp_path / "ckpt.pt").exists()
    assert load_checkpoint(tmp_path / "last.pt")["iter_num"] == 10  # the last good state is kept


def test_a_split_is_its_folder_or_its_manifest(micro_tokens, tiny_spec, tiny_train, tmp_path):
    by_path = [load_tokens(micro_tokens / "train" / "index.parquet"), load_tokens(str(micro_tokens / "train"))]
    assert [len(s) for s in by_path] == [len(load_tokens(micro_tokens / "train"))] * 2
    cfg = dataclasses.replace(tiny_train, steps=5, eval_interval=5)
    by_folder = _run(tiny_spec, cfg, micro_tokens, tmp_path / "folder")
    by_manifest = train(tiny_spec, cfg, micro_tokens / "train" / "index.parquet",
                        micro_tokens / "validation" / "index.parquet", tmp_path / "manifest", log=lambda *a: None)
    cols = ["step", "tokens_seen", "train_loss", "val_loss", "lr"]
    pd.testing.assert_frame_equal(by_manifest[cols], by_folder[cols], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="missing index.parquet"):
        train(tiny_spec, cfg, tmp_path / "nowhere" / "index.parquet", micro_tokens / "validation", tmp_path / "x",
              log=lambda *a: None)


def test_token_shape_mismatch_is_explained(micro_tokens, tiny_spec, tiny_train, tmp_path):
    spec = dataclasses.replace(tiny_spec, model=dataclasses.replace(tiny_spec.model, patch_size=4, block_size=64))
    with pytest.raises(ValueError, match="re-run the tokenise rule"):
        _run(spec, tiny_train, micro_tokens, tmp_path)


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process(micro_tokens, tiny_spec, tiny_train, tmp_path):
    """DDP (gloo, 2 CPU ranks) follows the single-process loss curve at the same global batch."""
    cfg = dataclasses.replace(tiny_train, steps=20, grad_accum=2, micro_batch=8)
    single = _run(tiny_spec, cfg, micro_tokens, tmp_path / "single")
    spec_json = json.dumps(spec_to_json(tiny_spec, cfg))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "astropt.train", "--spec", spec_json, "--train-tokens", str(micro_tokens / "train"),
        "--val-tokens", str(micro_tokens / "validation"), "--out-dir", str(tmp_path / "ddp"),
    ]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = pd.read_csv(tmp_path / "ddp" / "metrics.csv")
    np.testing.assert_allclose(ddp["train_loss"], single["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(ddp["val_loss"].dropna(), single["val_loss"].dropna(), rtol=1e-4)


def test_gpu_plan_names_the_estimated_memory_per_gpu():
    """On GPUs the plan line carries memory_estimate's figure, to hold against peak_mem_gb."""
    from types import SimpleNamespace

    from astropt.compute import PRESETS, memory_estimate

    run = SimpleNamespace(spec=T.SizeSpec("309M", PRESETS["309M"], 3e-4), dist=T.Dist(0, 0, 8),
                          cfg=T.TrainConfig(steps=30000, micro_batch=20, grad_accum=16, parallel="fsdp"),
                          global_batch=320, peak=989e12, device=torch.device("cuda"), sharded=True, use_bf16=True)
    expected = memory_estimate(PRESETS["309M"].to_dict(), 20, parallel="fsdp", ranks=8).total_gb
    assert T._plan(run).endswith(f"on 8 GPU(s) at an assumed 40% MFU of 989 TFLOP/s each; about {expected:.1f} GB per GPU")
