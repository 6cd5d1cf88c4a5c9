"""Greenlight's warm pytest runner: collect once, then run the shards the worker feeds.

Loaded with ``-p greenlight_warm``; inert unless ``GREENLIGHT_WARM_FD`` names a connected
stream socket inherited from the worker. Everything goes over that socket, one JSON object
per line, so tests writing to stdout/stderr or reading stdin (even under ``-s``) cannot
corrupt it.

Runner to worker:
  {"kind": "ready", "version": 1, "collected": [node ids], "errors": [{"node", "output"}],
   "skipped_files": [node ids]}          (a file skipped at collection is no collected id,
                                         but fed its node id it is reported skipped;
                                         "skipped_files" names them as the listing does)
  {"kind": "start", "test": id}
  {"kind": "test", "test": id, "outcome": "passed|failed|skipped|error",
   "duration_s": seconds, "output": text}
  {"kind": "teardown_error", "nodes": [collector ids], "output": text}
  {"kind": "done"}                       after each "run" command's last test
  {"kind": "bye"}                        after "exit": every fixture is torn down
Worker to runner:
  {"kind": "run", "tests": [node ids], "next": node id or null}
                                         "next": the test the shard goes on with after
                                         these; null: the shard ends with them
  {"kind": "exit"}                       (end of input means the same)

Fixtures: each fed item runs through pytest's own runtest protocol with the next item of
the shard as ``nextitem``, so a module or class stays set up while the shard's tests share
it and is torn down after its last one, a failing teardown being that test's error as in a
plain run. After a shard's last test everything but the session is torn down (session
fixtures outlive shards, until the revision changes). Should a shard's first test still
find collectors set up that it does not share (the worker's "next" was withdrawn), they are
torn down first and their failures come as ``teardown_error`` records. Plain pytest hooks
only: no dependency beyond pytest.
"""

import gc
import json
import os
import socket
import traceback

import pytest

FD_VARIABLE = "GREENLIGHT_WARM_FD"
PROTOCOL_VERSION = 1
OUTPUT_LIMIT = 64 * 1024


def pytest_configure(config):
    fd = os.environ.get(FD_VARIABLE)
    if fd is None:
        return
    # Children the tests start must not hold the channel open.
    os.environ.pop(FD_VARIABLE)
    channel = _Channel(int(fd))
    config.pluginmanager.register(_WarmRunner(channel), "greenlight_warm_runner")


class _Channel:
    def __init__(self, fd):
        self._socket = socket.socket(fileno=fd)
        self._socket.set_inheritable(False)
        self._reader = self._socket.makefile("rb")

    def send(self, record):
        self._socket.sendall(json.dumps(record).encode("utf-8") + b"\n")

    def receive(self):
        line = self._reader.readline()
        if not line:
            return None
        return json.loads(line)


def _truncate(text):
    if len(text) <= OUTPUT_LIMIT:
        return text
    half = OUTPUT_LIMIT // 2
    dropped = len(text) - 2 * half
    return f"{text[:half]}\n[... {dropped} characters dropped ...]\n{text[-half:]}"


def _exception_text(error):
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _record(test, reports):
    """One test's record, its outcome decided the way pytest's JUnit report decides it."""
    duration = sum(report.duration for report in reports)
    record = {"kind": "test", "test": test, "duration_s": duration, "outcome": "passed", "output": ""}
    if not reports:
        record.update(outcome="error", output="pytest reported nothing for this test")
        return record
    failing = [report for report in reports if report.failed]
    skipped = [report for report in reports if report.skipped]
    if failing:
        # The first failure decides: in setup or teardown an error, in the call a failure
        # (a strict xpass fails its call).
        record["outcome"] = "failed" if failing[0].when == "call" else "error"
        parts = [f"[{report.when}] {report.longreprtext}" for report in failing]
        # Each report carries every section captured so far; the last has them all.
        parts += [f"----- {title} -----\n{content}" for title, content in reports[-1].sections]
        record["output"] = _truncate("\n".join(parts))
    elif skipped:
        report = skipped[0]
        record["outcome"] = "skipped"
        if hasattr(report, "wasxfail"):
            reason = report.wasxfail
            if reason.startswith("reason: "):
                reason = reason[len("reason: ") :]
            record["output"] = _truncate(f"[xfail] {reason}")
        else:
            reason = report.longreprtext
            if isinstance(report.longrepr, tuple):
                reason = report.longrepr[2]
            if reason.startswith("Skipped: "):
                reason = reason[len("Skipped: ") :]
            record["output"] = _truncate(f"[skipped] {reason}")
    return record


