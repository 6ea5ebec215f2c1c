"""`python -m lorakit_engine train --plan plan.json` (or `validate`): the engine as a child process.

stdout carries only JSON-lines events (protocol/event.schema.json); everything else, including whatever the
libraries print, goes to stderr. Control lines come in on stdin. Any failure is one `error` event and exit 1.

Under torchrun (`WORLD_SIZE` > 1; see torchrun.py) rank 0 alone reads stdin and writes events; the other
ranks log to stderr, and a failure on any of them still becomes one `error` event.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import IO

from .deps import require
from .plan import read_plan
from .protocol import EngineError, EventWriter, error_event, log

_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


class _Args(argparse.ArgumentParser):
    def error(self, message: str):
        raise EngineError(
            "USAGE",
            f"{message}\n{self.format_usage()}",
            "Run `python -m lorakit_engine train --plan plan.json` (or `validate`).",
        )


def _parser() -> argparse.ArgumentParser:
    ap = _Args(prog="python -m lorakit_engine", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train as the plan says"), ("validate", "check the plan and its files")):
        p = sub.add_parser(name, help=text)
        p.error = ap.error  # the same error path for subcommands
        p.add_argument("--plan", required=True, help="plan.json written by lorakit")
    return ap


def claim_stdout() -> IO[str]:
    """Keep the real stdout for events and point fd 1 (and sys.stdout) at stderr, so that stray prints from
    any library, Python or C, cannot corrupt the event stream."""
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def main(argv: list[str] | None = None, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    for k, v in _OFFLINE.items():
        os.environ.setdefault(k, v)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    writer = EventWriter(stdout if stdout is not None else claim_stdout())
    emit, relay = writer, None
    if world > 1:
        from .torchrun import open_relay, quiet_emitter

        relay = open_relay(rank, writer)
        if rank:
            emit = quiet_emitter(rank)
        elif relay is not None:
            relay.watch()
    try:
        args = _parser().parse_args(argv)
        require()  # packages missing or too old: one clear error before the heavy imports
        plan = read_plan(args.plan)
        from .control import Controls, install_sigint, start_reader
        from .run import check_inputs, run

        if args.command == "validate":
            check_inputs(plan)
            log(emit, f"plan {args.plan} is valid")
            return 0
        controls = Controls()
        if rank == 0:
            start_reader(controls, emit, stdin)
        if threading.current_thread() is threading.main_thread():
            install_sigint(controls, emit, leader=rank == 0)
        run(plan, emit, controls)
        return 0
    except BaseException as e:  # noqa: BLE001 — every failure becomes one error event
        if isinstance(e, SystemExit) and e.code in (0, None):
            return 0
        event = error_event(e)
        if relay is not None:
            relay.report(event)
        elif rank == 0:
            emit(event)
        else:
            print(f"[lorakit-engine rank {rank}] {event['code']}: {event['traceback']}", file=sys.stderr)
        return 1


def _exit(code: int) -> None:
    """Under torchrun, leave without interpreter finalization: C++ threads of the process group and of the
    store (and the relay's watcher inside a store call) can otherwise abort the process at teardown
    ("terminate called without an active exception") after a run that succeeded. Every stream is flushed
    first; a single process exits normally."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 — a closed stream has nothing left to flush
                pass
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    _exit(main())
