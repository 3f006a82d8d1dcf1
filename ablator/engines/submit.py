"""``python -m ablator submit slurm|k8s|sky STORE --agents N ...``: render the engine's native
artifact, print it (or write it with ``--out``), and with ``--submit`` hand it to the engine's own
command (``sbatch``, ``kubectl apply``, ``sky jobs launch``). See docs/engines.md."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ablator.engines import common
from ablator.engines.common import AgentOptions
from ablator.errors import ConfigError


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    """The ``submit`` subcommand's arguments (no heavy imports: building the parser is cheap)."""
    engines = p.add_subparsers(dest="engine", metavar="ENGINE", required=True)
    helps = {
        "slurm": "an sbatch job array, one agent per task",
        "k8s": "a Kubernetes Indexed Job, one agent per pod (with the ablator wheel in a ConfigMap)",
        "sky": "a SkyPilot managed-job task, launched once per agent (spot by default)",
    }
    for engine, text in helps.items():
        e = engines.add_parser(engine, help=text, description=text)
        e.add_argument("store", help="store URL the experiment was launched into (ablator launch --code ...)")
        e.add_argument("--agents", type=int, default=1, help="agents to start (tasks, pods, managed jobs)")
        e.add_argument("--name", default=None, help="job name (default: ablator-<last part of STORE>)")
        e.add_argument("--gpus", type=int, default=0, help="GPUs per agent (0: CPU trials)")
        e.add_argument("--cpus", type=int, default=None, help="CPU cores per agent (default 1 per slot)")
        e.add_argument("--memory", default=None, help="memory per agent, e.g. 16G")
        e.add_argument("--slots", type=int, default=None, help="CPU trials at once per agent (CPU agents)")
        e.add_argument("--slots-per-gpu", type=int, default=1, help="trials sharing each GPU")
        e.add_argument(
            "--grace-seconds",
            type=float,
            default=25.0,
            help="time the agent has to checkpoint and release after SIGTERM (the engine waits this + 15 s)",
        )
        e.add_argument(
            "--env", action="append", default=[], metavar="KEY=VALUE", help="set in the agent's environment"
        )
        e.add_argument(
            "--agent-arg",
            action="append",
            default=[],
            metavar="ARG",
            help="pass to the agent, e.g. --agent-arg=--lease-seconds=300",
        )
        e.add_argument(
            "--out", default=None, metavar="PATH", help="write the artifact here instead of printing it"
        )
        e.add_argument("--submit", action="store_true", help=f"submit it with {_CLI[engine]}")
        if engine == "slurm":
            e.add_argument("--partition", default=None)
            e.add_argument("--account", default=None)
            e.add_argument("--qos", default=None)
            e.add_argument(
                "--time", default=None, help="time limit per task, e.g. 4:00:00 (drains and requeues)"
            )
            e.add_argument(
                "--python",
                default=sys.executable,
                help="interpreter with ablator on every node, same path (default: this one)",
            )
            e.add_argument(
                "--setup", action="append", default=[], metavar="LINE", help="shell line before the agent"
            )
            e.add_argument(
                "--sbatch-arg", action="append", default=[], metavar="ARG", help="extra #SBATCH line"
            )
            e.add_argument(
                "--output", default=None, help="sbatch --output pattern (default <name>-%%A_%%a.out)"
            )
        elif engine == "k8s":
            e.add_argument("--image", required=True, help="container image with Python and torch")
            e.add_argument("--namespace", default=None)
            e.add_argument("--secret", default=None, help="Secret whose keys become the agent's environment")
            e.add_argument("--gpu-resource", default="nvidia.com/gpu", help="extended resource name of a GPU")
            e.add_argument("--python", default="python", help="interpreter in the image")
        else:
            e.add_argument("--accelerators", default=None, help="SkyPilot accelerators, e.g. A100:1")
            e.add_argument("--cloud", default=None)
            e.add_argument("--region", default=None)
            e.add_argument("--on-demand", action="store_true", help="on-demand VMs instead of spot")
            e.add_argument("--recovery", default="EAGER_NEXT_REGION", help="EAGER_NEXT_REGION or FAILOVER")
            e.add_argument(
                "--setup", action="append", default=[], metavar="LINE", help="setup line before ablator"
            )
            e.add_argument(
                "--secret",
                action="append",
                default=[],
                metavar="NAME",
                help="environment variable passed as a secret (store credentials)",
            )
            e.add_argument("--python", default="python", help="interpreter on the VM")


