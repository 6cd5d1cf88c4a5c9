#!/usr/bin/env bash
# A published Rust crate's own tests under cargo-nextest: one direct `cargo nextest run`
# on a clean checkout (its build included), then the farm (a master and N workers of the
# release binary on this machine, runner = "nextest") building the same revision (first
# build: nothing built yet, no duration history), then a second revision that changes one
# source file (an incremental build, planned with the first build's durations). Per build:
# makespan (first lease to last result), the farm's planned lower bound and their ratio,
# the wall from the master's start (first build) or from the commit (second), shards, the
# ratio to the direct run; and the outcome of every test compared with the direct run's
# JUnit report.
#
#   benches/nextest_suite.sh 2                    # glam 0.34.3, 2 workers
#   CRATE=glam VERSION=0.34.3 benches/nextest_suite.sh 2
#
# The crate's source comes from cargo's registry cache (~/.cargo/registry/src), its
# dependencies and dev-dependencies too; every cargo call of the bench runs offline. Once,
# to put them there (cargo reads the local crates.io mirror):
#   SETUP=1 benches/nextest_suite.sh 2      (or by hand: a scratch crate depending on
#   glam = "=0.34.3", `cargo fetch` in it, then `cargo fetch` in a copy of the crate's source)
#
# SECOND=0 stops after the first build; KEEP=1 keeps the temporary directory;
# REPORT_JSONL=FILE also writes every figure as JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
crate=${CRATE:-glam}
version=${VERSION:-0.34.3}
greenlight=$root/target/release/greenlight
report=$root/benches/farm_report.py
cargo_home=${CARGO_HOME:-$HOME/.cargo}
work=$(mktemp -d)
. "$root/benches/farm_common.sh"
trap cleanup EXIT

find_source() { ls -d "$cargo_home"/registry/src/*/"$crate-$version" 2> /dev/null | head -1; }
source_dir=$(find_source)
if [ -z "$source_dir" ] && [ "${SETUP:-0}" = 1 ]; then
    cargo new --quiet --lib --vcs none "$work/fetch"
    echo "$crate = \"=$version\"" >> "$work/fetch/Cargo.toml"
    (cd "$work/fetch" && cargo fetch --quiet)
    source_dir=$(find_source)
fi
if [ -z "$source_dir" ]; then
    echo "no $crate-$version in $cargo_home/registry/src: run once with SETUP=1 (see the top of $0)" >&2
    exit 2
fi

repo=$work/repo
cp -r "$source_dir" "$repo"
rm -f "$repo/.cargo_vcs_info.json" "$repo/.cargo-ok"
printf 'target/\n' > "$repo/.gitignore"
if [ "${SETUP:-0}" = 1 ]; then
    (cd "$repo" && cargo fetch --quiet)   # the dev-dependencies, into cargo's cache
fi
git -C "$repo" init --quiet --initial-branch=main
commit "$repo" "$crate $version"
first=$(git -C "$repo" rev-parse HEAD)
export CARGO_NET_OFFLINE=true CARGO_TERM_COLOR=never
echo "crate $crate $version (from $source_dir); $(cargo nextest --version | head -1); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

# The direct run: a clean clone, its own target directory, the build included.
git clone --quiet "$repo" "$work/direct"
cat > "$work/nextest.toml" << 'EOF'
[profile.default.junit]
path = "junit.xml"
EOF
start=$(now)
(cd "$work/direct" && CARGO_TARGET_DIR=target cargo nextest run --no-fail-fast --config-file "$work/nextest.toml" \
    > "$work/direct.log" 2>&1) || true
end=$(now)
direct_s=$(echo "$end - $start" | bc)
echo "direct cargo nextest run (clean checkout, build included): $direct_s s; $(grep -E '^ *Summary' "$work/direct.log" | tail -1 | sed 's/^ *//')"
python3 "$report" direct "direct cargo nextest run" "$direct_s"
direct_xml=$work/direct/target/nextest/default/junit.xml

for n in "$@"; do
    run=$work/farm-$n
    mkdir -p "$run"
    rm -rf "$run/repo"
    git clone --quiet "$repo" "$run/repo"
    cat > "$run/greenlight-master.toml" << EOF
data_dir = "$run/master"
listen = "127.0.0.1:0"
[repository]
url = "$run/repo"
poll_interval_s = 0.2
[suite]
runner = "nextest"
env = { CARGO_TARGET_DIR = "target", CARGO_TERM_COLOR = "never", CARGO_NET_OFFLINE = "true" }
[scheduler]
heartbeat_interval_s = 1
lease_timeout_s = 120
[gate]
find_culprit = false
EOF
    started=$(now)
    start_farm "$run" "$run/greenlight-master.toml" "$n"
    label="farm $n workers"
    python3 "$report" build "$url" "$first" "$label, first build" "$started" "$direct_s" "$run/first.xml"
    if [ -f "$direct_xml" ]; then python3 "$report" compare "$direct_xml" "$run/first.xml" "$label, first build"; fi
    if [ "${SECOND:-1}" != 0 ]; then
        # A second revision: one source file changes (a comment), so each machine that
        # built the first revision rebuilds the crate and its test binaries, not the
        # dependencies.
        echo "// greenlight bench: second revision" >> "$run/repo/src/lib.rs"
        committed=$(now)
        commit "$run/repo" "Second revision: a comment in src/lib.rs"
        second=$(git -C "$run/repo" rev-parse HEAD)
        python3 "$report" build "$url" "$second" "$label, second build" "$committed" "$direct_s" "$run/second.xml"
        if [ -f "$direct_xml" ]; then python3 "$report" compare "$direct_xml" "$run/second.xml" "$label, second build"; fi
    fi
    stop_farm
done
