package interlink

import (
	"errors"
	"strconv"
	"sync"

	"github.com/VictoriaMetrics/metrics"
)

// nodeStats holds the link's metrics, per peer where they are about one.
type nodeStats struct {
	set               *metrics.Set
	handshakeFailures *metrics.Counter
	handshakesShed    *metrics.Counter // closed at accept: too many handshakes pending
	badFrames         *metrics.Counter
	unauthentic       *metrics.Counter // bad frames that failed to open

	mu    sync.Mutex
	peers map[string]*peerStats
}

// peerStats are one peer's counters. Sent and received figures count
// records and bytes before (raw) and after (wire) compression.
type peerStats struct {
	set   *metrics.Set
	label string
	names []string // gauges, unregistered when the peer is forgotten

	msgsSent, msgsRecv       *metrics.Counter
	batchesSent, batchesRecv *metrics.Counter
	rawSent, wireSent        *metrics.Counter
	rawRecv, wireRecv        *metrics.Counter
	droppedDown, droppedFull *metrics.Counter
	replayed, duplicates     *metrics.Counter
	// unstored counts the peer's batches with reliable records that the
	// broker could not store; each is asked for again.
	unstored *metrics.Counter
	// heldBack counts reliable records dropped because they arrived
	// while records before them waited to be sent again; the sender
	// sends them again after those.
	heldBack *metrics.Counter
	// rtt is the distribution of lane 0's ping round trips, one a second
	// (the rtt_seconds gauge is the last of them).
	rtt *metrics.PrometheusHistogram
}

func newNodeStats(set *metrics.Set) *nodeStats {
	if set == nil {
		set = metrics.NewSet()
	}
	return &nodeStats{
		set:               set,
		handshakeFailures: set.NewCounter("gannet_interlink_handshake_failures_total"),
		handshakesShed:    set.NewCounter("gannet_interlink_handshakes_refused_total"),
		badFrames:         set.NewCounter("gannet_interlink_bad_frames_total"),
		unauthentic:       set.NewCounter("gannet_interlink_unauthentic_frames_total"),
		peers:             make(map[string]*peerStats),
	}
}

// badFrame counts a frame that closed a link; one that failed to open
// (tampered with, replayed, reordered) counts in both counters.
func (s *nodeStats) badFrame(err error) {
	s.badFrames.Inc()
	if errors.Is(err, errUnauthentic) {
		s.unauthentic.Inc()
	}
}

func (s *nodeStats) peer(name string) *peerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.peers[name]; p != nil {
		return p
	}
	l := `{peer=` + strconv.Quote(name) + `}`
	c := func(n string) *metrics.Counter { return s.set.GetOrCreateCounter("gannet_interlink_" + n + l) }
	dl := func(reason string) *metrics.Counter {
		return s.set.GetOrCreateCounter(`gannet_interlink_dropped_total{peer=` + strconv.Quote(name) + `,reason="` + reason + `"}`)
	}
	p := &peerStats{
		set: s.set, label: l,
		msgsSent: c("messages_sent_total"), msgsRecv: c("messages_received_total"),
		batchesSent: c("batches_sent_total"), batchesRecv: c("batches_received_total"),
		rawSent: c("raw_bytes_sent_total"), wireSent: c("wire_bytes_sent_total"),
		rawRecv: c("raw_bytes_received_total"), wireRecv: c("wire_bytes_received_total"),
		droppedDown: dl("not_linked"), droppedFull: dl("queue_full"),
		replayed: c("replayed_total"), duplicates: c("duplicates_total"),
		unstored: c("unstored_batches_total"), heldBack: c("held_back_total"),
		rtt: s.set.GetOrCreatePrometheusHistogramExt("gannet_interlink_round_trip_seconds"+l, rttBuckets),
	}
	s.peers[name] = p
	return p
}

// rttBuckets are the round-trip histogram's upper bounds in seconds: 1-2.5-5
// steps from 10µs (loopback) to 10s (a link stuck behind its own traffic),
// the broker's latency buckets.
var rttBuckets = []float64{
	10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10,
}

// gauges registers the gauges that read a live peer.
func (ps *peerStats) gauges(p *peer) {
	add := func(name string, f func() float64) {
		n := "gannet_interlink_" + name + ps.label
		ps.set.UnregisterMetric(n)
		ps.set.NewGauge(n, f)
		ps.names = append(ps.names, n)
	}
	add("queue_depth", func() float64 {
		q := 0
		for _, l := range p.lanes {
			q += l.queued()
		}
		return float64(q)
	})
	add("rtt_seconds", func() float64 { return float64(p.rtt.Load()) / 1e9 })
	add("lanes_up", func() float64 {
		up := 0
		for _, l := range p.lanes {
			if l.isConnected() {
				up++
			}
		}
		return float64(up)
	})
}

func (ps *peerStats) unregister() {
	for _, n := range ps.names {
		ps.set.UnregisterMetric(n)
	}
	ps.names = nil
}
