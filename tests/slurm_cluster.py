"""A throwaway single-node SLURM cluster on localhost, for tests that run the workflow
through ``snakemake --profile tests/slurm/profile`` (snakemake-executor-plugin-slurm).

Use the session fixture in a test module::

    from slurm_cluster import slurm_cluster  # noqa: F401

    def test_something(slurm_cluster):
        ...  # sbatch / srun / squeue / scancel reach a real slurmctld + slurmd

What it does (see /work/shared/docs/slurm-notes.md for why each setting is there):

1. Installs Debian's ``slurmctld slurmd slurm-client munge`` with apt-get (about 15 s) when
   the binaries are missing and we are root with apt-get; otherwise the tests are skipped
   with a reason saying how to install them. ``ASTROPT_TEST_SLURM=0`` skips them outright.
2. Writes ``/etc/slurm/slurm.conf`` and ``/etc/slurm/gres.conf`` (the path is fixed: the
   jobstep plugin strips ``SLURM_CONF`` from jobs, so ``srun`` inside a job reads the
   default). Both start with :data:`MARK`; an existing ``slurm.conf`` without it belongs to
   someone else and the tests are skipped. One node (this host, ``nproc`` CPUs, ~80 % of
   the available memory, one fake GPU ``gpu:fakegpu:1`` backed by ``/dev/null``, so jobs
   get ``CUDA_VISIBLE_DEVICES=0``), one partition :data:`PARTITION`, no accounting; state,
   spool, pid and log files in a temporary directory.
3. Starts munged (unless one already answers), slurmctld and slurmd, and waits until the
   node is ``idle`` (a timeout raises with the daemons' logs).
4. On teardown cancels every job, stops the daemons it started by their pid files, and
   removes its config files and temporary directory (``ASTROPT_TEST_SLURM_KEEP=1`` keeps
   the directory, with the daemons' logs).

Only one such cluster can run on a machine (one /etc/slurm/slurm.conf): concurrent test
sessions queue on a lock file and skip after ``ASTROPT_TEST_SLURM_WAIT`` seconds (600).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MARK = "# astropt-test-cluster: written by tests/slurm_cluster.py; removed when its tests end"
SLURM_DIR = Path("/etc/slurm")
SLURM_CONF = SLURM_DIR / "slurm.conf"
GRES_CONF = SLURM_DIR / "gres.conf"
PARTITION = "astropt"  # tests/slurm/profile/config.yaml names it
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scancel", "scontrol")
LOCK_FILE = Path(tempfile.gettempdir()) / "astropt-slurm-test.lock"
MUNGE_RUN = Path("/run/munge")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ClusterUnavailable(Exception):
    """This machine cannot host the test cluster: the tests are skipped with this reason."""


# --------------------------------------------------------------------------- helpers


def clean_env(extra: dict | None = None) -> dict:
    """os.environ without SLURM_* / SBATCH_* / SRUN_* (a test run inside a SLURM job must not
    leak its allocation into the test cluster), with the sbin directories on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))}
    path = env.get("PATH", "")
    env["PATH"] = path + "".join(f":{p}" for p in SBIN_PATH.split(":") if p not in path.split(":"))
    env.update(extra or {})
    return env


def which(name: str) -> str | None:
    return shutil.which(name, path=clean_env()["PATH"])


