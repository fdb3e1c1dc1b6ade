#!/usr/bin/env bash
# durability.sh runs QoS 1 from 100 publishers, each to its own persistent
# MQTT 5 session (p2p), under each --durability mode, ROUNDS times
# interleaved, and prints delivered throughput, broker CPU per message, p99
# latency, fsyncs per second, messages per fsync and store bytes per
# message. Usage: bench/durability.sh [ROUNDS] [RATE] (RATE 0: unlimited)
set -euo pipefail
rounds=${1:-2}
rate=${2:-0}
cd "$(dirname "$0")/.."
go build -o bin/ ./cmd/gannet ./cmd/gannet-bench
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '| durability | round | msgs/s received | broker CPU µs/msg | p99 ms | fsyncs/s | msgs/fsync | store bytes/msg |\n|---|---|---|---|---|---|---|---|\n'
for round in $(seq "$rounds"); do
  for mode in none sync batch; do
    rm -rf "$dir/data"
    ./bin/gannet --listen 127.0.0.1:21883 --http-listen 127.0.0.1:28080 --sys-interval 0 \
      --durability "$mode" --data-dir "$dir/data" --log-level warn &
    pid=$!
    until curl -sf http://127.0.0.1:28080/readyz >/dev/null; do sleep 0.1; done
    ./bin/gannet-bench --addr 127.0.0.1:21883 --scenario p2p --clients 100 --rate "$rate" \
      --qos 1 --mqtt 5 --session-expiry 1h --payload 256 --duration 5s --warmup 1s \
      --broker-pid "$pid" --json > "$dir/out.json"
    metrics=$(curl -s http://127.0.0.1:28080/metrics)
    kill "$pid"; wait "$pid" || true
    m() { awk -v k="$1" '$1 == k {print $2}' <<<"$metrics"; }
    python3 - "$mode" "$round" "$(m gannet_store_syncs_total)" "$(m gannet_store_bytes_written_total)" \
      "$(m gannet_messages_received_total)" "$(m gannet_uptime_seconds)" "$dir/out.json" <<'PY'
import json, sys
mode, rnd = sys.argv[1], sys.argv[2]
syncs, written, msgs, up = (float(x or 0) for x in sys.argv[3:7])
r = json.load(open(sys.argv[7]))
mpf = f"{msgs / syncs:.1f}" if syncs else "-"
fps = f"{syncs / up:,.0f}" if syncs else "-"
bpm = f"{written / msgs:.0f}" if syncs else "-"
print(f"| {mode} | {rnd} | {r['received_per_sec']:,.0f} | {r['broker_cpu_us_per_msg']:.1f} | {r['p99_ns'] / 1e6:.1f} | {fps} | {mpf} | {bpm} |")
PY
  done
done
