"""What every engine shares: the agent's options, its command line, the shell wrapper that maps
the agent's exit to the engine's restart decision, and the wheel that carries ablator to nodes.

**How ablator gets to a node.** The name ``ablator`` on the Python package index belongs to
another project, so no node ever installs ablator from the index by name. Slurm nodes run the submitting
Python (a virtual environment on the cluster's shared file system); Kubernetes pods and SkyPilot
VMs ``pip install`` a wheel built here from the very ablator that renders the artifact
(:func:`build_wheel`), shipped inside the artifact (a ConfigMap) or uploaded by SkyPilot
(``file_mounts``). Either way the artifact records :func:`package_digest` and every node checks
it before starting the agent: a node that would run different ablator code refuses (exit 1).
The user's own code comes from the store's ``--code`` snapshot, which the agent fetches itself.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import shlex
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ablator.errors import AblatorError, ConfigError

#: Seconds an engine must allow between SIGTERM and SIGKILL beyond the agent's own grace: the
#: agent kills trials that did not stop in time, writes their releases and a last heartbeat.
DRAIN_MARGIN_S = 15

#: The status the wrapper exits with after a signal made the agent drain (it released its trials
#: and exited 0 although the experiment is not known to be done): 128 + SIGTERM, what a shell
#: reports for a process ended by SIGTERM, so engines treat it as "stopped, not finished".
DRAINED_EXIT = 143


class EngineError(AblatorError):
    """The engine's own command is missing or refused the artifact."""


def default_name(store: str) -> str:
    """A job name from the store's last path element: ``s3://b/studies/Digits_1`` -> ``ablator-digits-1``."""
    tail = store.rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-z0-9]+", "-", tail.lower()).strip("-")[:40].strip("-")
    return f"ablator-{slug}" if slug else "ablator"


class AgentOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What every engine needs to start ``agents`` copies of the agent on ``store``.

    ``gpus`` and ``cpus`` are per agent (one Slurm task, one pod, one VM); ``slots`` is the number
    of CPU trials one agent runs at once (CPU agents only); GPU agents run ``slots_per_gpu``
    trials on each GPU they see.
    """

    store: str
    agents: int = 1
    name: str = "ablator"
    gpus: int = 0
    cpus: int = 1
    memory: str | None = None
    slots: int | None = None
    slots_per_gpu: int = 1
    grace_seconds: float = 25.0
    agent_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def drain_seconds(self) -> int:
        """Seconds from SIGTERM until the agent has exited: the engine's kill delay."""
        return math.ceil(self.grace_seconds) + DRAIN_MARGIN_S

    @property
    def cpu_slots(self) -> int:
        """CPU trials one CPU agent runs at once."""
        return self.slots or 1


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate(opts: AgentOptions, *, option: str = "--") -> None:
    """Every problem of ``opts`` at once, as one :class:`ConfigError`."""
    problems = []
    if not opts.store:
        problems.append("STORE is empty: give the store URL the experiment was launched into")
    if opts.agents < 1:
        problems.append(f"{option}agents {opts.agents}: must be at least 1")
    if opts.gpus < 0:
        problems.append(f"{option}gpus {opts.gpus}: must be 0 (CPU) or more")
    if opts.cpus < 1:
        problems.append(f"{option}cpus {opts.cpus}: must be at least 1")
    if opts.slots is not None and opts.slots < 1:
        problems.append(f"{option}slots {opts.slots}: must be at least 1")
    if opts.slots is not None and opts.gpus:
        problems.append(f"{option}slots is for CPU agents; with {option}gpus use {option}slots-per-gpu")
    if opts.slots_per_gpu < 1:
        problems.append(f"{option}slots-per-gpu {opts.slots_per_gpu}: must be at least 1")
    if opts.grace_seconds < 0:
        problems.append(f"{option}grace-seconds {opts.grace_seconds:g}: must be >= 0")
    if not _NAME.match(opts.name) or len(opts.name) > 52:
        problems.append(
            f"{option}name {opts.name!r}: use lower-case letters, digits and '-' (at most 52), "
            "e.g. 'digits-ablation' (Kubernetes and SkyPilot names allow nothing else)"
        )
    if opts.memory is not None and not re.match(r"^[0-9]+[KMGT]?$", opts.memory):
        problems.append(f"{option}memory {opts.memory!r}: give a size such as 16G or 512M")
    for key, _ in opts.env:
        if not _ENV_NAME.match(key):
            problems.append(f"{option}env {key!r}: not a valid variable name")
    if problems:
        raise ConfigError("cannot start agents:\n  - " + "\n  - ".join(problems))


