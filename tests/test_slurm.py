"""The workflow on a real SLURM cluster: slurmctld + slurmd + munged on localhost, started
and stopped by these tests (tests/slurm_cluster.py), driven by
``snakemake --profile tests/slurm/profile`` (snakemake-executor-plugin-slurm).

Run: python -m pytest tests/test_slurm.py -v      (root on Debian: installs SLURM if needed;
skipped elsewhere, with the reason; ASTROPT_TEST_SLURM=0 skips them). Two slow tests, about
4.5 minutes on 2 CPU cores: the micro workflow ~3 min (11 jobs in 6 DAG levels, ~30 s a level
with the plugin's status checks), the signal test ~1.3 min after it.

How a rule runs under the executor plugin (seen with ``ps`` inside a job here)::

    slurmstepd [JOB.batch]  /bin/sh slurm_script          <- the batch step
        python -m snakemake ... (jobstep executor)          snakemake #1
            /bin/sh -c srun -n1 --gpus=1 ... python -m snakemake ...
                srun
    slurmstepd [JOB.0]      python -m snakemake ...        <- step 0, srun's one task: snakemake #2
        python -m astropt.train ...                          the rule's shell, `exec`ed

Which processes a signal reaches (``scancel --signal=SIG JOB``, measured here; sbatch's
``--signal=SIG@T`` takes the same path when T seconds are left):

* default (no ``-b``/``--full``; sbatch ``--signal=SIG@T``): every process of every step but
  the batch step, i.e. snakemake #2 and the trainer. Snakemake has no SIGUSR1 handler, so
  **USR1 kills snakemake #2** at once ("srun: error: task 0: User defined signal 1"); the
  step's task is gone, and on a cluster with proctrack/cgroup the trainer is then SIGKILLed
  with it, before or while it checkpoints (with this cluster's proctrack/linuxproc it is
  orphaned and survives, which would hide the problem). **TERM** puts snakemake #2 in its
  graceful mode (it waits for the running job), the trainer checkpoints and exits 75,
  snakemake #2 exits 1, the SLURM job FAILS and the main Snakemake retries it.
* ``-b`` (sbatch ``--signal=B:SIG@T``): only the batch shell (``kill(pid)``). /bin/sh dies
  on USR1, the job ends, and SLURM ends its steps as at a time limit: SIGTERM, then SIGKILL
  after KillWait (30 s by default), not after the T seconds asked for.
* ``--full``: the batch step's process group and every step: both snakemakes die on USR1.

So the form that reaches the trainer and keeps Snakemake in charge is ``--signal=TERM@T``
(no ``B:``) for jobs whose rule runs inside the plugin's ``srun`` step (every job but
``mpi`` ones; the train rule asks for it, see ``stop_signal`` in workflow/rules/common.smk).
The signal test sends TERM with ``scancel --signal=TERM``: the same delivery, at a known
moment (sbatch's warning comes up to 30 s early, at slurmctld's periodic check).
Snakemake deletes a rule's log before each attempt: the interrupted attempt's lines are in
results/models/{size}/seed{seed}/history.log, which the trainer appends to.
"""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from slurm_cluster import clean_env, slurm_cluster  # noqa: F401  (session fixture)
from test_workflow import _scratch_workflow

PROFILE = ROOT / "tests" / "slurm" / "profile"
SIZE = "30K"


def _config(work: Path, name: str, **train) -> Path:
    """The micro config with one size, whose training asks SLURM for one (fake) GPU."""
    config = yaml.safe_load((ROOT / "tests/data/micro.yaml").read_text())
    config["sizes"], config["umap"]["sizes"] = [SIZE], [SIZE]  # tokens.jobs kept: 2 train jobs
    config["train"]["seeds"] = [0]  # one training run (the micro config trains two per size)
    config["train"]["budgets"] = None  # and one token budget (the micro config's grid has two)
    # The train rule asks sbatch for --signal=TERM@signal_lead_s (a warning that long before
    # the time limit, checked every 30 s): at the minimum, 30 s, it never fires in these
    # 10-minute jobs; the preemption test sends its signal itself.
    config["train"].update({"signal_lead_s": 30, **train})
    config["resources"] = {
        # small requests: the test node has ~80 % of the free memory (maybe 2-3 GB in CI)
        "default": {"mem_mb": 300, "runtime": 10},
        # a per-size entry takes the schema's defaults (4000 MB, 60 min) for keys it leaves
        # out, not train.default's: repeat them
        "train": {"sizes": {SIZE: {"gpus": 1, "cpus": 1, "mem_mb": 600, "runtime": 10}}},
        "embed": {"default": {"mem_mb": 600, "runtime": 10}},
    }
    path = work / name
    path.write_text(yaml.safe_dump(config))
    return path