class _WarmRunner:
    def __init__(self, channel):
        self.channel = channel
        self.collection_errors = []
        self.collection_skips = {}
        self.reports = []

    def pytest_collectreport(self, report):
        if report.failed:
            self.collection_errors.append({"node": report.nodeid, "output": _truncate(report.longreprtext)})
        elif report.skipped:
            # A file that skipped itself at import (pytest.importorskip, a module-level
            # pytest.skip): the listing names it as a test, and a run reports it as pytest's
            # JUnit report does, `collection skipped` and the report's text.
            self.collection_skips[report.nodeid] = _truncate(f"[skipped] collection skipped\n{report.longrepr}")

    def pytest_runtest_logreport(self, report):
        self.reports.append(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        items = {item.nodeid: item for item in session.items}
        # The whole collected suite lives as long as the runner: keep it out of the cyclic
        # garbage collector's scans, which would otherwise slow every test down.
        gc.collect()
        gc.freeze()
        root = session.config.rootpath
        self.channel.send(
            {
                "kind": "ready",
                "version": PROTOCOL_VERSION,
                "collected": [item.nodeid for item in session.items],
                "errors": self.collection_errors,
                # Files only, as the listing names them: a directory whose conftest skips
                # cannot be named to pytest.
                "skipped_files": [
                    nodeid for nodeid in self.collection_skips if "::" not in nodeid and (root / nodeid).is_file()
                ],
            }
        )
        while True:
            command = self.channel.receive()
            if command is None or command["kind"] == "exit":
                break
            if command["kind"] != "run":
                raise pytest.UsageError(f"greenlight_warm: unknown command {command!r}")
            self._run_shard(session, items, command["tests"], command.get("next"))
        self._teardown(session, None)
        self.channel.send({"kind": "bye"})
        return True

    def _run_shard(self, session, items, tests, following):
        runnable = [items[test] for test in tests if test in items]
        if runnable:
            # What the last shard left set up and this one's first test does not share.
            self._teardown(session, runnable[0])
        position = 0
        for test in tests:
            item = items.get(test)
            if item is None and test in self.collection_skips:
                self.channel.send({"kind": "start", "test": test})
                self.channel.send(
                    {
                        "kind": "test",
                        "test": test,
                        "outcome": "skipped",
                        "duration_s": 0.0,
                        "output": self.collection_skips[test],
                    }
                )
                continue
            if item is None:
                self.channel.send(
                    {
                        "kind": "test",
                        "test": test,
                        "outcome": "error",
                        "duration_s": 0.0,
                        "output": f"not collected: {test}",
                    }
                )
                continue
            position += 1
            nextitem = runnable[position] if position < len(runnable) else items.get(following)
            if nextitem is None or nextitem is item:
                # The shard ends: everything but the session goes, so that a module's
                # teardown failure is this test's error, as a plain run reports it.
                nextitem = session
            self.channel.send({"kind": "start", "test": test})
            self.reports = []
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            self.channel.send(_record(test, self.reports))
        self.channel.send({"kind": "done"})

    def _teardown(self, session, nextitem):
        """Tears the set-up collectors down to those `nextitem` descends from (all if None)."""
        state = session._setupstate
        needed = nextitem.listchain() if nextitem is not None else []
        leaving = [node.nodeid for node in state.stack if node not in needed]
        try:
            state.teardown_exact(nextitem)
        except (KeyboardInterrupt, SystemExit, pytest.exit.Exception):
            raise
        except BaseException as error:
            self.channel.send({"kind": "teardown_error", "nodes": leaving, "output": _truncate(_exception_text(error))})
