"""The compiler as a service: COMPILE requests served from a cache or a worker thread.

Compiling takes seconds, so it runs off the loop thread: the service keeps answering
HEALTH while it works, and two requests for the same key while the first is still
compiling wait for that one result instead of compiling twice.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from typing import Any

import numpy as np

from npusim.compiler_svc.cache import ProgramCache
from npusim.compiler_svc.pipeline import CompileOptions, cache_key, compile_model, program_info
from npusim.services import tracing
from npusim.services.errors import NpusimError
from npusim.services.protocol import Kind, Message, error_message
from npusim.services.server import Request, Service

__all__ = ["CompilerService"]

log = logging.getLogger("npusim.compiler")


class CompilerService(Service):
    service = "compiler"

    def __init__(self, name: str, endpoint: str, *, cache: ProgramCache | None = None, workers: int = 1,
                 **kw: Any) -> None:
        super().__init__(name, endpoint, **kw)
        self.cache = cache or ProgramCache()
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="compile")
        self._inflight: dict[str, list[Request]] = {}
        self._lock = threading.Lock()
        self.compiled = 0
        self.handlers[Kind.COMPILE] = self._compile

    def info(self) -> dict[str, Any]:
        return {"cache": self.cache.info()}

    def extra_stats(self) -> dict[str, Any]:
        return {"compiled": self.compiled, "cache": self.cache.info(), "inflight": len(self._inflight)}

    def _compile(self, req: Request) -> Message | None:
        opts = CompileOptions.from_dict(req.msg.body["options"])
        self._pool.submit(self._work, req, opts)  # hashing, cache and compile all stay off the loop thread
        return None

    def _work(self, req: Request, opts: CompileOptions) -> None:
        """Serve one request from the cache, from a compile already running, or by compiling.

        Every request ends in exactly one reply, whatever fails: a named error for a bad
        model or option, an internal error with the exception's text for a bug. An exception
        left in a worker thread would lose the request and the caller would wait forever.
        """
        try:
            data = req.msg.tensor("model").tobytes()
            key = cache_key(data, opts)
            hit = self.cache.load(key)  # an unreadable entry is deleted: this is then a miss
            if hit is not None:
                blob, program = hit
                info = dict(program_info(program), key=key, stages={})
                self.reply(req, self._reply(req, blob, info, cached=True, spans=[]))
                return
        except Exception as e:  # noqa: BLE001 - NpusimError is the caller's mistake, anything else a bug
            if not isinstance(e, NpusimError):
                log.exception("compile request failed")
            self.reply(req, error_message(req.msg.id, e))
            return
        with self._lock:
            waiting = self._inflight.get(key)
            if waiting is not None:  # the same model is compiling right now: share its result
                waiting.append(req)
                return
            self._inflight[key] = [req]
        result: tuple[bytes, dict[str, Any], list[dict[str, Any]]] | Exception
        try:
            result = self._compile_now(req, data, key, opts)
        except Exception as e:  # noqa: BLE001 - report the bug to the caller
            if not isinstance(e, NpusimError):
                log.exception("compile failed")
            result = e
        with self._lock:
            waiters = self._inflight.pop(key, [req])
        for r in waiters:
            try:
                if isinstance(result, Exception):
                    msg = error_message(r.msg.id, result)
                else:
                    blob, info, records = result
                    msg = self._reply(r, blob, info, cached=r is not req, spans=records if r is req else [])
            except Exception as e:  # noqa: BLE001 - still one reply per request
                log.exception("could not build the compile reply")
                msg = error_message(r.msg.id, e)
            self.reply(r, msg)

    def _compile_now(self, req: Request, data: bytes, key: str,
                     opts: CompileOptions) -> tuple[bytes, dict[str, Any], list[dict[str, Any]]]:
        """Compile (traced under the request's span when it has one) and store the result."""
        parent = tracing.extract(req.msg.traceparent)
        collect = bool(req.msg.body.get("collect"))
        with tracing.capture(collect) as spans:
            if parent is not None:
                with tracing.tracer().start_as_current_span("compile", context=parent,
                                                            attributes={"target": opts.target_npu}):
                    program, info = compile_model(data, opts)
            else:
                program, info = compile_model(data, opts)
            blob = program.to_bytes()
            info["key"] = key
            self.compiled += 1
        try:
            self.cache.put(key, blob)
        except Exception as e:  # noqa: BLE001 - a full disk (or any cache fault) costs the cache, not the compile
            log.warning("could not write the program cache %s: %s", self.cache.directory, e)
        return blob, info, [tracing.to_record(s) for s in spans]

    @staticmethod
    def _reply(req: Request, blob: bytes, info: dict[str, Any], *, cached: bool,
               spans: list[dict[str, Any]]) -> Message:
        body: dict[str, Any] = {"info": info, "cached": cached}
        if spans:
            body["spans"] = spans
        return req.msg.reply(Kind.COMPILED, body, [("program", np.frombuffer(blob, dtype=np.uint8))])

    def on_stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
