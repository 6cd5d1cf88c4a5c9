#!/usr/bin/env python3
"""Reads a farm build back from the master's API and compares JUnit outcomes test for test.
Standard library only; used by benches/real_suite.sh and benches/nextest_suite.sh.

  farm_report.py build URL REVISION LABEL T0 SERIAL_S JUNIT_OUT [TIMEOUT_S]
      Waits until the build of REVISION is finished and its shards have ended, then prints
      one line of figures and a few details, saves the build's merged JUnit report to
      JUNIT_OUT and appends a JSON line to $REPORT_JSONL (if set). T0 is the Unix time the
      wall is counted from (the master's start, or the commit); SERIAL_S the direct run's
      seconds (0: none).
  farm_report.py compare DIRECT.xml FARM.xml LABEL [WITHIN]
      Compares the outcome of every (classname, name) in both reports; prints the counts
      and a few examples of each kind of difference. WITHIN (dotted classname prefixes,
      comma-separated) keeps the direct run's tests of those packages only: what a
      tag-selected build should have run.
  farm_report.py table
      Reads $REPORT_JSONL and prints the Markdown rows of BENCHMARKS.md's tables.
"""
import json
import os
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET


def get(url, path, text=False):
    with urllib.request.urlopen(url + path, timeout=30) as response:
        body = response.read()
    return body.decode() if text else json.loads(body)


def wait_build(url, revision, timeout_s):
    deadline = time.time() + timeout_s
    while True:
        builds = get(url, "/api/v1/builds")
        mine = [b for b in builds if b["revision"] == revision and b.get("kind", "regular") in ("regular", "Regular")]
        mine = mine or [b for b in builds if b["revision"] == revision]
        if mine and mine[0]["state"] in ("green", "red", "error", "cancelled"):
            return mine[0]
        if time.time() > deadline:
            states = [(b["build_id"], b["revision"][:8], b["state"]) for b in builds]
            raise SystemExit(f"timed out waiting for the build of {revision[:8]}: {states}")
        time.sleep(0.25)


