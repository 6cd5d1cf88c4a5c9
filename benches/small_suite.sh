#!/usr/bin/env bash
# A 30-test pytest project (27 fast, 3 sleeping 1-3 s): one direct pytest run, then the farm
# (release binary, 3 workers) cold and warm, first build with no history, side by side.
#   cargo build --release -p greenlight && benches/small_suite.sh
# GREENLIGHT_BIN=path runs another build of the binary (an older one, side by side);
# MODES=warm (or cold) runs one mode only; SHARDS=1 also prints each shard (worker, times,
# tests).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=$root/target/pyenv/bin/python
gl=${GREENLIGHT_BIN:-$root/target/release/greenlight}
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; rm -rf $work' EXIT
repo=$work/repo; mkdir -p $repo/tests
cat > $repo/tests/test_fast.py <<'PY'
import pytest
@pytest.mark.parametrize("n", range(27))
def test_fast(n):
    assert n >= 0
PY
cat > $repo/tests/test_slow.py <<'PY'
import time, pytest
@pytest.mark.parametrize("s", [1, 2, 3])
def test_slow(s):
    time.sleep(s)
PY
git -C $repo init -q -b main; git -C $repo add -A; git -C $repo -c user.name=b -c user.email=b@i commit -qm p
export PYTHONDONTWRITEBYTECODE=1
git clone -q $repo $work/direct
s=$(date +%s.%N); (cd $work/direct && $python -m pytest -p no:cacheprovider -q tests >/dev/null); e=$(date +%s.%N)
echo "direct pytest: $(echo "$e - $s" | bc) s"
for mode in ${MODES:-cold warm}; do
  run=$work/$mode; mkdir -p $run
  warm=$([ $mode = warm ] && echo true || echo false)
  cat > $run/g.toml <<T
data_dir = "$run/m"
listen = "127.0.0.1:0"
[repository]
url = "$repo"
poll_interval_s = 0.2
[suite]
runner = "pytest"
python = "$python"
runner_args = ["tests"]
warm = $warm
env = { PYTHONDONTWRITEBYTECODE = "1" }
[scheduler]
heartbeat_interval_s = 1
T
  started=$(date +%s.%N)
  $gl master --config $run/g.toml > $run/out 2> $run/log & pids+=($!)
  for _ in $(seq 100); do grep -q listening $run/out 2>/dev/null && break; sleep 0.1; done
  url=$(awk '{print $NF}' $run/out)
  for i in 1 2 3; do $gl worker --master $url --name w$i --workdir $run/w$i 2> $run/w$i.log & pids+=($!); done
  $python - $url $started $mode <<'PY'
import json, os, sys, time, urllib.request
url, started, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
get = lambda p: json.load(urllib.request.urlopen(url + p))
while True:
    b = get("/api/v1/builds")
    if b and b[0]["state"] in ("green", "red", "error"): break
    time.sleep(0.2)
b = b[0]
if os.environ.get("SHARDS"):
    d = get(f"/api/v1/builds/{b['build_id']}")
    t0 = min(s["started_at"] for s in d["shards"])
    for s in sorted(d["shards"], key=lambda s: s["started_at"]):
        print(f"  {s['worker']} lease {s['lease_id']} {s['started_at'] - t0:5.2f}-{(s['finished_at'] or t0) - t0:5.2f} s, {s['tests']} tests, {s['state']}")
print(f"farm 3 workers {mode}: master start to finished {b['finished_at'] - started:.1f} s, makespan {b['makespan_s']:.1f} s, lower bound {b['lower_bound_s']:.1f} s, {b['shards']} shards, {b['state']}")
PY
  for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true; pids=()
done
