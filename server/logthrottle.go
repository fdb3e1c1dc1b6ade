package server

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log throttling. A flood of bad clients must not flood the log, and one
// kind of warning must not hide another: lines are counted per kind (the
// message, and for connection lines the "reason" attribute too), each kind
// gets a budget per window, and the first line of a kind let through after
// some were dropped says how many ("suppressed").

const (
	logWindow = 10 * time.Second
	// connLogBurst is how many lines of one kind a window lets through
	// from connections (client.logger); broker-wide warnings
	// (Server.logThrottled) get one.
	connLogBurst = 20
	// logKindsMax bounds the kinds remembered: a reason may carry a
	// client's bytes, so the kinds are not a closed set. Past it the
	// counts start over.
	logKindsMax = 4096
)

// logThrottle counts log lines per kind.
type logThrottle struct {
	mu    sync.Mutex
	kinds map[string]*logKind
}

type logKind struct {
	start      int64 // the window's start, unix nanoseconds
	n          int   // lines let through in the window
	suppressed int   // lines dropped since the last let through
}

func newLogThrottle() *logThrottle { return &logThrottle{kinds: make(map[string]*logKind)} }

// allow reports whether a line of kind may be written now, and how many
// of its kind were dropped before it.
func (t *logThrottle) allow(kind string, burst int) (bool, int) {
	now := time.Now().UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	k := t.kinds[kind]
	if k == nil {
		if len(t.kinds) >= logKindsMax {
			clear(t.kinds)
		}
		k = &logKind{start: now}
		t.kinds[kind] = k
	}
	if now-k.start >= int64(logWindow) {
		k.start, k.n = now, 0
	}
	if k.n >= burst {
		k.suppressed++
		return false, 0
	}
	k.n++
	sup := k.suppressed
	k.suppressed = 0
	return true, sup
}

// logThrottled logs a broker-wide warning at most once per window per
// message.
func (s *Server) logThrottled(msg string, args ...any) {
	ok, sup := s.logLimit.allow(msg, 1)
	if !ok {
		return
	}
	if sup > 0 {
		args = append(args, "suppressed", sup)
	}
	s.log.Warn(msg, args...)
}

// throttledHandler throttles the Info and louder lines of connections.
type throttledHandler struct {
	slog.Handler
	t     *logThrottle
	burst int
}

func (h throttledHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo {
		return h.Handler.Handle(ctx, r)
	}
	kind := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "reason" {
			kind += "\x00" + a.Value.String()
			return false
		}
		return true
	})
	ok, sup := h.t.allow(kind, h.burst)
	if !ok {
		return nil
	}
	if sup > 0 {
		r.AddAttrs(slog.Int("suppressed", sup))
	}
	return h.Handler.Handle(ctx, r)
}

func (h throttledHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return throttledHandler{h.Handler.WithAttrs(as), h.t, h.burst}
}

func (h throttledHandler) WithGroup(name string) slog.Handler {
	return throttledHandler{h.Handler.WithGroup(name), h.t, h.burst}
}
