package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

func newTestBreaker(failures int, logs *logSink) (*breaker, *metrics.Gauge) {
	up := metrics.NewSet().NewGauge(`up`, nil)
	up.Set(1)
	return newBreaker("redis", failures, 10*time.Second, logs.logger(), up), up
}

func TestBreakerStates(t *testing.T) {
	var logs logSink
	b, up := newTestBreaker(2, &logs)
	boom := errors.New("i/o timeout")
	var now time.Duration

	mustAllow := func(wantTrial bool) {
		t.Helper()
		if b.failFast(now) {
			t.Fatal("failFast while calls may go through")
		}
		ok, trial := b.allow(now)
		if !ok || trial != wantTrial {
			t.Fatalf("allow = %v, %v; want true, %v", ok, trial, wantTrial)
		}
	}
	mustRefuse := func() {
		t.Helper()
		if !b.failFast(now) {
			t.Fatal("failFast false while calls are refused")
		}
		if ok, _ := b.allow(now); ok {
			t.Fatal("allow while calls are refused")
		}
	}

	// Closed: a success resets the count of errors.
	mustAllow(false)
	b.record(boom, false, now, nil)
	mustAllow(false)
	b.record(nil, false, now, nil)
	mustAllow(false)
	b.record(boom, false, now, nil)
	mustAllow(false)
	if up.Get() != 1 || logs.lines("source down") != 0 {
		t.Fatal("down after non-consecutive errors")
	}
	// The second consecutive error opens it.
	b.record(boom, false, now, nil)
	if up.Get() != 0 || logs.lines("source down") != 1 {
		t.Fatalf("not down after 2 consecutive errors:\n%s", logs.String())
	}
	mustRefuse()
	// A late failure of a call made before it opened changes nothing.
	b.record(boom, false, now, nil)
	now += 10*time.Second - 1
	mustRefuse()

	// Half-open: one trial at a time; its failure reopens, quietly.
	now++
	mustAllow(true)
	mustRefuse()
	b.record(boom, true, now, nil)
	mustRefuse()
	now += 5 * time.Second
	mustRefuse()
	now += 5 * time.Second
	mustAllow(true)
	b.record(nil, true, now, nil)
	mustAllow(false)
	if up.Get() != 1 || logs.lines("source down") != 1 || logs.lines("source up") != 1 {
		t.Fatalf("want one down and one up line, up=1:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "down_for=20s") {
		t.Errorf("up line does not say how long the source was down:\n%s", logs.String())
	}
}

func TestBreakerLateSuccessCloses(t *testing.T) {
	var logs logSink
	b, up := newTestBreaker(1, &logs)
	b.record(errors.New("refused"), false, 0, nil)
	if !b.failFast(0) {
		t.Fatal("not open")
	}
	// A call made before it opened answers: the backend is back.
	b.record(nil, false, time.Second, nil)
	if b.failFast(time.Second) || up.Get() != 1 || logs.lines("source up") != 1 {
		t.Errorf("a successful call did not close the breaker:\n%s", logs.String())
	}
}

func TestBreakerDisabled(t *testing.T) {
	var logs logSink
	b, up := newTestBreaker(0, &logs)
	for range 100 {
		b.record(errors.New("boom"), false, 0, nil)
	}
	if ok, trial := b.allow(0); !ok || trial || b.failFast(0) || up.Get() != 1 || logs.String() != "" {
		t.Error("a disabled breaker opened")
	}
}

func TestBreakerRedactsSecret(t *testing.T) {
	var logs logSink
	b, _ := newTestBreaker(1, &logs)
	b.record(errors.New(`token "hunter2-long" rejected`), false, 0, []byte("hunter2-long"))
	if out := logs.String(); strings.Contains(out, "hunter2-long") || !strings.Contains(out, "[redacted]") {
		t.Errorf("log shows the secret:\n%s", out)
	}
}

func TestRedactSecret(t *testing.T) {
	tests := []struct {
		s, secret, want string
	}{
		{"bad password s3cr3t!", "s3cr3t!", "bad password [redacted]"},
		{"s3cr3t! and s3cr3t!", "s3cr3t!", "[redacted] and [redacted]"},
		{"nothing here", "s3cr3t!", "nothing here"},
		{"a short one: abc", "abc", "a short one: abc"},
		{"no secret", "", "no secret"},
	}
	for _, tt := range tests {
		if got := redactSecret(tt.s, []byte(tt.secret)); got != tt.want {
			t.Errorf("redactSecret(%q, %q) = %q, want %q", tt.s, tt.secret, got, tt.want)
		}
	}
}