def _run(cmd: list[str], timeout: float = 30, check: bool = False, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), check=check, **kw)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pids_named(name: str) -> set[int]:
    """Live (not zombie) processes called ``name``."""
    return {int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _comm(int(p.name)) == name and _alive(int(p.name))}


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc, children first listed last)."""
    parents: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int(p.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_pid(pid: int | None, expect: str, timeout: float = 10.0) -> None:
    """SIGTERM a daemon we started (checked by name: a pid file may be stale), then SIGKILL."""
    if pid is None or not _alive(pid) or _comm(pid) != expect:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"({err})"


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise ClusterUnavailable("no free TCP port for the SLURM daemons")


def _available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise ClusterUnavailable("cannot read MemAvailable from /proc/meminfo")


# --------------------------------------------------------------------------- install


def ensure_installed(timeout: float = 600) -> None:
    """Install the SLURM and munge packages with apt-get when a binary is missing.

    Raises:
        ClusterUnavailable: not installable here (not root, no apt-get, apt-get failed).
    """
    missing = [b for b in BINARIES if which(b) is None]
    if not missing:
        return
    how = f"`apt-get install {' '.join(PACKAGES)}` (Debian/Ubuntu, as root)"
    if os.geteuid() != 0 or which("apt-get") is None:
        raise ClusterUnavailable(
            f"SLURM is not installed (missing {', '.join(missing)}) and this is not a root shell with "
            f"apt-get: install it with {how}, then rerun"
        )
    env = clean_env({"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"})
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
               "-o", "DPkg::Lock::Timeout=300", *PACKAGES]
    # Keep the packages' init scripts from starting daemons (no systemd here): the standard
    # policy-rc.d "deny" file, only while installing and only when there is none.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\n# tests/slurm_cluster.py: no service starts while installing\nexit 101\n")
        policy.chmod(0o755)
    try:
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:  # a clean machine may have no package lists yet
            update = subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"],
                                    capture_output=True, text=True, env=env, timeout=timeout)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
            if proc.returncode != 0:
                raise ClusterUnavailable(
                    f"could not install SLURM with {' '.join(install)} (after apt-get update, rc "
                    f"{update.returncode}):\n{(update.stderr + proc.stdout + proc.stderr)[-2000:]}"
                )
    except subprocess.TimeoutExpired as err:
        raise ClusterUnavailable(f"installing SLURM took more than {timeout:.0f} s: {err}") from None
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    missing = [b for b in BINARIES if which(b) is None]
    if missing:
        raise ClusterUnavailable(f"apt-get installed {' '.join(PACKAGES)} but {', '.join(missing)} is still missing")


# --------------------------------------------------------------------------- cluster


@dataclass
class SlurmCluster:
    """One slurmctld + slurmd (+ munged) on this host; :meth:`start`, then :meth:`stop`."""

    root: Path
    partition: str = PARTITION
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    cpus: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))  # what `nproc` says
    mem_mb: int = 0
    gpus: int = 1
    ports: tuple[int, int] = (0, 0)
    _started_munged: bool = False
    _made_munge_run: bool = False
    _made_slurm_dir: bool = False
    _wrote_conf: bool = False
    _stepds_before: set[int] = field(default_factory=set)
    _stopped: bool = False

    # ---- paths
    @property
    def ctld_log(self) -> Path:
        return self.root / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.root / "slurmd.log"

    @property
    def ctld_pid(self) -> Path:
        return self.root / "slurmctld.pid"

    @property
    def slurmd_pid(self) -> Path:
        return self.root / "slurmd.pid"

    def logs(self, lines: int = 40) -> str:
        """The tails of the daemons' logs, for error messages."""
        parts = [f"--- {p} (last {lines} lines)\n{_tail(p, lines)}" for p in (self.ctld_log, self.slurmd_log)]
        if self._started_munged:
            parts.append(f"--- munged: {_tail(Path('/var/log/munge/munged.log'), 10)}")
        return "\n".join(parts)

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scontrol, ...) against this cluster."""
        return _run(list(cmd), timeout=timeout)

    # ---- config
    def config_text(self) -> str:
        r = self.root
        ctld_port, slurmd_port = self.ports
        return f"""{MARK}
