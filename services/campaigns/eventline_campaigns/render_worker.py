"""A render worker process (``python -m eventline_campaigns.render_worker CONFIG``), run by ``rendering.RenderPool``.

It reads requests from stdin and writes results to stdout, each a frame: a
4-byte big-endian length and a pickle. A request is ``(templates, jobs)``:
``templates`` a list of ``(source, html)``, each job ``(template indexes,
keyword arguments of templates.variables)``. The worker answers with frames
holding the jobs' results in order (one frame per ``FLUSH_CHARS`` of text at
most, so its memory stays small): per job a list with, per template index,
``(True, text)`` or ``(False, reason)``. Only this package's own parent talks
to it.

The worker is the last line of defence behind the sandbox's own checks: its
address space is limited (``RLIMIT_AS``: an allocation past it fails with
MemoryError instead of growing the service), and a render that keeps the CPU
past twice its budget is interrupted by ``ITIMER_PROF`` even inside code that
never reaches a sandbox check. It dies with the service process, even one
killed with SIGKILL. Its stdout carries frames only; anything else
printed goes to stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import resource
import signal
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, BinaryIO

from jinja2.exceptions import SecurityError

from eventline_campaigns.templates import (
    Limits,
    RenderError,
    Template,
    TemplateProblem,
    compile_template,
    render,
    variables,
)

FRAME = struct.Struct(">I")
CACHED_TEMPLATES = 256
FLUSH_CHARS = 256 * 1024
"""Results are sent once they hold this much text (and at the end of a request)..."""
FLUSH_S = 1.0
"""... or once the first of them waited this long: the pool sees progress, not a stall."""

Job = tuple[tuple[int, ...], dict[str, Any]]
Result = tuple[bool, str]


def read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(FRAME.size)
    if len(header) < FRAME.size:
        return None
    (size,) = FRAME.unpack(header)
    body = stream.read(size)
    return body if len(body) == size else None


def frame(payload: Any) -> bytes:
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(body)) + body


class Renderer:
    """Compiles (with a small cache) and renders; the same code runs in the service for tests."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._cache: OrderedDict[tuple[str, bool], Template | str] = OrderedDict()

    def compiled(self, source: str, html: bool) -> Template | str:
        """The template, or why it cannot be compiled."""
        key = (source, html)
        found = self._cache.get(key)
        if found is None:
            try:
                found = compile_template(source, html=html, limits=self.limits)
            except TemplateProblem as problem:
                found = f"template error at {problem.description}"
            self._cache[key] = found
            if len(self._cache) > CACHED_TEMPLATES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return found

    def run(self, templates: Sequence[tuple[str, bool]], job: Job) -> list[Result]:
        indexes, arguments = job
        values = variables(**arguments)
        results: list[Result] = []
        for index in indexes:
            template = self.compiled(*templates[index])
            if isinstance(template, str):
                results.append((False, template))
                continue
            try:
                results.append((True, self._render(template, values)))
            except RenderError as exc:
                results.append((False, str(exc)))
        return results

    def _render(self, template: Template, values: dict[str, Any]) -> str:
        return render(template, values, self.limits)


class _GuardedRenderer(Renderer):
    """Interrupts a render that keeps the CPU past twice its budget (the worker's own timer)."""

    def _render(self, template: Template, values: dict[str, Any]) -> str:
        signal.setitimer(signal.ITIMER_PROF, self.limits.cpu_s * 2 + 0.01)
        try:
            return super()._render(template, values)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)


def _out_of_cpu(signum: int, frame: Any) -> None:
    raise SecurityError("rendering took too much CPU time")


def _limit_memory(headroom_mb: int) -> None:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + headroom_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_the_service(service_pid: int) -> None:
    """A worker must not outlive its service (killed with -9, it cannot stop us): the kernel kills
    us when the service process dies (Linux PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != service_pid:  # it died before the call above
        os._exit(1)


def main() -> None:
    config = json.loads(sys.argv[1])
    limits = Limits(steps=int(config["steps"]), cpu_s=float(config["cpu_s"]))
    output = sys.stdout.buffer
    sys.stdout = sys.stderr  # frames only on the real stdout
    signal.signal(signal.SIGPROF, _out_of_cpu)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the service, which stops us
    if sys.platform == "linux":
        _die_with_the_service(int(config["service_pid"]))
        _limit_memory(int(config["memory_mb"]))
    renderer = _GuardedRenderer(limits)
    output.write(frame("ready"))
    output.flush()
    requests = sys.stdin.buffer
    while True:
        body = read_frame(requests)
        if body is None:
            return  # the service closed the pipe: it stopped
        templates, jobs = pickle.loads(body)
        pending: list[list[Result]] = []
        size = 0
        since = time.monotonic()
        for job in jobs:
            try:
                results = renderer.run(templates, job)
            except MemoryError:
                results = [(False, "refused by the sandbox: out of memory")] * len(job[0])
            pending.append(results)
            size += sum(len(text) for _, text in results)
            if size >= FLUSH_CHARS or time.monotonic() - since >= FLUSH_S:
                output.write(frame(pending))
                output.flush()
                pending, size, since = [], 0, time.monotonic()
        if pending:
            output.write(frame(pending))
            output.flush()


if __name__ == "__main__":
    main()