def agent_command(opts: AgentOptions, python: str = "python") -> list[str]:
    """The agent's command line on one node (the store's code snapshot is fetched by the agent)."""
    cmd = [python, "-m", "ablator.agent", opts.store]
    if opts.gpus == 0:
        # Each CPU trial gets an equal share of the cores the engine gave this agent, not of the
        # whole node (other jobs' agents share it).
        threads = max(1, opts.cpus // opts.cpu_slots)
        cmd += ["--cpu", "--slots", str(opts.cpu_slots), "--threads", str(threads)]
    elif opts.slots_per_gpu != 1:
        cmd += ["--slots-per-gpu", str(opts.slots_per_gpu)]
    cmd += ["--grace-seconds", f"{opts.grace_seconds:g}", *opts.agent_args]
    return cmd


def runner_script(command: Sequence[str], *, digest: str, python: str = "python") -> str:
    """A POSIX shell fragment that checks ablator on this node, runs the agent in the background,
    forwards SIGTERM/SIGINT to it, and ends with the status that tells the engine what happened:

    * the agent's own status when it ended by itself: 0 done (or an operator stop), 1 an error
      that would recur on any node (no requeue), 130 interrupted, 3 a bug;
    * :data:`DRAINED_EXIT` (143) when a signal made it drain and it exited 0: its trials were
      checkpointed and released, and the experiment may have work left.

    The agent is a child, not ``exec``-ed: a shell that is PID 1 (a container) must forward the
    signal, and the status must be translated after the agent exits.
    """
    return f"""\
{shlex.quote(python)} -m ablator.engines.check {digest} || exit 1
ablator_signalled=0
ablator_pid=
ablator_forward() {{ ablator_signalled=1; [ -n "$ablator_pid" ] && kill -TERM "$ablator_pid" 2>/dev/null; }}
trap ablator_forward TERM INT
{shlex.join(command)} &
ablator_pid=$!
wait "$ablator_pid"; ablator_rc=$?
# wait returns early when a trapped signal arrives; wait again until the agent has exited.
while kill -0 "$ablator_pid" 2>/dev/null; do wait "$ablator_pid"; ablator_rc=$?; done
if [ "$ablator_signalled" = 1 ] && [ "$ablator_rc" = 0 ]; then ablator_rc={DRAINED_EXIT}; fi
"""


# --- ablator itself on a node -------------------------------------------------------------------


def package_dir() -> Path:
    """The folder of the ablator package this process imports."""
    import ablator

    return Path(ablator.__file__).resolve().parent


def _package_files(root: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of every file of the package a wheel must carry, sorted."""
    files = []
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            files.append(("ablator/" + path.relative_to(root).as_posix(), path))
    return sorted(files)


def package_digest(root: Path | None = None) -> str:
    """sha256 over the names and bytes of the ablator package's files: equal digests, equal code."""
    h = hashlib.sha256()
    for name, path in _package_files(root or package_dir()):
        data = path.read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _metadata() -> tuple[str, str]:
    """(version, METADATA text with ``@VERSION@`` where the version goes): from the checkout's
    pyproject.toml when ablator runs from one, else from the installed distribution."""
    pyproject = package_dir().parent / "pyproject.toml"
    if pyproject.is_file():
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        project = tomllib.loads(pyproject.read_text())["project"]
        if project.get("name") == "ablator":
            lines = [
                "Metadata-Version: 2.1",
                "Name: ablator",
                "Version: @VERSION@",
                f"Summary: {project.get('description', '')}",
            ]
            if "requires-python" in project:
                lines.append(f"Requires-Python: {project['requires-python']}")
            lines += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
            for extra, deps in sorted(project.get("optional-dependencies", {}).items()):
                lines.append(f"Provides-Extra: {extra}")
                for d in deps:
                    req, _, marker = d.partition(";")
                    cond = f'({marker.strip()}) and extra == "{extra}"' if marker else f'extra == "{extra}"'
                    lines.append(f"Requires-Dist: {req.strip()}; {cond}")
            import ablator  # the one source of the version (pyproject reads it from there)

            return ablator.__version__, "\n".join(lines) + "\n"
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("ablator")
        text = dist.read_text("METADATA") or ""
    except PackageNotFoundError:
        text = ""
    if not text:
        raise ConfigError(
            f"cannot build an ablator wheel: {package_dir()} is neither a checkout with pyproject.toml "
            "nor an installed distribution; install ablator (pip install -e <checkout>) and retry"
        )
    base = dist.version.split("+")[0]
    return base, re.sub(
        r"(?m)^Version: .*$", "Version: @VERSION@", text.replace("{", "{{").replace("}", "}}"), count=1
    )


def _b64_digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class Wheel(msgspec.Struct, frozen=True):
    """A built wheel: its file name, bytes and the package digest it carries."""

    filename: str
    data: bytes
    digest: str


def build_wheel() -> Wheel:
    """A pure-Python wheel of the ablator package this process imports, byte-for-byte the same
    for the same code (sorted members, fixed timestamps), versioned ``<version>+src.<digest12>``
    so that nodes and ``pip`` can tell builds apart."""
    root = package_dir()
    digest = package_digest(root)
    base, metadata = _metadata()
    version = f"{base}+src.{digest[:12]}"
    dist_info = f"ablator-{version}.dist-info"
    members: list[tuple[str, bytes]] = [(name, path.read_bytes()) for name, path in _package_files(root)]
    members.append((f"{dist_info}/METADATA", metadata.replace("@VERSION@", version).encode()))
    members.append(
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: ablator.engines\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    )
    members.append((f"{dist_info}/entry_points.txt", b"[console_scripts]\nablator = ablator.cli:main\n"))
    record = "".join(f"{n},{_b64_digest(d)},{len(d)}\n" for n, d in members) + f"{dist_info}/RECORD,,\n"
    members.append((f"{dist_info}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return Wheel(f"ablator-{version}-py3-none-any.whl", buf.getvalue(), digest)


def pip_target(wheel_path: str, store: str) -> str:
    """The ``pip install`` argument for the wheel, with the extra the store needs."""
    return f"{wheel_path}[s3]" if store.startswith("s3://") else wheel_path


def dump_yaml(documents: Sequence[object]) -> str:
    """YAML for people to read: multi-line strings (scripts) as ``|`` blocks, no anchors, keys
    in the order written."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=1 << 20)
