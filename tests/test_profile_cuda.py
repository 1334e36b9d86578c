"""The CUDA timing and memory code paths, exercised without a GPU.

`time_cuda` and `cuda_peak_memory` only call a handful of `torch.cuda` functions; here those are
replaced by fakes that record the calls, so the protocol (events around each forward, then a
synchronize; cuDNN benchmarking off and restored; peak statistics reset before the forward)
is checked on any machine. With a GPU the real thing runs too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimsr.profile import cuda_peak_memory, time_cuda


class FakeCuda:
    """Stands in for the `torch.cuda` calls the profiler makes; logs them in order."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.clock = 0.0
        self.allocated = 1000
        self.peak = 1000
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                self.t: float | None = None

            def record(self) -> None:
                fake.log.append("record")
                fake.clock += 1.5
                self.t = fake.clock

            def elapsed_time(self, end: Event) -> float:
                assert fake.log[-1] == "synchronize", "elapsed_time before synchronize"
                assert self.t is not None and end.t is not None
                return end.t - self.t

        self.Event = Event

    def synchronize(self, device: object = None) -> None:
        self.log.append("synchronize")

    def empty_cache(self) -> None:
        self.log.append("empty_cache")

    def reset_peak_memory_stats(self, device: object = None) -> None:
        self.log.append("reset")
        self.peak = self.allocated

    def memory_allocated(self, device: object = None) -> int:
        return self.allocated

    def max_memory_allocated(self, device: object = None) -> int:
        return self.peak


class Recorder(nn.Module):
    """A 'network' whose forward shows up in the log and allocates 500 bytes at its peak."""

    def __init__(self, fake: FakeCuda) -> None:
        super().__init__()
        self.fake = fake
        self.calls = 0
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.grad_enabled.append(torch.is_grad_enabled())
        self.fake.log.append("forward")
        self.fake.peak = max(self.fake.peak, self.fake.allocated + 500)
        return x


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()
    for name in (
        "synchronize",
        "empty_cache",
        "reset_peak_memory_stats",
        "memory_allocated",
        "max_memory_allocated",
    ):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    return fake


def test_time_cuda_follows_the_ntire_protocol(fake_cuda: FakeCuda) -> None:
    torch.backends.cudnn.benchmark = True
    net = Recorder(fake_cuda)
    timing = time_cuda(net, torch.zeros(1, 3, 4, 4), warmup=2, repeats=3)
    assert torch.backends.cudnn.benchmark is True  # restored afterwards
    torch.backends.cudnn.benchmark = False
    assert net.calls == 5 and not any(net.grad_enabled)
    assert fake_cuda.log == ["record", "forward", "record", "synchronize"] * 5
    assert timing.method == "cuda events" and timing.threads is None
    assert len(timing.warmup_ms) == 2 and len(timing.times_ms) == 3
    assert timing.times_ms == [1.5, 1.5, 1.5] and timing.first_ms == 1.5


def test_time_cuda_turns_cudnn_benchmarking_off_while_timing(fake_cuda: FakeCuda) -> None:
    seen: list[bool] = []

    class Probe(Recorder):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.backends.cudnn.benchmark)
            return super().forward(x)

    before = torch.backends.cudnn.benchmark
    time_cuda(Probe(fake_cuda), torch.zeros(1), warmup=0, repeats=2)
    assert seen == [False, False] and torch.backends.cudnn.benchmark == before


def test_cuda_peak_memory_resets_then_reads_the_peak(fake_cuda: FakeCuda) -> None:
    net = Recorder(fake_cuda)
    mem = cuda_peak_memory(net, torch.zeros(1, 3, 4, 4))
    assert fake_cuda.log == ["synchronize", "empty_cache", "reset", "forward", "synchronize"]
    assert mem.method == "torch.cuda.max_memory_allocated"
    assert mem.baseline_bytes == 1000 and mem.peak_increase_bytes == 500
    assert mem.peak_bytes == 1500 and mem.to_dict()["peak_bytes"] == 1500


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_profile() -> None:  # pragma: no cover - only where a GPU exists
    import slimsr
    from slimsr.profile import profile_model

    report = profile_model(
        slimsr.create_model("e_rfdn", 4), input_hw=(32, 32), device="cuda", repeats=2
    )
    assert report.runtime is not None and report.runtime.method == "cuda events"
    assert report.memory is not None and report.memory.peak_bytes > 0
