#!/usr/bin/env bash
# tls.sh measures Gannet against Debian's Mosquitto over each transport,
# plain TCP, TLS and WebSocket, both brokers in the same run:
#
#   conn   CLIENTS clients connect, at most WINDOW CONNECTs (with their TLS
#          handshakes or WebSocket upgrades) outstanding at a time, to a
#          freshly started broker, and stay connected, idle: the broker's
#          RSS per connection (from /proc, after the last CONNACK and a
#          second's rest, minus the RSS before the first), the connection
#          rate and the broker's CPU time per connection. Over TLS every
#          connection is a full handshake (no session resumption: the
#          generator keeps no session cache) with the ECDSA P-256
#          certificate made below.
#   p2p    PAIRS publisher/subscriber pairs at QoS 0, 64 B payloads, RATE
#          messages per second in total (RATE=0: closed loop, each
#          publisher keeping its window full as in make compare's p2p),
#          SECS seconds measured after a 1 s warm-up, on a freshly started
#          broker: the broker's CPU time per delivered message.
#
# Every run starts its broker afresh. Each round runs every transport on
# both brokers, the brokers' order alternating from round to round; the
# tables give the median of the rounds with Gannet's ratio to Mosquitto.
#
# Usage: bench/tls.sh [ROUNDS] [OUTPUT DIRECTORY]   (from the repository root)
#        ROUNDS default 3; the JSON results, setup.txt and summary.md (also
#        printed) go to OUTPUT DIRECTORY, default /tmp/gannet-bench-tls.
#
# Environment: CLIENTS (10000), WINDOW (100), PAIRS (100), RATE (20000),
# SECS (10), TRANSPORTS ("tcp tls ws"; wss, WebSocket over TLS, may be
# added), TLS_GROUPS (X25519: the key exchange offered; see below), LIMIT
# (3600: seconds the whole script may take), GANNET and GBENCH
# (binaries to use instead of building the tree). For example, a short
# check that everything works:
#
#   CLIENTS=500 PAIRS=10 RATE=2000 SECS=2 bench/tls.sh 1
#
# Descriptors: the script raises its soft limit to the hard one. The
# generator holds one descriptor per connection, and so do Mosquitto and
# Gannet (its TLS 1.3 connections are served on the event loops; only TLS
# 1.2 ones, which the generator does not make, hold three).
#
# Key exchange: crypto/tls offers X25519MLKEM768 first, which Gannet takes
# and Debian's OpenSSL 3.0 (Mosquitto) does not know, so that the two
# brokers would not do the same handshake. TLS_GROUPS (X25519 by default)
# is what the generator offers both; the summary shows what each
# negotiated.
#
# Every broker listens on free loopback ports and keeps its files in one
# temporary directory; both are stopped, and the directory removed, when
# the script ends, however it ends. Every run has a time limit, and so has
# the whole script. A run that fails (a refused or unanswered CONNECT, a
# broker that does not start) is reported, and the script exits 1 at the
# end.
set -euo pipefail
rounds=${1:-3}
out=${2:-/tmp/gannet-bench-tls}
clients=${CLIENTS:-10000}
window=${WINDOW:-100}
pairs=${PAIRS:-100}
rate=${RATE:-20000}
secs=${SECS:-10}
transports=${TRANSPORTS:-tcp tls ws}
groups=${TLS_GROUPS:-X25519}
limit=${LIMIT:-3600}

for v in rounds:"$rounds" CLIENTS:"$clients" WINDOW:"$window" PAIRS:"$pairs" RATE:"$rate" SECS:"$secs" LIMIT:"$limit"; do
	case ${v#*:} in '' | *[!0-9]* | 0) [ "$v" = RATE:0 ] || { echo "tls.sh: ${v%%:*} must be a positive whole number, not \"${v#*:}\"" >&2; exit 2; } ;; esac
done
for t in $transports; do
	case $t in tcp | tls | ws | wss) ;; *) echo "tls.sh: TRANSPORTS: unknown transport \"$t\" (want tcp, tls, ws, wss)" >&2; exit 2 ;; esac
