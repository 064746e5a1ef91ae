"""The one hook primitive (sinkhole.probe.hooks) and the one left-padding helper (sinkhole.probe.batch):
every temporary change is undone, also when the block raises."""

import contextvars

import pytest
import torch

from sinkhole.probe.batch import left_pad, pad_id, position_ids
from sinkhole.probe.hooks import context_value, first_tensor, hooked, observer, swapped


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def _hook_count(net):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


def test_hooked_runs_in_order_and_removes_everything_even_on_error():
    net, seen = _net(), []
    x = torch.randn(3, 4)
    with hooked(
        forward=[(net[0], observer(seen.append)), (net[0], lambda m, i, o: seen.append("second"))],
        pre={net[2]: lambda m, args: seen.append("pre")},
    ):
        net(x)
    assert seen[0].shape == (3, 4) and seen[1:] == ["second", "pre"]
    assert _hook_count(net) == 0
    with pytest.raises(RuntimeError), hooked({net[0]: lambda m, i, o: o * 0}):
        assert torch.all(net[0](x) == 0)  # a returned value replaces the output
        raise RuntimeError("boom")
    assert _hook_count(net) == 0


def test_swapped_restores_the_originals_even_when_a_replacement_fails():
    net = _net()
    first, last = net[0], net[2]

    def refuse(module):
        raise TypeError("no")

    with pytest.raises(TypeError), swapped(net, {"0": lambda m: torch.nn.Identity(), "2": refuse}):
        pass
    assert net[0] is first and net[2] is last
    with swapped(net, {"2": lambda m: torch.nn.Identity()}):
        assert net(torch.randn(1, 4)).shape == (1, 4)
    assert net[2] is last


def test_context_value_and_first_tensor():
    var = contextvars.ContextVar("v", default=0)
    with pytest.raises(ValueError), context_value(var, 5):
        assert var.get() == 5
        raise ValueError
    assert var.get() == 0
    t = torch.zeros(1)
    assert first_tensor((t, None)) is t and first_tensor(t) is t


def test_left_pad_layout_and_positions():
    ids, valid = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert valid.tolist() == [[True, True, True], [False, False, True]]
    assert position_ids(valid).tolist() == [[0, 1, 2], [0, 0, 0]]

    class NoPad:
        pad_token_id = None

    assert pad_id(NoPad()) == 0
