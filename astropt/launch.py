"""Start the DDP ranks of one training job: one node (torchrun --standalone) or several (one
``srun`` task per node, each running this launcher).

The ``train`` rule runs, for a size with ``gpus`` G > 1 on one node::

    python -m astropt.launch --nproc-per-node G -- -m astropt.train --spec ... --out-dir ...

and for ``nodes`` N > 1 (``gpus`` G per node)::

    srun --ntasks=N --ntasks-per-node=1 python -m astropt.launch --nnodes N --nproc-per-node G -- ...

Inside the ``srun`` step each task finds its place from SLURM's variables: the node count
(``SLURM_NNODES``), its node (``SLURM_NODEID``) and the rendezvous host, the first host of
``SLURM_JOB_NODELIST`` (expanded with ``scontrol show hostnames``, or by this module when
``scontrol`` is absent), with a port derived from the job id so that two jobs sharing a node
do not collide. The Snakemake SLURM executor strips ``SLURM_*`` variables from the rule's
shell, which is why this is computed here, inside the step, and not in the rule.

torchrun's agent runs in this process with SIGUSR1 ignored: SLURM's ``--signal=USR1@T``
warning reaches every process of the step, and the training ranks (which handle it by
checkpointing and exiting, see :mod:`astropt.train`) must outlive the agent's default
reaction, which would be to die at once.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys

RDZV_PORT_BASE = 29500


def expand_hostlist(hostlist: str) -> list[str]:
    """``"gpu[01-03,07],login1"`` -> ``["gpu01", "gpu02", "gpu03", "gpu07", "login1"]``.

    Uses ``scontrol show hostnames`` when available (it knows every SLURM syntax); otherwise
    expands the common forms: comma-separated hosts, each with at most one bracket of
    numbers and ranges (zero padding kept).
    """
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True, check=True, timeout=30)
        hosts = out.stdout.split()
        if hosts:
            return hosts
    except (OSError, subprocess.SubprocessError):
        pass
    hosts = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", hostlist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{str(n).zfill(len(lo))}{suffix}")
    if not hosts:
        raise ValueError(f"cannot expand the SLURM host list {hostlist!r}")
    return hosts


def torchrun_args(nnodes: int, nproc_per_node: int, env: dict[str, str]) -> list[str]:
    """torchrun's own arguments for this node (``env``: the step's environment)."""
    if nnodes <= 1:
        return ["--standalone", f"--nproc_per_node={nproc_per_node}"]
    missing = [k for k in ("SLURM_JOB_NODELIST", "SLURM_NODEID") if k not in env]
    if missing:
        raise RuntimeError(
            f"a {nnodes}-node launch must run inside an srun step (one task per node); "
            f"{', '.join(missing)} not set"
        )
    if int(env.get("SLURM_NNODES", nnodes)) != nnodes:
        raise RuntimeError(f"the job has {env['SLURM_NNODES']} nodes but the config asks for {nnodes}")
    host = expand_hostlist(env["SLURM_JOB_NODELIST"])[0]
    port = RDZV_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % 10000
    return [
        f"--nnodes={nnodes}",
        f"--node_rank={env['SLURM_NODEID']}",
        f"--nproc_per_node={nproc_per_node}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={host}:{port}",
        f"--rdzv_id={env.get('SLURM_JOB_ID', 'astropt')}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nnodes", type=int, default=1, help="nodes of the job (one srun task each)")
    p.add_argument("--nproc-per-node", type=int, required=True, help="ranks (GPUs) per node")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the training module and its arguments")
    args = p.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if not rest:
        p.error("give the program to run after --, e.g. -- -m astropt.train --spec ...")
    cmd = torchrun_args(args.nnodes, args.nproc_per_node, dict(os.environ)) + rest
    print(f"astropt.launch: torchrun {' '.join(cmd[: len(cmd) - len(rest)])} on {os.uname().nodename}", flush=True)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the ranks handle it (and re-enable it for themselves)
    from torch.distributed.run import main as torchrun

    try:
        torchrun(cmd)
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # ChildFailedError: a rank failed, or checkpointed and exited
        codes = {getattr(f, "exitcode", None) for f in getattr(exc, "failures", {}).values()}
        print(f"astropt.launch: {type(exc).__name__}: rank exit codes {sorted(map(str, codes))}", file=sys.stderr, flush=True)
        from astropt.train import EXIT_CHECKPOINTED

        # One rank exits 75 after the checkpoint (written before any rank leaves), and the
        # agent may terminate the others while they exit: still "checkpointed, retry me".
        checkpointed = EXIT_CHECKPOINTED in codes and all(c == EXIT_CHECKPOINTED or (c or 0) < 0 for c in codes)
        return EXIT_CHECKPOINTED if checkpointed else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
