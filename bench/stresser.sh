#!/usr/bin/env bash
# stresser.sh runs mqtt-stresser, the tool many users benchmark brokers
# with, against Gannet and Mosquitto in turn and prints each broker's CPU
# per message (user + system from /proc over the whole run, divided by the
# messages published) and mqtt-stresser's median per-client publish and
# receive rates. mqtt-stresser is not on the Go module proxy: build it from
# https://github.com/inovex/mqtt-stresser (go build -mod=vendor) and give
# its path in STRESSER. Usage:
#   STRESSER=/path/to/mqtt-stresser bench/stresser.sh [QOS] [ROUNDS] [GANNET FLAG...]
# Each round: 100 clients x 1,000 messages, publisher and subscriber at
# QOS (default 1), ramp-up 10 clients a second, as BENCHMARKS.md states.
set -euo pipefail
qos=${1:-1}
rounds=${2:-2}
shift $(($# < 2 ? $# : 2))
: "${STRESSER:?set STRESSER to the mqtt-stresser binary}"
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
go build -o "$work/" ./cmd/gannet
. bench/brokers.sh
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
clients=100 messages=1000
for r in $(seq "$rounds"); do
	for broker in gannet mosquitto; do
		if [ "$broker" = gannet ]; then start_gannet 21983 "$@"; else start_mosquitto 21983; fi
		wait_port
		c0=$(cpu_ticks "$pid")
		out=$("$STRESSER" -broker tcp://127.0.0.1:21983 -num-clients $clients -num-messages $messages \
			-rampup-delay 1s -rampup-size 10 -global-timeout 100s -timeout 20s \
			-publisher-qos "$qos" -subscriber-qos "$qos" 2>&1) || true
		c1=$(cpu_ticks "$pid")
		stop_broker
		pub=$(grep -A3 '^# Publishing' <<<"$out" | awk '/^Median/ {print $2}')
		recv=$(grep -A3 '^# Receiving' <<<"$out" | awk '/^Median/ {print $2}')
		awk -v r="$r" -v b="$broker" -v q="$qos" -v t=$((c1 - c0)) -v hz="$hz" -v n=$((clients * messages)) \
			-v pub="${pub:-?}" -v recv="${recv:-?}" 'BEGIN {
			printf "round %s %-9s QoS %s  broker CPU %6.2f us/msg  median publish %s msg/s  median receive %s msg/s\n",
				r, b, q, t / hz * 1e6 / n, pub, recv }'
	done
done
