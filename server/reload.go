package server

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Reloading limits on a running broker.
//
// Config never changes after New: the event loops read it without a lock.
// The limits below are the exception. Their readers go through limits(),
// an atomic pointer to a whole copy of Config that Reload replaces, so a
// reader sees one configuration or the next, never a field half written,
// and pays one atomic load. Each limit applies where it is checked: the
// admission of a new connection, a CONNECT, a SUBSCRIBE, a message queued
// or retained, a connection's deadline check. So connected clients are held
// to a new queue, subscription, topic or slow-receiver limit from their
// next packet or message on; a publish rate is a client's own bucket, made
// at its CONNECT, so a new rate applies to clients that connect after the
// reload. Every other setting is negotiated with clients (keepalive,
// receive maximum, packet size, topic aliases, session expiry), shapes
// listeners, loops or the store, or is otherwise fixed for the broker's
// life: only a restart changes it.

// reloadable is one limit Reload can change, named by its flag.
type reloadable struct {
	flag string
	same func(a, b *Config) bool
	take func(dst, src *Config)
}

// field makes the reloadable for the Config field f points at.
func field[T comparable](flag string, f func(*Config) *T) reloadable {
	return reloadable{
		flag: flag,
		same: func(a, b *Config) bool { return *f(a) == *f(b) },
		take: func(dst, src *Config) { *f(dst) = *f(src) },
	}
}

// reloadables are the limits Reload can change. A field listed here must be
// read through limits() wherever the broker reads it after New.
var reloadables = []reloadable{
	field("max-connections", func(c *Config) *int { return &c.MaxConnections }),
	field("max-connections-per-ip", func(c *Config) *int { return &c.MaxConnectionsPerIP }),
	field("max-connection-rate", func(c *Config) *float64 { return &c.MaxConnectionRate }),
	field("max-sessions", func(c *Config) *int { return &c.MaxSessions }),
	field("max-client-id-length", func(c *Config) *int { return &c.MaxClientIDLength }),
	field("max-subscriptions", func(c *Config) *int { return &c.MaxSubscriptions }),
	field("max-topic-levels", func(c *Config) *int { return &c.MaxTopicLevels }),
	field("max-topic-length", func(c *Config) *int { return &c.MaxTopicLength }),
	field("max-queued-messages", func(c *Config) *int { return &c.MaxQueuedMessages }),
	field("max-queued-bytes", func(c *Config) *int64 { return &c.MaxQueuedBytes }),
	field("max-queued-bytes-total", func(c *Config) *int64 { return &c.MaxQueuedBytesTotal }),
	field("queue-full-policy", func(c *Config) *QueueFullPolicy { return &c.QueueFullPolicy }),
	field("max-retained", func(c *Config) *int { return &c.MaxRetained }),
	field("max-retained-bytes", func(c *Config) *int64 { return &c.MaxRetainedBytes }),
	field("max-publish-rate", func(c *Config) *float64 { return &c.MaxPublishRate }),
	field("max-publish-bytes-rate", func(c *Config) *float64 { return &c.MaxPublishBytesRate }),
	field("flapping-max-count", func(c *Config) *int { return &c.FlappingMaxCount }),
	field("flapping-window", func(c *Config) *time.Duration { return &c.FlappingWindow }),
	field("flapping-ban", func(c *Config) *time.Duration { return &c.FlappingBan }),
	field("outbound-high-water", func(c *Config) *int { return &c.OutboundHighWater }),
	field("slow-timeout", func(c *Config) *time.Duration { return &c.SlowTimeout }),
	field("connect-timeout", func(c *Config) *time.Duration { return &c.ConnectTimeout }),
	field("memory-limit", func(c *Config) *int64 { return &c.MemoryLimit }),
}

// ReloadableFlags returns the flags of the limits Reload can change.
func ReloadableFlags() []string {
	flags := make([]string, len(reloadables))
	for i, r := range reloadables {
		flags[i] = r.flag
	}
	return flags
}

// Reloadable reports whether Reload can change the setting of this flag
// (its name without dashes in front) on a running broker.
func Reloadable(flag string) bool {
	for _, r := range reloadables {
		if r.flag == flag {
			return true
		}
	}
	return false
}

// liveConfig is the configuration as last reloaded.
type liveConfig struct {
	mu  sync.Mutex // serialises Reload
	cur atomic.Pointer[Config]
}

// limits returns the configuration to read the reloadable limits from.
// Safe from any goroutine; the Config it returns never changes.
func (s *Server) limits() *Config {
	if c := s.live.cur.Load(); c != nil {
		return c
	}
	return &s.cfg
}

// Reload applies c's limits (those Reloadable names) to the running
// broker and returns the flags of those that changed. Every other field
// of c is ignored: the caller refuses a change to one (cmd/gannet names
// it and keeps the running configuration). An error changes nothing.
// Safe from any goroutine but an event loop's.
func (s *Server) Reload(c Config) (changed []string, err error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	old := s.limits()
	next := *old
	for _, r := range reloadables {
		if !r.same(old, &c) {
			r.take(&next, &c)
			changed = append(changed, r.flag)
		}
	}
	if len(changed) == 0 {
		return nil, nil
	}
	if (old.MemoryLimit == 0) != (next.MemoryLimit == 0) {
		// The watcher runs only when a limit was set at start.
		return nil, fmt.Errorf("--memory-limit can change between sizes at reload, but only a restart turns it on or off (%d to %d)",
			old.MemoryLimit, next.MemoryLimit)
	}
	s.live.cur.Store(&next)
	if next.MaxConnectionRate != old.MaxConnectionRate {
		s.adm.setConnectionRate(next.MaxConnectionRate)
	}
	if next.MemoryLimit != old.MemoryLimit {
		s.mem.limit.Store(next.MemoryLimit)
	}
	return changed, nil
}

// setConnectionRate gives every listener a full bucket of r new
// connections a second (bursts of one second's worth); 0: no bound.
func (a *admission) setConnectionRate(r float64) {
	for k := range a.limiters {
		var l *rate.Limiter
		if r > 0 {
			l = rate.NewLimiter(rate.Limit(r), max(1, int(r)))
		}
		a.limiters[k].Store(l)
	}
}
