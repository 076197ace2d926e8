"""What reaches a client is one line and names no server file path."""

from __future__ import annotations

from rt.plugins.http.public import one_line, public_data, public_message, redact_paths


def test_one_line_keeps_the_first_line_only():
    assert (
        one_line("\n  boom: it broke  \nTraceback (most recent call last):\n  x")
        == "boom: it broke"
    )
    assert one_line("") == ""


def test_file_paths_are_cut_to_their_last_part():
    text = "[/__w/pytorch/third_party/gloo/pair.cc:534] closed; see /root/.cache/rt/models/m/"
    assert redact_paths(text) == "[.../pair.cc:534] closed; see .../m"
    assert public_message("FileNotFoundError: /srv/models/x.safetensors\nmore") == (
        "FileNotFoundError: .../x.safetensors"
    )


def test_urls_and_single_names_are_kept():
    for text in ("serving on http://127.0.0.1:8000/v1/models", "1/2 done", "see /ready", "a/b/c"):
        assert redact_paths(text) == text


def test_public_data_redacts_every_string_in_a_timeline():
    data = {"spans": [{"notes": {"files": ["/a/b/config.json", "/a/b/model.safetensors"]}}]}
    assert public_data(data) == {
        "spans": [{"notes": {"files": [".../config.json", ".../model.safetensors"]}}]
    }