_CLI = {"slurm": "sbatch", "k8s": "kubectl apply", "sky": "sky jobs launch"}


def agent_options(args: argparse.Namespace) -> AgentOptions:
    """The engine-independent options from parsed arguments (every problem at once)."""
    env = []
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--env {item!r}: use KEY=VALUE")
        env.append((key, value))
    slots = args.slots if args.gpus == 0 else None
    cpus = args.cpus if args.cpus is not None else (slots or 1)
    opts = AgentOptions(
        store=_store_for(args.engine, args.store),
        agents=args.agents,
        name=args.name or common.default_name(args.store),
        gpus=args.gpus,
        cpus=cpus,
        memory=args.memory,
        slots=args.slots,
        slots_per_gpu=args.slots_per_gpu,
        grace_seconds=args.grace_seconds,
        agent_args=tuple(args.agent_arg),
        env=tuple(env),
    )
    common.validate(opts)
    return opts


def _store_for(engine: str, store: str) -> str:
    """The store as the nodes must name it: Slurm nodes share the file system, so a local folder
    becomes absolute; pods and cloud VMs cannot see this machine's folders."""
    scheme = store.split("://", 1)[0] if "://" in store else ""
    if scheme == "memory":
        raise ConfigError(
            f"STORE {store!r}: a memory store lives in one process; agents elsewhere cannot reach it"
        )
    if engine == "slurm":
        if scheme in ("", "file"):
            path = store.split("://", 1)[1] if scheme else store
            return os.path.abspath(os.path.expanduser(path))
        return store
    if scheme in ("", "file"):
        where = "a Kubernetes pod" if engine == "k8s" else "a SkyPilot VM"
        raise ConfigError(
            f"STORE {store!r} is a folder on this machine, which {where} cannot reach; launch the "
            "experiment into an object store (s3://bucket/prefix) and submit that URL"
        )
    return store


#: File systems that one machine's folders share with others (network and cluster file systems).
SHARED_FILE_SYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "cephfs",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.sshfs",
        "panfs",
        "wekafs",
        "orangefs",
        "pvfs2",
        "9p",
        "fuse.juicefs",
        "fuse.s3fs",
        "afs",
        "virtiofs",
    }
)
#: Folders that are this machine's own on any cluster, whatever file system holds them.
NODE_LOCAL_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/scratch/local")


def file_system_of(path: str, mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system that holds ``path`` (its longest mount point in ``mounts``),
    or None where the mount table cannot be read (not Linux)."""
    try:
        table = Path(mounts).read_text()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, kind = "", None
    for line in table.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def shared_folder_note(store: str, *, mounts: str = "/proc/mounts") -> str | None:
    """A note when a Slurm job's folder store does not look shared with the nodes (a node-local
    folder such as /tmp, or a local file system), else None. Only a note: the submitting machine
    cannot see the nodes' mounts, and a site may share a folder in ways no mount table shows."""
    real = os.path.realpath(store)
    local = next((f for f in NODE_LOCAL_FOLDERS if real == f or real.startswith(f + "/")), None)
    kind = file_system_of(real, mounts)
    if local is None and (kind is None or kind in SHARED_FILE_SYSTEMS):
        return None
    why = f"{local} is each machine's own" if local else f"it is on a local {kind} file system here"
    return (
        f"ablator submit: note: every node must see the store folder {store} at that same path, and "
        f"{why}; launch into a folder on the cluster's shared file system (NFS, Lustre, GPFS, ...) or "
        "an object store (s3://...) unless your nodes mount this one there"
    )


