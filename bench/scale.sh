#!/usr/bin/env bash
# scale.sh shows a cluster beyond what one process may hold on this host
# (20,000 descriptors a process): 3 nodes on one host with PER_NODE
# connections each, the load split over 6 generator processes (each within
# the descriptor limit). Generator k puts its publishers on node k mod 3
# and their subscribers on node k+1 mod 3, so every message crosses the
# interlink. Sustained QoS 1 traffic at RATE msgs/s in total for DURATION.
# It prints, per node, RSS and CPU per message, and per generator the
# publish-to-delivery percentiles and losses. Usage:
# bench/scale.sh [DURATION] [RATE] [PER_NODE]   (defaults 60s 15000 15000)
set -euo pipefail
dur=${1:-60s}
rate=${2:-15000}
per_node=${3:-15000}
gens=6
pairs=$((per_node * 3 / 2 / gens)) # each generator: pairs publishers + pairs subscribers
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/" ./cmd/gannet ./cmd/gannet-bench
export GANNET_CLUSTER_SECRET=${GANNET_CLUSTER_SECRET:-$(head -c 24 /dev/urandom | base64)}
mq=(22001 22002 22003) hp=(28101 28102 28103)
for i in 0 1 2; do
	join=()
	[ "$i" -gt 0 ] && join=(--join gossip=127.0.0.1:27201)
	"$work/gannet" --node-name "n$((i + 1))" --listen "127.0.0.1:${mq[$i]}" --http-listen "127.0.0.1:${hp[$i]}" \
		--cluster-listen "127.0.0.1:$((27101 + i))" --gossip-listen "127.0.0.1:$((27201 + i))" "${join[@]}" \
		--data-dir "$work/n$i" --sys-interval 0 --log-level warn --max-connections $((per_node + 1000)) \
		>"$work/n$i.log" 2>&1 &
	pids+=($!)
	until curl -sf "http://127.0.0.1:${hp[$i]}/readyz" >/dev/null; do sleep 0.1; done
done
node_pids=("${pids[@]}")
sleep 2 # the mesh
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -a rss0 t0
for i in 0 1 2; do rss0[$i]=$(rss "${node_pids[$i]}"); t0[$i]=$(ticks "${node_pids[$i]}"); done
gen_pids=()
for k in $(seq 0 $((gens - 1))); do
	p=$((k % 3)) s=$(((k + 1) % 3))
	"$work/gannet-bench" --scenario cluster --clients "$pairs" --qos 1 --payload 64 \
		--addr "127.0.0.1:${mq[$p]}" --sub-addr "127.0.0.1:${mq[$s]}" --topic "scale/$k/%d" --id-prefix "g$k-" \
		--rate $((rate / gens)) --warmup 5s --duration "$dur" --drain 5s --json >"$work/gen$k.json" 2>"$work/gen$k.err" &
	gen_pids+=($!)
done
start=$(date +%s.%N)
# The nodes' peak RSS while the generators run (every connection up).
declare -a peak=(0 0 0)
while kill -0 "${gen_pids[@]}" 2>/dev/null; do
	for i in 0 1 2; do
		r=$(rss "${node_pids[$i]}")
		[ "$r" -gt "${peak[$i]}" ] && peak[$i]=$r
	done
	sleep 1
done
status=0
for g in "${gen_pids[@]}"; do wait "$g" || status=1; done
end=$(date +%s.%N)
hz=$(getconf CLK_TCK)
received=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["received"] for f in sys.argv[1:]))' "$work"/gen*.json)
echo "3 nodes, $((pairs * 2 * gens)) connections ($per_node per node), $gens generators, QoS 1, $rate msgs/s offered, $dur"
for i in 0 1 2; do
	t1=$(ticks "${node_pids[$i]}")
	r=${peak[$i]}
	python3 -c "import sys; t0,t1,hz,rcv,r0,r,s,e=map(float,sys.argv[1:9]); print('n%d: peak RSS %.0f MiB (%.0f B per connection over the RSS before the clients), CPU %.0f%% of a core, %.1f us per message delivered (run and connects)' % ($i+1, r/2**20, (r-r0)/$per_node, (t1-t0)/hz/(e-s)*100, (t1-t0)/hz/max(rcv,1)*1e6))" \
		"${t0[$i]}" "$t1" "$hz" "$received" "${rss0[$i]}" "$r" "$start" "$end"
done
python3 - "$work"/gen*.json <<'PY'
import json, sys
tot_s = tot_r = lost = dup = 0
for f in sys.argv[1:]:
    j = json.load(open(f))
    tot_s += j["sent"]; tot_r += j["received"]; lost += j["lost"]; dup += j["duplicates"]
    print("%s: sent %d received %d lost %d  p50 %.2f ms p99 %.2f ms p999 %.2f ms" % (
        f.rsplit("/", 1)[1], j["sent"], j["received"], j["lost"], j["p50_ns"]/1e6, j["p99_ns"]/1e6, j["p999_ns"]/1e6))
print("all: sent %d received %d lost %d duplicates %d" % (tot_s, tot_r, lost, dup))
PY
exit $status
