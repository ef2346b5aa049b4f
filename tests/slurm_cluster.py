"""A one-node SLURM cluster on this machine, from Debian's packages, for the SLURM tests.

munged, slurmctld and slurmd run as children of the test process (slurmctld and slurmd in the
foreground, so the PIDs started are the daemons' PIDs); teardown kills exactly those PIDs. The
slurm.conf goes to /etc/slurm/slurm.conf (a machine with another cluster's file there is
skipped, never changed; the test's own file is removed after): the
jobstep plugin drops every SLURM_* variable, SLURM_CONF included, before its `srun` inside a job,
so `srun` only finds the standard path. Without slurmdbd, job states come
from slurmctld alone: squeue sees finished jobs for MinJobAge seconds, which is what
profiles/slurm's `slurm-status-command: squeue` relies on.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch"]
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
# ≥ 3 × the plugin's init-seconds-before-status-checks, else it falls back to sacct.
MIN_JOB_AGE = 3600
PARTITION = "debug"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
CLUSTER_NAME = "ClusterName=clipbench-test"


def cannot_run() -> str | None:
    """Why this machine cannot host the cluster (None: it can, installing what is missing)."""
    if os.geteuid() != 0:
        return "SLURM test cluster: needs root (to install Debian's slurm/munge and run slurmd)"
    # A machine that is part of a real cluster keeps its configuration: never replace it.
    if SLURM_CONF.exists() and CLUSTER_NAME not in SLURM_CONF.read_text(errors="replace"):
        return f"SLURM test cluster: {SLURM_CONF} belongs to another cluster; not touching it"
    if os.environ.get("SLURM_CONF", str(SLURM_CONF)) != str(SLURM_CONF):
        return "SLURM test cluster: SLURM_CONF points to another cluster's configuration"
    pgrep = shutil.which("pgrep")
    if (
        pgrep
        and subprocess.run([pgrep, "-x", "slurmctld|slurmd"], capture_output=True).returncode == 0
    ):
        return "SLURM test cluster: slurmctld or slurmd already runs on this machine"
    if all(Path(p).exists() for p in DAEMONS):
        return None
    if shutil.which("apt-get") is None:
        return "SLURM test cluster: slurm/munge are not installed and there is no apt-get"
    return None


def install() -> None:
    """apt-get install the packages if a daemon is missing (apt-get update first if needed)."""
    if all(Path(p).exists() for p in DAEMONS):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode == 0:
        return
    for step in (["apt-get", "update"], cmd):  # a stale package list: update, then again
        done = subprocess.run(step, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed:\n{done.stdout}{done.stderr}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all bound at once, so the kernel cannot hand one out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


HOSTS = Path("/etc/hosts")


def node_name() -> tuple[str, str | None]:
    """`hostname -s`, and the /etc/hosts line to add (and remove after) where it does not
    resolve."""
    host = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(host)
        return host, None
    except OSError:
        return host, f"127.0.0.1 {host}  # clipbench SLURM test\n"


def real_memory_mb() -> int:
    """About 90% of MemTotal, in MB (slurmd refuses a node with less than its RealMemory)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 9 // 10 // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def slurm_conf(root: Path, host: str) -> str:
    ctld_port, slurmd_port = free_ports(2)
    return f"""\
{CLUSTER_NAME}
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MinJobAge={MIN_JOB_AGE}
ReturnToService=2
SlurmdTimeout=300
NodeName={host} CPUs={os.cpu_count()} RealMemory={real_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=True)
        return (
            subprocess.run(
                ["unmunge"], input=cred.stdout, capture_output=True, timeout=10
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass
class Cluster:
    root: Path
    node: str
    env: dict[str, str]
    pids: list[int] = field(default_factory=list)

    def run_unchecked(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)

    def run(self, *cmd: str) -> str:
        done = self.run_unchecked(*cmd)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (all states): id, name, comment, state, memory."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%j|%k|%T|%m|%C|%b")
        keys = ["id", "name", "comment", "state", "min_memory", "cpus", "gres"]
        return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines()]

    def active_jobs(self) -> list[str]:
        """Ids of jobs still pending, running or completing."""
        done = self.run_unchecked(
            "squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING", "--format=%i"
        )
        return done.stdout.split() if done.returncode == 0 else []

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.root.glob("*.log"))
        )


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait(what: str, check, timeout: float, cluster: Cluster | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} within {timeout:.0f} s\n{cluster.logs() if cluster else ''}")


def _start_munged(root: Path, procs: list[subprocess.Popen], made: list[Path]) -> None:
    """Start munged unless one answers; ``made`` gets the key if it is created here."""
    if munge_works():  # a munged already serves the default socket: use it
        return
    munge = pwd.getpwnam("munge")
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
        made.append(MUNGE_KEY)
    os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
    MUNGE_KEY.chmod(0o400)
    for d in (MUNGE_SOCKET.parent, Path("/var/lib/munge"), Path("/var/log/munge")):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, munge.pw_uid, munge.pw_gid)
    MUNGE_SOCKET.parent.chmod(0o755)
    cmd = [shutil.which("setpriv") or "setpriv", "--reuid=munge", "--regid=munge", "--init-groups"]
    procs.append(_start([*cmd, "/usr/sbin/munged", "--foreground"], root / "munged.log", {}))
    _wait("munged did not answer", munge_works, 30)


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[Cluster]:
    """Start munged (unless one runs), slurmctld and slurmd; yield once the node is idle."""
    install()
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool"):
        (root / d).mkdir(exist_ok=True)
    node, hosts_line = node_name()
    env = {**os.environ, "SLURM_CONF": str(SLURM_CONF)}
    cluster = Cluster(root, node, env)
    procs: list[subprocess.Popen] = []
    made: list[Path] = []  # files created here for the cluster, removed after
    try:
        if hosts_line:
            with open(HOSTS, "a") as hosts:
                hosts.write(hosts_line)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(slurm_conf(root, node))
        shutil.copy2(SLURM_CONF, root / "slurm.conf")
        _start_munged(root, procs, made)
        procs.append(_start(["/usr/sbin/slurmctld", "-D", "-i"], root / "slurmctld.out", env))
        procs.append(_start(["/usr/sbin/slurmd", "-D"], root / "slurmd.out", env))
        cluster.pids = [p.pid for p in procs]

        def idle() -> bool:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args} exited with {p.returncode}\n{cluster.logs()}")
            done = subprocess.run(
                ["sinfo", "--noheader", "--nodes", node, "--format=%T"],
                env=env,
                capture_output=True,
                text=True,
            )
            return done.returncode == 0 and done.stdout.strip() == "idle"

        _wait(f"node {node} did not become idle", idle, 60, cluster)
        yield cluster
    finally:
        if cluster.pids:  # jobs still queued or running on this cluster (its SLURM_CONF)
            subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
            # scancel only asks: let slurmd end the jobs' steps before it stops itself.
            with contextlib.suppress(RuntimeError):
                _wait("jobs did not end", lambda: not cluster.active_jobs(), 30)
        for p in reversed(procs):  # slurmd, slurmctld, then munged: by the PIDs started here
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        SLURM_CONF.unlink(missing_ok=True)
        for path in made:
            path.unlink(missing_ok=True)
        if hosts_line and hosts_line in HOSTS.read_text():
            HOSTS.write_text(HOSTS.read_text().replace(hosts_line, "", 1))
