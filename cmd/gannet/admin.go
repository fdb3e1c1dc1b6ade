package main

import (
	"flag"
	"os"
	"syscall"
	"time"

	"github.com/gannetmq/gannet/server"
)

// registerAdminFlags registers the flags of the HTTP API's keys and of
// the drain, into cfg.
func registerAdminFlags(fs *flag.FlagSet, cfg *server.Config) {
	fs.StringVar(&cfg.APIKeyFile, "api-key-file", "", "`file` of the HTTP API's keys (made with gannet apikey add; reloaded on SIGHUP): "+
		"/api/v1/ then asks for a read key for GET and a write key for the rest, as Authorization: Bearer KEY; "+
		"without it GET /api/v1/ is open and every change (POST, DELETE) is refused")
	fs.BoolVar(&cfg.MetricsAuth, "metrics-auth", false, "ask for a read key from --api-key-file for /metrics too (/healthz and /readyz stay open)")
	fs.DurationVar(&cfg.DrainLBGrace, "drain-lb-grace", cfg.DrainLBGrace, "how long a drain (SIGTERM or POST /api/v1/node/drain) leaves /readyz failing before it disconnects the first client, "+
		"for load balancers' health checks to notice (HAProxy: inter times fall); skipped when no client is connected")
	fs.Float64Var(&cfg.DrainRate, "drain-rate", cfg.DrainRate, "`clients` a second a drain disconnects, so that they reconnect elsewhere a few at a time; 0: all at once")
	fs.StringVar(&cfg.DrainRedirect, "drain-redirect", "", "server `reference` (e.g. mqtt.example.com:1883) a drain gives MQTT 5 clients: in DISCONNECT 0x8B, and in CONNACK 0x9C to clients that connect meanwhile; empty: none")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long SIGTERM lets the drain run (disconnecting clients, then waiting for their sessions to move to other nodes) "+
		"before the rest are disconnected at once and the broker stops; a second SIGTERM or SIGINT stops at once; 0: SIGTERM stops at once, like SIGINT")
}

// drainOnTerm runs the node's drain when got is SIGTERM, until it is over,
// --drain-timeout passes or another SIGTERM or SIGINT comes on sig; the
// caller then shuts the broker down, which disconnects whoever is left.
// SIGINT stops at once, as do both with --drain-timeout 0.
func drainOnTerm(srv *server.Server, cfg *server.Config, got os.Signal, sig <-chan os.Signal) {
	log := cfg.Logger
	if got != syscall.SIGTERM || cfg.DrainTimeout <= 0 {
		return
	}
	done := srv.Drain()
	timer := time.NewTimer(cfg.DrainTimeout)
	defer timer.Stop()
	for {
		select {
		case <-done:
			return
		case <-timer.C:
			st := srv.DrainStatus()
			log.Warn("the drain did not finish within --drain-timeout: stopping; connected clients are disconnected at once, "+
				"sessions not yet taken over by other nodes stay in the store", "timeout", cfg.DrainTimeout.String(),
				"phase", st.Phase, "clients", st.ClientsConnected, "sessions_to_hand_over", st.SessionsToHandOver)
			return
		case s := <-sig:
			if s == syscall.SIGHUP {
				log.Warn("not reloading: the node is draining", "signal", s.String())
				continue
			}
			log.Warn("stopping at once: signal during the drain", "signal", s.String())
			return
		}
	}
}
