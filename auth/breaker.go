package auth

import (
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// breaker is one backend's circuit breaker.
//
//	closed ──(failures consecutive errors)──▶ open ──(cooldown)──▶ half-open
//	   ▲                                        ▲                      │
//	   └──────────── the trial call succeeds ───┼──────────────────────┤
//	                                            └─ the trial call fails┘
//
// While closed, calls go through and errors are counted; a success resets
// the count. While open, calls fail at once, without reaching the backend.
// After the cooldown, the first call is let through as a trial and the
// others keep failing at once until it ends. Any call that succeeds closes
// the breaker (a call started before it opened may be the one).
//
// It logs one line when the backend goes down (the breaker opens from
// closed) and one when it comes back (it closes), and keeps the backend's
// gannet_auth_backend_up gauge.
//
// Its methods are safe for concurrent use.
type breaker struct {
	name     string
	failures int // consecutive errors that open it; <= 0: never opens
	cooldown time.Duration
	log      *slog.Logger
	up       *metrics.Gauge

	mu struct {
		sync.Mutex
		state     breakerState
		errors    int           // consecutive, while closed
		openedAt  time.Duration // last time it opened (or reopened)
		downSince time.Duration // time it opened from closed
	}
}

type breakerState uint8

const (
	breakerClosed breakerState = iota
	breakerOpen
	breakerHalfOpen
)

func newBreaker(name string, failures int, cooldown time.Duration, log *slog.Logger, up *metrics.Gauge) *breaker {
	return &breaker{name: name, failures: failures, cooldown: cooldown, log: log, up: up}
}

// failFast reports whether a call made now would be refused: the breaker
// is open and cooling down, or a trial call is under way. It changes
// nothing; allow decides.
func (b *breaker) failFast(now time.Duration) bool {
	if b.failures <= 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.mu.state {
	case breakerOpen:
		return now < b.mu.openedAt+b.cooldown
	case breakerHalfOpen:
		return true
	}
	return false
}

// allow reports whether a call may go to the backend now, and whether it
// is the trial call of a half-open breaker. A caller that gets ok must
// report the call's end with record; a trial caller must do so even when
// it could not make the call.
func (b *breaker) allow(now time.Duration) (ok, trial bool) {
	if b.failures <= 0 {
		return true, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.mu.state {
	case breakerOpen:
		if now < b.mu.openedAt+b.cooldown {
			return false, false
		}
		b.mu.state = breakerHalfOpen
		return true, true
	case breakerHalfOpen:
		return false, false
	}
	return true, false
}

// record reports the end of a call allow let through: err is its error
// (nil for an answer), trial what allow said. secret is what the error's
// text must not show in the log (the client's password).
func (b *breaker) record(err error, trial bool, now time.Duration, secret []byte) {
	if b.failures <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		b.mu.errors = 0
		if b.mu.state != breakerClosed {
			b.mu.state = breakerClosed
			b.up.Set(1)
			b.log.Info("auth: source up", "source", b.name, "down_for", (now - b.mu.downSince).Round(time.Millisecond))
		}
		return
	}
	switch b.mu.state {
	case breakerClosed:
		b.mu.errors++
		if b.mu.errors < b.failures {
			return
		}
		b.mu.state = breakerOpen
		b.mu.openedAt = now
		b.mu.downSince = now
		b.up.Set(0)
		b.log.Warn("auth: source down", "source", b.name, "errors", b.mu.errors,
			"retry_in", b.cooldown, "error", redactSecret(err.Error(), secret))
	case breakerHalfOpen:
		if trial {
			b.mu.state = breakerOpen
			b.mu.openedAt = now
		}
	}
}

// redact replaces secret in s with "[redacted]". Secrets shorter than four
// bytes are left alone: replacing them would garble the text and hide
// little.
func redactSecret(s string, secret []byte) string {
	if len(secret) < 4 || !strings.Contains(s, string(secret)) {
		return s
	}
	return strings.ReplaceAll(s, string(secret), "[redacted]")
}
