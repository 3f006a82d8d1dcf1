"""GPU discovery, slots, lock files and the memory rule against a fake ``nvidia-smi`` on PATH
(2 to 8 GPUs of mixed models, busy GPUs, ``[N/A]`` fields, MIG instances). No GPU needed: only
nvidia-smi's answers are faked; the parsing and the decisions are ablator's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from testkit import child_env

from ablator.agent import devices as D
from ablator.agent.devices import Device, Slot, plan_slots
from ablator.agent.packing import Packer
from ablator.agent.slots import GpuSlots
from ablator.errors import ConfigError
from ablator.records import GpuInfo, TrialSpec
from tests.gpu.fakegpu import FakeSmi, gpu

ROOT = Path(__file__).resolve().parents[2]

H100 = "GPU-8f0e2f43-1111-2222-3333-444455556666"
A100 = "GPU-5d5ba0d6-aaaa-bbbb-cccc-ddddeeeeffff"
T4 = "GPU-5d5bc101-0000-1111-2222-333344445555"
MIG_A = "MIG-c6d4f1ef-0001-0002-0003-000400050006"
MIG_B = "MIG-1b7e0c11-0001-0002-0003-000400050006"


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSmi:
    """Four GPUs of three models in PCI order: an H100, a busy A100, a T4 whose memory reads
    [N/A], and an A100 in MIG mode with two instances."""
    fake = FakeSmi(
        tmp_path,
        [
            gpu(0, H100, "NVIDIA H100 80GB HBM3", 81559, 81000),
            gpu(1, A100, "NVIDIA A100-SXM4-40GB", 40960, 0, util=100),
            gpu(2, T4, "Tesla T4", "[N/A]", "[N/A]"),
            gpu(
                3,
                "GPU-77777777-8888-9999-aaaa-bbbbccccdddd",
                "NVIDIA A100-SXM4-80GB",
                81920,
                81000,
                mig="Enabled",
                migs=[{"profile": "3g.40gb", "uuid": MIG_A}, {"profile": "3g.40gb", "uuid": MIG_B}],
            ),
        ],
    )
    monkeypatch.setenv("PATH", fake.path_env())
    monkeypatch.setenv("ABLATOR_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return fake


def _spec(min_mb: int = 0, *, requires_gpu: bool = True) -> TrialSpec:
    return TrialSpec(
        index=0, config={}, config_hash="h", seed=1, requires_gpu=requires_gpu, min_gpu_memory_mb=min_mb
    )


@pytest.mark.procs  # the fake nvidia-smi, another user's process
def test_discovery_keeps_na_rows_and_enumerates_mig_instances(smi: FakeSmi) -> None:
    devices, driver, notes = D.discover_devices()
    assert driver == "550.54.15" and notes == []
    assert [d.label for d in devices] == ["gpu0", "gpu1", "gpu2", "gpu3/mig0", "gpu3/mig1"]
    t4 = devices[2]
    # [N/A] memory is "not reported", not a reason to drop the GPU
    assert (t4.name, t4.memory_total_mb, t4.memory_free_mb) == ("Tesla T4", None, None)
    busy = devices[1]
    assert busy.memory_free_mb == 0  # a known zero
    mig = devices[3]
    assert mig.uuid == MIG_A and mig.memory_total_mb == 38000 and mig.memory_free_mb is None
    assert mig.visible == MIG_A  # the MIG parent itself is never a worker's device
    # an old driver that does not know mig.mode.current still lists its GPUs
    smi.write([gpu(0, H100), gpu(1, A100, "NVIDIA A100-SXM4-40GB", 40960)], old_driver=True)
    devices, _, _ = D.discover_devices()
    assert [d.uuid for d in devices] == [H100, A100]


@pytest.mark.procs  # the fake nvidia-smi, another user's process
def test_zero_free_memory_is_known_and_refuses(smi: FakeSmi) -> None:
    devices, _, _ = D.discover_devices()
    busy = Slot(0, device=devices[1])
    assert not busy.can_run(True, 1000)  # 0 MiB free: full, not "unknown"
    assert Slot(1, device=devices[0]).can_run(True, 40000)
    assert Slot(2, device=devices[2]).can_run(True, 40000)  # nothing reported: benefit of the doubt
    assert not Slot(3, GpuInfo(index=0, memory_total_mb=80000, memory_free_mb=0)).can_run(True, 10)


@pytest.mark.procs  # the fake nvidia-smi, another user's process
def test_inherited_visible_devices_uuid_prefix_mig_and_order(
    smi: FakeSmi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A UUID prefix (as Slurm/Kubernetes or a user may write it) names the A100, not GPU 0.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5d5ba0")
    devices, _, notes = D.discover_devices()
    assert [d.uuid for d in devices] == [A100] and notes == []
    slots, _ = plan_slots(cpu=False, gpus_arg=None, slots=None, slots_per_gpu=1, found=devices)
    env = slots[0].env()
    # the inherited token goes to the worker as it was written, in nvidia-smi's order
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-5d5ba0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    slots[0].release()
    # "GPU-5d5b" is a prefix of two UUIDs: like CUDA, the list ends there
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f0e2f43,GPU-5d5b,2")
    devices, _, notes = D.discover_devices()
    assert [d.uuid for d in devices] == [H100] and "more than one UUID" in notes[0]
    # MIG instances, by UUID and by parent index
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{MIG_B},3")
    devices, _, _ = D.discover_devices()
    assert [d.label for d in devices] == ["gpu3/mig1", "gpu3/mig0"]
    assert [d.visible for d in devices] == [MIG_B, MIG_A]
    # indexes with a non-PCI order are flagged
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    devices, _, notes = D.discover_devices()
    assert [d.index for d in devices] == [1, 0] and [d.visible for d in devices] == [A100, H100]
    assert "PCI bus" in notes[0]


@pytest.mark.procs  # the fake nvidia-smi, another user's process
def test_without_inherited_tokens_workers_get_uuids(smi: FakeSmi) -> None:
    devices, _, _ = D.discover_devices()
    slots, _ = plan_slots(cpu=False, gpus_arg="0,GPU-5d5bc1", slots=None, slots_per_gpu=1, found=devices)
    assert [(s.label, s.env()["CUDA_VISIBLE_DEVICES"]) for s in slots] == [("gpu0", H100), ("gpu2", T4)]
    assert D.describe_slots(slots + slots[:1]) == "gpu0 x2, gpu2"
    assert D.describe_slots(slots, auto=True) == "gpu0 x1-1 (auto), gpu2 x1-1 (auto)"
    cores = os.cpu_count() or 1
    assert all(s.env()["ABLATOR_THREADS"] == str(max(1, cores // 2)) for s in slots)  # a share each
    with pytest.raises(ConfigError, match="no device with UUID"):
        plan_slots(cpu=False, gpus_arg="GPU-ffff", slots=None, slots_per_gpu=1, found=devices)
    for s in slots:
        s.release()


@pytest.mark.procs  # the fake nvidia-smi, another user's process
def test_lock_files_are_keyed_by_uuid(smi: FakeSmi, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two agents given different GPUs by UUID both start; two that name one GPU differently
    (an index and a UUID) exclude each other."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", H100)
    first, _ = plan_slots(
        cpu=False, gpus_arg=None, slots=None, slots_per_gpu=1, found=D.discover_devices()[0]
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", A100)
    second, _ = plan_slots(
        cpu=False, gpus_arg=None, slots=None, slots_per_gpu=1, found=D.discover_devices()[0]
    )
    assert [s.label for s in first] == ["gpu0"] and [s.label for s in second] == ["gpu1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match="held by another agent"):
        plan_slots(cpu=False, gpus_arg=None, slots=None, slots_per_gpu=1, found=D.discover_devices()[0])
    for s in first + second:
        s.release()


@pytest.mark.procs  # the fake nvidia-smi, another user's process
def test_lock_folder_shared_by_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Lock files made by one user can be used (and held against) by another; a folder made
    by an older agent without sharing gives a clear error, not a traceback."""
    # under /tmp itself: another user cannot reach pytest's private tmp_path
    base = Path(tempfile.mkdtemp(prefix="ablator-lock-test-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    os.chmod(base, 0o755)
    shared = base / "shared-locks"
    monkeypatch.setenv("ABLATOR_LOCK_DIR", str(shared))
    mine = D.try_lock("gpu-GPU-x-slot0.lock")
    assert mine is not None
    assert oct(shared.stat().st_mode & 0o7777) == oct(0o1777)
    assert oct((shared / "gpu-GPU-x-slot0.lock").stat().st_mode & 0o777) == oct(0o666)
    old = base / "old-locks"
    old.mkdir()
    (old / "gpu-GPU-x-slot0.lock").touch()
    os.chmod(old / "gpu-GPU-x-slot0.lock", 0o444)
    os.chmod(old, 0o755)
    code = (
        "import encodings.ascii, encodings.latin_1, os, pwd, sys\n"
        "from ablator.agent import devices as D\n"
        "from ablator.errors import ConfigError\n"
        "{become}"
        "os.environ['ABLATOR_LOCK_DIR'] = sys.argv[1]\n"
        "try:\n"
        "    lock = D.try_lock('gpu-GPU-x-slot0.lock')\n"
        "    print('held-elsewhere' if lock is None else 'got-it')\n"
        "except ConfigError as exc:\n"
        "    print('config-error:', exc)\n"
    )
    # Another user: root tests become "nobody"; others see a read-only file, as another
    # user's would be to them.
    become = "os.setgid(65534); os.setuid(65534)\n" if os.geteuid() == 0 else ""
    env = child_env()

    def other(folder: Path) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code.format(become=become), str(folder)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd="/",
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    if become:
        assert other(shared) == "held-elsewhere"  # another user sees our lock, and no error
        mine.release()
        assert other(shared) == "got-it"
    got = other(old)
    assert got.startswith("config-error:") and "ABLATOR_LOCK_DIR" in got and "chmod 1777" in got


def test_memory_rule_rereads_and_counts_own_reservations() -> None:
    """0 MiB free is known; memory is re-read before each claim; each slot's running trial
    reserves its requirement less what its worker already uses, on the GPU it shares."""
    dev = Device(index=0, uuid=H100, name="H100", memory_total_mb=81559, memory_free_mb=81000)
    slots = [Slot(0, device=dev), Slot(1, device=dev)]
    running: dict[int, tuple[TrialSpec, int | None]] = {}
    reads: list[int] = []
    now = [0.0]
    free = [81000]
    used: dict[int, int] = {}

    def reader() -> tuple[dict[str, D.MemoryReading], dict[int, int]]:
        reads.append(free[0])
        return {H100: D.MemoryReading(81559, free[0], 10)}, dict(used)

    book = GpuSlots(slots, busy=lambda: running, reader=reader, clock=lambda: now[0])
    assert book.can_run(slots[0], _spec(50000))
    running[0] = (_spec(50000), 4242)  # slot 0 started a trial; it has allocated nothing yet
    now[0] += 2
    # the GPU still reads 81000 free, but 50000 of it is slot 0's: a second 50000 does not fit
    assert not book.can_run(slots[1], _spec(50000)) and book.available_mb(slots[1]) == 31000
    assert book.can_run(slots[1], _spec(30000))
    used[4242] = 45000  # slot 0's worker now uses 45000 of its 50000 (nvidia-smi lists its pid)
    free[0] = 36000
    now[0] += 2
    assert book.available_mb(slots[1]) == 31000 and book.can_run(slots[1], _spec(30000))
    assert book.available_mb(slots[1]) == 36000 - 5000
    # another process fills the GPU: the next claim sees it (re-read), 0 free is known
    free[0] = 0
    now[0] += 2
    assert not book.can_run(slots[1], _spec(1))
    assert reads[-1] == 0 and len(reads) >= 3
    info = book.infos()
    assert len(info) == 1 and info[0].memory_free_mb == 0 and info[0].available_mb == -5000
    # status uses the same numbers
    assert not D.gpu_fits(info[0], 1) and "gpu0 -5000 MiB available of 81559" in D.memory_summary(info)


def test_device_errors_take_a_device_out_of_service() -> None:
    dev = Device(index=1, uuid=A100, name="A100", memory_total_mb=40960, memory_free_mb=40000)
    slots = [Slot(0, device=dev), Slot(1, device=dev), Slot(2, None)]
    book = GpuSlots(slots, busy=dict, reader=lambda: None)
    assert not book.on_device_error(slots[0], "CUDA error: uncorrectable ECC error encountered")
    book.on_trial_ok(slots[1])  # a finished trial resets the count
    assert not book.on_device_error(slots[0], "x")
    assert not book.on_device_error(slots[1], "y")
    assert book.on_device_error(slots[0], "CUDA error: uncorrectable ECC error encountered\nmore")
    assert slots[0].out_of_service and slots[1].out_of_service
    assert "3 device errors in a row (last: CUDA error: uncorrectable ECC" in slots[0].out_of_service
    # its slots fall back to the CPU for trials that allow it; one worker stays
    assert book.device_for(slots[0], "preferred") == "cpu"
    assert book.can_run(slots[0], _spec(requires_gpu=False)) and not book.can_run(slots[0], _spec())
    assert slots[0].env()["CUDA_VISIBLE_DEVICES"] == ""
    assert book.should_start(slots[0], lambda s: False) and not book.should_start(slots[1], lambda s: False)
    assert book.should_retire(slots[1]) and not book.should_retire(slots[0])
    assert book.can_serve(False) and not GpuSlots(slots[:2], busy=dict).can_serve(True)
    info = book.infos()[0]
    assert info.out_of_service and D.gpus_out_of_service([info])[0].startswith(
        f"gpu1 ({A100}): 3 device errors"
    )


def test_device_trouble_classification() -> None:
    import torch

    assert (
        D.device_trouble(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) == "oom"
    )
    assert D.device_trouble(RuntimeError("CUDA error: uncorrectable ECC error encountered")) == "device"
    assert (
        D.device_trouble(RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable"))
        == "device"
    )
    assert D.device_trouble(AssertionError("Torch not compiled with CUDA enabled")) == "device"
    assert D.device_trouble(RuntimeError("CUDA error: device-side assert triggered")) == ""  # the trial's bug
    assert D.device_trouble(ValueError("bad config")) == ""


def test_device_check_on_cpu_only_torch_names_the_cause() -> None:
    why = D.check_device()  # this machine's torch is a CPU-only build
    assert why is not None and "CPU-only build" in why


def test_packing_grows_with_memory_and_backs_off_on_oom() -> None:
    p = Packer(max_per_gpu=8)
    assert p.may_add("g", 0, None) == (True, "")
    ok, why = p.may_add("g", 1, 70000)
    assert not ok and "measured" in why  # the first trial runs alone until its peak is known
    p.observe_peak(10000)
    assert p.need_mb() == 12000
    assert p.may_add("g", 1, 70000)[0] and p.may_add("g", 5, 12000)[0]
    assert not p.may_add("g", 5, 11999)[0] and not p.may_add("g", 8, 80000)[0]
    assert not p.may_add("g", 1, None)[0]  # unknown memory: no packing
    assert p.on_oom("g", 4, 15000) == 3 and p.need_mb() == 18000
    ok, why = p.may_add("g", 3, 80000)
    assert not ok and "capped at 3" in why and p.may_add("other", 3, 80000)[0]
    # throughput: 3 trials not 1.1x faster than 2 -> no fourth
    for _ in range(3):
        p.observe_rate("h", 2, 100.0)
        p.observe_rate("h", 3, 105.0)
    ok, why = p.may_add("h", 3, 80000)
    assert not ok and "not 1.1x faster" in why
    assert p.may_add("h", 2, 80000)[0]


def test_packed_slots_start_one_at_a_time() -> None:
    dev = Device(index=0, uuid=H100, name="H100", memory_total_mb=81559, memory_free_mb=81559)
    slots = [Slot(i, device=dev) for i in range(4)]
    running: dict[int, tuple[TrialSpec, int | None]] = {}
    packer = Packer(max_per_gpu=4)
    now = [0.0]
    book = GpuSlots(
        slots,
        busy=lambda: running,
        packer=packer,
        reader=lambda: ({H100: D.MemoryReading(81559, 81559)}, {}),
        clock=lambda: now[0],
    )
    workers = {0}

    def has(s: Slot) -> bool:
        return s.id in workers

    assert [book.should_start(s, has) for s in slots] == [True, False, False, False]
    running[0] = (_spec(), 1)
    assert not book.should_start(slots[1], has)  # nothing measured yet
    packer.observe_peak(20000)
    assert book.should_start(slots[1], has) and not book.should_start(slots[2], has)
    workers.add(1)
    running[1] = (_spec(), 2)
    # two running: each reserves 24000 of 81559 -> 33559 left, a third fits
    book.refresh(force=True)
    assert book.available_mb(slots[2]) == 81559 - 2 * 24000 and book.should_start(slots[2], has)
    workers.add(2)
    running[2] = (_spec(), 3)
    book.refresh(force=True)
    assert not book.should_start(slots[3], has)  # 9559 left < 24000
    assert book.on_oom(slots[2], 30000) and packer.cap(dev.key) == 2
    # another trial of the same event, handled once fewer run: released too, the cap stays
    del running[2]
    assert book.on_oom(slots[1], 30000) and packer.cap(dev.key) == 2
    assert not book.can_run(slots[2], _spec())  # two run: the cap refuses a third claim
    assert book.should_retire(slots[2]) and not book.should_retire(slots[1])
    del running[1]
    now[0] += 60
    assert not book.on_oom(slots[0], 30000)  # alone on its GPU, later: the trial's own failure


def test_status_text_says_which_gpu_is_out_of_service() -> None:
    from ablator.status import STATES, AgentStatus, Progress, StatusReport, render

    why = f"gpu1 ({A100}): 3 device errors in a row (last: CUDA error: uncorrectable ECC error encountered)"
    report = StatusReport(
        store="file:///s",
        experiment="e",
        budget=2,
        base_budget=2,
        counts=dict.fromkeys(STATES, 0),
        progress=Progress(finished=0, total=2, fraction=0.0),
        agents=[
            AgentStatus(agent_id="box-1-aa", live=True, state="running", gpus=["A100"], out_of_service=[why])
        ],
        clock="store",
    )
    assert f"out of service: {why}" in render(report)
