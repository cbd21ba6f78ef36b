"""A raw HTTP/2 gRPC client that reads only when told to: the hostile or careless peer.

gRPC libraries open their flow-control windows as the application reads; this
client announces a receive window of 0 and never opens it unless asked, so a
server that streams to it can send headers and trailers but not one byte of a
message. Each stream's response headers, data and trailers are recorded as
they arrive; ``wait_for`` waits on them (no timing assumptions).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings


@dataclass
class RawStream:
    stream_id: int
    headers: dict[str, str] | None = None
    trailers: dict[str, str] | None = None
    data: bytearray = field(default_factory=bytearray)
    reset: int | None = None
    """The RST_STREAM error code, when the server reset the stream."""

    @property
    def status(self) -> int | None:
        """The grpc-status the stream ended with (a trailers-only reply carries it in its headers)."""
        for block in (self.trailers, self.headers):
            if block and "grpc-status" in block:
                return int(block["grpc-status"])
        return None

    @property
    def message(self) -> str:
        for block in (self.trailers, self.headers):
            if block and "grpc-status" in block:
                return block.get("grpc-message", "")
        return ""

    @property
    def ended(self) -> bool:
        return self.status is not None or self.reset is not None


class RawGrpcClient:
    """One HTTP/2 connection to a gRPC server; every stream's receive window starts at 0."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.streams: dict[int, RawStream] = {}
        self.closed = False
        self._changed = asyncio.Condition()
        self._starting = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawGrpcClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self.connection.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        )
        self.connection.initiate_connection()
        await self._flush()
        self._pump = asyncio.create_task(self._read_frames())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop the connection, as an abandoning client does."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self.closed = True

    async def start(self, method: str, request: bytes, metadata: dict[str, str] | None = None) -> RawStream:
        """Send a unary request on a new stream; nothing of the reply is read.

        Waits while the server's limit of concurrent streams is reached, as gRPC clients do.
        """
        async with self._starting:  # one stream opened at a time: the checks below hold until it is sent
            await self.wait_for(
                lambda: self.connection.open_outbound_streams
                < self.connection.remote_settings.max_concurrent_streams
            )
            framed = b"\0" + len(request).to_bytes(4, "big") + request
            # The server's receive window, unlike ours, opens as it reads.
            await self.wait_for(lambda: self.connection.outbound_flow_control_window >= len(framed))
            stream_id = self.connection.get_next_available_stream_id()
            self.streams[stream_id] = RawStream(stream_id)
            self.connection.send_headers(
                stream_id,
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", method),
                    (":authority", f"{self.host}:{self.port}"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                    *(metadata or {}).items(),
                ],
            )
            self.connection.send_data(stream_id, framed, end_stream=True)
            await self._flush()
            return self.streams[stream_id]

    async def open_window(self, stream: RawStream, size: int = 16 * 1024 * 1024) -> None:
        """Let the server send ``size`` more bytes on ``stream`` (and on the connection)."""
        self.connection.increment_flow_control_window(size)
        self.connection.increment_flow_control_window(size, stream.stream_id)
        await self._flush()

    async def wait_for(self, ready: object, timeout_s: float = 60.0) -> None:
        """Wait until ``ready()`` holds, re-checked whenever a frame arrives."""
        assert callable(ready)
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(ready), timeout_s)

    async def _flush(self) -> None:
        assert self._writer is not None
        self._writer.write(self.connection.data_to_send())
        await self._writer.drain()

    async def _read_frames(self) -> None:
        assert self._reader is not None
        while True:
            chunk = await self._reader.read(65536)
            if not chunk:
                self.closed = True
                async with self._changed:
                    self._changed.notify_all()
                return
            for event in self.connection.receive_data(chunk):
                stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
                if isinstance(event, h2.events.ResponseReceived) and stream:
                    stream.headers = dict(event.headers)  # type: ignore[arg-type]
                elif isinstance(event, h2.events.TrailersReceived) and stream:
                    stream.trailers = dict(event.headers)  # type: ignore[arg-type]
                elif isinstance(event, h2.events.DataReceived) and stream:
                    stream.data += event.data
                elif isinstance(event, h2.events.StreamReset) and stream:
                    stream.reset = int(event.error_code)
            await self._flush()
            async with self._changed:
                self._changed.notify_all()
