"""The multi-rank launcher (astropt/launch.py): host lists, torchrun arguments, exit statuses.

Run: python -m pytest tests/test_launch.py -q
"""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from astropt.launch import expand_hostlist, torchrun_args
from astropt.config import spec_to_json
from astropt.train import EXIT_CHECKPOINTED

from conftest import ROOT


def test_expand_hostlist_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the module's own expansion
    assert expand_hostlist("gpu[01-03,07],login1,n[9-10]") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1", "n9", "n10"]
    assert expand_hostlist("node17") == ["node17"]


def test_torchrun_args_single_and_multi_node():
    assert torchrun_args(1, 4, {}) == ["--standalone", "--nproc_per_node=4"]
    env = {"SLURM_JOB_NODELIST": "gpu[08-09]", "SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_ID": "123456"}
    os.environ.pop("SLURM_CONF", None)
    args = torchrun_args(2, 8, env)
    assert args[:3] == ["--nnodes=2", "--node_rank=1", "--nproc_per_node=8"]
    assert "--rdzv_backend=c10d" in args and "--rdzv_id=123456" in args
    assert any(a.startswith("--rdzv_endpoint=gpu08:") for a in args)  # the first host of the job
    with pytest.raises(RuntimeError, match="inside an srun step"):
        torchrun_args(2, 8, {})
    with pytest.raises(RuntimeError, match="3 nodes but the config asks for 2"):
        torchrun_args(2, 8, {**env, "SLURM_NNODES": "3"})


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ranks_stop_together_on_one_ranks_signal(micro_tokens, tiny_spec, tiny_train, tmp_path, parallel):
    """Two gloo ranks under astropt.launch, DDP or FSDP; SIGUSR1 reaches one rank only: both stop
    at the same step (under FSDP gathering the state together), the launcher exits 75, and the
    rerun resumes to the uninterrupted result."""
    import dataclasses

    cfg = dataclasses.replace(tiny_train, steps=400, grad_accum=2, micro_batch=8, log_interval=5,
                              checkpoint_interval=100, eval_interval=100, parallel=parallel)
    out = tmp_path / parallel
    cmd = [sys.executable, "-m", "astropt.launch", "--nproc-per-node=2", "--", "-m", "astropt.train",
           "--spec", json.dumps(spec_to_json(tiny_spec, cfg)),
           "--train-tokens", str(micro_tokens / "train" / "index.parquet"),  # the manifests, as the rule passes them
           "--val-tokens", str(micro_tokens / "validation" / "index.parquet"), "--out-dir", str(out), "--threads", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log_path = tmp_path / "launch.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.time() + 600  # a failsafe: on a busy machine the ranks can take minutes to start
    while time.time() < deadline and "step 10/400" not in log_path.read_text():  # training is under way
        time.sleep(0.1)
    # The ranks: torchrun starts them in sessions of their own; their command lines name `out`.
    ps = subprocess.run(["pgrep", "-f", "--", f"astropt[.]train .*{out}"], capture_output=True, text=True)
    ranks = sorted(int(p) for p in ps.stdout.split() if int(p) != proc.pid)
    assert len(ranks) == 2, (ps.stdout, log_path.read_text()[-2000:])
    os.kill(ranks[-1], signal.SIGUSR1)
    proc.wait(timeout=180)
    log = log_path.read_text()
    assert proc.returncode == EXIT_CHECKPOINTED, log[-3000:]
    assert "SIGUSR1" in log or "stop signal (on another rank)" in log
    import torch

    step = torch.load(out / "last.pt", weights_only=True)["iter_num"]
    assert 0 < step < 400
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"at step {step}/400" in rerun.stdout
    assert pd.read_csv(out / "metrics.csv")["step"].iloc[-1] == 400
