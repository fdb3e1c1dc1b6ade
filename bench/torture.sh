#!/usr/bin/env bash
# torture.sh runs the torture scenarios of bench/torture (gannet-bench
# torture) in their full form against Gannet, then against Debian's
# Mosquitto configured with the nearest equivalents of Gannet's limits,
# and prints each scenario's figures and pass/fail conditions, then a
# summary table per broker:
#
#   reconnect  10,000 persistent QoS 1 subscribers with background
#              traffic; the broker killed with SIGKILL, restarted, every
#              client back at once with no jitter
#   offline    5,000 offline sessions flooded past the queue budget; a
#              tenth back under new client ids every 30 s (three cycles);
#              stop, restart, the old sessions expire
#   slow       one publisher to 1,000 subscribers, with 10 reading 10
#              messages/s and one reading nothing
#   retained   20,000 retained messages; 100 clients subscribe to
#              dev/+/state at once, one to an unrelated topic
#   hostile    a 100,000 x # SUBSCRIBE, maximum-size PUBLISHes, 5,000
#              silent and 5,000 half-CONNECT connections, a flooder,
#              beside 100 well-behaved clients
#
# A scenario takes from a few seconds to about three minutes per broker.
# The exit code is 1 when Gannet failed a scenario; Mosquitto's failures
# are the comparison and are only reported.
#
# Usage: bench/torture.sh [SCENARIO...]   (from the repository root;
#        default all). Each broker's output goes to OUTPUT/<broker>.txt and
#        the summary tables to OUTPUT/summary.md.
#
# Environment: OUTPUT (/tmp/gannet-torture), BROKERS ("gannet mosquitto"),
# FORM (-full; empty for the short form), GANNET and GBENCH
# (binaries to use instead of building the tree), MOSQUITTO (default:
# mosquitto on PATH), ABUSERS_NICE (0: the hostile scenario's hostile
# clients, a process of their own, at normal CPU priority; 19: the
# lowest, the nearest this host comes to running them elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -eq 0 ]]; then set -- all; fi
out=${OUTPUT:-/tmp/gannet-torture}
mkdir -p "$out"
if [[ -z ${GANNET:-} || -z ${GBENCH:-} ]]; then
  go build -o bin/ ./cmd/gannet ./cmd/gannet-bench
fi
gannet=${GANNET:-bin/gannet}
bench=${GBENCH:-bin/gannet-bench}
# The generator holds a descriptor per connection (10,000 and more).
ulimit -n "$(ulimit -Hn)"
status=0
: > "$out/summary.md"
for broker in ${BROKERS:-gannet mosquitto}; do
  bin=$gannet
  if [[ $broker == mosquitto ]]; then
    bin=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
  fi
  echo "== $broker ($bin)"
  "$bench" torture -broker "$broker" -bin "$bin" -abusers-nice "${ABUSERS_NICE:-0}" ${FORM--full} "$@" | tee "$out/$broker.txt" || status=$?
  sed -n '/^| scenario /,$p' "$out/$broker.txt" >> "$out/summary.md"
done
echo "results in $out"
exit "$status"