done
[ -n "${transports// /}" ] || { echo "tls.sh: TRANSPORTS names no transport (want tcp, tls, ws, wss)" >&2; exit 2; }
for cmd in mosquitto openssl python3 timeout; do
	command -v "$cmd" >/dev/null || { echo "tls.sh: $cmd not found (apt-get install mosquitto openssl python3 coreutils)" >&2; exit 2; }
done

# Descriptors: see above.
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
ulimit -n "$hard"
if [ "$hard" -lt $((clients + 200)) ]; then
	echo "tls.sh: CLIENTS=$clients needs more descriptors than the hard limit of $hard allows (raise it, or lower CLIENTS)" >&2
	exit 2
fi
tls_clients=$clients

mkdir -p "$out"
rm -f "$out"/conn-*.json "$out"/p2p-*.json "$out/setup.txt" "$out/summary.md" "$out/failures.txt"
work=$(mktemp -d /tmp/gannet-tls.XXXXXX)
bpid='' watchdog='' failures=()

cleanup() {
	set +e
	[ -n "$bpid" ] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null
	[ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "tls.sh: interrupted" >&2; exit 130' INT
trap 'echo "tls.sh: stopped: over the ${limit}s limit" >&2; exit 124' TERM
# The watchdog: TERM to this script after LIMIT seconds. Its sleep dies
# with it when cleanup stops it early.
(
	trap 'kill $s 2>/dev/null; exit 0' TERM
	sleep "$limit" &
	s=$!
	wait $s && kill -TERM $$
) &
watchdog=$!

# free_port sets fp to a loopback TCP port nobody listened on a moment
# ago, below the ephemeral range so that no client socket takes it
# meanwhile, and not handed out before by this script (the ports of one
# broker are all picked before it listens on any).
taken=' '
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 12000))
		[[ $taken == *" $p "* ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			taken="$taken$p "
			fp=$p
			return 0
		fi
	done
	echo "tls.sh: no free port found" >&2
	return 1
}
wait_port() { # port, log
	for _ in $(seq 300); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		kill -0 "$bpid" 2>/dev/null || break
		sleep 0.1
	done
	echo "tls.sh: nothing listens on port $1; the broker's log:" >&2
	tail -20 "$2" >&2
	return 1
}

# --- binaries ---

tree="the tree at $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -n "$(git status --porcelain 2>/dev/null)" ] && tree="$tree with uncommitted changes"
if [ -n "${GANNET:-}" ]; then gannet=$GANNET built_broker=$GANNET; else
	gannet=$work/gannet built_broker=$tree
	go build -o "$gannet" ./cmd/gannet
fi
if [ -n "${GBENCH:-}" ]; then gbench=$GBENCH built_bench=$GBENCH; else
	gbench=$work/gannet-bench built_bench=$tree
	go build -o "$gbench" ./cmd/gannet-bench
fi

# --- certificates: a CA and the brokers' certificate, ECDSA P-256 ---

pki=$work/pki
mkdir "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=gannet-bench-ca \
	-keyout "$pki/ca-key.pem" -out "$pki/ca.pem" 2>"$pki/openssl.log"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
	-keyout "$pki/server-key.pem" -out "$pki/server.csr" 2>>"$pki/openssl.log"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n' >"$pki/ext.cnf"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" -CAcreateserial -days 2 \
	-extfile "$pki/ext.cnf" -out "$pki/server.pem" 2>>"$pki/openssl.log"
# Mosquitto runs as the mosquitto user when started as root: it must read
# the key.
chmod 755 "$work" "$pki"
chmod 644 "$pki"/*.pem

{
	echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(go version 2>/dev/null); $(mosquitto -h 2>/dev/null | head -1); $(openssl version)"
	echo "broker: $built_broker; generator: $built_bench"
	echo "certificate: $(openssl x509 -in "$pki/server.pem" -noout -text | grep -m1 -o 'NIST CURVE: .*\|ASN1 OID: .*') ECDSA, signed by a CA of the same; key exchange offered: $groups"
	echo "descriptors: hard limit $hard; idle connections per run: $clients (TLS: $tls_clients)"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/setup.txt" >&2

# --- brokers: every listener, on ports of their own ---

n=0
declare -A port
start_broker() { # gannet | mosquitto
	n=$((n + 1))
	local t log=$work/$1-$n.log
	for t in tcp tls ws wss; do
		free_port
		port[$t]=$fp
	done
	if [ "$1" = gannet ]; then
		"$gannet" --listen "127.0.0.1:${port[tcp]}" --tls-listen "127.0.0.1:${port[tls]}" \
			--ws-listen "127.0.0.1:${port[ws]}" --wss-listen "127.0.0.1:${port[wss]}" \
			--tls-cert "$pki/server.pem" --tls-key "$pki/server-key.pem" \
			--http-listen '' --sys-interval 0 --data-dir "$work/data-$n" --log-level error >"$log" 2>&1 &
	else
		# A websockets listener binds the address given only with
		# socket_domain ipv4 (libwebsockets); and Mosquitto 2.0.11 does
		# not start with websockets listeners alone, which the plain one
		# avoids.
		cat >"$work/mosquitto-$n.conf" <<CONF
allow_anonymous true
persistence false
log_dest file $log
log_type error
log_type warning
listener ${port[tcp]} 127.0.0.1
listener ${port[tls]} 127.0.0.1
cafile $pki/ca.pem
certfile $pki/server.pem
keyfile $pki/server-key.pem
listener ${port[ws]} 127.0.0.1
socket_domain ipv4
protocol websockets
listener ${port[wss]} 127.0.0.1
socket_domain ipv4
protocol websockets
cafile $pki/ca.pem
certfile $pki/server.pem
keyfile $pki/server-key.pem
CONF
		: >"$log"
		chmod 666 "$log"
		mosquitto -c "$work/mosquitto-$n.conf" >>"$log" 2>&1 &
	fi
	bpid=$!
	for t in tcp tls ws wss; do wait_port "${port[$t]}" "$log" || return 1; done
}
stop_broker() {
	kill "$bpid" 2>/dev/null || true
	wait "$bpid" 2>/dev/null || true
	bpid=''
}
tflags() { # transport: the generator's flags for it
	case $1 in
	tcp) flags=() ;;
	tls) flags=(--tls --ca "$pki/ca.pem" --tls-groups "$groups") ;;
	ws) flags=(--ws) ;;
	wss) flags=(--ws --tls --ca "$pki/ca.pem" --tls-groups "$groups") ;;
	esac
}
run() { # broker, transport, result name, time limit, generator flags...
	local broker=$1 t=$2 name=$3 tmo=$4 rc=0
	shift 4
	tflags "$t"
	if ! start_broker "$broker"; then
		echo "tls.sh: FAILED: $name: $broker did not start" >&2
		failures+=("$name")
		stop_broker
		return
	fi
	timeout "$tmo" "$gbench" --addr "127.0.0.1:${port[$t]}" --broker-pid "$bpid" --json "${flags[@]}" "$@" \
		>"$out/$name.json" 2>"$work/$name.err" || rc=$?
	if [ "$rc" != 0 ]; then
		echo "tls.sh: FAILED: $name (exit $rc):" >&2
		grep -v '^connected\|^sent' "$work/$name.err" | tr '\r' '\n' | grep -v '^$' | tail -5 >&2 || true
		failures+=("$name")
	fi
	stop_broker
}

echo "== $rounds rounds; transports: $transports; conn: $clients clients (TLS $tls_clients), at most $window CONNECTs outstanding; p2p: $pairs pairs, QoS 0, 64 B, $rate msg/s, ${secs}s" >&2
for r in $(seq "$rounds"); do
	if ((r % 2)); then order=(gannet mosquitto); else order=(mosquitto gannet); fi
	for t in $transports; do
		c=$clients
		[[ $t == tls || $t == wss ]] && c=$tls_clients
		for b in "${order[@]}"; do
			echo "   round $r: $t, $b" >&2
			run "$b" "$t" "conn-$b-$t-$r" 600 --scenario conn --clients "$c" --connect-window "$window"
			run "$b" "$t" "p2p-$b-$t-$r" $((secs + 120)) --scenario p2p --clients "$pairs" --qos 0 --payload 64 \
				--rate "$rate" --warmup 1s --duration "${secs}s" --drain 5s
		done
	done
done

# --- report ---

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/setup.txt"
printf '%s\n' "${failures[@]}" >"$out/failures.txt"
python3 - "$out" "$rounds" "$transports" "$clients" "$tls_clients" "$window" "$pairs" "$rate" "$secs" <<'PY' | tee "$out/summary.md"
import json, os, statistics, sys
out, rounds, transports, clients, tls_clients, window, pairs, rate, secs = sys.argv[1:]
rounds, transports = int(rounds), transports.split()
brokers = ("gannet", "mosquitto")

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def runs(kind, b, t):
    return [load(f"{kind}-{b}-{t}-{r}") for r in range(1, rounds + 1)]

def med(rs, f):
    vs = [f(x) for x in rs if x]
    vs = [v for v in vs if v is not None]
    return statistics.median(vs) if vs else None

def cell(v, fmt):
    return "-" if v is None else format(v, fmt)

def ratio(g, m):
    return None if g is None or not m else g / m

def per_round(rs, f, fmt):
    return ", ".join(cell(f(x) if x else None, fmt) for x in rs)

print(open(os.path.join(out, "setup.txt")).read())
print("What each broker negotiated (first connection of the first round):\n")
for t in transports:
    for b in brokers:
        x = next((x for x in runs("conn", b, t) + runs("p2p", b, t) if x), None)
        print(f"- {t}, {b}: {x.get('transport', '-') if x else '-'}")
print()

print(f"### Idle connections and connection rate (conn, at most {window} CONNECTs outstanding)\n")
print("RSS per connection in KiB (the broker's RSS after the last CONNACK and a second's rest, minus its RSS before "
      "the first), connections per second (first dial to last CONNACK), broker and generator CPU µs per connection. "
      "Medians of the rounds; ratios are Gannet over Mosquitto.\n")
print("| transport | clients | Gannet KiB/conn | Mosquitto KiB/conn | ratio | Gannet conn/s | Mosquitto conn/s | ratio "
      "| Gannet CPU µs/conn | Mosquitto CPU µs/conn | ratio | generator µs/conn (G, M) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
summary = {}
for t in transports:
    g, m = runs("conn", "gannet", t), runs("conn", "mosquitto", t)
    kib = lambda x: x.get("broker_rss_per_conn_bytes", 0) / 1024
    cps = lambda x: x.get("connects_per_sec")
    cpu = lambda x: x.get("broker_cpu_us_per_msg")
    tool = lambda x: x.get("tool_cpu_us_per_msg")
    n = tls_clients if t in ("tls", "wss") else clients
    row = {k: (med(g, f), med(m, f)) for k, f in (("kib", kib), ("cps", cps), ("cpu", cpu), ("tool", tool))}
    summary[("conn", t)] = row
    print(f"| {t} | {n} | {cell(row['kib'][0], '.2f')} | {cell(row['kib'][1], '.2f')} | {cell(ratio(*row['kib']), '.2f')} "
          f"| {cell(row['cps'][0], ',.0f')} | {cell(row['cps'][1], ',.0f')} | {cell(ratio(*row['cps']), '.2f')} "
          f"| {cell(row['cpu'][0], '.0f')} | {cell(row['cpu'][1], '.0f')} | {cell(ratio(*row['cpu']), '.2f')} "
          f"| {cell(row['tool'][0], '.0f')}, {cell(row['tool'][1], '.0f')} |")
print()

offered = f"{int(rate):,} msg/s" if int(rate) else "closed loop"
print(f"### Broker CPU per message (p2p, {pairs} pairs, QoS 0, 64 B, {offered}, {secs} s)\n")
print("Broker CPU µs per delivered message, messages received per second, lost (QoS 0: dropped), generator CPU µs "
      "per message. Medians of the rounds; the ratio is Gannet over Mosquitto.\n")
print("| transport | Gannet µs/msg | Mosquitto µs/msg | ratio | Gannet recv/s | Mosquitto recv/s | lost (G, M) | generator µs/msg (G, M) |")
print("|---|---:|---:|---:|---:|---:|---|---|")
for t in transports:
    g, m = runs("p2p", "gannet", t), runs("p2p", "mosquitto", t)
    us = lambda x: x.get("broker_cpu_us_per_msg")
    row = (med(g, us), med(m, us))
    summary[("p2p", t)] = row
    rr = lambda x: x.get("received_per_sec")
    lost = lambda x: x.get("lost")
    tool = lambda x: x.get("tool_cpu_us_per_msg")
    print(f"| {t} | {cell(row[0], '.2f')} | {cell(row[1], '.2f')} | {cell(ratio(*row), '.2f')} "
          f"| {cell(med(g, rr), ',.0f')} | {cell(med(m, rr), ',.0f')} | {cell(med(g, lost), '.0f')}, {cell(med(m, lost), '.0f')} "
          f"| {cell(med(g, tool), '.2f')}, {cell(med(m, tool), '.2f')} |")
print()

print("### Every round\n")
print("| run | broker | KiB/conn | conn/s | CPU µs/conn | p2p CPU µs/msg |")
print("|---|---|---|---|---|---|")
for t in transports:
    for b in brokers:
        c, p = runs("conn", b, t), runs("p2p", b, t)
        print(f"| {t} | {b} | {per_round(c, lambda x: x.get('broker_rss_per_conn_bytes', 0) / 1024, '.2f')} "
              f"| {per_round(c, lambda x: x.get('connects_per_sec'), ',.0f')} "
              f"| {per_round(c, lambda x: x.get('broker_cpu_us_per_msg'), '.0f')} "
              f"| {per_round(p, lambda x: x.get('broker_cpu_us_per_msg'), '.2f')} |")
print()

def verdict(v, ok):
    return "no figure" if v is None else ("met" if ok(v) else "NOT met")
print("### Targets\n")
for t in transports:
    if t == "tcp":
        continue
    kind = {"tls": "TLS", "ws": "WebSocket", "wss": "WebSocket over TLS"}[t]
    q = ratio(*summary[("conn", t)]["kib"])
    print(f"- Memory per idle {kind} connection at most Mosquitto's: {cell(q, '.2f')}, {verdict(q, lambda v: v <= 1)}")
    if t in ("tls", "wss"):
        q = ratio(*summary[("conn", t)]["cps"])
        print(f"- {kind} handshakes per second at least Mosquitto's: {cell(q, '.2f')}, {verdict(q, lambda v: v >= 1)}")
    q = ratio(*summary[("p2p", t)])
    print(f"- Broker CPU per message over {kind} at most 0.5x Mosquitto's: {cell(q, '.2f')}, {verdict(q, lambda v: v <= 0.5)}")
if "tcp" in transports:
    print("- Plain TCP: compare the tcp rows with the last recorded figures (BENCHMARKS.md); a change beyond the rounds' spread is a regression.")
failed = [l for l in open(os.path.join(out, "failures.txt")).read().split() if l]
if failed:
    print(f"\nFAILED runs (their figures are missing or partial): {', '.join(failed)}")
PY
echo "results: $out" >&2
[ "${#failures[@]}" = 0 ]
