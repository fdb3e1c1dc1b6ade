#!/usr/bin/env bash
# diskbytes.sh measures the bytes each broker writes to disk per 256-byte
# QoS 1 message, from /proc/PID/io write_bytes, with one publisher at a fixed
# rate fanning out to 1 and to 100 persistent MQTT 5 sessions: Gannet at
# --durability=sync and Mosquitto with persistence true and
# autosave_interval 1 (its most frequent save).
# Usage: bench/diskbytes.sh [RATE] [DURATION]
set -euo pipefail
rate=${1:-2000}
duration=${2:-10s}
cd "$(dirname "$0")/.."
go build -o bin/ ./cmd/gannet ./cmd/gannet-bench
dir=$(mktemp -d)
chmod 755 "$dir"  # Mosquitto drops root for its own user
trap 'rm -rf "$dir"' EXIT
cat > "$dir/mosquitto.conf" <<CONF
listener 21883 127.0.0.1
allow_anonymous true
persistence true
persistence_location $dir/mq/
autosave_interval 1
max_queued_messages 1000000
CONF
printf '| broker | subscribers | messages in | deliveries | disk bytes written | bytes per message in | bytes per delivery |\n|---|---|---|---|---|---|---|\n'
for subs in 1 100; do
  for broker in gannet mosquitto; do
    rm -rf "$dir/data" "$dir/mq"; mkdir -p "$dir/mq"; chmod 777 "$dir/mq"
    if [ "$broker" = gannet ]; then
      ./bin/gannet --listen 127.0.0.1:21883 --http-listen 127.0.0.1:28080 --sys-interval 0 \
        --durability sync --data-dir "$dir/data" --log-level warn &
    else
      mosquitto -c "$dir/mosquitto.conf" 2>/dev/null &
    fi
    pid=$!
    until (exec 3<>/dev/tcp/127.0.0.1/21883) 2>/dev/null; do sleep 0.1; done
    before=$(awk '/^write_bytes/ {print $2}' /proc/$pid/io)
    ./bin/gannet-bench --addr 127.0.0.1:21883 --scenario fanout --publishers 1 --subscribers "$subs" \
      --qos 1 --mqtt 5 --session-expiry 1h --payload 256 --rate "$rate" --duration "$duration" \
      --json > "$dir/out.json" 2>/dev/null || true
    sleep 2 # one more autosave for Mosquitto
    after=$(awk '/^write_bytes/ {print $2}' /proc/$pid/io)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$broker" "$subs" "$before" "$after" "$dir/out.json" <<'PY'
import json, sys
broker, subs, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(sys.argv[5]))
sent, recv = r["sent"], r["received"]
w = after - before
print(f"| {broker} | {subs} | {sent:,} | {recv:,} | {w:,} | {w / max(sent, 1):,.0f} | {w / max(recv, 1):,.0f} |")
PY
  done
done
