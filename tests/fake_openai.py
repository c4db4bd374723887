"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests (ephemeral port, threads).

    with FakeOpenAI([ok("text"), status(500), slow(1.0, ok("late")), raw(b"{bad")]) as srv:
        srv.url  # http://127.0.0.1:PORT/v1

Each request takes the next scripted response; when the script runs out, `default` (a
callable of the request's JSON body, or a response) answers. Requests are recorded.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable
from typing import Any


def completion(content: str) -> bytes:
  return json.dumps(
    {
      "id": "x",
      "object": "chat.completion",
      "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
      ],
    }
  ).encode()


def ok(content: str) -> tuple:
  return ("body", 200, completion(content), 0.0)


def raw(body: bytes, code: int = 200) -> tuple:
  return ("body", code, body, 0.0)


def status(code: int) -> tuple:
  return ("body", code, json.dumps({"error": {"message": f"status {code}"}}).encode(), 0.0)


def slow(seconds: float, then: tuple) -> tuple:
  return (then[0], then[1], then[2], seconds)


class FakeOpenAI:
  def __init__(
    self, script: list[tuple] = (), default: Callable[[dict], tuple] | tuple | None = None
  ):
    self.script = list(script)
    self.default = default
    self.requests: list[dict[str, Any]] = []
    self._lock = threading.Lock()
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):  # quiet
        pass

      def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
          payload = json.loads(body)
        except json.JSONDecodeError:
          payload = None
        with outer._lock:
          outer.requests.append({"path": self.path, "headers": dict(self.headers), "json": payload})
          if outer.script:
            _, code, out, delay = outer.script.pop(0)
          else:
            d = outer.default
            _, code, out, delay = d(payload) if callable(d) else (d or status(500))
        if delay:
          time.sleep(delay)
        try:
          self.send_response(code)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(out)))
          self.end_headers()
          self.wfile.write(out)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client timed out and left

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

  def __enter__(self) -> "FakeOpenAI":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._server.shutdown()
    self._server.server_close()
    self._thread.join(timeout=5)
