"""The latency proxy the store benchmark uses: it delays each request by the set time, keeps bytes and order intact,
and does not serialise concurrent connections (else the concurrent pull it measures would be a lie)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.latency_proxy import LatencyProxy


@pytest.fixture
def echo_server():
    """Answers each connection with the sha256 of the bytes it received before the client shut down writing."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            h = hashlib.sha256()
            while chunk := conn.recv(1 << 16):
                h.update(chunk)
            conn.sendall(h.hexdigest().encode())

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(5)
    srv.close()


def _roundtrip(port: int, payload: bytes) -> tuple[str, float]:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.decode(), time.perf_counter() - t0


def test_proxy_delays_requests_and_keeps_bytes(echo_server):
    payload = os.urandom(3 * 1024 * 1024 + 17)  # many chunks
    proxy = LatencyProxy("127.0.0.1", echo_server, delay_ms=80).start()
    try:
        digest, seconds = _roundtrip(proxy.port, payload)
        assert digest == hashlib.sha256(payload).hexdigest()
        assert seconds >= 0.08
        # the delay is a latency, not a per-chunk toll: 48+ chunks do not add up to 48 x 80 ms
        assert seconds < 1.5

        # eight concurrent requests overlap their waits
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as ex:
            results = list(ex.map(lambda _: _roundtrip(proxy.port, b"x" * 1000), range(8)))
        wall = time.perf_counter() - t0
        assert all(d == hashlib.sha256(b"x" * 1000).hexdigest() for d, _ in results)
        assert wall < 8 * 0.08 * 0.6, wall
    finally:
        proxy.stop()


def test_negative_delay_is_refused():
    with pytest.raises(ValueError, match="delay_ms"):
        LatencyProxy("127.0.0.1", 1, delay_ms=-1)
