#!/usr/bin/env bash
# A real third-party pytest suite run serially by one direct pytest process, then through
# the farm (a master and N workers of the release binary on this machine, the pytest
# runner adapter) for each N given and each runner mode: cold (a pytest process per
# shard) and warm (one per worker and revision). Each farm builds twice: the first
# revision with no duration history, then a second revision (a commit touching one
# non-test file, picked up by the master's poll) planned with what the first measured.
# Per build: makespan (first lease to last result), the lower bound the farm planned and
# their ratio, the wall from the master's start (first build) or from the commit
# (second), shards, the ratio to the direct run, the shard-overhead metrics; and the
# outcomes of every test compared with the direct run's JUnit report.
#
#   SUITE=networkx benches/real_suite.sh 2    # networkx 3.6.1 (target/pyenv)
#   SUITE=pandas   benches/real_suite.sh 2    # pandas 3.1.1: five test packages (target/pyenv-heavy)
#
# The venvs (once; pip reads the local package mirror):
#   python3 -m venv target/pyenv && target/pyenv/bin/pip install pytest==9.2.0 networkx==3.6.1
#   python3 -m venv target/pyenv-heavy && target/pyenv-heavy/bin/pip install pytest==9.2.0 \
#       pandas==3.1.1 numpy==2.4.6 hypothesis==6.170.15 python-dateutil==4.0.0 tzdata==2026.6
#   (or SETUP=1 benches/real_suite.sh, which makes the suite's venv if it is missing)
#
# SERIAL=0 leaves the direct run out; MODES="warm" (or "cold") runs one mode only;
# GREENLIGHT_BIN=path runs another build of the binary (an older one, side by side);
# TAGS=generators tags each subpackage's tests with its name and makes the second build
# tag-selected (its commit says `Tags: generators`);
# SECOND=0 stops after the first build; KEEP=1 keeps the temporary directory (logs, reports);
# REPORT_JSONL=FILE also writes every figure as JSON lines (`farm_report.py table` prints
# them as BENCHMARKS.md rows).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
suite=${SUITE:-networkx}
case "$suite" in
    networkx)
        pyenv=${GREENLIGHT_PYENV:-$root/target/pyenv}
        packages="pytest==9.2.0 networkx==3.6.1"
        package=networkx
        # What one direct run collects; the farm gets the same words.
        args=(networkx)
        ;;
    pandas)
        pyenv=${GREENLIGHT_PYENV:-$root/target/pyenv-heavy}
        packages="pytest==9.2.0 pandas==3.1.1 numpy==2.4.6 hypothesis==6.170.15 python-dateutil==4.0.0 tzdata==2026.6"
        package=pandas
        # The wheel ships the tests but not every data file they read: without the file,
        # --no-strict-data-files makes those tests skip (the paths first: the option then
        # reads as the flag it is).
        args=(pandas/tests/reshape pandas/tests/tools pandas/tests/tseries pandas/tests/indexes
              pandas/tests/scalar --no-strict-data-files)
        ;;
    *)
        echo "SUITE must be networkx or pandas, not $suite" >&2
        exit 2
        ;;
esac
python=$pyenv/bin/python
if [ ! -x "$python" ] && [ "${SETUP:-0}" = 1 ]; then
    python3 -m venv "$pyenv"
    # shellcheck disable=SC2086
    "$pyenv/bin/pip" install --quiet $packages
fi
if [ ! -x "$python" ]; then
    echo "no $python: make the venv (see the top of $0, or SETUP=1)" >&2
    exit 2
fi
greenlight=${GREENLIGHT_BIN:-$root/target/release/greenlight}
report=$root/benches/farm_report.py
site=$("$python" -c "import $package, os; print(os.path.dirname(os.path.dirname($package.__file__)))")
versions=$("$python" -m pip list --format=freeze 2> /dev/null | grep -iE "^($package|pytest|numpy)==" | tr "\n" " " || true)
echo "suite $suite: $versions(from $pyenv); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
work=$(mktemp -d)
. "$root/benches/farm_common.sh"
trap cleanup EXIT

