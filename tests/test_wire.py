"""``wire.FrameReader``: a runner's answers read one frame at a time, however they arrive, and a broken stream
refused."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest

from plugin_health.runtime import wire


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with ours, theirs:
        yield ours, theirs


def nothing_more() -> None:
    raise TimeoutError("nothing more arrived")


def frames(count: int, size: int = 0) -> tuple[list[dict[str, object]], bytes]:
    answers: list[dict[str, object]] = [{"id": i, "text": "é" * (i % 7) + "x" * size} for i in range(count)]
    return answers, b"".join(wire.frame_text(json.dumps(answer)) for answer in answers)


def test_frames_that_arrive_together_are_read_one_at_a_time_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    answers, data = frames(300)
    theirs.sendall(data)
    reader = wire.FrameReader(ours, 1 << 20)
    assert [reader.read(nothing_more, more=True) for _ in answers] == answers
    with pytest.raises(TimeoutError):
        reader.read(nothing_more, more=True)


@pytest.mark.parametrize("step", [1, 3, 4, 5, 113, 4096])
def test_frames_cut_anywhere_are_put_back_together(pair: tuple[socket.socket, socket.socket], step: int) -> None:
    ours, theirs = pair
    answers, data = frames(40, size=50)
    reader = wire.FrameReader(ours, 1 << 20)
    read: list[object] = []
    sent = 0

    def send_more() -> None:
        nonlocal sent
        if sent >= len(data):
            raise TimeoutError("all sent")
        theirs.sendall(data[sent:sent + step])
        sent += step
        time.sleep(0.0005 if step < 100 else 0)

    while len(read) < len(answers):
        read.append(reader.read(send_more, more=True))
    assert read == answers


def test_bytes_after_an_answer_nobody_awaits_are_a_broken_protocol(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    _, data = frames(2)
    theirs.sendall(data)
    with pytest.raises(wire.WireError, match="nobody asked"):
        wire.FrameReader(ours, 1 << 20).read(nothing_more)


def test_a_frame_larger_than_the_limit_is_refused_before_it_is_read(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(wire.frame_text("[" + "1," * 1000 + "1]"))
    with pytest.raises(wire.MessageTooLargeError):
        wire.FrameReader(ours, 100).read(nothing_more)


def test_a_frame_that_is_not_json_is_a_broken_protocol(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(wire.frame_text('{"a": NaN}') + wire.frame_text("{]"))
    reader = wire.FrameReader(ours, 1 << 20)
    for _ in range(2):
        with pytest.raises(wire.WireError, match="not JSON"):
            reader.read(nothing_more, more=True)


def test_requests_sent_together_are_read_from_a_blocking_socket_one_at_a_time() -> None:
    """A runner reads the core's requests (``marshal`` frames) from a blocking socket, many per ``recv``: each read
    gives the next request, in order."""
    core, runner = socket.socketpair()
    with core, runner:
        requests = [{"op": "load", "slot": slot, "text": b"x" * slot} for slot in range(50)]
        core.sendall(b"".join(wire.encode_request(request) for request in requests))
        reader = wire.FrameReader(runner, 1 << 20, loads=wire.decode_request)
        assert [reader.read(lambda: None, more=True) for _ in requests] == requests
        core.close()
        with pytest.raises(wire.PeerClosedError):  # the core closed its end: the runner's next read says so
            reader.read(lambda: None, more=True)


def test_a_reader_tells_whether_a_whole_frame_is_waiting_without_reading_the_socket(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """``waiting`` says whether the next ``read`` would return at once from what was read already (a runner takes the
    core's requests that arrived together as one group): a frame cut short is not waiting, nor is one still in the
    socket, unread."""
    ours, theirs = pair
    reader = wire.FrameReader(ours, 1 << 20)
    answers, data = frames(3)
    assert not reader.waiting()
    theirs.sendall(data)
    assert not reader.waiting()  # in the socket, not read yet
    assert reader.read(nothing_more, more=True) == answers[0]
    assert reader.waiting()
    assert reader.read(nothing_more, more=True) == answers[1]
    assert reader.waiting()
    assert reader.read(nothing_more, more=True) == answers[2]
    assert not reader.waiting()
    more, data = frames(2)
    theirs.sendall(data[:-1])
    assert reader.read(nothing_more, more=True) == more[0]
    assert not reader.waiting()  # the second is cut short
    theirs.sendall(data[-1:])
    assert reader.read(nothing_more, more=True) == more[1]


def test_what_arrives_while_a_writer_waits_is_read_ahead_and_then_read_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """``fill`` takes what has arrived (a writer waiting for room must not leave its peer blocked on its own writes),
    and ``read`` then gives the frames in order, those filled first; with nothing there, or the peer gone, it reads
    nothing."""
    ours, theirs = pair
    reader = wire.FrameReader(ours, 1 << 20)
    assert reader.fill() == 0  # nothing yet
    answers, data = frames(50)
    theirs.sendall(data[:1000])
    assert reader.fill() == 1000
    theirs.sendall(data[1000:])
    assert [reader.read(nothing_more, more=True) for _ in answers] == answers
    theirs.close()
    assert reader.fill() == 0


def test_a_peer_sending_without_end_is_buffered_only_up_to_the_limit(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.setblocking(False)
    reader = wire.FrameReader(ours, 100_000)
    sent = 0
    filled = 0
    for _ in range(200):
        with contextlib.suppress(BlockingIOError):
            sent += theirs.send(b"\0\0\0\1x" * 4096)
        filled += reader.fill()
    assert sent > filled  # the rest stays on the socket: the sender is blocked, not buffered here
    assert 100_000 <= filled <= 100_000 + 4 + 65_536
    assert reader.fill() == 0


def test_a_compact_encoder_writes_what_json_dumps_writes_and_refuses_what_it_refuses() -> None:
    """``compact_encoder`` (one C encoder made once, no cycle check) writes every value as the standard encoder of
    the same options does, and refuses the same values: a NaN where none is allowed, an object its ``default``
    refuses; a value holding a cycle, which it does not look for, ends in ``RecursionError``, not a hang."""
    import json

    from plugin_health.compact_json import compact_encoder

    class Text(str):
        pass

    values: list[object] = [None, True, 0, -1, 2**70, 2.5, 1e-300, "é\U0001f600\"\\\n", Text("sub"), [], {},
                            {"a": [1, {"b": (None, False)}], "c": Text("d")}]
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    plain, strict = compact_encoder(), compact_encoder(default=lambda value: str(value), allow_nan=False)
    for value in values:
        assert plain(value) == dumps(value)
        assert strict(value) == dumps(value)
    assert plain(float("nan")) == "NaN"
    with pytest.raises(ValueError, match="not JSON compliant"):
        strict([float("inf")])
    with pytest.raises(TypeError):
        plain({"x": object()})
    assert strict({"x": 3j}) == '{"x":"3j"}'
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(RecursionError):
        plain(cycle)
