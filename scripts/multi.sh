#!/usr/bin/env bash
# `mdcache simulate` as a multi-process deployment: one feed process (--role feed) and N
# engine processes (--role engine) against one throwaway redis-server on a free port, all
# started together; waits for every process, prints their summaries, removes the server.
# Reports (JSON) and logs go to $MULTI_OUT (target/multi): feed.json, engine-1.json, …
#
#   scripts/multi.sh [extra simulate flags for every process]
#
# Settings (environment): MDCACHE (the binary, ./target/release/mdcache), MULTI_ENGINES (2),
# MULTI_DURATION (10s), MULTI_THREADS (Tokio workers per process; default: the cores but one,
# shared out among the processes, at least 1), MULTI_OUT (target/multi). The extra flags must
# not repeat --role, --redis, --duration, --threads or --report. Exit status 0 only when every
# process exited 0. `make multi` builds the binary and runs this. docs/simulate.md says what
# each process's report measures.
set -euo pipefail

bin=${MDCACHE:-./target/release/mdcache}
engines=${MULTI_ENGINES:-2}
duration=${MULTI_DURATION:-10s}
out=${MULTI_OUT:-target/multi}
# Each simulate process alone would take every core but one (its readers never wait on an L1
# hit); several on one host share them out, leaving one to redis-server.
cores=$(nproc 2>/dev/null || echo 1)
default_threads=$(((cores - 1) / (engines + 1)))
threads=${MULTI_THREADS:-$((default_threads > 0 ? default_threads : 1))}

command -v redis-server >/dev/null || { echo "multi: no redis-server on PATH (make deps installs one)" >&2; exit 1; }
[ -x "$bin" ] || { echo "multi: no $bin (make build)" >&2; exit 1; }
mkdir -p "$out"
rm -f "$out"/feed.json "$out"/feed.log "$out"/engine-*.json "$out"/engine-*.log

dir=$(mktemp -d)
port=
cleanup() {
    [ -n "$port" ] && redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

# A free port: nothing accepts a connection there. (Another process could take it before
# redis-server binds it; then redis-server fails to start and the next port is tried.)
for _ in $(seq 20); do
    candidate=$((20000 + RANDOM % 20000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
        continue
    fi
    redis-server --port "$candidate" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
    for _ in $(seq 50); do
        if redis-cli -p "$candidate" ping >/dev/null 2>&1; then
            port=$candidate
            break 2
        fi
        sleep 0.1
    done
done
if [ -z "$port" ]; then
    echo "multi: redis-server did not start" >&2
    cat "$dir/redis.log" >&2 || true
    exit 1
fi
url="redis://127.0.0.1:$port/"
echo "multi: 1 feed + $engines engines for $duration against $url, $threads worker thread(s) each; reports in $out/"

names=(feed)
"$bin" simulate --quiet --role feed --redis "$url" --duration "$duration" --threads "$threads" \
    --report "$out/feed.json" "$@" >"$out/feed.log" 2>&1 &
pids=($!)
for i in $(seq "$engines"); do
    names+=("engine-$i")
    "$bin" simulate --quiet --role engine --redis "$url" --duration "$duration" --threads "$threads" \
        --report "$out/engine-$i.json" "$@" >"$out/engine-$i.log" 2>&1 &
    pids+=($!)
done

status=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "multi: ${names[$i]} failed" >&2
        status=1
    fi
done
for name in "${names[@]}"; do
    echo
    echo "== $name ($out/$name.json)"
    cat "$out/$name.log"
done
exit "$status"
