#!/usr/bin/env bash
# cluster.sh measures the interlink on this host. Two nodes (n1, n2; n3
# joins for the fan-out row) run with --durability=none so that only the
# network path is measured; 50 publisher/subscriber pairs send 200-byte
# JSON telemetry readings (--payload-json).
#
# For each interlink setting it runs p2p with both ends on n1 (same node)
# and the cluster scenario (publishers on n1, subscribers on n2), and
# prints delivered throughput, the cross/same ratio, p99 latency, CPU of
# both nodes per message, and interlink wire bytes per message against the
# 200 payload bytes. A run that loses QoS 0 messages (the interlink drops
# them when it falls behind) still reports. Usage:
# bench/cluster.sh [DURATION] [QOS] [RATE] (RATE: total msgs/s, 0 unlimited)
# Environment: CLUSTER_TLS=1 runs the links over TLS 1.3 (--cluster-tls-*,
# with a throwaway CA made by openssl) instead of sealing them with the
# secret; CLUSTER_ROWS=default runs the default row only (no other
# settings, no fan-out).
set -euo pipefail
dur=${1:-5s}
qos=${2:-0}
rate=${3:-0}
cd "$(dirname "$0")/.."
go build -o bin/ ./cmd/gannet ./cmd/gannet-bench
# Every node needs the cluster secret (its links are then sealed); the
# environment keeps it out of the process list. Set it to reuse one.
export GANNET_CLUSTER_SECRET=${GANNET_CLUSTER_SECRET:-$(head -c 24 /dev/urandom | base64)}
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

