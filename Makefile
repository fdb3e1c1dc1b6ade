# Gannet build, test and benchmark targets.
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 10s
BENCHTIME   ?= 1s
GOBIN       := $(shell $(GO) env GOPATH)/bin

.PHONY: all build test test-race vet bench fuzz lint fmt-check tidy-check run clean compare bench-auth bench-tls torture chaos chaos-short scale

all: build

build:
	$(GO) build -o bin/ ./cmd/...

vet:
	$(GO) vet ./...

# test is what CI runs: vet, every test with the race detector, then the
# chaos checker's short form (chaos-short) on its own: its three brokers
# beside the other packages' tests kept their clusters from forming in
# time (RELIABILITY.md, "How to run").
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) chaos-short

test-race: test

bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./codec/ ./trie/ ./fanout/

# fuzz runs each fuzz target for FUZZTIME (go test allows one target per run).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

lint:
	@test -x $(GOBIN)/staticcheck || $(GO) install $(STATICCHECK)
	$(GOBIN)/staticcheck ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

tidy-check:
	$(GO) mod tidy -diff

run:
	$(GO) run ./cmd/gannet

clean:
	rm -rf bin

# compare runs the same load scenarios against Gannet and Mosquitto (the
# Debian package, installed if missing) and prints the figures side by
# side; SECS sets the measurement window of each run.
SECS ?= 3
compare:
	@command -v mosquitto >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null)
	bash bench/compare.sh $(SECS) bench/results

# bench-auth measures what authentication and authorization cost, Gannet
# and Mosquitto side by side: a 100-rule ACL on p2p publishes, the
# connection rate with a password file (and Gannet's Redis and PostgreSQL
# sources), and reconnect storms against PostgreSQL. It needs the Debian
# packages mosquitto, mosquitto-clients, redis-server and postgresql.
# ROUNDS sets the interleaved rounds; the results stay in
# /tmp/gannet-bench-auth.
ROUNDS ?= 3
bench-auth:
	bash bench/auth.sh $(ROUNDS)

# bench-tls compares Gannet with Mosquitto over plain TCP, TLS and
# WebSocket: memory per idle connection, connection (full TLS handshake)
# rate and CPU per message, ROUNDS interleaved rounds; the results stay in
# /tmp/gannet-bench-tls. It needs the Debian packages mosquitto and openssl.
bench-tls:
	bash bench/tls.sh $(ROUNDS)

# torture runs the torture scenarios of bench/torture in their full form
# (reconnect storm after kill -9, offline flood, slow consumers, retained
# storm, hostile clients), against Gannet and then Mosquitto configured
# with the nearest equivalents of Gannet's limits, and prints each one's
# figures and pass/fail conditions: up to about three minutes per
# scenario and broker. SCENARIOS picks some (default all); the results
# stay in /tmp/gannet-torture. It fails when Gannet fails a scenario. It
# needs the Debian package mosquitto. The short forms run with make test.
# ABUSERS_NICE=19 runs the hostile scenario's hostile clients at the
# lowest CPU priority (see bench/torture.sh).
SCENARIOS ?= all
torture:
	bash bench/torture.sh $(SCENARIOS)

# chaos runs the chaos checker of bench/chaos in its long form: a 3-node
# cluster of this tree's gannet behind interlink proxies, persistent QoS 1
# and 2 publishers and subscribers spread over the nodes, and random
# faults (kill -9 and restart, SIGSTOP longer than the failure timeout,
# links cut and delayed, a full disk) for DURATION, in runs of EACH with
# seeds counting up from SEED; then the rolling restart (every node
# drained and restarted in turn). Each run's history is checked: nothing
# acknowledged lost, QoS 2 exactly once, order, retained messages and
# routes converged, no client on two nodes, one disconnect per restart.
# A failing run prints its seed and the operations around each
# violation and keeps its logs. make chaos-short runs the short form
# (bench/chaos: two fixed seeds of 15 s, the links-only form and the
# rolling restart, about two minutes), which make test runs last, alone.
# Needs root for the tmpfs of the disk faults (skipped, with a line
# saying so, without it).
DURATION ?= 10m
EACH     ?= 2m
SEED     ?= 1
chaos: build
	@status=0; \
	bin/gannet-bench chaos -bin bin/gannet -duration $(DURATION) -each $(EACH) -seed $(SEED) || status=1; \
	bin/gannet-bench chaos -bin bin/gannet -scenario rolling -seed $(SEED) || status=1; \
	exit $$status

chaos-short:
	GANNET_CHAOS=1 $(GO) test -count=1 -timeout 15m -v -run 'TestChaos|TestRollingRestart' ./bench/chaos/

# scale runs a 3-node cluster on this host with PER_NODE connections per
# node (15,000: 45,000 in all), the load split over 6 generator processes
# (each within the 20,000 descriptors a process may hold), publishers and
# subscribers on different nodes so that every message crosses the
# interlink, QoS 1 at RATE msgs/s for DURATION (bench/scale.sh).
RATE     ?= 15000
PER_NODE ?= 15000
SCALE_DURATION ?= 60s
scale:
	bash bench/scale.sh $(SCALE_DURATION) $(RATE) $(PER_NODE)
