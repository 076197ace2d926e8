"""How CPU ranks share this node's cores: the thread split and the timeline's note when
there are more ranks than cores."""

from __future__ import annotations

from rt.plugins.tp import cores


def test_more_ranks_than_cores_is_said_and_each_rank_keeps_one_thread(monkeypatch):
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    assert cores.threads_per_rank(3) == 1
    said = cores.cores_shared("cpu", 3)
    assert said is not None and "3 ranks on 2 CPU cores" in said


def test_ranks_that_fit_and_gpu_ranks_say_nothing(monkeypatch):
    monkeypatch.setattr(cores, "usable_cores", lambda: 4)
    assert cores.threads_per_rank(2) == 2
    assert cores.cores_shared("cpu", 4) is None
    assert cores.cores_shared("cuda", 8) is None
