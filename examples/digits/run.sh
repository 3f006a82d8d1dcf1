#!/usr/bin/env bash
# Install ablator (into the active Python: make a virtual environment first, README) and run the digits ablation study end to end on a local store:
# launch the experiment, run two local agents until every trial is done, write the report.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch 2.13.0 when none is installed: pinned, so that pip takes the build that lies on this
# machine kind's disk (a CPU build) rather than downloading the newest multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[examples]"

STORE="${STORE:-ablator-runs/digits}"
# where `ablator report` writes without --out: ablator-report/<experiment name> (digits-ablation)
REPORT="${REPORT:-ablator-report/digits-ablation}"
python -m ablator launch examples/digits/experiment.yaml --store "$STORE"
# Two agents on this machine (on the CPU here; without --cpu each would take its own GPU). They share
# nothing but the store.
python -m ablator.agent "$STORE" --cpu &
first=$!
python -m ablator.agent "$STORE" --cpu &
second=$!
trap 'kill -TERM $first $second 2>/dev/null' INT TERM
wait "$first"
wait "$second"
python -m ablator status "$STORE"
python -m ablator analyze "$STORE"
python -m ablator report "$STORE" --out "$REPORT"
echo
echo "Report: $REPORT/report.html (and report.md and the PNG figures beside it)"
