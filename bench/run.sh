#!/usr/bin/env bash
# Load harness: a release `tessera serve` against the reference server ("floor": axum +
# jsonwebtoken, nothing else), over real loopback HTTP with wrk, in interleaved rounds.
#
#   FLOOR_DIR=path/to/floor bench/run.sh
#
# FLOOR_DIR is the reference server's source (built here twice: its default aws-lc-rs build
# and its RustCrypto build, which uses the same crypto as Tessera); or give the binaries as
# FLOOR_BIN, FLOOR_RC_BIN and FLOOR_MINT, with FLOOR_KEYS. Knobs: ROUNDS (3), DURATION (5s),
# CONNECTIONS (64), BURST_CONNECTIONS (verify load beside the login burst, 8).
# Needs wrk and python3. Prints one table; the raw lines stay in target/bench-load/results.
# Beside req/s each run records the server's own CPU time per request (user + system, from
# /proc): on a small machine wrk competes with the server for the cores, so req/s moves with
# the scheduler, while the CPU a server spends on one verification is the cost it would have
# at any scale. Within each case the order of the servers alternates from round to round.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export BENCH_DIR=$ROOT/bench

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
BURST_CONNECTIONS=${BURST_CONNECTIONS:-8}
TOKENS=${TOKENS:-1000}
WORK=$ROOT/target/bench-load
PORT_CACHED=18180 PORT_FRESH=18181 PORT_MEMORY=18182 PORT_FLOOR=18190 PORT_FLOOR_RC=18191

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

rm -rf "$WORK" && mkdir -p "$WORK"
PIDS=()
declare -A PID_OF
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== building (release)"
cargo build --release --locked -p tessera --quiet
TESSERA=$ROOT/target/release/tessera
if [[ -z "${FLOOR_BIN:-}" ]]; then
  : "${FLOOR_DIR:?set FLOOR_DIR to the source of the reference server, or FLOOR_BIN, FLOOR_RC_BIN and FLOOR_MINT}"
  cargo build --release --quiet --manifest-path "$FLOOR_DIR/Cargo.toml" --target-dir "$ROOT/target/floor"
  cargo build --release --quiet --manifest-path "$FLOOR_DIR/Cargo.toml" --target-dir "$ROOT/target/floor-rc" \
    --no-default-features --features rust_crypto
  FLOOR_BIN=$ROOT/target/floor/release/floor
  FLOOR_RC_BIN=$ROOT/target/floor-rc/release/floor
  FLOOR_MINT=$ROOT/target/floor/release/mint
fi
FLOOR_KEYS=${FLOOR_KEYS:-$FLOOR_DIR/keys}

wait_healthy() {
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2; exit 1
}

# A Tessera node on its embedded default store (SQLite, WAL), extra flags appended.
start_tessera() {
  local name=$1 port=$2; shift 2
  mkdir -p "$WORK/$name"
  (cd "$WORK/$name" && exec "$TESSERA" serve --database "sqlite://$WORK/$name/tessera.db" \
    --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 --issuer "http://127.0.0.1:$port" \
    --cookie-secure false "$@" >"$WORK/$name/log" 2>&1) &
  PIDS+=($!)
  eval "PID_${name^^}=$!"
  PID_OF[$port]=$!
  wait_healthy "$port"
}

start_floor() {
  local bin=$1 port=$2
  (cd "$WORK" && FLOOR_ADDR=127.0.0.1:$port FLOOR_KEYS=$FLOOR_KEYS FLOOR_REDIS=redis://127.0.0.1:1/ \
    exec "$bin" >"$WORK/floor-$port.log" 2>&1) &
  PIDS+=($!)
  PID_OF[$port]=$!
  wait_healthy "$port"
}

echo "== starting: Tessera (cache on), Tessera (token_cache_size = 0), floor, floor RustCrypto"
start_tessera cached $PORT_CACHED
start_tessera fresh $PORT_FRESH --token-cache-size 0
start_floor "$FLOOR_BIN" $PORT_FLOOR
start_floor "$FLOOR_RC_BIN" $PORT_FLOOR_RC

echo "== credentials: $TOKENS access tokens by refresh rotation; $TOKENS floor tokens"
mkdir -p "$WORK/cred-cached" "$WORK/cred-fresh"
python3 bench/setup.py "http://127.0.0.1:$PORT_CACHED" "$WORK/cred-cached" 1
python3 bench/setup.py "http://127.0.0.1:$PORT_FRESH" "$WORK/cred-fresh" "$TOKENS"
: >"$WORK/floor-tokens"
for i in $(seq 1 "$TOKENS"); do
  # A lifetime per token makes each `exp`, and so each token, distinct.
  "$FLOOR_MINT" $((86400 + i)) "$FLOOR_KEYS" | sed -n 's/^EDDSA=//p' >>"$WORK/floor-tokens"
