"""Kubernetes: an Indexed Job (``parallelism = completions = agents``), one agent per pod.

The artifact is two documents for ``kubectl apply -f -``:

* a ConfigMap holding the ablator wheel built from the rendering ablator (binary data, mounted at
  ``/opt/ablator``): the pod ``pip install``\\ s it, so every pod runs the same ablator code
  (the store's ``--code`` snapshot brings the user's code);
* the Job. Each pod gets ``terminationGracePeriodSeconds`` = the agent's grace + a margin: on
  eviction, preemption or a node drain the kubelet sends SIGTERM, the shell forwards it, the agent
  checkpoints and releases its trials, and the pod ends with 143 (drained, not done). The pod
  failure policy ignores failures of pods with the ``DisruptionTarget`` condition (preemption,
  eviction, node drain: not counted against ``backoffLimit``; the index gets a new pod), fails the
  whole Job on exit 1 (an error that would recur on every pod: no experiment, broken entry point),
  and counts the rest (crashes, a deleted pod) against ``backoffLimit``. An index completes when
  its agent exits 0: the experiment is done (or was stopped with ``ablator stop``).

Store credentials come from a Secret (``envFrom``), e.g. ``kubectl create secret generic
ablator-store --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...``.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from typing import Any

import msgspec

from ablator.engines.common import (
    AgentOptions,
    EngineError,
    Wheel,
    agent_command,
    dump_yaml,
    pip_target,
    runner_script,
)
from ablator.errors import ConfigError

ENGINE_CLI = "kubectl"
WHEEL_DIR = "/opt/ablator"
#: A ConfigMap is stored in etcd, whose objects are limited to about 1 MiB.
MAX_CONFIGMAP_BYTES = 900_000


class K8sOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Kubernetes-only settings. ``image`` needs Python and torch (e.g. ``pytorch/pytorch``);
    ``secret`` names a Secret whose keys become the agent's environment (store credentials)."""

    image: str
    namespace: str | None = None
    secret: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    python: str = "python"


def render_objects(opts: AgentOptions, k8s: K8sOptions, wheel: Wheel) -> list[dict[str, Any]]:
    """The ConfigMap with the wheel and the Indexed Job, as dicts."""
    if not k8s.image:
        raise ConfigError(
            "--image is required: a container image with Python and torch, e.g. pytorch/pytorch"
        )
    encoded = base64.b64encode(wheel.data).decode()
    if len(encoded) > MAX_CONFIGMAP_BYTES:
        raise ConfigError(
            f"the ablator wheel is {len(wheel.data)} bytes, too large for a ConfigMap; "
            "build an image with this ablator installed instead"
        )
    labels = {"app.kubernetes.io/name": "ablator", "app.kubernetes.io/instance": opts.name}
    meta: dict[str, Any] = {"labels": labels}
    if k8s.namespace:
        meta["namespace"] = k8s.namespace
    cm_name = f"{opts.name}-wheel-{wheel.digest[:10]}"
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": cm_name, **meta},
        "binaryData": {"wheel": encoded},
    }
    wheel_path = f"{WHEEL_DIR}/{wheel.filename}"
    install = (
        f"{k8s.python} -m pip install --quiet --disable-pip-version-check "
        f"'{pip_target(wheel_path, opts.store)}' || exit 2\n"
    )
    script = (
        "set -u\n"
        + install
        + runner_script(agent_command(opts, k8s.python), digest=wheel.digest, python=k8s.python)
        + 'exit "$ablator_rc"\n'
    )
    requests: dict[str, str] = {"cpu": str(opts.cpus)}
    limits: dict[str, str] = {}
    if opts.memory:
        requests["memory"] = limits["memory"] = _k8s_quantity(opts.memory)
    if opts.gpus:
        limits[k8s.gpu_resource] = str(opts.gpus)
    container: dict[str, Any] = {
        "name": "agent",
        "image": k8s.image,
        "command": ["/bin/sh", "-c", script],
        "env": [{"name": k, "value": v} for k, v in opts.env],
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "volumeMounts": [{"name": "ablator-wheel", "mountPath": WHEEL_DIR, "readOnly": True}],
    }
    if k8s.secret:
        container["envFrom"] = [{"secretRef": {"name": k8s.secret}}]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": opts.name, **meta},
        "spec": {
            "completionMode": "Indexed",
            "completions": opts.agents,
            "parallelism": opts.agents,
            "backoffLimit": 3 * opts.agents,
            "podFailurePolicy": {
                "rules": [
                    # preempted, evicted, node drained: the agent drained; not the pod's fault
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    # an error that recurs on every pod (no experiment, broken code): stop the Job
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": "agent", "operator": "In", "values": [1]},
                    },
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",  # the pod failure policy needs it
                    "terminationGracePeriodSeconds": opts.drain_seconds,
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "ablator-wheel",
                            "configMap": {
                                "name": cm_name,
                                "items": [{"key": "wheel", "path": wheel.filename}],
                            },
                        }
                    ],
                },
            },
        },
    }
    return [configmap, job]


def _k8s_quantity(memory: str) -> str:
    """``16G`` (Slurm's spelling) -> ``16Gi``; a bare number is MiB as in Slurm."""
    if memory[-1].isdigit():
        return f"{memory}Mi"
    return f"{memory}i"


def render(opts: AgentOptions, k8s: K8sOptions, wheel: Wheel) -> str:
    """The objects as one multi-document YAML for ``kubectl apply -f -``."""
    return dump_yaml(render_objects(opts, k8s, wheel))


def submit(manifest: str) -> str:
    """``kubectl apply -f -``; returns kubectl's own report."""
    exe = shutil.which(ENGINE_CLI)
    if exe is None:
        raise EngineError(
            "kubectl is not on PATH: install it and point it at the cluster (kubectl config "
            "use-context ...), or drop --submit and apply the printed manifest yourself"
        )
    out = subprocess.run([exe, "apply", "-f", "-"], input=manifest, capture_output=True, text=True)
    if out.returncode != 0:
        raise EngineError(f"kubectl apply failed (exit {out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip()
