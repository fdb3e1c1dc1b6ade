#!/usr/bin/env bash
# compare.sh runs the same scenarios against Gannet and Mosquitto on
# loopback, one broker at a time, and prints one table per scenario with
# both figures and their ratio. Broker CPU per delivered message leads: it
# is the steadiest figure on a shared machine.
#
# Usage: bench/compare.sh [seconds per run]   (from the repository root)
set -euo pipefail
secs=${1:-3}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

go build -o "$work/gannet" ./cmd/gannet
go build -o "$work/gannet-bench" ./cmd/gannet-bench
if ! command -v mosquitto >/dev/null; then
	echo "installing mosquitto (Debian package)" >&2
	apt-get install -y -qq mosquitto >/dev/null
fi
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)

start_gannet() {
	"$work/gannet" --listen 127.0.0.1:21883 --http-listen 127.0.0.1:28080 --sys-interval 0 \
		--data-dir "$work/data" >"$work/gannet.log" 2>&1 &
	pid=$!
	port=21883
}
start_mosquitto() {
	cat >"$work/mosquitto.conf" <<CONF
listener 21884 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000
log_dest none
CONF
	"$mosq" -c "$work/mosquitto.conf" &
	pid=$!
	port=21884
	sleep 0.2
}
wait_port() {
	for _ in $(seq 100); do
		(echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "broker on port $1 did not start" >&2
	return 1
}

# Scenarios: name and gannet-bench flags. fanin runs at a fixed offered
# load both brokers sustain; the others run closed-loop (as fast as
# acknowledgements allow).
scenarios=(
	"p2p|--scenario p2p --clients 100"
	"fanin|--scenario fanin --publishers 100 --rate 40000"
	"fanout|--scenario fanout --publishers 1 --subscribers 1000"
)

stop_broker() {
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}

run_all() { # broker name, start function
	local name=$1 startfn=$2
	# Idle connections first, on a fresh broker, so that its memory is not
	# mixed with what the traffic scenarios left behind.
	$startfn
	wait_port "$port"
	"$work/gannet-bench" --addr "127.0.0.1:$port" --scenario conn --clients 15000 --broker-pid "$pid" --json \
		>"$work/$name-conn.json" 2>/dev/null || true
	stop_broker
	$startfn
	wait_port "$port"
	for s in "${scenarios[@]}"; do
		for qos in 0 1; do
			for payload in 64 1024; do
				local key="${s%%|*}-q$qos-$payload"
				# shellcheck disable=SC2086
				"$work/gannet-bench" --addr "127.0.0.1:$port" ${s#*|} --qos $qos --payload $payload \
					--warmup 1s --duration "${secs}s" --drain 5s --broker-pid "$pid" --json \
					>"$work/$name-$key.json" 2>/dev/null || true
			done
		done
	done
	stop_broker
}

run_all gannet start_gannet
run_all mosquitto start_mosquitto

field() { # file, json field
	python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))
except Exception: print(0)' "$1" "$2"
}
ratio() { python3 -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f"{a/b:.2f}" if b else "-")' "$1" "$2"; }

printf '\n%-18s | %-22s | %-22s | %-24s | %-10s\n' "run" "broker CPU µs/msg G/M" "received/s G/M" "p99 ms G/M" "lost G/M"
printf '%s\n' "-------------------+------------------------+------------------------+--------------------------+-----------"
for s in "${scenarios[@]}"; do
	for qos in 0 1; do
		for payload in 64 1024; do
			key="${s%%|*}-q$qos-$payload"
			g="$work/gannet-$key.json" m="$work/mosquitto-$key.json"
			gc=$(field "$g" broker_cpu_us_per_msg) mc=$(field "$m" broker_cpu_us_per_msg)
			gr=$(field "$g" received_per_sec) mr=$(field "$m" received_per_sec)
			gp=$(field "$g" p99_ns) mp=$(field "$m" p99_ns)
			gl=$(field "$g" lost) ml=$(field "$m" lost)
			printf '%-18s | %6.2f %6.2f  x%-6s | %8.0f %8.0f x%-4s | %8.2f %8.2f x%-5s | %s %s\n' "$key" \
				"$gc" "$mc" "$(ratio "$gc" "$mc")" "$gr" "$mr" "$(ratio "$gr" "$mr")" \
				"$(python3 -c "print($gp/1e6)")" "$(python3 -c "print($mp/1e6)")" "$(ratio "$gp" "$mp")" "$gl" "$ml"
		done
	done
done
g="$work/gannet-conn.json" m="$work/mosquitto-conn.json"
printf '\nidle connections: %s each; broker RSS per connection: gannet %.0f B, mosquitto %.0f B; connects/s: gannet %.0f, mosquitto %.0f\n' \
	"$(field "$g" clients)" "$(field "$g" broker_rss_per_conn_bytes)" "$(field "$m" broker_rss_per_conn_bytes)" \
	"$(field "$g" connects_per_sec)" "$(field "$m" connects_per_sec)"