done
"$FLOOR_MINT" 86400 "$FLOOR_KEYS" | sed -n 's/^SID=//p' >"$WORK/floor-sid"
head -1 "$WORK/floor-tokens" >"$WORK/floor-token"
COOKIE_NAME=tessera_session

CLOCK_TICKS=$(getconf CLK_TCK)

# The CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run CASE SIDE PORT PATH FILE HEADER PREFIX [CONNECTIONS] -> one line in results
run() {
  local case=$1 side=$2 port=$3 path=$4 file=$5 header=$6 prefix=$7 conns=${8:-$CONNECTIONS}
  local line pid=${PID_OF[$port]} before after requests
  before=$(cpu_ticks "$pid")
  line=$(wrk -t1 -c"$conns" -d"$DURATION" -s bench/pool.lua "http://127.0.0.1:$port$path" \
    -- "$file" "$header" "$prefix" | grep '^RESULT')
  after=$(cpu_ticks "$pid")
  requests=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")
  line="$line cpu_us=$(awk -v t=$((after - before)) -v hz="$CLOCK_TICKS" -v n="$requests" \
    'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }')"
  echo "$ROUND $case $side ${line#RESULT }" | tee -a "$WORK/results"
}

burst() {
  local line logins
  wrk -t1 -c4 -d"$(( ${DURATION%s} + 2 ))s" -s bench/login.lua "http://127.0.0.1:$PORT_CACHED" \
    -- "$(cat "$WORK/cred-cached/email")" "$(cat "$WORK/cred-cached/password")" >"$WORK/burst.out" &
  local burst_pid=$!
  sleep 1
  line=$(wrk -t1 -c"$BURST_CONNECTIONS" -d"$DURATION" -s bench/pool.lua \
    "http://127.0.0.1:$PORT_CACHED/v1/verify" -- "$WORK/cred-cached/cookie" Cookie "$COOKIE_NAME=" | grep '^RESULT')
  wait $burst_pid
  logins=$(grep '^RESULT' "$WORK/burst.out")
  echo "$ROUND burst tessera ${line#RESULT }" | tee -a "$WORK/results"
  echo "$ROUND logins tessera ${logins#RESULT }" | tee -a "$WORK/results"
}

