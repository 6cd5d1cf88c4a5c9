#!/usr/bin/env bash
# The real pytest suite (networkx 3.6.1, from target/pyenv: see .ci/run) run serially by
# one pytest process, then through the farm (a master and N workers of the release
# binary on this machine, the pytest runner adapter) for each N given, once with each
# runner mode: cold (a pytest process per shard) and warm (one per worker and revision).
# Prints the wall times and, per farm run, the shards and where their time went.
#
#   cargo build --release -p greenlight && benches/real_suite.sh 1 2
#
# SERIAL=0 leaves the serial run out; MODES="warm" (or "cold") runs one mode only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${GREENLIGHT_PYENV:-$root/target/pyenv}/bin/python
greenlight=$root/target/release/greenlight
site=$("$python" -c 'import networkx, os; print(os.path.dirname(os.path.dirname(networkx.__file__)))')
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

repo=$work/repo
mkdir -p "$repo"
cp -r "$site/networkx" "$repo/"
find "$repo" -name __pycache__ -prune -exec rm -rf {} +
printf '[tests]\nshard_overhead_s = 5.0\n' > "$repo/greenlight.toml"
git -C "$repo" init --quiet --initial-branch=main
git -C "$repo" add -A
git -C "$repo" -c user.name=bench -c user.email=bench@invalid commit --quiet -m networkx
export PYTHONDONTWRITEBYTECODE=1

if [ "${SERIAL:-1}" != 0 ]; then
    git clone --quiet "$repo" "$work/serial"
    start=$(date +%s.%N)
    (cd "$work/serial" && "$python" -m pytest -p no:cacheprovider --rootdir=. -q networkx > "$work/serial.log" 2>&1) || true
    end=$(date +%s.%N)
    echo "serial pytest: $(echo "$end - $start" | bc) s; $(tail -1 "$work/serial.log")"
fi

for n in "$@"; do
for mode in ${MODES:-cold warm}; do
    warm=$([ "$mode" = warm ] && echo true || echo false)
    run=$work/farm-$n-$mode
    mkdir -p "$run"
    cat > "$run/greenlight.toml" << EOF
data_dir = "$run/master"
listen = "127.0.0.1:0"
[repository]
url = "$repo"
poll_interval_s = 0.2
[suite]
runner = "pytest"
python = "$python"
runner_args = ["networkx"]
warm = $warm
env = { PYTHONDONTWRITEBYTECODE = "1" }
[scheduler]
heartbeat_interval_s = 1
lease_timeout_s = 30
EOF
    started=$(date +%s.%N)
    "$greenlight" master --config "$run/greenlight.toml" > "$run/master.out" 2> "$run/master.log" &
    pids+=($!)
    for _ in $(seq 100); do grep -q listening "$run/master.out" 2> /dev/null && break; sleep 0.1; done
    url=$(awk '{print $NF}' "$run/master.out")
    for index in $(seq "$n"); do
        "$greenlight" worker --master "$url" --name "w$index" --workdir "$run/w$index" 2> "$run/w$index.log" &
        pids+=($!)
    done
    "$python" - "$url" "$n" "$started" "$mode" << 'EOF'
import json, sys, time, urllib.request
url, n, started, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
get = lambda path: json.load(urllib.request.urlopen(url + path))
while True:
    builds = get("/api/v1/builds")
    if builds and builds[0]["state"] in ("green", "red", "error"):
        break
    time.sleep(0.5)
build = builds[0]
# The build ends with its last result; wait for the workers' finish of the last shards.
deadline = time.time() + 15
while True:
    shards = get(f"/api/v1/builds/{build['build_id']}")["shards"]
    if all(shard.get("runner_wall_s") is not None for shard in shards) or time.time() > deadline:
        break
    time.sleep(0.2)
timed = [shard for shard in shards if shard.get("runner_wall_s") is not None]
if len(timed) < len(shards):
    print(f"  ({len(shards) - len(timed)} shard(s) without a runner time)")
tests = get(f"/api/v1/builds/{build['build_id']}/tests")["results"]
test_s = sum(result["duration_s"] for result in tests)
span = sum(shard["finished_at"] - shard["started_at"] for shard in timed)
runner = sum(shard["runner_wall_s"] for shard in timed)
print(f"farm, {n} worker(s), {mode}: master start to finished {build['finished_at'] - started:.1f} s "
      f"(with the master's listing), queued to finished {build['finished_at'] - build['created_at']:.1f} s, "
      f"makespan (first lease to last result) {build['makespan_s']:.1f} s, {build['state']}, "
      f"{build['counts']['total']} tests, {len(shards)} shards")
print(f"  per shard: runner start-up and collection (runner wall - test time) {(runner - test_s) / len(timed):.2f} s, "
      f"farm (lease to finish - runner wall: checkout, reporting) {(span - runner) / len(timed):.2f} s; "
      f"tests {test_s:.1f} s in all")
EOF
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    wait 2> /dev/null || true
    pids=()
done
done
