#!/usr/bin/env bash
# cluster-sync.sh measures QoS 1 across two nodes at the default
# --durability=sync: 10 synchronous publishers (one message in flight
# each) on n1 send to 10 clean-session subscribers, on n1 (same node) and
# then on n2 (cross node). It prints delivered throughput, the cross/same
# ratio, median latency, n1's CPU per message, and each node's fsyncs
# (gannet_store_syncs_total) over the runs. Usage:
# bench/cluster-sync.sh [DURATION] [ROUNDS]  (environment: EXTRA="flags"
# for both nodes, BIN=dir with gannet and gannet-bench instead of a build)
set -euo pipefail
dur=${1:-5s}
rounds=${2:-2}
cd "$(dirname "$0")/.."
bin=${BIN:-bin}
[ -n "${BIN:-}" ] || go build -o bin/ ./cmd/gannet ./cmd/gannet-bench
export GANNET_CLUSTER_SECRET=${GANNET_CLUSTER_SECRET:-$(head -c 24 /dev/urandom | base64)}
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
start() { # name mqtt http cluster gossip flags...
  local name=$1 mq=$2 hp=$3 cp=$4 gp=$5; shift 5
  # shellcheck disable=SC2086
  "$bin/gannet" --node-name "$name" --listen "127.0.0.1:$mq" --http-listen "127.0.0.1:$hp" \
    --cluster-listen "127.0.0.1:$cp" --gossip-listen "127.0.0.1:$gp" --data-dir "$dir/$name" \
    --sys-interval 0 --log-level warn ${EXTRA:-} "$@" &
  pids+=($!)
  until curl -sf "http://127.0.0.1:$hp/readyz" >/dev/null; do sleep 0.1; done
}
start n1 21883 28080 27001 27101
start n2 21884 28081 27002 27102 --join gossip=127.0.0.1:27101
sleep 2 # the mesh
n1=${pids[0]}
for i in $(seq "$rounds"); do
  "$bin/gannet-bench" --scenario p2p --clients 10 --qos 1 --inflight 1 --addr 127.0.0.1:21883 \
    --duration "$dur" --warmup 1s --broker-pid "$n1" --json > "$dir/same.json" 2>/dev/null
  "$bin/gannet-bench" --scenario cluster --clients 10 --qos 1 --inflight 1 --addr 127.0.0.1:21883 \
    --sub-addr 127.0.0.1:21884 --duration "$dur" --warmup 1s --broker-pid "$n1" --json > "$dir/cross.json" 2>/dev/null
  python3 - "$dir/same.json" "$dir/cross.json" <<'PY'
import json, sys
s, c = (json.load(open(f)) for f in sys.argv[1:3])
print("same %7.0f msgs/s  cross %7.0f msgs/s  cross/same %.2f  p50 same %4.0f us cross %4.0f us  n1 CPU us/msg same %.1f cross %.1f  lost %d" % (
    s["received_per_sec"], c["received_per_sec"], c["received_per_sec"] / s["received_per_sec"],
    s["p50_ns"] / 1e3, c["p50_ns"] / 1e3, s["broker_cpu_us_per_msg"], c["broker_cpu_us_per_msg"], s["lost"] + c["lost"]))
PY
done
for hp in 28080 28081; do
  echo "fsyncs on :$hp: $(curl -s "http://127.0.0.1:$hp/metrics" | awk '/^gannet_store_syncs_total/ {print $2}')"
done
