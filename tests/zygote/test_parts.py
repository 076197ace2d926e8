"""The zygote's parts without a zygote process: credentials, messages, staleness, paths,
and one in-process server answering a peer with another user's credentials."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from rt.core.errors import ConfigError
from rt.plugins.zygote import call, home, launch, server
from rt.plugins.zygote.commands import _plugins_differ
from rt.plugins.zygote.fingerprint import SourceFile, changed_sources, source_files
from rt.plugins.zygote.imported import Imported
from rt.plugins.zygote.installation import installation, installation_difference
from rt.plugins.zygote.paths import (
    folder_problem,
    make_private_folder,
    socket_address,
    zygote_paths,
)
from rt.plugins.zygote.wire import (
    PeerCredentials,
    foreign_peer,
    peer_credentials,
    recv_message,
    send_message,
)


def test_only_the_own_user_is_served():
    me = os.geteuid()
    assert foreign_peer(PeerCredentials(pid=1, uid=me, gid=0)) is None
    reason = foreign_peer(PeerCredentials(pid=42, uid=me + 1, gid=0))
    assert reason == f"peer pid 42 runs as uid {me + 1}; this zygote serves uid {me} only"


def test_a_message_carries_json_and_file_descriptors():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    with a, b:
        assert peer_credentials(b).uid == os.geteuid()
        big = {"env": {f"K{i}": "v" * 100 for i in range(2000)}}  # past one read
        sender = threading.Thread(target=send_message, args=(a, big, [w]))
        sender.start()  # more than the socket buffers: the reader must run meanwhile
        got, fds = recv_message(b, max_fds=4)
        sender.join(10)
        assert got == big and len(fds) == 1
        os.write(fds[0], b"x")
        assert os.read(r, 1) == b"x"
        for fd in (r, w, *fds):
            os.close(fd)


def test_a_caller_of_another_installation_is_refused_with_the_reason():
    mine = installation()
    assert installation_difference(mine, mine) is None
    other = {**mine, "torch": "0.0.1"}
    assert installation_difference(other, mine) == (
        f"torch's installed version differs: '0.0.1' for the caller, {mine['torch']!r} in the zygote"
    )


def test_changed_sources_sees_contents_not_touches(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("x = 1\n")
    [before] = source_files({"rt.fake": type("M", (), {"__file__": str(path)})})
    os.utime(path, ns=(1, 1))  # touched only
    assert changed_sources([before]) == []
    path.write_text("x = 2\n")
    assert changed_sources([before]) == [str(path)]
    gone = SourceFile(str(tmp_path / "gone.py"), 1, 1, "0")
    assert changed_sources([gone]) == [gone.path]


def test_the_folder_is_private(tmp_path):
    folder = tmp_path / "zygote"
    make_private_folder(folder)
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o755)
    assert "chmod 700" in folder_problem(folder)
    with pytest.raises(ConfigError, match="open to other users"):
        make_private_folder(folder)


def test_a_deep_socket_path_is_reached_through_its_folder(tmp_path):
    deep = tmp_path / ("d" * 90) / "zygote"
    make_private_folder(deep)
    path = deep / "socket"
    assert len(str(path)) > 107
    listener = socket.socket(socket.AF_UNIX)
    with listener, socket_address(path) as address:
        listener.bind(address)
        listener.listen()
        assert path.exists()
        with socket.socket(socket.AF_UNIX) as c, socket_address(path) as again:
            c.connect(again)


def _server(tmp_path: Path) -> server.ZygoteServer:
    paths = zygote_paths(tmp_path)
    lock = home.take_lock(paths)
    listener = home.bind(paths)
    mine = installation()
    imported = Imported(mine, "x", {}, {}, (), ("tp",), (), {}, 0.0)
    return server.ZygoteServer(paths, imported, listener, lock)


def _ask_while_serving(zygote: server.ZygoteServer, message: dict, fds: list[int]) -> dict:
    replies: list[dict] = []
    asker = threading.Thread(
        target=lambda: replies.append(call.request(zygote.paths, message, fds))
    )
    asker.start()
    zygote.handle()
    asker.join(10)
    return replies[0]


def test_a_peer_with_another_users_credentials_is_refused_and_its_fds_closed(tmp_path, monkeypatch):
    zygote = _server(tmp_path)
    try:
        foreign = PeerCredentials(pid=4242, uid=os.geteuid() + 1000, gid=0)
        monkeypatch.setattr(server, "peer_credentials", lambda sock: foreign)
        r, w = os.pipe()
        open_before = len(os.listdir("/proc/self/fd"))
        reply = _ask_while_serving(zygote, {"op": "fork", "caller": installation()}, [r])
        assert reply["ok"] is False
        assert f"runs as uid {foreign.uid}" in reply["reason"]
        assert zygote.forks == 0
        assert len(os.listdir("/proc/self/fd")) == open_before  # the received copy is closed
        os.close(r)
        os.close(w)
    finally:
        zygote.close()
        os.close(zygote.lock)


def test_the_server_answers_its_own_user_and_refuses_a_stale_caller(tmp_path):
    zygote = _server(tmp_path)
    try:
        reply = _ask_while_serving(zygote, {"op": "hello", "caller": installation()}, [])
        assert reply == {"ok": True, "reason": None, "pid": os.getpid()}
        stale = {**installation(), "rt": "0.0.0"}
        reply = _ask_while_serving(zygote, {"op": "fork", "caller": stale}, [])
        assert reply["ok"] is False and reply["reason"].startswith("stale: rt's version differs")
    finally:
        zygote.close()
        os.close(zygote.lock)
    assert not zygote.paths.socket.exists()


def test_a_zygote_whose_socket_is_gone_knows_it(tmp_path):
    zygote = _server(tmp_path)
    try:
        assert zygote.lost_home() is None
        zygote.paths.socket.unlink()
        assert "is gone" in zygote.lost_home()
    finally:
        zygote.close()
        os.close(zygote.lock)


def test_the_client_refuses_a_socket_of_another_user(tmp_path, monkeypatch):
    zygote = _server(tmp_path)
    try:
        other = PeerCredentials(pid=1, uid=os.geteuid() + 1, gid=0)
        monkeypatch.setattr(call, "peer_credentials", lambda sock: other)
        with pytest.raises(call.ZygoteUnavailable, match="is not this user's"):
            call.request(zygote.paths, {"op": "hello"})
    finally:
        zygote.close()
        os.close(zygote.lock)


def test_a_second_zygote_for_the_same_folder_cannot_start(tmp_path):
    paths = zygote_paths(tmp_path)
    lock = home.take_lock(paths)
    try:
        with pytest.raises(Exception, match="another zygote runs"):
            home.take_lock(paths)
    finally:
        os.close(lock)


@pytest.mark.parametrize(
    "argv, command",
    [
        (["serve", "m"], "serve"),
        (["--profile", "fast-startup", "generate", "m", "hi"], "generate"),
        (["--set", "a=serve", "-p", "x", "generate"], "generate"),
        (["--debug", "serve"], "serve"),
        (["--", "serve"], None),
        (["--profile"], None),
    ],
)
def test_the_launcher_finds_the_command_past_the_options_before_it(argv, command):
    assert launch.command_of(argv) == command


def test_the_launcher_declines_other_commands_and_the_zygote_turned_off(monkeypatch):
    monkeypatch.delenv("RT_ZYGOTE__USE", raising=False)
    assert not launch._declined_early(["serve", "m"])
    assert launch._declined_early(["zygote", "start"])
    assert launch._declined_early(["serve", "m", "--no-zygote"])
    assert not launch._declined_early(["generate", "m", "--", "--no-zygote"])
    monkeypatch.setenv("RT_ZYGOTE__USE", "off")
    assert launch._declined_early(["serve", "m"])


def test_a_replaced_zygote_names_only_the_plugins_that_changed():
    assert _plugins_differ(["tp", "http"], ["tp", "http", "shm-broadcast"]) == (
        "this start also selects shm-broadcast"
    )
    assert _plugins_differ(["tp", "probe", "http"], ["tp", "http", "p2p-table"]) == (
        "this start also selects p2p-table; it imported probe, which this start does not select"
    )
    assert "another order" in _plugins_differ(["a", "b"], ["b", "a"])