def _snakemake_cmd(config: Path, *targets: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--profile", str(PROFILE), f"--configfile={config}", *targets]


def _env() -> dict:
    # Jobs inherit it (sbatch --export=ALL): the scratch copy finds astropt through it.
    return clean_env({"PYTHONPATH": str(ROOT)})


def _jobs(cluster, rule: str) -> list[dict]:
    """This session's SLURM jobs of a rule, oldest first (finished jobs stay listed for
    MinJobAge = 2 h): id, state, exit code, the GPUs SLURM allocated (JOB_GRES)."""
    out = cluster.run("squeue", "-h", "-t", "all", "-p", cluster.partition, "-o", "%i|%k|%T").stdout
    rows = []
    for line in out.splitlines():
        jobid, comment, state = line.split("|")
        if comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_wildcards_"):
            show = cluster.run("scontrol", "-d", "show", "job", jobid).stdout
            field = {k: re.search(rf"\b{k}=(\S*)", show) for k in ("JOB_GRES", "ExitCode", "RunTime")}
            field = {k: m.group(1) if m else "" for k, m in field.items()}
            rows.append({"id": int(jobid), "state": state, "gres": field["JOB_GRES"],
                         "exit": field["ExitCode"], "runtime": field["RunTime"]})
    return sorted(rows, key=lambda r: r["id"])


@pytest.fixture(scope="session")
def slurm_plugin():
    # session scope, listed first: checked before slurm_cluster installs SLURM
    pytest.importorskip("snakemake_executor_plugin_slurm")


@pytest.fixture(scope="module")
def slurm_work(slurm_plugin, tmp_path_factory, slurm_cluster):  # noqa: F811
    if slurm_cluster.mem_mb < 1500:
        pytest.skip(f"the test SLURM node has only {slurm_cluster.mem_mb} MB")
    return _scratch_workflow(tmp_path_factory.mktemp("slurm"))


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(request):
    """After a SLURM test: a run that failed or timed out may leave jobs behind (a killed
    Snakemake does not scancel them); cancel them so they do not slow what follows."""
    yield
    if "slurm_cluster" in request.fixturenames:
        left = request.getfixturevalue("slurm_cluster").cancel_jobs()
        if left:
            print(f"cancelled SLURM jobs left behind: {left}")


@pytest.mark.slow
def test_micro_workflow_on_slurm_with_a_gpu_job(slurm_work, slurm_cluster):  # noqa: F811
    """download -> tokenise (2 train jobs) -> token_index -> train (1 fake GPU) -> embed ->
    probe, every job through sbatch."""
    work, cluster = slurm_work, slurm_cluster
    config = _config(work, "slurm_micro.yaml")
    t0 = time.monotonic()
    # --retries 0: a failing job fails the test at once (the profile retries once)
    try:
        proc = subprocess.run(_snakemake_cmd(config, f"results/probes/{SIZE}.csv", "--retries", "0"), cwd=work,
                              env=_env(), capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as err:
        text = [x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (err.stdout, err.stderr)]
        out = text[0][-4000:] + text[1][-4000:]
        raise AssertionError(f"snakemake still running after {err.timeout:.0f} s:\n{out}{cluster.logs()}") from None
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + cluster.logs()
    print(f"micro workflow on SLURM: {took:.0f} s")

    probes = pd.read_csv(work / f"results/probes/{SIZE}.csv")
    assert {"mag_r_desi", "redshift"} <= set(probes["property"])
    assert pd.read_csv(work / f"results/models/{SIZE}/seed0/metrics.csv")["step"].iloc[-1] == 30
    assert len(pd.read_parquet(work / f"results/embeddings/{SIZE}/seed0.parquet")) == 256

    # SLURM ran every job (11 of them) and gave the training job the node's fake GPU.
    train = _jobs(cluster, "train")
    assert [(j["state"], j["gres"]) for j in train] == [("COMPLETED", "gpu:fakegpu:1")], train
    # the executor names the folder by the job's wildcards: size, budget ("" here) and seed
    slurm_log = (work / f".snakemake/slurm_logs/rule_train/{SIZE}__0/{train[0]['id']}.log").read_text()
    assert "slurm_extra=--signal=TERM@30" in slurm_log  # the warning before the time limit
    runtimes = [f"train {train[0]['runtime']}"]
    for rule, count in (("download", 1), ("tokenise", 4), ("token_index", 3), ("embed", 1), ("probe", 1),
                        ("probe_size", 1)):
        jobs = _jobs(cluster, rule)
        assert [(j["state"], j["gres"]) for j in jobs] == [("COMPLETED", "(null)")] * count, (rule, jobs)
        runtimes.append(f"{rule} {' '.join(j['runtime'] for j in jobs)}")
    print("SLURM job run times:", ", ".join(runtimes))
    # The job saw CUDA_VISIBLE_DEVICES=0, but this PyTorch has no CUDA: training ran on the CPU.
    assert "device cpu" in (work / f"logs/train/{SIZE}/seed0.log").read_text()


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float, seen: list[str]) -> re.Match:
    """Poll a log (which Snakemake may delete and recreate) until ``pattern`` matches;
    every text read is appended to ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        match = re.search(pattern, text)
        if match:
            return match
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {path} after {timeout:.0f} s (snakemake rc {proc.poll()}):\n{''.join(seen)[-3000:]}")


def _stop(proc: subprocess.Popen, out) -> str:
    """Stop Snakemake if it still runs (Ctrl-C: it scancels its jobs); its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out.seek(0)
    return out.read()


@pytest.mark.slow
def test_signal_checkpoints_and_the_retry_resumes(slurm_work, slurm_cluster, tmp_path):  # noqa: F811
    """SLURM's warning signal before a time limit (or a preemption's SIGTERM) reaches the
    trainer inside the job, which writes last.pt and exits 75; the job fails, Snakemake
    retries it (profile `retries: 1`) and the retry resumes from last.pt."""
    work, cluster = slurm_work, slurm_cluster
    # ~6 s of training here (6-8 ms a step): signalled at step ~20, the retry trains the rest.
    # Short, so that the retried job (~25 s with Snakemake's start-up) ends before the
    # plugin's status check 30 s after its submission (checks come 10, 30, 60 s after the
    # one that saw a job end, with the profile's slurm-init-seconds-before-status-checks: 10).
    steps = 800
    # checkpoint_interval > steps: the only resumable state is the one the signal makes
    config = _config(work, "slurm_signal.yaml", steps=steps, checkpoint_interval=10 * steps,
                     log_interval=20, eval_interval=400, warmup_steps=10)
    log, history = work / f"logs/train/{SIZE}/seed0.log", work / f"results/models/{SIZE}/seed0/history.log"
    out = open(tmp_path / "snakemake.out", "w+")
    t0 = time.monotonic()
    proc = subprocess.Popen(_snakemake_cmd(config, f"results/models/{SIZE}/seed0/ckpt.pt"), cwd=work, env=_env(),
                            stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        seen: list[str] = []
        _wait_for(log, rf"step \d+/{steps}", proc, timeout=300, seen=seen)
        running = [j["id"] for j in _jobs(cluster, "train") if j["state"] == "RUNNING"]
        assert len(running) == 1, running
        jobid = running[0]
        t_signal = time.monotonic()
        # What sbatch --signal=TERM@T does T seconds before the time limit: every step of
        # the job, not the batch shell (see the module docstring for USR1, -b and --full).
        sent = cluster.run("scancel", "--signal=TERM", str(jobid))
        assert sent.returncode == 0, sent.stderr
        # history.log: every attempt's lines (Snakemake deletes the rule's log before a retry)
        stopped = _wait_for(history, rf"SIGTERM: checkpointed at step (\d+)/{steps}", proc, timeout=120, seen=seen)
        at_step = int(stopped.group(1))
        proc.wait(timeout=600)
        output = _stop(proc, out)
    except (AssertionError, subprocess.TimeoutExpired) as err:
        raise AssertionError(f"{err}\n--- snakemake (last lines):\n{_stop(proc, out)[-4000:]}") from None
    finally:
        if proc.poll() is None:  # interrupted
            _stop(proc, out)
        out.close()
    took = time.monotonic() - t0
    assert proc.returncode == 0, output[-5000:] + cluster.logs()
    print(f"signal test: {took:.0f} s in all, {time.monotonic() - t_signal:.0f} s after the signal; stopped at step {at_step}")

    assert 0 < at_step < steps
    # The first job failed (exit 75 -> its snakemake exits 1), the second completed; both
    # had the GPU.
    train = _jobs(cluster, "train")[-2:]
    assert [(j["id"], j["state"], j["exit"]) for j in train] == [
        (jobid, "FAILED", "1:0"), (train[1]["id"], "COMPLETED", "0:0")], train
    assert all(j["gres"] == "gpu:fakegpu:1" for j in train), train
    resumed = rf"resuming {SIZE} from \S*last.pt at step {at_step}/{steps}"
    final_log = log.read_text()  # the retry's only: Snakemake deleted the first attempt's
    assert re.search(resumed, final_log) and "checkpointed" not in final_log, final_log[-3000:]
    lines = history.read_text()
    assert re.search(rf"checkpointed at step {at_step}/{steps}[^\n]*\n.*{resumed}", lines, re.S), lines[-3000:]
    metrics = pd.read_csv(work / f"results/models/{SIZE}/seed0/metrics.csv")
    assert metrics["step"].iloc[-1] == steps and metrics["step"].is_monotonic_increasing
    assert metrics["step"].is_unique
    assert not (work / f"results/models/{SIZE}/seed0/last.pt").exists()  # removed by the finished run


# --------------------------------------------------------------------------- the helper itself (fast)


def test_cluster_helper_skips_with_a_reason_without_root_or_apt(monkeypatch):
    import slurm_cluster as sc

    monkeypatch.setattr(sc, "which", lambda name: None)
    monkeypatch.setattr(sc.os, "geteuid", lambda: 1000)
    with pytest.raises(sc.ClusterUnavailable, match="apt-get install slurmctld slurmd slurm-client munge"):
        sc.ensure_installed()


def test_cluster_helper_leaves_a_foreign_slurm_conf_alone(tmp_path, monkeypatch):
    import slurm_cluster as sc

    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=production\n")
    monkeypatch.setattr(sc, "SLURM_CONF", conf)
    monkeypatch.setattr(sc, "_pids_named", lambda name: set())
    cluster = sc.SlurmCluster(root=tmp_path / "cluster")
    with pytest.raises(sc.ClusterUnavailable, match="not written by these tests"):
        cluster._start(timeout=1)
    assert conf.read_text() == "ClusterName=production\n"
    sc._clear_stale_files()  # not ours: kept
    assert conf.exists()


def test_cluster_config_has_one_node_with_a_fake_gpu(tmp_path):
    import slurm_cluster as sc

    cluster = sc.SlurmCluster(root=tmp_path, node="n1", cpus=2, mem_mb=1234, ports=(7001, 7002))
    conf = cluster.config_text()
    assert conf.startswith(sc.MARK + "\n") and cluster.gres_text().startswith(sc.MARK + "\n")
    assert "NodeName=n1 NodeAddr=127.0.0.1 CPUs=2 RealMemory=1234 Gres=gpu:fakegpu:1" in conf
    assert f"PartitionName={sc.PARTITION} Nodes=n1 Default=YES" in conf
    assert f"StateSaveLocation={tmp_path}/state" in conf and "SlurmctldPort=7001" in conf
    assert "Name=gpu Type=fakegpu File=/dev/null" in cluster.gres_text()
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_partition"] == sc.PARTITION
