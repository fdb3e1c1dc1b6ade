# Gannet build, test and benchmark targets.
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 10s
BENCHTIME   ?= 1s
GOBIN       := $(shell $(GO) env GOPATH)/bin

.PHONY: all build test test-race vet bench fuzz lint fmt-check tidy-check run clean compare bench-auth bench-tls torture

all: build

build:
	$(GO) build -o bin/ ./cmd/...

vet:
	$(GO) vet ./...

# test is what CI runs: vet, then every test with the race detector.
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...

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
SCENARIOS ?= all
torture:
	bash bench/torture.sh $(SCENARIOS)
