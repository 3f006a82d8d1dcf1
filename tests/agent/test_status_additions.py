"""What ``status`` adds for operators of agents: why work is waiting, mixed torch/CUDA versions."""

from __future__ import annotations

from pathlib import Path

from ablator import layout, records
from ablator.experiment import experiment_from_dict
from ablator.ops import launch, stop
from ablator.status import collect, render
from ablator.store import open_store

from .conftest import experiment


def _beat(store: object, agent_id: str, *, torch: str, gpus: list[records.GpuInfo]) -> None:
    hb = records.Heartbeat(
        agent_id=agent_id,
        host="h",
        pid=1,
        counter=1,
        lease_s=600,
        heartbeat_s=10,
        gpus=gpus,
        slots=1,
        versions={"torch": torch},
    )
    store.replace(layout.agent(agent_id), records.encode(hb))  # type: ignore[attr-defined]


def test_status_says_why_work_waits_and_warns_on_mixed_versions(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    exp = experiment()
    exp["resources"] = {"gpu": "required"}
    launch(experiment_from_dict(exp), url)
    store = open_store(url)
    report = collect(store)
    assert report.waiting == ["4 trial(s) need a GPU that no live agent has"]
    _beat(store, "cpu-box-1-aa", torch="2.13.0+cpu", gpus=[])
    assert "need a GPU that no live agent has" in collect(store).waiting[0]
    _beat(store, "gpu-box-2-bb", torch="2.12.1+cu121", gpus=[records.GpuInfo(index=0, memory_total_mb=80000)])
    report = collect(store)
    assert report.waiting == []
    assert (
        report.warnings
        and "different torch versions: 2.12.1+cu121 (1 agent), 2.13.0+cpu (1 agent)" in report.warnings[0]
    )
    text = render(report)
    assert "warning     agents run different torch versions" in text
    stop(url)
    assert "stopped" in collect(store).waiting[0]


def test_status_waiting_for_min_memory_and_for_agents(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    exp = experiment()
    exp["resources"] = {"gpu": "required", "min_gpu_memory_mb": 40000}
    launch(experiment_from_dict(exp), url)
    store = open_store(url)
    _beat(store, "small-1-aa", torch="2.13.0", gpus=[records.GpuInfo(index=0, memory_total_mb=16000)])
    assert collect(store).waiting == [
        "4 trial(s) need a GPU with at least 40000 MiB available that no live agent has "
        "(gpu0 16000 MiB available of 16000)"
    ]
    url2 = str(tmp_path / "s2")
    launch(experiment_from_dict(experiment()), url2)
    assert "none is live" in collect(open_store(url2)).waiting[0]


def test_status_folds_agents_gone_long_ago_and_says_what_each_holds(tmp_path: Path) -> None:
    import os
    import time

    from ablator.status import holdings

    url = str(tmp_path / "s")
    launch(experiment_from_dict(experiment()), url)
    store = open_store(url)
    for n in range(3):
        hb = records.Heartbeat(
            agent_id=f"old-{n}", host="gone-box", pid=1, counter=1, lease_s=10, heartbeat_s=1, state="exited"
        )
        store.replace(layout.agent(f"old-{n}"), records.encode(hb))
        past = time.time() - 3600  # exited an hour ago by the store's (the folder's) clock
        os.utime(tmp_path / "s" / layout.agent(f"old-{n}"), (past, past))
    live = records.Heartbeat(
        agent_id="now-1", host="box", pid=2, counter=1, lease_s=600, heartbeat_s=10, held=[(0, 0), (3, 1)]
    )
    store.replace(layout.agent("now-1"), records.encode(live))
    report = collect(store)
    assert len(report.agents) == 4  # --json keeps every agent
    text = render(report)
    assert "agents      1 live, 3 dead or exited, 4 in all" in text
    assert "holds trials 0, 3 (attempt 2)" in text and "old-0" not in text
    assert "... and 3 agent(s) exited or dead more than 10 min ago (on gone-box)" in text
    assert holdings([(5, 0)]) == "holds trial 5" and holdings([]) == "holds nothing"
