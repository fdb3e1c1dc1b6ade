#!/usr/bin/env bash
# floor.sh measures broker RSS per idle connection three ways in turn,
# ROUNDS times: bench/floor (gnet configured as Gannet's, holding nothing
# per connection: the least any broker on gnet can hold), Gannet at its
# defaults, and Mosquitto (compare.sh's configuration). Each broker is
# started fresh; CLIENTS clients (MQTT 3.1.1, clean session, keepalive
# 60 s) connect; the RSS one second after the last CONNACK, less the RSS
# before the first connection, is divided by CLIENTS.
# Usage: bench/floor.sh [CLIENTS] [ROUNDS]
set -euo pipefail
clients=${1:-15000}
rounds=${2:-3}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
go build -o "$work/" ./cmd/gannet ./cmd/gannet-bench ./bench/floor
. bench/brokers.sh
start_floor() {
	port=$1
	"$work/floor" --listen "127.0.0.1:$port" >"$work/floor.log" 2>&1 &
	pid=$!
}
for r in $(seq "$rounds"); do
	for broker in floor gannet mosquitto; do
		"start_$broker" 21983
		wait_port
		"$work/gannet-bench" --addr 127.0.0.1:21983 --scenario conn --clients "$clients" --keepalive 60s \
			--broker-pid "$pid" --json >"$work/out.json" 2>/dev/null || true
		stop_broker
		python3 - "$broker" "$r" "$work/out.json" <<'PY'
import json, sys
b, r, f = sys.argv[1:4]
j = json.load(open(f))
print("round %s %-9s %6.0f B per connection  connected %d" % (
    r, b, j.get("broker_rss_per_conn_bytes", 0), j.get("connected", 0)))
PY
	done
done
