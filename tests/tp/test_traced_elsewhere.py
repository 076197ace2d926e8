"""rt's layers run eagerly while another thread traces with torch.fx (a background compile).

``torch.fx`` replaces ``torch.nn.Module.__call__`` process-wide while it traces; a plain
module called on another thread then fails. rt's layers call their ``forward`` directly
(layers/module.py), which also skips nn.Module's hook machinery."""

from __future__ import annotations

import threading

import pytest
import torch
from rt.plugins.tp.layers.activation import SiluAndMul
from rt.plugins.tp.layers.module import Module


class _Outer(Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class _TracedSlowly(torch.nn.Module):
    def __init__(self, inside: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.inside, self.release = inside, release

    def forward(self, x):
        self.inside.set()
        self.release.wait(10)
        return x + 1


def _while_tracing(call):
    inside, release = threading.Event(), threading.Event()
    tracer = threading.Thread(
        target=torch.fx.symbolic_trace, args=(_TracedSlowly(inside, release),)
    )
    tracer.start()
    assert inside.wait(10)
    try:
        return call()
    finally:
        release.set()
        tracer.join()


def test_rt_layers_run_while_another_thread_traces():
    x = torch.ones(2, 4)
    out = _while_tracing(lambda: _Outer(SiluAndMul())(x.clone()))
    torch.testing.assert_close(out, SiluAndMul().forward(x.clone()))


def test_a_plain_module_would_not():
    plain = torch.nn.Sequential(torch.nn.ReLU())
    with pytest.raises(NameError, match="not installed as a submodule"):
        _while_tracing(lambda: plain(torch.ones(2)))


def test_an_rt_layer_call_is_its_forward_and_runs_no_hooks():
    layer = _Outer(SiluAndMul())
    seen: list[str] = []
    layer.register_forward_pre_hook(lambda module, args: seen.append("hook"))
    x = torch.randn(2, 8)
    assert torch.equal(layer(x), layer.forward(x))
    assert seen == []
