"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd started without
systemd from a generated ``slurm.conf`` in a private folder, stopped at the end.

Facts this relies on (Debian's slurm 22.05 and munge 0.5 packages):

* munged refuses a socket folder unless every folder above it is world-executable, so the cluster
  lives in its own 0755 folder under the system temp folder, not in pytest's 0700 ``tmp_path``;
* ``proctrack/pgid`` (not ``linuxproc``) kills a job's background children;
* a requeued job waits for the credential expiry (120 s by default): ``cred_expire=10``;
* the scheduler looks at pending jobs every ``sched_interval`` (60 s by default): 1 s here, so a
  requeued task starts as soon as it may;
* ``sacct`` needs slurmdbd; ``jobcomp/filetxt`` + ``sacct -c`` reads finished jobs without it;
* every client command needs ``SLURM_CONF``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    """A running one-node cluster; ``env`` is what client commands (and jobs) need."""

    def __init__(self, root: Path, cpus: int = 8) -> None:
        self.root = root
        self.cpus = cpus
        self.conf = root / "slurm.conf"
        self.jobcomp = root / "jobcomp.txt"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(mode=0o755, exist_ok=True)
            os.chmod(r / d, 0o755)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = r / "munge" / "munge.socket"
        self._spawn(
            "munged",
            [
                _exe("munged"),
                "--foreground",
                "--force",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={r / 'munge' / 'munged.pid'}",
                f"--seed-file={r / 'munge' / 'seed'}",
                f"--log-file={r / 'log' / 'munged.log'}",
            ],
        )
        self._wait("munged's socket", sock.exists, 10)
        user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
        self.conf.write_text(
            f"""\
ClusterName=ablatortest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=30
MinJobAge=600
NodeName=node0 NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=node0 Default=YES MaxTime=INFINITE State=UP
"""
        )
        self._spawn("slurmctld", [_exe("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_exe("slurmd"), "-D", "-N", "node0", "-f", str(self.conf)])
        self._wait("the node to be idle in sinfo", self._idle, 60)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 -- kept open for the daemon's life
        self.procs.append(
            (
                name,
                subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
                ),
            )
        )
        log.close()

    def _idle(self) -> bool:
        for name, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.logs()}")
        out = self.run("sinfo", "-h", "-o", "%T", check=False)
        return out.strip() == "idle"

    def _wait(self, what: str, cond: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test Slurm cluster did not come up ({what}):\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        out = []
        for p in sorted((self.root / "log").glob("*")):
            text = p.read_text(errors="replace")
            out.append(f"--- {p.name}\n{text[-3000:]}")
        return "\n".join(out)

    def run(self, *argv: str, check: bool = True, input: str | None = None) -> str:
        """A client command (sbatch, squeue, scontrol, ...) against this cluster; its stdout."""
        out = subprocess.run(
            [_exe(argv[0]), *argv[1:]], env=self.env, capture_output=True, text=True, input=input, timeout=60
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr}")
        return out.stdout

    def job_states(self, job: str) -> dict[str, str]:
        """``<array>_<task>`` -> state of every task of array job ``job`` still known to slurmctld."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-j", job, "-o", "%i %T", check=False)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def task_field(self, task: str, field: str) -> str:
        """One field (``JobState``, ``Restarts``, ``ExitCode``) of ``scontrol show job``."""
        out = self.run("scontrol", "show", "job", "-o", task)
        for item in out.split():
            key, _, value = item.partition("=")
            if key == field:
                return value
        raise AssertionError(f"no {field} in {out}")

    def cancel_all(self) -> None:
        self.run("scancel", "--user", str(os.getuid()), check=False)
        with contextlib.suppress(RuntimeError):
            self._wait("all jobs to end", lambda: not self.run("squeue", "-h", check=False).strip(), 60)

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


@contextlib.contextmanager
def running_cluster() -> Iterator[SlurmCluster]:
    """A cluster in a fresh world-traversable folder, stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="ablator-slurm-"))
    os.chmod(root, 0o755)
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.cancel_all()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
