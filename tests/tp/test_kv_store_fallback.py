"""A Triton KV store that fails (any way: compile error, no compiler) falls back to
``index_copy_`` for good and says so once, in the log and the timeline. Simulated on the
CPU; tests/tp/test_gpu.py checks that the real kernel runs on a GPU."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from rt.core.timeline import Span, reset_current_span, set_current_span
from rt.plugins.tp import hooks
from rt.plugins.tp.layers import kv_store


@pytest.fixture
def record(monkeypatch):
    """A fresh record, and stores that take the Triton path for CPU tensors."""
    fresh = kv_store.KVStoreRecord()
    monkeypatch.setattr(kv_store, "RECORD", fresh)
    monkeypatch.setattr(kv_store, "_wants_triton", lambda kv: fresh.fallback is None)
    return fresh


def test_a_failing_kernel_falls_back_for_good_and_is_recorded(record, monkeypatch, caplog):
    builds = []

    def broken_builder():
        builds.append(1)
        raise RuntimeError("Failed to find C compiler. Please specify via CC\nmore detail")

    monkeypatch.setattr(kv_store, "_triton_kernel", broken_builder)
    cache = torch.zeros(16, 2, 3, 4)
    qkv = torch.randn(5, 9 * 4 + 2 * 3 * 4)
    kv = qkv[:, 9 * 4 :].view(5, 2, 3, 4)  # strided rows, as attention passes them
    where = torch.tensor([1, 0, 7, 15, 3])
    with caplog.at_level(logging.WARNING, logger="rt.kv_store"):
        kv_store.store_kv(kv, cache, where)
        kv_store.store_kv(kv[:2], cache, torch.tensor([8, 9]))
    assert torch.equal(cache[where], kv) and torch.equal(cache[torch.tensor([8, 9])], kv[:2])
    assert builds == [1]  # never tried again
    assert record.fallback == "RuntimeError: Failed to find C compiler. Please specify via CC"
    assert record.describe().startswith("index_copy (triton failed: RuntimeError: Failed")
    assert len([r for r in caplog.records if "Triton KV-cache store failed" in r.message]) == 1


def test_a_compile_error_of_any_class_falls_back(record, monkeypatch):
    class CompilationError(Exception):  # what triton raises is not an ImportError
        pass

    def kernel():
        raise CompilationError("at 5:8: unsupported")

    monkeypatch.setattr(kv_store, "_triton_kernel", kernel)
    cache = torch.zeros(4, 2, 1, 2)
    kv_store.store_kv(torch.ones(1, 2, 1, 2), cache, torch.tensor([2]))
    assert cache[2].eq(1).all() and record.fallback.startswith("CompilationError")


def test_the_fallback_reaches_the_timeline(record, monkeypatch):
    monkeypatch.setattr(kv_store, "_triton_kernel", lambda: 1 / 0)
    kv_store.store_kv(torch.ones(1, 2, 1, 2), torch.zeros(4, 2, 1, 2), torch.tensor([1]))
    span = Span("warmup", "tp", 0, os.getpid(), "main", 0.0)
    token = set_current_span(span)
    try:
        hooks._note_kv_store_fallback()
    finally:
        reset_current_span(token)
    assert (
        span.notes["kv_store"] == "index_copy (triton failed: ZeroDivisionError: division by zero)"
    )


def test_cpu_tensors_never_try_triton():
    assert not kv_store._wants_triton(torch.zeros(1, 2, 1, 2))
    assert kv_store.KVStoreRecord().describe() == "index_copy"
