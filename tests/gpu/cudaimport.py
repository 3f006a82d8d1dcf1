"""An entry module that touches CUDA at import (a common mistake): the agent's process, which
sees no GPU, must refuse it with advice instead of making a CUDA context of its own."""

from __future__ import annotations

import os

import torch

from tests.gpu.gputoy import GpuToyConfig, trial

# Only where devices are named (agents and their workers), so that `launch` can import it here.
WEIGHTS = torch.zeros(4).cuda() if "CUDA_VISIBLE_DEVICES" in os.environ else None

__all__ = ["WEIGHTS", "GpuToyConfig", "trial"]
