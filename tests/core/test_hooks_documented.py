"""Every hookspec has a docstring with an example and a section in docs/hooks.md."""

from __future__ import annotations

import inspect
import re

import pytest
from rt.core import hookspecs

from tests.conftest import REPO

SPECS = [
    (name, fn)
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("rt_")
]


def test_there_are_hookspecs():
    names = {name for name, _ in SPECS}
    assert {
        "rt_preload",
        "rt_frontend",
        "rt_start_workers",
        "rt_p2p_check",
        "rt_load_weights",
        "rt_allocate_kv_cache",
        "rt_compile",
        "rt_graph_capture",
        "rt_metadata_broadcaster",
        "rt_warmup",
        "rt_register_commands",
        "rt_add_options",
    } <= names


@pytest.mark.parametrize("name,fn", SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_has_docstring_with_example(name, fn):
    doc = inspect.getdoc(fn) or ""
    assert "Example" in doc and "::" in doc, f"{name} needs a docstring with an example"


@pytest.mark.parametrize("name,fn", SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_is_documented(name, fn):
    docs = (REPO / "docs" / "hooks.md").read_text()
    assert re.search(rf"^##+ `?{name}\b", docs, re.MULTILINE), (
        f"docs/hooks.md lacks a section for {name}"
    )