def metrics_lines(url):
    try:
        text = get(url, "/metrics", text=True)
    except Exception as error:  # noqa: BLE001 - a report, not a test
        return [f"(metrics unavailable: {error})"]
    wanted = ("greenlight_shard_overhead", "greenlight_worker_startup")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def build(url, revision, label, t0, serial_s, junit_out, timeout_s=3600.0):
    t0, serial_s = float(t0), float(serial_s)
    summary = wait_build(url, revision, float(timeout_s))
    build_id = summary["build_id"]
    # The build ends with its last result; the workers' finish of the last shards follows.
    deadline = time.time() + 30
    while True:
        detail = get(url, f"/api/v1/builds/{build_id}")
        shards = detail["shards"]
        if all(s.get("finished_at") is not None for s in shards) or time.time() > deadline:
            break
        time.sleep(0.25)
    summary = detail["build"]
    tests = get(url, f"/api/v1/builds/{build_id}/tests")["results"]
    with open(junit_out, "w", encoding="utf-8") as out:
        out.write(get(url, f"/api/v1/builds/{build_id}/junit.xml", text=True))

    makespan = summary.get("makespan_s")
    bound = summary.get("lower_bound_s")
    measured = summary.get("measured_bound_s")
    first_lease = min((s["started_at"] for s in shards), default=None)
    last_end = max((s["finished_at"] for s in shards if s.get("finished_at") is not None), default=None)
    span = (last_end - first_lease) if first_lease is not None and last_end is not None else None
    wall = summary["finished_at"] - t0 if summary.get("finished_at") else None
    timed = [s for s in shards if s.get("runner_wall_s") is not None]
    test_s = sum(r["duration_s"] for r in tests)
    runner_s = sum(s["runner_wall_s"] for s in timed)
    lease_s = sum(s["finished_at"] - s["started_at"] for s in timed if s.get("finished_at") is not None)
    workers = sorted({s["worker"] for s in shards})
    retried = sum(1 for r in tests if r.get("retried"))

    def f(value, digits=1):
        return "–" if value is None else f"{value:.{digits}f}"

    ratio_bound = makespan / bound if makespan and bound else None
    ratio_measured = makespan / measured if makespan and measured else None
    ratio_serial = makespan / serial_s if makespan and serial_s else None
    wall_serial = wall / serial_s if wall and serial_s else None
    print(
        f"{label}: build {build_id} {summary['state']}, {summary['counts']['total']} tests, "
        f"{len(shards)} shards on {len(workers)} workers; makespan {f(makespan)} s "
        f"(shards: first lease to last finish {f(span)} s), planned lower bound {f(bound)} s, "
        f"makespan/bound {f(ratio_bound, 2)}, measured bound {f(measured)} s "
        f"(makespan/measured {f(ratio_measured, 2)}); wall {f(wall)} s; "
        f"to the direct run: makespan {f(ratio_serial, 2)}, wall {f(wall_serial, 2)}"
    )
    if timed:
        print(
            f"  per shard: runner wall - test time {(runner_s - test_s) / len(timed):.2f} s, "
            f"lease to finish - runner wall {(lease_s - runner_s) / len(timed):.2f} s; "
            f"tests {test_s:.1f} s in all, {retried} retried result(s); "
            f"{len(shards) - len(timed)} shard(s) without a runner time"
        )
    for line in metrics_lines(url):
        print(f"  {line}")
    if os.environ.get("SHARDS") == "1":
        # The timeline: each shard from its lease, seconds since the build's first lease.
        by_shard = {}
        for result in tests:
            by_shard.setdefault(result.get("lease_id"), []).append(result["duration_s"])
        for shard in shards:
            ended = shard.get("finished_at")
            print(
                f"    shard {shard['lease_id']:>4} {shard['worker']:<10} {shard['state']:<10} "
                f"{shard['started_at'] - first_lease:7.1f} s .. "
                f"{'–' if ended is None else f'{ended - first_lease:7.1f} s'} "
                f"{shard['tests']:>6} tests (+{shard.get('withdrawn', 0)} withdrawn), runner "
                f"{f(shard.get('runner_wall_s'))} s, tests' own {sum(by_shard.get(shard['lease_id'], [])):.1f} s"
            )
    record = {
        "label": label, "build_id": build_id, "state": summary["state"], "tests": summary["counts"]["total"],
        "shards": len(shards), "makespan_s": makespan, "shard_span_s": span, "lower_bound_s": bound,
        "makespan_over_bound": ratio_bound, "measured_bound_s": measured,
        "makespan_over_measured": ratio_measured, "wall_s": wall, "serial_s": serial_s or None,
        "makespan_over_serial": ratio_serial, "wall_over_serial": wall_serial, "test_s": test_s,
    }
    if os.environ.get("REPORT_JSONL"):
        with open(os.environ["REPORT_JSONL"], "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


def outcomes(path):
    """(classname, name) -> passed | failed | error | skipped, from a JUnit file."""
    result = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                break
            if child.tag == "skipped":
                outcome = "skipped"
                if child.get("message") == "collection skipped":
                    outcome = "skipped (collection)"
        result[key] = outcome
    return result


def compare(direct_path, farm_path, label, within=""):
    direct, farm = outcomes(direct_path), outcomes(farm_path)
    if within:
        # A tag-selected build: the direct run's tests under those packages (dotted
        # classname prefixes, comma-separated) are what it should have run.
        prefixes = tuple(within.split(","))
        direct = {key: outcome for key, outcome in direct.items()
                  if (key[0] or key[1]).startswith(prefixes)}
    only_direct = sorted(set(direct) - set(farm))
    only_farm = sorted(set(farm) - set(direct))
    differ = sorted(key for key in set(direct) & set(farm) if direct[key] != farm[key])

    def tally(found):
        counts = {}
        for outcome in found.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))

    def name(key):
        return f"{key[0]}::{key[1]}" if key[0] else key[1]

    total = len(only_direct) + len(only_farm) + len(differ)
    print(f"{label}: outcomes compared test for test: {total} difference(s) "
          f"({len(only_direct)} only in the direct run, {len(only_farm)} only in the farm's, "
          f"{len(differ)} with another outcome)")
    print(f"  direct: {tally(direct)}")
    print(f"  farm:   {tally(farm)}")
    collection = [key for key in only_direct if direct[key] == "skipped (collection)"]
    if collection:
        print(f"  of those only in the direct run, {len(collection)} are modules skipped at import "
              f"(classname \"\", \"collection skipped\")")
    for title, keys, show in (
        ("only in the direct run", only_direct, lambda k: direct[k]),
        ("only in the farm's", only_farm, lambda k: farm[k]),
        ("other outcome", differ, lambda k: f"direct {direct[k]}, farm {farm[k]}"),
    ):
        for key in keys[:4]:
            print(f"    {title}: {name(key)} ({show(key)})")
    if os.environ.get("REPORT_JSONL"):
        with open(os.environ["REPORT_JSONL"], "a", encoding="utf-8") as out:
            out.write(json.dumps({"label": label, "differences": total, "only_direct": len(only_direct),
                                  "only_farm": len(only_farm), "other_outcome": len(differ)}) + "\n")


def table():
    rows = [json.loads(line) for line in open(os.environ["REPORT_JSONL"], encoding="utf-8")]
    diffs = {row["label"]: row["differences"] for row in rows if "differences" in row}

    def f(value, digits=1):
        return "–" if value is None else f"{value:.{digits}f}"

    print("| run | makespan | ratio to direct | wall (ratio) | shards | planned bound | makespan/bound | measured bound | makespan/measured | outcome differences |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "differences" in row:
            continue
        if "build_id" not in row:
            print(f"| {row['label']} | {f(row['wall_s'])} s | 1 | – | – | – | – | – | – | – |")
            continue
        print(f"| {row['label']} | {f(row['makespan_s'])} s | {f(row['makespan_over_serial'], 2)} | "
              f"{f(row['wall_s'])} s ({f(row['wall_over_serial'], 2)}) | {row['shards']} | "
              f"{f(row['lower_bound_s'])} s | {f(row['makespan_over_bound'], 2)} | "
              f"{f(row.get('measured_bound_s'))} s | {f(row.get('makespan_over_measured'), 2)} | "
              f"{diffs.get(row['label'], '–')} |")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "build":
        build(*args)
    elif command == "compare":
        compare(*args)
    elif command == "table":
        table()
    elif command == "direct":
        # direct LABEL SECONDS: records the direct run for the table.
        if os.environ.get("REPORT_JSONL"):
            with open(os.environ["REPORT_JSONL"], "a", encoding="utf-8") as out:
                out.write(json.dumps({"label": args[0], "wall_s": float(args[1])}) + "\n")
    else:
        raise SystemExit(__doc__)
