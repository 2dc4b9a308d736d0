#!/usr/bin/env bash
# Three Tessera nodes on one machine behind an nginx load balancer, sharing PostgreSQL (the
# system of record), optionally Redis (the revocation feed), and one master key.
#
#   examples/cluster/run.sh                        # LISTEN/NOTIFY feed
#   REDIS=redis://127.0.0.1:6379 examples/cluster/run.sh   # Redis pub/sub feed
#
# Then talk to http://127.0.0.1:8080 as to one server (no sticky sessions). Ctrl-C stops all.
#
# DATABASE (default postgres://postgres@127.0.0.1:5432/tessera_cluster) is created if missing.
# nginx is installed from Debian's packages if it is not there.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATABASE="${DATABASE:-postgres://postgres@127.0.0.1:5432/tessera_cluster}"
REDIS="${REDIS:-}"
LB_PORT="${LB_PORT:-8080}"
NODE_PORTS=(8081 8082 8083)
WORK="$(mktemp -d -t tessera-cluster.XXXXXX)"

if ! command -v nginx >/dev/null; then
  echo "installing nginx"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi

# The database, created if missing (psql from the same URL, on its `postgres` database).
db_name="${DATABASE##*/}"; db_name="${db_name%%\?*}"
admin_url="${DATABASE%/*}/postgres"
if ! psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1; then
  psql "$admin_url" -qc "CREATE DATABASE \"$db_name\""
fi

cargo build --release --quiet
bin="$PWD/target/release/tessera"

# One master key for every node: 32 random bytes, base64url.
export TESSERA_MASTER_KEY="$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
export TESSERA_DATABASE="$DATABASE"
export TESSERA_ISSUER="http://127.0.0.1:$LB_PORT"
export TESSERA_COOKIE_SECURE=false
[ -n "$REDIS" ] && export TESSERA_REDIS="$REDIS"

pids=()
# Runs once, on any way out: a signal only exits, and the exit stops nginx and the nodes (each
# drains its requests on SIGTERM) before the work directory goes.
cleanup() {
  trap - EXIT
  if [ -f "$WORK/nginx.pid" ]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
  if [ "${#pids[@]}" -gt 0 ]; then kill "${pids[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

for port in "${NODE_PORTS[@]}"; do
  # Each node serves /metrics on an address of its own, 1000 above its API port.
  "$bin" serve --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$((port + 1000))" \
    >"$WORK/node-$port.out" 2>"$WORK/node-$port.log" &
  pids+=("$!")
done

upstreams=""
for port in "${NODE_PORTS[@]}"; do upstreams+="    server 127.0.0.1:$port;"$'\n'; done
cat >"$WORK/nginx.conf" <<NGINX
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events {}
http {
  access_log off;
  client_body_temp_path $WORK;
  proxy_temp_path $WORK;
  fastcgi_temp_path $WORK;
  uwsgi_temp_path $WORK;
  scgi_temp_path $WORK;
  upstream tessera {
$upstreams  }
  server {
    listen 127.0.0.1:$LB_PORT;
    location / {
      proxy_pass http://tessera;
      proxy_set_header Host \$host:\$server_port;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Original-Method \$request_method;
    }
  }
}
NGINX

for port in "${NODE_PORTS[@]}"; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || {
    echo "node on $port is not ready:"; cat "$WORK/node-$port.log"; exit 1; }
done
nginx -c "$WORK/nginx.conf"

echo "three nodes on ${NODE_PORTS[*]} (/metrics 1000 above each), load balancer on http://127.0.0.1:$LB_PORT"
curl -s "http://127.0.0.1:$LB_PORT/readyz"; echo
echo "logs in $WORK; Ctrl-C stops everything"
wait "${pids[@]}"
