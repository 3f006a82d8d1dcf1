"""Start agents on the engines people already run: Slurm, Kubernetes, SkyPilot managed jobs.

``python -m ablator submit slurm|k8s|sky STORE --agents N ...`` renders the engine's native
artifact (an ``sbatch`` job-array script, a Kubernetes Indexed Job, a SkyPilot task YAML), prints
or writes it, and with ``--submit`` hands it to the engine's own command. The engines only start
agents; the store stays the only state. See ``docs/engines.md``.

One module per engine (:mod:`~ablator.engines.slurm`, :mod:`~ablator.engines.k8s`,
:mod:`~ablator.engines.sky`), the parts they share in :mod:`~ablator.engines.common`, the
command in :mod:`~ablator.engines.submit`, the node-side check that a node runs the ablator the
artifact was rendered with in :mod:`~ablator.engines.check`, and
:mod:`~ablator.engines.environment`, which keeps a launcher's variables out of every trial's
environment.
"""

from __future__ import annotations
