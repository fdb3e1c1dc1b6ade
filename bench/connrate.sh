#!/usr/bin/env bash
# connrate.sh measures how fast a broker takes new connections: CLIENTS
# clients (MQTT 3.1.1, keepalive 60 s) connect as fast as they can to a
# freshly started broker, with clean sessions and then with persistent
# ones (clean session 0), Gannet (at its defaults: durability sync) and
# Mosquitto (compare.sh's configuration) in turn, ROUNDS times. It prints
# connections per second completed to CONNACK and the CONNECT-to-CONNACK
# latency percentiles. Usage: bench/connrate.sh [CLIENTS] [ROUNDS]
set -euo pipefail
clients=${1:-10000}
rounds=${2:-2}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
go build -o "$work/" ./cmd/gannet ./cmd/gannet-bench
. bench/brokers.sh
for r in $(seq "$rounds"); do
	for mode in clean persistent; do
		for broker in gannet mosquitto; do
			flags=()
			[ "$mode" = persistent ] && flags=(--session-expiry 1h)
			"start_$broker" 21983
			wait_port
			"$work/gannet-bench" --addr 127.0.0.1:21983 --scenario conn --clients "$clients" --keepalive 60s \
				"${flags[@]}" --broker-pid "$pid" --json >"$work/out.json" 2>/dev/null || true
			stop_broker
			python3 - "$broker" "$mode" "$r" "$work/out.json" <<'PY'
import json, sys
b, m, r, f = sys.argv[1:5]
j = json.load(open(f))
print("round %s %-10s %-9s %7.0f connects/s  CONNACK p50 %6.1f ms  p99 %6.1f ms  connected %d refused %d" % (
    r, m, b, j.get("connects_per_sec", 0), j["p50_ns"] / 1e6, j["p99_ns"] / 1e6, j.get("connected", 0), j.get("refused", 0)))
PY
		done
	done
done