repo=$work/repo
mkdir -p "$repo"
cp -r "$site/$package" "$repo/"
find "$repo" -name __pycache__ -prune -exec rm -rf {} +
printf '[tests]\nshard_overhead_s = 5.0\n' > "$repo/greenlight.toml"
if [ -n "${TAGS:-}" ]; then
    # Each subpackage's tests carry its name as a tag; the second revision's commit names
    # TAGS in a `Tags:` trailer, so its build selects those tests only.
    printf '[tests.tags]\n' >> "$repo/greenlight.toml"
    for dir in "$repo/$package"/*/; do
        name=$(basename "$dir")
        [ "$name" = __pycache__ ] || printf '"%s/%s/" = ["%s"]\n' "$package" "$name" "$name" >> "$repo/greenlight.toml"
    done
fi
git -C "$repo" init --quiet --initial-branch=main
commit "$repo" "$suite"
first=$(git -C "$repo" rev-parse HEAD)
export PYTHONDONTWRITEBYTECODE=1

serial_s=0
if [ "${SERIAL:-1}" != 0 ]; then
    git clone --quiet "$repo" "$work/serial"
    start=$(now)
    (cd "$work/serial" && "$python" -m pytest -p no:cacheprovider --rootdir=. -q \
        --junitxml="$work/serial.xml" "${args[@]}" > "$work/serial.log" 2>&1) || true
    end=$(now)
    serial_s=$(echo "$end - $start" | bc)
    echo "direct pytest (serial): $serial_s s; $(tail -1 "$work/serial.log")"
    "$python" "$report" direct "direct pytest" "$serial_s"
fi

toml_list() {
    local word out=""
    for word in "$@"; do out+="${out:+, }\"$word\""; done
    echo "[$out]"
}

for n in "$@"; do
for mode in ${MODES:-cold warm}; do
    warm=$([ "$mode" = warm ] && echo true || echo false)
    run=$work/farm-$n-$mode
    mkdir -p "$run"
    # The farm's repository: a clone, so that each farm starts at the first revision.
    rm -rf "$run/repo"
    git clone --quiet "$repo" "$run/repo"
    cat > "$run/greenlight-master.toml" << EOF
data_dir = "$run/master"
listen = "127.0.0.1:0"
[repository]
url = "$run/repo"
poll_interval_s = 0.2
[suite]
runner = "pytest"
python = "$python"
runner_args = $(toml_list "${args[@]}")
warm = $warm
env = { PYTHONDONTWRITEBYTECODE = "1" }
[scheduler]
heartbeat_interval_s = 1
lease_timeout_s = 60
[gate]
find_culprit = false
EOF
    started=$(now)
    start_farm "$run" "$run/greenlight-master.toml" "$n"
    label="farm $n workers $mode"
    "$python" "$report" build "$url" "$first" "$label, first build" "$started" "$serial_s" "$run/first.xml"
    if [ "$serial_s" != 0 ]; then
        "$python" "$report" compare "$work/serial.xml" "$run/first.xml" "$label, first build"
    fi
    if [ "${SECOND:-1}" != 0 ]; then
        # A second revision: one non-test file of the package changes (a comment).
        echo "# greenlight bench: second revision" >> "$run/repo/$package/__init__.py"
        committed=$(now)
        commit "$run/repo" "Second revision: a comment in $package/__init__.py${TAGS:+

Tags: $TAGS}"
        second=$(git -C "$run/repo" rev-parse HEAD)
        "$python" "$report" build "$url" "$second" "$label, second build" "$committed" "$serial_s" "$run/second.xml"
        if [ "$serial_s" != 0 ]; then
            # A tag-selected build is compared with the direct run's tests of its packages.
            within=""
            for tag in ${TAGS//,/ }; do within+="${within:+,}$package.$tag."; done
            "$python" "$report" compare "$work/serial.xml" "$run/second.xml" "$label, second build" "$within"
        fi
    fi
    stop_farm
done
done