tls=${CLUSTER_TLS:-0}
if [ "$tls" = 1 ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 1 -subj "/CN=bench cluster CA" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' > "$dir/node.ext"
  for n in n1 n2 n3; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout "$dir/$n.key" -out "$dir/$n.csr" -subj "/CN=$n" 2>/dev/null
    openssl x509 -req -in "$dir/$n.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 1 -extfile "$dir/node.ext" -out "$dir/$n.pem" 2>/dev/null
  done
  echo "links: TLS 1.3 (--cluster-tls-*)"
else
  echo "links: sealed with the secret (ChaCha20-Poly1305)"
fi

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start() { # name mqtt-port http-port cluster-port flags...
  local name=$1 mq=$2 hp=$3 cp=$4; shift 4
  local join=() certs=()
  [ "$name" != n1 ] && join=(--join 127.0.0.1:27946)
  [ "$tls" = 1 ] && certs=(--cluster-tls-cert "$dir/$name.pem" --cluster-tls-key "$dir/$name.key" --cluster-tls-ca "$dir/ca.pem")
  ./bin/gannet --node-name "$name" --listen "127.0.0.1:$mq" --http-listen "127.0.0.1:$hp" \
    --cluster-listen "127.0.0.1:$cp" "${join[@]}" "${certs[@]}" --durability none --sys-interval 0 \
    --event-loops 1 --log-level warn "$@" &
  pids+=($!)
  until curl -sf "http://127.0.0.1:$hp/readyz" >/dev/null; do sleep 0.1; done
}

mesh() { # nodes
  until [ "$(curl -s http://127.0.0.1:28081/api/v1/cluster | python3 -c 'import json,sys; m=json.load(sys.stdin)["members"]; print(sum(1 for x in m if x["state"]=="alive" and x["lanes_up"]>0))')" = "$1" ]; do sleep 0.2; done
}

metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1 == k {print $2}'; }

run() { # label flags...
  local label=$1; shift
  pids=()
  start n1 21884 28081 27946 "$@"
  start n2 21885 28082 27948 "$@"
  mesh 2
  local p1=${pids[0]} p2=${pids[1]}
  common=(--clients 50 --qos "$qos" --rate "$rate" --payload 200 --payload-json --duration "$dur" --warmup 1s --json)
  ./bin/gannet-bench --scenario p2p --addr 127.0.0.1:21884 "${common[@]}" > "$dir/same.json" || true
  local t1=$(ticks "$p1") t2=$(ticks "$p2")
  local w0=$(metric 28081 'gannet_interlink_wire_bytes_sent_total{peer="n2"}')
  local m0=$(metric 28081 'gannet_interlink_messages_sent_total{peer="n2"}')
  ./bin/gannet-bench --scenario cluster --addr 127.0.0.1:21884 --sub-addr 127.0.0.1:21885 "${common[@]}" > "$dir/cross.json" || true
  local t1b=$(ticks "$p1") t2b=$(ticks "$p2")
  local w1=$(metric 28081 'gannet_interlink_wire_bytes_sent_total{peer="n2"}')
  local m1=$(metric 28081 'gannet_interlink_messages_sent_total{peer="n2"}')
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  python3 - "$label" "$dir/same.json" "$dir/cross.json" "$((t1b - t1 + t2b - t2))" \
    "${w0:-0}" "${w1:-0}" "${m0:-0}" "${m1:-0}" "$(getconf CLK_TCK)" <<'PY'
import json, sys
label = sys.argv[1]
same, cross = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
ticks, w0, w1, m0, m1, hz = (float(x) for x in sys.argv[4:10])
msgs = max(cross["received"], 1)
wire = (w1 - w0) / max(m1 - m0, 1)
print(f"| {label} | {same['received_per_sec']:,.0f} | {cross['received_per_sec']:,.0f} | "
      f"{cross['received_per_sec'] / max(same['received_per_sec'], 1):.2f} | {cross['p99_ns'] / 1e6:.2f} | "
      f"{ticks / hz * 1e6 / msgs:.1f} | {wire:.0f} ({wire / 200:.0%}) | {cross['lost']} |")
PY
}

echo "| interlink | same-node msgs/s | cross-node msgs/s | cross/same | cross p99 ms | both nodes CPU µs/msg | wire B/msg (of 200) | lost |"
echo "|---|---|---|---|---|---|---|---|"
run "s2, 64 KiB / 500 µs (default)"
[ "${CLUSTER_ROWS:-all}" = default ] && exit 0
run "zstd, 64 KiB / 500 µs" --interlink-compression zstd
run "none, 64 KiB / 500 µs" --interlink-compression none
run "s2, 64 KiB / no delay" --interlink-batch-delay 0
run "s2, 64 KiB / 5 ms" --interlink-batch-delay 5ms
run "s2, 8 KiB / 500 µs" --interlink-batch-bytes 8192
run "zstd, 256 KiB / 5 ms" --interlink-compression zstd --interlink-batch-bytes 262144 --interlink-batch-delay 5ms

# Three nodes: one publisher on n1, 20 subscribers on each of n2 and n3
# (fanout to 40 receivers over two peers), against all 40 on n1.
pids=()
start n1 21884 28081 27946
start n2 21885 28082 27948
start n3 21886 28083 27950
mesh 3
echo
echo "| 3-node fan-out | msgs/s received | p99 ms | wire B/msg to each peer |"
echo "|---|---|---|---|"
fan=(--scenario fanout --publishers 1 --subscribers 40 --qos "$qos" --rate "$((rate / 40))" --payload 200 --payload-json --duration "$dur" --warmup 1s --json)
./bin/gannet-bench --addr 127.0.0.1:21884 "${fan[@]}" > "$dir/fan1.json" || true
w0=$(metric 28081 'gannet_interlink_wire_bytes_sent_total{peer="n2"}'); m0=$(metric 28081 'gannet_interlink_messages_sent_total{peer="n2"}')
./bin/gannet-bench --addr 127.0.0.1:21884 --sub-addr 127.0.0.1:21885,127.0.0.1:21886 "${fan[@]}" > "$dir/fan3.json" || true
w1=$(metric 28081 'gannet_interlink_wire_bytes_sent_total{peer="n2"}'); m1=$(metric 28081 'gannet_interlink_messages_sent_total{peer="n2"}')
python3 - "$dir/fan1.json" "$dir/fan3.json" "${w0:-0}" "${w1:-0}" "${m0:-0}" "${m1:-0}" <<'PY'
import json, sys
one, three = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
w0, w1, m0, m1 = (float(x) for x in sys.argv[3:7])
print(f"| all 40 subscribers on n1 | {one['received_per_sec']:,.0f} | {one['p99_ns'] / 1e6:.2f} | - |")
print(f"| 20 on n2 + 20 on n3, publisher on n1 | {three['received_per_sec']:,.0f} | {three['p99_ns'] / 1e6:.2f} | {(w1 - w0) / max(m1 - m0, 1):.0f} |")
PY