def _check_folder_store(store: str) -> None:
    """A Slurm job's folder store is on the shared file system this machine sees too: refuse a
    folder that holds no launched experiment now, rather than in every array task later. (Object
    stores are not read here: the submitting machine may lack the credentials the nodes get.)"""
    from ablator import layout
    from ablator.spec import decode_spec

    experiment = Path(store) / layout.EXPERIMENT
    if not experiment.is_file():
        raise ConfigError(
            f"no experiment in {store}: launch it first (python -m ablator launch EXP --store {store} --code .)"
        )
    note = shared_folder_note(store)
    if note:
        print(note, file=sys.stderr)
    spec = decode_spec(experiment.read_bytes(), str(experiment))
    if spec.code_sha256 is None:
        print(
            f"ablator submit: note: {store} has no --code snapshot; the entry point "
            f"{spec.experiment.get('entry')!r} must be importable on every node",
            file=sys.stderr,
        )


def _emit(text: str, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(f"wrote {out}", file=sys.stderr)


def cli_submit(args: argparse.Namespace) -> int:
    """Render (and with ``--submit`` submit) one engine's artifact."""
    opts = agent_options(args)
    if args.engine == "slurm":
        from ablator.engines import slurm

        sopts = slurm.SlurmOptions(
            partition=args.partition,
            account=args.account,
            qos=args.qos,
            time=args.time,
            python=args.python,
            setup=tuple(args.setup),
            sbatch_args=tuple(args.sbatch_arg),
            output=args.output,
        )
        script = slurm.render(opts, sopts, digest=common.package_digest())
        if "://" not in opts.store:
            _check_folder_store(opts.store)
        if args.out or not args.submit:
            _emit(script, args.out)
        if args.submit:
            job = slurm.submit(script)
            print(
                f"submitted Slurm array job {job} ({opts.agents} agents); watch: ablator status {opts.store}"
            )
        return 0
    wheel = common.build_wheel()
    if args.engine == "k8s":
        from ablator.engines import k8s

        kopts = k8s.K8sOptions(
            image=args.image,
            namespace=args.namespace,
            secret=args.secret,
            gpu_resource=args.gpu_resource,
            python=args.python,
        )
        manifest = k8s.render(opts, kopts, wheel)
        if args.out or not args.submit:
            _emit(manifest, args.out)
        if args.submit:
            print(k8s.submit(manifest))
            print(
                f"submitted Kubernetes Job {opts.name} ({opts.agents} agents); watch: ablator status {opts.store}"
            )
        return 0
    from ablator.codesnap import default_cache_dir
    from ablator.engines import sky

    # The wheel must lie on this machine for SkyPilot to upload it: next to --out, else in the
    # cache (named by its content, so an unchanged ablator is written once).
    wheel_dir = Path(args.out).resolve().parent if args.out else default_cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel_path = wheel_dir / wheel.filename
    if not wheel_path.exists() or wheel_path.read_bytes() != wheel.data:
        wheel_path.write_bytes(wheel.data)
    sky_opts = sky.SkyOptions(
        accelerators=args.accelerators,
        cloud=args.cloud,
        region=args.region,
        spot=not args.on_demand,
        recovery=args.recovery,
        setup=tuple(args.setup),
        secrets=tuple(args.secret),
        python=args.python,
    )
    task = sky.render(opts, sky_opts, wheel, wheel_path)
    task_path = Path(args.out) if args.out else None
    if task_path is not None or not args.submit:
        _emit(task, args.out)
    if args.submit:
        if task_path is None:
            task_path = wheel_dir / f"{opts.name}.sky.yaml"
            task_path.write_text(task)
        names = sky.submit(task_path, opts, sky_opts)
        print(f"launched SkyPilot managed jobs {', '.join(names)}; watch: ablator status {opts.store}")
    return 0