echo "== $ROUNDS interleaved rounds of $DURATION, wrk -t1 -c$CONNECTIONS, on $(nproc) cores"
# in_turn RUN... : the runs (each one `run` command line) in the order given in odd rounds and
# reversed in even ones, so that no server always goes first.
in_turn() {
  local runs=("$@") i
  if (( ROUND % 2 == 0 )); then
    for (( i = ${#runs[@]} - 1; i >= 0; i-- )); do eval "run ${runs[i]}"; done
  else
    for (( i = 0; i < ${#runs[@]}; i++ )); do eval "run ${runs[i]}"; done
  fi
}

for ROUND in $(seq 1 "$ROUNDS"); do
  in_turn \
    'fresh_eddsa tessera $PORT_FRESH /v1/verify "$WORK/cred-fresh/tokens" Authorization "Bearer "' \
    'fresh_eddsa floor $PORT_FLOOR /eddsa "$WORK/floor-tokens" Authorization "Bearer "' \
    'fresh_eddsa floor_rc $PORT_FLOOR_RC /eddsa "$WORK/floor-tokens" Authorization "Bearer "'
  in_turn \
    'repeated_token floor $PORT_FLOOR /mem "$WORK/floor-sid" Cookie "sid="' \
    'repeated_token tessera $PORT_CACHED /v1/verify "$WORK/cred-cached/token" Authorization "Bearer "'
  in_turn \
    'cookie tessera $PORT_CACHED /v1/verify "$WORK/cred-cached/cookie" Cookie "$COOKIE_NAME="' \
    'cookie floor $PORT_FLOOR /mem "$WORK/floor-sid" Cookie "sid="'
  run idle tessera $PORT_CACHED /v1/verify "$WORK/cred-cached/cookie" Cookie "$COOKIE_NAME=" "$BURST_CONNECTIONS"
  burst
done

echo "== memory: a fresh node, 50 logins from 5 clients"
start_tessera memory $PORT_MEMORY
mkdir -p "$WORK/cred-memory"
python3 bench/setup.py "http://127.0.0.1:$PORT_MEMORY" "$WORK/cred-memory" 1
python3 - "$PORT_MEMORY" "$(cat "$WORK/cred-memory/email")" "$(cat "$WORK/cred-memory/password")" <<'EOF'
import http.client, json, sys, threading
port, email, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def client():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(10):
        conn.request("POST", "/v1/login", json.dumps({"email": email, "password": password}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse(); response.read()
        assert response.status == 200, response.status
threads = [threading.Thread(target=client) for _ in range(5)]
[t.start() for t in threads]; [t.join() for t in threads]
EOF
RSS_KB=$(awk '/^VmRSS/ {print $2}' "/proc/$PID_MEMORY/status")
echo "memory rss_kb=$RSS_KB" | tee -a "$WORK/results"

python3 - "$WORK/results" "$(nproc)" "$CONNECTIONS" "$BURST_CONNECTIONS" <<'EOF'
import statistics, sys
path, cores, conns, burst_conns = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows, rss = {}, None
for line in open(path):
    parts = line.split()
    if parts[0] == "memory":
        rss = int(parts[1].split("=")[1]); continue
    fields = dict(p.split("=") for p in parts[3:])
    if int(fields["bad"]) > 0:
        print(f"WARNING: {parts[1]} {parts[2]} round {parts[0]}: {fields['bad']} non-2xx or errors")
    rows.setdefault((parts[1], parts[2]), []).append({k: float(v) for k, v in fields.items()})
def med(case, side, key):
    return statistics.median(r[key] for r in rows[(case, side)])
def ratios(case, side, ref):
    return [a["rps"] / b["rps"] for a, b in zip(rows[(case, side)], rows[(case, ref)])]
print(f"\n{cores} cores; wrk -t1 -c{conns}; medians of the rounds; ratio = Tessera / reference, per round")
print("cpu us = the server's CPU time (user + system) per request; cpu = Tessera's / the reference's")
print(f"{'case':<34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us':>8}  ratio (min-max)")
def cpu_ratios(case, side, ref):
    return [a["cpu_us"] / b["cpu_us"] for a, b in zip(rows[(case, side)], rows[(case, ref)])]
def show(label, case, side, ref=None, target=None):
    line = (f"{label:<34}{med(case, side, 'rps'):>10.0f}{med(case, side, 'p50_ms'):>9.2f}"
            f"{med(case, side, 'p99_ms'):>9.2f}{med(case, side, 'cpu_us'):>8.1f}")
    if ref:
        r = ratios(case, side, ref)
        line += f"  {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}) vs {ref}"
        if target: line += f"  [target >= {target}x]"
        c = cpu_ratios(case, side, ref)
        line += f"; cpu {statistics.median(c):.2f}x ({min(c):.2f}-{max(c):.2f})"
    print(line)
show("fresh bearer EdDSA: Tessera", "fresh_eddsa", "tessera", "floor", "1.0")
show("  floor /eddsa (aws-lc-rs)", "fresh_eddsa", "floor")
show("  floor /eddsa (RustCrypto)", "fresh_eddsa", "floor_rc")
r, c = ratios("fresh_eddsa", "tessera", "floor_rc"), cpu_ratios("fresh_eddsa", "tessera", "floor_rc")
print(f"  Tessera / floor RustCrypto: {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}); "
      f"cpu {statistics.median(c):.2f}x ({min(c):.2f}-{max(c):.2f})")
rows[("repeated_token", "floor_mem")] = rows[("repeated_token", "floor")]
show("repeated bearer: Tessera", "repeated_token", "tessera", "floor", "0.8")
show("  floor /mem", "repeated_token", "floor")
show("session cookie: Tessera", "cookie", "tessera", "floor", "0.9")
show("  floor /mem", "cookie", "floor")
idle, busy = med("idle", "tessera", "p99_ms"), med("burst", "tessera", "p99_ms")
print(f"login burst (4 closed-loop clients, {med('logins', 'tessera', 'rps'):.1f} logins/s): "
      f"cookie verify -c{burst_conns} p99 {idle:.2f} ms idle -> {busy:.2f} ms, {busy / idle:.2f}x [target <= 2x]")
print(f"  verify req/s idle {med('idle', 'tessera', 'rps'):.0f} -> {med('burst', 'tessera', 'rps'):.0f} during the burst")
if rss is not None:
    print(f"resident memory after 50 logins from 5 clients: {rss / 1024:.1f} MiB [target < 40 MB]")
EOF
