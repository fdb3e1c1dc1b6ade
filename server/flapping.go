package server

// Flapping clients (--flapping-max-count, --flapping-window,
// --flapping-ban). A client id that connects more than the count within
// the window (counted once the CONNECT has passed authentication, so that
// only a client with the id's credentials can get it banned; ids the
// broker assigned are not counted) is banned for a while: the ban is one an operator could have
// made on that client id (bans.go), so it is refused with CONNACK 0x8A
// Banned (MQTT 3: 5), listed and lifted by the API, kept in the store and
// sent to the cluster's peers, and counted in
// gannet_connections_refused_total{reason="banned"}. A client caught in a
// loop of connecting, being refused or cut off and connecting again (past
// its rate, with a bad credential, or a bug) then costs a refused CONNECT
// an attempt, not what each attempt made the broker read and do.
//
// Connections are counted per node, in a table of at most flapMax client
// ids; past it, ids whose window ended are forgotten first, then any.

import (
	"fmt"
	"sync"
	"time"
)

// flapMax bounds the client ids whose connections are counted.
const flapMax = 1 << 16

// flapTable counts each client id's CONNECTs in its current window.
type flapTable struct {
	mu sync.Mutex
	m  map[string]*flapEntry
}

type flapEntry struct {
	start time.Time // the window's start
	n     int       // CONNECTs in it
	ban   *ban      // the ban this id got, while it lasts
}

// flapping counts a CONNECT of id and returns the ban it is refused for:
// the one its connections in the window just earned, or the one earned
// before that may not have reached the ban list yet. nil: not banned.
func (s *Server) flapping(id string) *ban {
	cfg := s.limits()
	if cfg.FlappingMaxCount <= 0 {
		return nil
	}
	now := time.Now()
	f := &s.flaps
	f.mu.Lock()
	if f.m == nil {
		f.m = make(map[string]*flapEntry)
	}
	e := f.m[id]
	switch {
	case e == nil:
		if len(f.m) >= flapMax {
			f.evictLocked(now, cfg.FlappingWindow)
		}
		e = &flapEntry{start: now}
		f.m[id] = e
	case e.ban != nil && !e.ban.expired(now):
		b := e.ban
		f.mu.Unlock()
		return b
	case now.Sub(e.start) >= cfg.FlappingWindow:
		*e = flapEntry{start: now}
	}
	e.n++
	if e.n <= cfg.FlappingMaxCount {
		f.mu.Unlock()
		return nil
	}
	created := now.UTC().Truncate(time.Millisecond)
	expires := created.Add(cfg.FlappingBan)
	b := &ban{banRecord: banRecord{ID: newBanID(), ClientID: id, Created: created, Expires: &expires,
		Reason: fmt.Sprintf("flapping: more than %d connections within %s", cfg.FlappingMaxCount, cfg.FlappingWindow)}}
	b.Stamp = s.stamp()
	*e = flapEntry{start: now, ban: b}
	f.mu.Unlock()

	s.stats.flappingBans.Inc()
	s.logThrottled("banning a flapping client", "client", clip([]byte(id)), "connections", cfg.FlappingMaxCount+1,
		"window", cfg.FlappingWindow, "ban", cfg.FlappingBan)
	// setBan waits for the store: not on an event loop.
	go func() {
		if err := s.setBan(b, ""); err != nil {
			s.logThrottled("a flapping client's ban is in force but not kept", "err", err)
		}
	}()
	return b
}

// evictLocked makes room: ids whose window and ban are over go, then
// others, until a quarter of the table is free.
// REQUIRES: f.mu held.
func (f *flapTable) evictLocked(now time.Time, window time.Duration) {
	makeRoom(f.m, flapMax*3/4, func(e *flapEntry) bool {
		return now.Sub(e.start) >= window && (e.ban == nil || e.ban.expired(now))
	})
}
