"""A TCP relay on 127.0.0.1 in front of a port, for faults a test switches on and off.

`cut` closes its connections and refuses new ones until `restore` (a link pulled out);
`freeze` keeps its live connections open but drops their bytes and answers nothing
(a host that vanished without a reset: only heartbeats can tell).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.target = 0
        self.accepted = 0
        self.lock = threading.Lock()
        self.live: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.cut_off = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self, target: int) -> None:
        self.target = target
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            if self.cut_off.is_set():
                conn.close()  # refused: the peer's ZeroMQ keeps retrying
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            frozen = threading.Event()
            with self.lock:
                self.live.append((conn, upstream, frozen))
                self.accepted += 1
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b, frozen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, frozen: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                if not frozen.is_set():
                    dst.sendall(data)
        if not frozen.is_set():  # a real close is passed on; a frozen one never is
            self._drop(src, dst)

    def _drop(self, *socks: socket.socket) -> None:
        with self.lock:
            self.live = [c for c in self.live if c[0] not in socks and c[1] not in socks]
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            socks = [s for a, b, _ in self.live for s in (a, b)]
        self._drop(*socks)

    def restore(self) -> None:
        self.cut_off.clear()

    def freeze(self) -> None:
        with self.lock:
            for _, _, frozen in self.live:
                frozen.set()

    def close(self) -> None:
        self.closed.set()
        self.cut()
        self.listener.close()
        if self.thread.is_alive():
            self.thread.join(5)
