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

from compiler_svc.cache import ProgramCache
from compiler_svc.pipeline import CompileOptions, cache_key, compile_model, program_info
from services import tracing
from services.errors import NpusimError
from services.program import Program
from services.protocol import Kind, Message, error_message
from services.server import Request, Service

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
        try:
            data = req.msg.tensor("model").tobytes()
            key = cache_key(data, opts)
            cached = self.cache.get(key)
            if cached is not None:
                info = dict(program_info(Program.from_bytes(cached)), key=key, stages={})
                self.reply(req, self._reply(req, cached, info, cached=True, spans=[]))
                return
        except NpusimError as e:
            self.reply(req, error_message(req.msg.id, e))
            return
        with self._lock:
            waiting = self._inflight.get(key)
            if waiting is not None:  # the same model is compiling right now: share its result
                waiting.append(req)
                return
            self._inflight[key] = [req]
        parent = tracing.extract(req.msg.traceparent)
        collect = bool(req.msg.body.get("collect"))
        result: tuple[bytes, dict[str, Any]] | BaseException
        with tracing.capture(collect) as spans:
            try:
                if parent is not None:
                    with tracing.tracer().start_as_current_span("compile", context=parent,
                                                                attributes={"target": opts.target_npu}):
                        program, info = compile_model(data, opts)
                else:
                    program, info = compile_model(data, opts)
                blob = program.to_bytes()
                info["key"] = key
                self.compiled += 1
                result = (blob, info)
            except NpusimError as e:
                result = e
            except Exception as e:  # noqa: BLE001 - report the bug to the caller
                log.exception("compile failed")
                result = e
        if not isinstance(result, BaseException):
            try:
                self.cache.put(key, result[0])
            except OSError as e:  # a full disk costs the cache, not the compile
                log.warning("could not write the program cache %s: %s", self.cache.directory, e)
        records = [tracing.to_record(s) for s in spans]
        with self._lock:
            waiters = self._inflight.pop(key, [req])
        for r in waiters:
            if isinstance(result, BaseException):
                self.reply(r, error_message(r.msg.id, result))
            else:
                self.reply(r, self._reply(r, result[0], result[1], cached=r is not req,
                                          spans=records if r is req else []))

    @staticmethod
    def _reply(req: Request, blob: bytes, info: dict[str, Any], *, cached: bool,
               spans: list[dict[str, Any]]) -> Message:
        body: dict[str, Any] = {"info": info, "cached": cached}
        if spans:
            body["spans"] = spans
        return req.msg.reply(Kind.COMPILED, body, [("program", np.frombuffer(blob, dtype=np.uint8))])

    def on_stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
