#!/usr/bin/env bash
# compare.sh runs the same scenarios against Gannet, Mosquitto and
# mochi-mqtt on loopback, one broker at a time, then prints Markdown tables
# with Gannet's ratio to each and draws PNG plots. Broker CPU per
# delivered message leads: it is the steadiest figure on a shared machine.
#
# Usage: bench/compare.sh [seconds per run] [output directory]
# (from the repository root; results stay in the output directory,
# default bench/results).
set -euo pipefail
secs=${1:-3}
out=${2:-bench/results}
work=$(mktemp -d)
mkdir -p "$out"
rm -f "$out"/*.json
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

go build -o "$work/gannet" ./cmd/gannet
go build -o "$work/gannet-bench" ./cmd/gannet-bench
(cd bench/peers/mochi && go build -o "$work/mochi" .)
. bench/brokers.sh
if [ ! -x "$mosq" ]; then
	echo "mosquitto is not installed: apt-get install mosquitto (make compare does it)" >&2
	exit 1
fi

start_mochi() {
	"$work/mochi" --listen 127.0.0.1:21885 >"$work/mochi.log" 2>&1 &
	pid=$! port=21885
}
bench() { # broker, run key, flags...
	local name=$1 key=$2
	shift 2
	"$work/gannet-bench" --addr "127.0.0.1:$port" "$@" --broker-pid "$pid" --json \
		>"$out/$name-$key.json" 2>"$work/$name-$key.err" || true
}

# The matrix: fanin runs at a fixed offered load both brokers sustain; the
# others run closed-loop, as fast as acknowledgements allow.
scenarios=(
	"p2p|--scenario p2p --clients 100"
	"fanin|--scenario fanin --publishers 100 --rate 40000"
	"fanout|--scenario fanout --publishers 1 --subscribers 1000"
)
keys=()
for s in "${scenarios[@]}"; do
	for qos in 0 1; do
		for payload in 64 1024; do
			keys+=("${s%%|*}-q$qos-$payload")
		done
	done
done

run_all() { # broker name, start function
	local name=$1 startfn=$2
	echo "== $name" >&2
	# Idle connections first, each variant on a fresh broker, so that its
	# memory is not mixed with what the traffic scenarios leave behind:
	# idle clean sessions, one subscription each (a filter of its own),
	# and persistent sessions, measured online, then offline once every
	# client disconnected.
	for v in "conn|" "conn-sub|--subscribe bench/conn/%d" "conn-persist|--session-expiry 1h --disconnect"; do
		$startfn
		wait_port
		# shellcheck disable=SC2086
		bench "$name" "${v%%|*}" --scenario conn --clients 15000 --keepalive 60s ${v#*|}
		stop_broker
	done
	$startfn
	wait_port
	for s in "${scenarios[@]}"; do
		for qos in 0 1; do
			for payload in 64 1024; do
				# shellcheck disable=SC2086
				bench "$name" "${s%%|*}-q$qos-$payload" ${s#*|} --qos $qos --payload $payload \
					--warmup 1s --duration "${secs}s" --drain 5s
			done
		done
	done
	# Curves for the plots.
	for n in 10 100 1000; do
		bench "$name" "clients-$n" --scenario p2p --clients $n --qos 1 --warmup 1s --duration "${secs}s" --drain 5s
	done
	for rate in 10000 20000 40000 80000; do
		bench "$name" "load-$rate" --scenario fanin --publishers 100 --rate $rate --qos 1 --warmup 1s --duration "${secs}s" --drain 5s
	done
	stop_broker
}

run_all gannet "start_gannet 21883"
run_all mosquitto "start_mosquitto 21884"
run_all mochi start_mochi

"$work/gannet-bench" report --dir "$out" --plots "$out" "${keys[@]}"
echo
echo "results and plots: $out" >&2
