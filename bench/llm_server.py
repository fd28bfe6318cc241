"""The benchmarks' model server: OpenAI's ``POST /v1/chat/completions`` answered after a fixed
latency with a valid JSON answer, and optionally 429s above a request rate it does not
announce (a token bucket; no ``Retry-After`` either). HTTP/1.1 keep-alive, asyncio streams."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson


@dataclass(slots=True)
class ServerStats:
    """What the server answered."""

    ok: int = 0
    rate_limited: int = 0
    ok_times: list[float] = field(default_factory=list)
    limited_times: list[float] = field(default_factory=list)


class LatencyServer:
    """See the module docstring.

    Args:
        latency_s: how long each answer takes.
        answer: the JSON text of the answer's message content.
        max_rate: requests/s above which it answers 429 (None: never).
    """

    def __init__(
        self, latency_s: float, answer: str = '{"n": 1}', max_rate: float | None = None
    ) -> None:
        self.latency_s = latency_s
        self.answer = answer
        self.max_rate = max_rate
        self.stats = ServerStats()
        self._tokens = max_rate or 0.0
        self._at = time.monotonic()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> LatencyServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL to point an adapter at."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _admit(self) -> bool:
        if self.max_rate is None:
            return True
        now = time.monotonic()
        self._tokens = min(self.max_rate * 0.2 + 1, self._tokens + (now - self._at) * self.max_rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = orjson.loads(await reader.readexactly(length)) if length else {}
                if not self._admit():
                    self.stats.rate_limited += 1
                    self.stats.limited_times.append(time.monotonic())
                    payload = orjson.dumps(
                        {"error": {"message": "rate limited", "type": "requests"}}
                    )
                    writer.write(_response(429, payload))
                    await writer.drain()
                    continue
                await asyncio.sleep(self.latency_s)
                self.stats.ok += 1
                self.stats.ok_times.append(time.monotonic())
                payload = orjson.dumps(
                    {
                        "id": f"bench-{self.stats.ok}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "bench"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": self.answer},
                            }
                        ],
                        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
                    }
                )
                writer.write(_response(200, payload))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _response(status: int, payload: bytes, extra: bytes = b"") -> bytes:
    reason = b"OK" if status == 200 else b"Too Many Requests"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
        % (status, reason, len(payload), extra)
        + payload
    )


async def _serve_forever(latency_s: float, max_rate: float | None) -> None:
    async with LatencyServer(latency_s, max_rate=max_rate) as server:
        print(server.port, flush=True)  # the parent reads the port from stdout
        await asyncio.Event().wait()


if __name__ == "__main__":  # python -m bench.llm_server LATENCY_S [MAX_RATE]
    import sys

    rate = float(sys.argv[2]) if len(sys.argv) > 2 else None
    asyncio.run(_serve_forever(float(sys.argv[1]), rate))
