"""BufferSnapshot: what fit restores when it skips a step, and what it does not copy again."""

import torch
from torch import nn

from pyro_manifold.infer._buffers import BufferSnapshot


class _Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.ones(3))  # constant
        self.register_buffer("count", torch.zeros(()))  # changes only sometimes


def test_a_buffer_changed_for_the_first_time_late_is_restored():
    m = _Counter()
    snap = BufferSnapshot([m])
    for _ in range(3):  # steps that change nothing
        snap.take()
    m.count.add_(5.0)  # the first change, inside a step
    snap.restore()
    assert m.count.item() == 0.0
    snap.take()
    m.count.add_(1.0)
    snap.restore_where(torch.tensor(False))  # a good step keeps it
    assert m.count.item() == 1.0
    snap.take()
    m.mask.mul_(2.0)
    snap.restore_where(torch.tensor(True))  # a bad step puts it back
    assert m.mask.tolist() == [1.0, 1.0, 1.0] and m.count.item() == 1.0


def test_constant_buffers_are_copied_once(monkeypatch):
    m = _Counter()
    snap = BufferSnapshot([m])
    copied = []
    real = torch._foreach_copy_
    monkeypatch.setattr(
        torch, "_foreach_copy_", lambda dst, src: copied.append(len(dst)) or real(dst, src)
    )
    snap.take()
    snap.take()
    assert copied == []  # nothing moved since the copies made at construction
    m.count.add_(1.0)
    snap.take()
    assert copied == [1]
    snap.take(everything=True)  # what a CUDA graph capture asks for
    assert copied == [1, 2]


def test_batch_norm_statistics_are_always_taken_and_a_replaced_buffer_is_recopied():
    bn = nn.BatchNorm1d(2)
    snap = BufferSnapshot([bn])
    snap.take()
    bn(torch.randn(16, 2) + 3.0)  # the kernel moves running_mean without a version bump
    snap.restore_where(torch.tensor(True))
    assert bn.running_mean.tolist() == [0.0, 0.0] and int(bn.num_batches_tracked) == 0
    bn.running_mean.data = torch.zeros(3)  # its storage replaced by one of another shape
    snap.take()
    bn.running_mean.add_(1.0)
    snap.restore()
    assert bn.running_mean.tolist() == [0.0, 0.0, 0.0]
