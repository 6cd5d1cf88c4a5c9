# Shared by benches/real_suite.sh and benches/nextest_suite.sh (sourced, not run): start a
# master and N workers of the release binary on 127.0.0.1, stop them, commit to the bench
# repository. Every process started is remembered in `pids` and ended by `stop_farm` and
# by the EXIT trap the sourcing script installs (`cleanup`).

pids=()

cleanup() {
    stop_farm
    if [ -n "${work:-}" ] && [ "${KEEP:-0}" = 0 ]; then rm -rf "$work"; fi
    if [ -n "${work:-}" ] && [ "${KEEP:-0}" != 0 ]; then echo "kept $work" >&2; fi
}

stop_farm() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null || true; done
    pids=()
}

now() { date +%s.%N; }

# start_farm RUN_DIR CONFIG N: the master (its URL in $url), then N workers w1..wN.
start_farm() {
    local run=$1 config=$2 n=$3 index
    "$greenlight" master --config "$config" > "$run/master.out" 2> "$run/master.log" &
    pids+=($!)
    for _ in $(seq 300); do grep -q listening "$run/master.out" 2> /dev/null && break; sleep 0.1; done
    if ! grep -q listening "$run/master.out"; then
        echo "the master did not start:" >&2
        tail -20 "$run/master.log" >&2
        return 1
    fi
    url=$(awk '/listening/ {print $NF}' "$run/master.out")
    for index in $(seq "$n"); do
        "$greenlight" worker --master "$url" --name "w$index" --workdir "$run/w$index" 2> "$run/w$index.log" &
        pids+=($!)
    done
}

# commit REPO MESSAGE: commits everything in REPO; prints nothing.
commit() {
    git -C "$1" add -A
    git -C "$1" -c user.name=bench -c user.email=bench@invalid commit --quiet -m "$2"
}
