"""The CPU decode layout is measured once per machine and remembered; the torch-free
weights plan reads the same answer the rank used."""

from __future__ import annotations

import json

import pytest
import torch
from rt.core.build_once import MARKER
from rt.plugins.tp import layout_probe
from rt.plugins.tp.layout_probe import BLOCKS_MIN_GAIN, choose, known_parts, probe_path
from rt.plugins.tp.weights_plan import (
    PREPARED_FILE,
    checkpoint_files,
    prepared_dir,
    weight_files,
)

from .tiny_models import write_checkpoint


@pytest.fixture
def two_threads(monkeypatch, tmp_path):
    """A fresh cache dir and two threads a rank, whatever this machine has."""
    monkeypatch.setenv("RT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(layout_probe, "threads_per_rank", lambda world_size: 2)


def test_first_choice_is_measured_then_remembered(two_threads):
    assert known_parts(1, "cpu") is None  # nothing measured yet
    first = choose(1, "cpu")
    assert first.how == "measured" and first.plain_ms > 0 and first.blocks_ms > 0
    blocks_win = first.plain_ms > first.blocks_ms * BLOCKS_MIN_GAIN
    assert first.parts == (2 if blocks_win else 1)

    again = choose(1, "cpu")
    assert again.how == "cached"
    assert (again.parts, again.plain_ms, again.blocks_ms) == (
        first.parts,
        first.plain_ms,
        first.blocks_ms,
    )
    assert known_parts(1, "cpu") == first.parts
    entries = json.loads(probe_path().read_text())
    assert list(entries) == [layout_probe.machine_key(2)]


def test_the_probe_leaves_the_calling_threads_torch_threads_alone(two_threads):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        choose(1, "cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_nothing_to_choose_on_a_device_or_with_one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("RT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(layout_probe, "threads_per_rank", lambda world_size: 1)
    assert choose(1, "cpu").how == "one thread"
    assert choose(1, "cuda").how == "device"
    assert known_parts(4, "cpu") == known_parts(1, "cuda") == 1
    assert not probe_path().exists()


def test_an_unreadable_or_foreign_answer_is_measured_again(two_threads):
    probe_path().write_text("not json")
    assert known_parts(1, "cpu") is None
    probe_path().write_text(json.dumps({layout_probe.machine_key(2): {"parts": 7}}))
    assert known_parts(1, "cpu") is None  # 7 blocks is no answer for 2 threads
    assert choose(1, "cpu").how == "measured"


def test_the_plan_expects_the_checkpoint_until_the_layout_is_known(two_threads, tmp_path):
    model_dir = write_checkpoint("llama_odd", tmp_path / "tiny")
    for parts in (1, 2):  # prepared weights for either layout, as if saved earlier
        folder = prepared_dir(model_dir, 0, 1, "float32", "cpu", parts)
        folder.mkdir(parents=True)
        (folder / PREPARED_FILE).write_bytes(b"")
        (folder / MARKER).write_text(
            json.dumps({"files": [PREPARED_FILE], "sizes": {PREPARED_FILE: 0}})
        )
    assert weight_files(model_dir, 0, 1, "float32", "cpu", True) == checkpoint_files(model_dir)
    parts = choose(1, "cpu").parts
    expected = prepared_dir(model_dir, 0, 1, "float32", "cpu", parts) / PREPARED_FILE
    assert weight_files(model_dir, 0, 1, "float32", "cpu", True) == [expected]