# A single-node test cluster on localhost; state, spool, pid and log files in {r}.
ClusterName=astropt-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job takes all the node's memory and jobs run one at a time
DefMemPerCPU=500
ReturnToService=2
# finished jobs stay visible to squeue / scontrol for 2 hours (no accounting here): the
# tests list a run's jobs after it ends, which on a slow machine is more than SLURM's
# default 5 minutes after its first job ended
MinJobAge=7200
KillWait=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.ctld_pid}
SlurmdPidFile={self.slurmd_pid}
SlurmctldLogFile={self.ctld_log}
SlurmdLogFile={self.slurmd_log}
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:fakegpu:{self.gpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def gres_text(self) -> str:
        # A GPU gres without File= is dropped and the node goes INVAL: /dev/null stands in.
        return f"{MARK}\nAutoDetect=off\nNodeName={self.node} Name=gpu Type=fakegpu File=/dev/null\n"

    # ---- life cycle
    def start(self, timeout: float = 60) -> "SlurmCluster":
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        for daemon in ("slurmctld", "slurmd"):
            if _pids_named(daemon):
                raise ClusterUnavailable(f"a {daemon} is already running on this machine (pids {sorted(_pids_named(daemon))}): "
                                         "the tests start their own cluster")
        if SLURM_CONF.exists() and MARK not in SLURM_CONF.read_text(errors="replace").splitlines()[:1]:
            raise ClusterUnavailable(f"{SLURM_CONF} exists and was not written by these tests: not touching it")
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(exist_ok=True)
        self.mem_mb = max(500, int(_available_mb() * 0.8))
        self.ports = (_free_port(6817), _free_port(6818))
        self._stepds_before = _pids_named("slurmstepd")

        self._start_munged()
        self._made_slurm_dir = not SLURM_DIR.exists()
        SLURM_DIR.mkdir(parents=True, exist_ok=True)
        self._wrote_conf = True
        SLURM_CONF.write_text(self.config_text())
        GRES_CONF.write_text(self.gres_text())

        # Both daemonise; -c: no state from an earlier run.
        for cmd in (["slurmctld", "-c"], ["slurmd", "-N", self.node]):
            proc = _run(cmd, timeout=30)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr}\n{self.logs()}")
        t0, state, bad_since = time.monotonic(), "", None
        while time.monotonic() < t0 + timeout:
            for name, pid_file in (("slurmctld", self.ctld_pid), ("slurmd", self.slurmd_pid)):
                pid = _read_pid(pid_file)
                if pid is None or not _alive(pid):
                    time.sleep(1)  # a daemon writes its pid file just after forking
                    pid = _read_pid(pid_file)
                    if pid is None or not _alive(pid):
                        raise RuntimeError(f"{name} exited while starting:\n{self.logs()}")
            proc = self.run("sinfo", "-h", "-p", self.partition, "-o", "%T", timeout=10)
            state = proc.stdout.strip()
            if state == "idle":
                return
            if any(s in state for s in ("inval", "drain", "down", "fail")):
                bad_since = bad_since or time.monotonic()
                if time.monotonic() - bad_since > 10:
                    break  # such a node does not come up by itself
            time.sleep(0.5)
        node = self.run("scontrol", "show", "node", self.node).stdout
        raise RuntimeError(
            f"the test SLURM node is not idle after {timeout:.0f} s (sinfo says {state!r}):\n{node}\n{self.logs()}"
        )

    def _munge_ok(self) -> bool:
        try:
            cred = _run(["munge", "-n"], timeout=10)
            return cred.returncode == 0 and _run(["unmunge"], input=cred.stdout, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_munged(self) -> None:
        if self._munge_ok():
            return  # a munged already answers on the default socket: use it, leave it running
        if os.geteuid() != 0:
            raise ClusterUnavailable("munged is not running and starting it needs root")
        if not Path("/etc/munge/munge.key").exists():
            raise ClusterUnavailable("/etc/munge/munge.key is missing (reinstall the munge package or run mungekey --create)")
        self._made_munge_run = not MUNGE_RUN.exists()
        MUNGE_RUN.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(MUNGE_RUN, "munge", "munge")
        proc = _run(["runuser", "-u", "munge", "--", which("munged") or "munged"], timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"munged failed to start (rc {proc.returncode}): {proc.stderr}")
        self._started_munged = True
        for _ in range(50):
            if self._munge_ok():
                return
            time.sleep(0.1)
        raise RuntimeError("munged started but munge -n | unmunge fails")

    def cancel_jobs(self, wait: float = 45) -> list[str]:
        """Cancel every job of the partition still pending or running and wait (up to ``wait``
        seconds) until none is left; the jobs that were there (``"id state"``)."""
        try:
            alive = self.run("squeue", "-h", "-p", self.partition, "-t", "PD,R,CG", "-o", "%i %T", timeout=10).stdout.split("\n")
            alive = [line for line in alive if line.strip()]
            if alive:
                self.run("scancel", "--partition", self.partition, "--full", timeout=15)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    if not self.run("squeue", "-h", "-p", self.partition, "-t", "PD,R,CG", "-o", "%i", timeout=10).stdout.strip():
                        break
                    time.sleep(0.5)
            return alive
        except (OSError, subprocess.TimeoutExpired):
            return []

    def stop(self) -> None:
        """Cancel every job, stop what :meth:`start` started, remove its files. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        ctld = _read_pid(self.ctld_pid)
        if ctld is not None and _alive(ctld):
            self.cancel_jobs()
        _stop_pid(_read_pid(self.slurmd_pid), "slurmd")
        _stop_pid(ctld, "slurmctld")
        # Job step daemons that outlived slurmd (a job the scancel did not end): kill them
        # and whatever they still run.
        for stepd in _pids_named("slurmstepd") - self._stepds_before:
            for pid in [stepd, *_children(stepd)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if self._started_munged:
            _stop_pid(_read_pid(MUNGE_RUN / "munged.pid"), "munged")
            if self._made_munge_run:
                shutil.rmtree(MUNGE_RUN, ignore_errors=True)
        if self._wrote_conf:
            for path in (SLURM_CONF, GRES_CONF):
                try:
                    if path.read_text(errors="replace").startswith(MARK):
                        path.unlink()
                except OSError:
                    pass
            if self._made_slurm_dir:
                try:
                    SLURM_DIR.rmdir()
                except OSError:
                    pass
        if os.environ.get("ASTROPT_TEST_SLURM_KEEP") != "1":
            shutil.rmtree(self.root, ignore_errors=True)


def _clear_stale_files() -> None:
    """Config files of an earlier session that died without cleaning up (we hold the lock,
    so no live session owns them): stop the daemons they name, then remove them."""
    if not SLURM_CONF.exists():
        return
    text = SLURM_CONF.read_text(errors="replace")
    if not text.startswith(MARK):
        return
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("SlurmctldPidFile", "SlurmdPidFile"):
            _stop_pid(_read_pid(Path(value)), "slurmctld" if key == "SlurmctldPidFile" else "slurmd")
    for path in (SLURM_CONF, GRES_CONF):
        if path.exists() and path.read_text(errors="replace").startswith(MARK):
            path.unlink()


def _acquire_lock(wait: float):
    fh = open(LOCK_FILE, "a")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            if time.monotonic() >= deadline:
                fh.close()
                raise ClusterUnavailable(
                    f"another test session holds the local SLURM test cluster ({LOCK_FILE}) for more than {wait:.0f} s"
                ) from None
            time.sleep(1)


def start_cluster(root: Path | None = None, timeout: float = 60) -> tuple[SlurmCluster, object]:
    """Install if needed, take the machine-wide lock, start the cluster.

    Returns:
        The running cluster and the lock's file handle (close it after ``cluster.stop()``).

    Raises:
        ClusterUnavailable: the tests should be skipped, with this reason.
    """
    if os.environ.get("ASTROPT_TEST_SLURM", "") == "0":
        raise ClusterUnavailable("ASTROPT_TEST_SLURM=0")
    if not Path("/proc/meminfo").exists():
        raise ClusterUnavailable("needs Linux")
    ensure_installed()
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting slurmctld/slurmd and writing /etc/slurm/slurm.conf needs root")
    lock = _acquire_lock(float(os.environ.get("ASTROPT_TEST_SLURM_WAIT", "600")))
    try:
        _clear_stale_files()
        root = Path(root) if root else Path(tempfile.mkdtemp(prefix="astropt-slurm-"))
        cluster = SlurmCluster(root=root)
        atexit.register(cluster.stop)  # also when the session dies before the fixture's teardown
        cluster.start(timeout=timeout)
    except BaseException:
        lock.close()
        raise
    return cluster, lock


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster (:class:`SlurmCluster`) for the whole session;
    the tests using it are skipped when this machine cannot host one."""
    try:
        cluster, lock = start_cluster()
    except ClusterUnavailable as reason:
        pytest.skip(f"no local SLURM test cluster: {reason}")
    try:
        yield cluster
    finally:
        cluster.stop()
        lock.close()


if __name__ == "__main__":  # python tests/slurm_cluster.py: start, show, stop
    import sys

    t0 = time.monotonic()
    try:
        c, lk = start_cluster()
    except ClusterUnavailable as reason:
        sys.exit(f"skipped: {reason}")
    print(f"cluster up in {time.monotonic() - t0:.1f} s; node {c.node}, {c.cpus} CPUs, {c.mem_mb} MB, root {c.root}")
    print(c.run("sinfo").stdout)
    print(c.run("srun", "-p", c.partition, "--gpus=1", "sh", "-c", "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES").stdout)
    if len(sys.argv) > 1 and sys.argv[1] == "--hold":
        input("press enter to stop the cluster ")
    c.stop()
    lk.close()
    print(f"stopped; {SLURM_CONF} exists: {SLURM_CONF.exists()}")
