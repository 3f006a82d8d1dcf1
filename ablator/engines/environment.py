"""A trial's process environment under an engine: one process, one device, no cluster job.

An agent started by Slurm, an MPI launcher or ``torchrun`` inherits that launcher's variables
(``SLURM_NTASKS``, ``SLURM_PROCID``, ``PMI_RANK``, ``OMPI_COMM_WORLD_SIZE``, ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ...). They describe the *agent's* job, not a trial: ablator is the
scheduler of trials, and each trial is a single process on the one device its slot names.
Training libraries read these variables to set themselves up for distributed training --
Lightning's cluster detection picks ``SLURMEnvironment`` from ``SLURM_NTASKS`` and takes its
ranks and world size from the job; ``torch.distributed``'s ``env://`` init reads ``RANK`` and
``WORLD_SIZE`` -- so a trial that saw them could wait forever for peers that do not exist, or
train as "rank 3 of 8" of a job it is not part of. :func:`trial_environment` removes them from
the environment of every worker process, whatever started the agent.

What stays: everything else (``PATH``, ``CUDA_VISIBLE_DEVICES`` as the slot sets it, proxies,
credentials, ``HOME``). A Slurm job's id and step are in the agent's heartbeat log, not the trial's.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Variables whose name starts with one of these describe the launcher's job (Slurm, PMI/PMIx
#: process managers, Open MPI, MPICH's hydra, IBM's jsrun under LSF).
LAUNCHER_PREFIXES: tuple[str, ...] = (
    "SLURM_",
    "SLURMD_",
    "PMI_",
    "PMIX_",
    "OMPI_",
    "HYDRA_",
    "JSM_NAMESPACE_",
    "TORCHELASTIC_",
)

#: ``torchrun`` / torch elastic rendezvous and rank variables (``env://`` initialisation and
#: Lightning's TorchElastic, Kubeflow and Lightning environments read them).
LAUNCHER_NAMES: frozenset[str] = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_NAME",
        "ROLE_WORLD_SIZE",
        "NODE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)


def is_launcher_variable(name: str) -> bool:
    """True for a variable that describes a multi-process launcher's job (see the module doc)."""
    return name in LAUNCHER_NAMES or name.startswith(LAUNCHER_PREFIXES)


def trial_environment(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a worker process: ``base`` without launcher variables, then
    ``overrides`` (the slot's ``CUDA_VISIBLE_DEVICES`` and the like) on top.

    >>> trial_environment({"PATH": "/bin", "SLURM_NTASKS": "2", "RANK": "1"}, {"X": "1"})
    {'PATH': '/bin', 'X': '1'}
    """
    env = {k: v for k, v in base.items() if not is_launcher_variable(k)}
    env.update(overrides)
    return env
