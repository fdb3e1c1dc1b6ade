#!/usr/bin/env bash
# latency.sh measures publish-to-delivery latency percentiles at fixed
# offered rates: for each scenario (p2p: 100 pairs; fanin: 100 publishers,
# one subscriber; fanout: one publisher, 100 subscribers, the rate counting
# deliveries) and rate, Gannet at --write-delay 0, 250us and 1ms (the
# default) and Mosquitto (compare.sh's configuration), QoS 1, 64-byte
# payloads, each on a fresh broker. With PLOTS=DIR, each run's JSON result
# is kept in DIR (<broker>-<scenario>-load-<rate>.json) and the p99
# curves are drawn there (latency-p2p.png, latency-fanin.png,
# latency-fanout.png, by gannet-bench report). Usage:
# bench/latency.sh [DURATION] [RATES...]   (default 5s, 2500 10000 40000)
set -euo pipefail
dur=${1:-5s}
shift || true
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(2500 10000 40000)
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
go build -o "$work/" ./cmd/gannet ./cmd/gannet-bench
. bench/brokers.sh
printf '%-6s %6s %-18s %9s %8s %8s %8s %8s\n' scen rate broker recv/s p50_ms p99_ms p999_ms cpu_us
for scen in p2p fanin fanout; do
	for rate in "${rates[@]}"; do
		for b in "gannet 0" "gannet 250us" "gannet 1ms" "mosquitto -"; do
			set -- $b
			if [ "$1" = gannet ]; then start_gannet 21983 --write-delay "$2"; else start_mosquitto 21983; fi
			wait_port
			args=(--scenario "$scen" --qos 1 --payload 64 --warmup 1s --duration "$dur" --drain 3s)
			case $scen in
			p2p) args+=(--clients 100 --rate "$rate") ;;
			fanin) args+=(--publishers 100 --rate "$rate") ;;
			fanout) args+=(--publishers 1 --subscribers 100 --rate $((rate / 100))) ;;
			esac
			"$work/gannet-bench" --addr 127.0.0.1:21983 "${args[@]}" --broker-pid "$pid" --json >"$work/out.json" 2>/dev/null || true
			stop_broker
			if [ -n "${PLOTS:-}" ]; then
				mkdir -p "$PLOTS"
				name=$1
				[ "$1" = gannet ] && name=gannet${2/us/µs}
				cp "$work/out.json" "$PLOTS/$name-$scen-load-$rate.json"
			fi
			python3 - "$scen" "$rate" "$1 $2" "$work/out.json" <<'PY'
import json, sys
s, r, b, f = sys.argv[1:5]
j = json.load(open(f))
print("%-6s %6s %-18s %9.0f %8.2f %8.2f %8.2f %8.1f" % (s, r, b.replace(" -", ""), j["received_per_sec"], j["p50_ns"]/1e6, j["p99_ns"]/1e6, j["p999_ns"]/1e6, j["broker_cpu_us_per_msg"]))
PY
		done
	done
done
if [ -n "${PLOTS:-}" ]; then
	"$work/gannet-bench" report --dir "$PLOTS" --plots "$PLOTS" >/dev/null
fi
