package server

import (
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// stats are the broker's counters, served at /metrics and published under
// $SYS. Each Server has its own metrics.Set, so several brokers can run in
// one process.
type stats struct {
	set *metrics.Set

	connections atomic.Int64 // open network connections
	clients     atomic.Int64 // connections that completed CONNECT

	msgsIn   *metrics.Counter
	msgsOut  *metrics.Counter
	bytesIn  *metrics.Counter
	bytesOut *metrics.Counter
	writes   *metrics.Counter // writev calls to clients
	// aliasedOut counts messages sent to MQTT 5 clients with a topic alias
	// in place of the topic (alias.go).
	aliasedOut *metrics.Counter

	droppedQueueFull *metrics.Counter
	droppedSlow      *metrics.Counter
	droppedExpired   *metrics.Counter
	droppedTooLarge  *metrics.Counter
	noSubscribers    *metrics.Counter

	protocolErrors    *metrics.Counter
	keepaliveTimeouts *metrics.Counter
	slowClosed        *metrics.Counter
	willsSent         *metrics.Counter
	sessionsCreated   *metrics.Counter
	sessionsExpired   *metrics.Counter
	storeRefused      *metrics.Counter
	forwardedOut      *metrics.Counter // messages sent to peers, once per peer
	forwardedIn       *metrics.Counter // messages peers sent here
	routeResyncs      *metrics.Counter // whole route sets asked of peers after a lost record
	retainResyncs     *metrics.Counter // retained digest buckets sent to a peer that lacked them
	peerAckLate       *metrics.Counter // forwarded records written here: the peer did not acknowledge in time
	heldBack          *metrics.Counter // clients' input held while a lane was behind (pace.go)
	// Authorization (auth.go): connections refused, by reason, and
	// publishes, subscriptions and deliveries the ACLs denied.
	connRefusedAuth        *metrics.Counter
	connRefusedUnavailable *metrics.Counter
	connRefusedOwner       *metrics.Counter
	publishDenied          *metrics.Counter
	subscribeDenied        *metrics.Counter
	readDenied             *metrics.Counter
	// PROXY protocol refusals: a header from a peer outside
	// --proxy-protocol-from, a missing or malformed one from a peer
	// inside.
	proxyUntrusted *metrics.Counter
	proxyBad       *metrics.Counter
	// panics counts connections closed because their processing
	// panicked (handler.go).
	panics *metrics.Counter
	// droppedBudget counts QoS 1/2 messages not queued, or dropped from a
	// queue, for the node's queue budget (--max-queued-bytes-total).
	droppedBudget *metrics.Counter
	// refusedBudget counts QoS 1/2 publishes refused while the budget is
	// spent (QueueFullRefuse).
	refusedBudget *metrics.Counter
	// sessionsRefused counts CONNECTs refused a new persistent session
	// past --max-sessions.
	sessionsRefused *metrics.Counter
	// retainedRefused counts messages not retained, by the bound they
	// would have passed.
	retainedRefused map[string]*metrics.Counter
	// publishDelayed counts the times a client's PUBLISH waited for its
	// rate; rateDisconnects the clients closed for exceeding it while
	// held (ratelimit.go).
	publishDelayed  *metrics.Counter
	rateDisconnects *metrics.Counter
	// subscribeDelayed counts the SUBSCRIBE and UNSUBSCRIBE packets that
	// waited for the byte rate.
	subscribeDelayed *metrics.Counter
	// flappingBans counts the bans flapping clients got (flapping.go).
	flappingBans *metrics.Counter
	// reshared counts shared subscriptions' messages handed to another
	// member when theirs left; droppedNoMember those that found none
	// (reshare.go).
	reshared        *metrics.Counter
	droppedNoMember *metrics.Counter
	// droppedSeen counts messages a session was given a second time, by
	// another way through the cluster, and took once (origin.go).
	droppedSeen *metrics.Counter
	// storeHeld counts the times a client's QoS 1/2 PUBLISH waited in
	// its input because its acknowledgements were all waiting for the
	// disk (decode, maxHeldAcks).
	storeHeld *metrics.Counter
	// lat holds the latency histograms (latency.go).
	lat latencies
}

func newStats(s *Server) *stats {
	set := metrics.NewSet()
	st := &stats{
		set:               set,
		msgsIn:            set.NewCounter("gannet_messages_received_total"),
		msgsOut:           set.NewCounter("gannet_messages_sent_total"),
		bytesIn:           set.NewCounter("gannet_bytes_received_total"),
		bytesOut:          set.NewCounter("gannet_bytes_sent_total"),
		writes:            set.NewCounter("gannet_writes_total"),
		aliasedOut:        set.NewCounter("gannet_messages_sent_aliased_total"),
		droppedQueueFull:  set.NewCounter(`gannet_messages_dropped_total{reason="queue_full"}`),
		droppedSlow:       set.NewCounter(`gannet_messages_dropped_total{reason="slow_receiver"}`),
		droppedExpired:    set.NewCounter(`gannet_messages_dropped_total{reason="expired"}`),
		droppedTooLarge:   set.NewCounter(`gannet_messages_dropped_total{reason="too_large"}`),
		noSubscribers:     set.NewCounter("gannet_messages_no_subscribers_total"),
		protocolErrors:    set.NewCounter("gannet_protocol_errors_total"),
		panics:            set.NewCounter("gannet_panics_total"),
		droppedBudget:     set.NewCounter(`gannet_messages_dropped_total{reason="queue_budget"}`),
		refusedBudget:     set.NewCounter(`gannet_publishes_refused_total{reason="queue_budget"}`),
		sessionsRefused:   set.NewCounter(`gannet_connections_refused_total{reason="` + refusedMaxSessions + `"}`),
		publishDelayed:    set.NewCounter("gannet_publishes_delayed_total"),
		subscribeDelayed:  set.NewCounter("gannet_subscribes_delayed_total"),
		flappingBans:      set.NewCounter("gannet_flapping_bans_total"),
		storeHeld:         set.NewCounter("gannet_publishes_held_for_store_total"),
		reshared:          set.NewCounter("gannet_shared_messages_redelivered_total"),
		droppedNoMember:   set.NewCounter(`gannet_messages_dropped_total{reason="no_share_member"}`),
		droppedSeen:       set.NewCounter("gannet_cluster_duplicates_dropped_total"),
		rateDisconnects:   set.NewCounter(`gannet_rate_limited_disconnects_total`),
		keepaliveTimeouts: set.NewCounter("gannet_keepalive_timeouts_total"),
		slowClosed:        set.NewCounter("gannet_slow_receivers_closed_total"),
		willsSent:         set.NewCounter("gannet_wills_sent_total"),
		sessionsCreated:   set.NewCounter("gannet_sessions_created_total"),
		forwardedOut:      set.NewCounter("gannet_cluster_forwarded_out_total"),
		forwardedIn:       set.NewCounter("gannet_cluster_forwarded_in_total"),
		routeResyncs:      set.NewCounter("gannet_cluster_route_resyncs_total"),
		retainResyncs:     set.NewCounter("gannet_cluster_retained_resyncs_total"),
		peerAckLate:       set.NewCounter("gannet_cluster_forward_spooled_late_total"),
		heldBack:          set.NewCounter("gannet_cluster_input_held_total"),
		sessionsExpired:   set.NewCounter("gannet_sessions_expired_total"),
		storeRefused:      set.NewCounter("gannet_store_refused_total"),

		connRefusedAuth:        set.NewCounter(`gannet_connections_refused_total{reason="not_authorized"}`),
		connRefusedUnavailable: set.NewCounter(`gannet_connections_refused_total{reason="auth_unavailable"}`),
		connRefusedOwner:       set.NewCounter(`gannet_connections_refused_total{reason="client_id_owned"}`),
		publishDenied:          set.NewCounter(`gannet_acl_denied_total{action="publish"}`),
		subscribeDenied:        set.NewCounter(`gannet_acl_denied_total{action="subscribe"}`),
		readDenied:             set.NewCounter(`gannet_acl_denied_total{action="deliver"}`),

		proxyUntrusted: set.NewCounter(`gannet_proxy_refused_total{reason="untrusted_peer"}`),
		proxyBad:       set.NewCounter(`gannet_proxy_refused_total{reason="bad_header"}`),
	}
	st.lat = newLatencies(set)
	set.NewGauge("gannet_connections", func() float64 { return float64(st.connections.Load()) })
	set.NewGauge("gannet_queued_bytes", func() float64 { return float64(s.queuedBytes.Load()) })
	set.NewGauge("gannet_memory_limit_bytes", func() float64 { return float64(s.mem.limit.Load()) })
	set.NewGauge("gannet_memory_used_bytes", func() float64 { return float64(s.mem.used.Load()) })
	set.NewGauge("gannet_memory_high", func() float64 {
		if s.mem.high.Load() {
			return 1
		}
		return 0
	})
	st.retainedRefused = map[string]*metrics.Counter{}
	for _, r := range []string{"max_retained", "max_retained_bytes"} {
		st.retainedRefused[r] = set.NewCounter(`gannet_retained_refused_total{reason="` + r + `"}`)
	}
	set.NewGauge("gannet_retained_bytes", func() float64 {
		s.retained.mu.RLock()
		defer s.retained.mu.RUnlock()
		return float64(s.retained.bytes)
	})
	// Clearings of retained messages kept so that peers' older copies do
	// not bring them back (retained.go: tombs).
	set.NewGauge("gannet_retained_tombstones", func() float64 {
		n, _ := s.retained.tombCount()
		return float64(n)
	})
	set.NewGauge("gannet_retained_tombstone_bytes", func() float64 {
		_, b := s.retained.tombCount()
		return float64(b)
	})
	set.NewGauge("gannet_clients_connected", func() float64 { return float64(st.clients.Load()) })
	set.NewGauge("gannet_sessions", func() float64 {
		s.sessions.Lock()
		defer s.sessions.Unlock()
		return float64(len(s.sessions.m))
	})
	set.NewGauge("gannet_subscriptions", func() float64 { return float64(s.subs.Count()) })
	set.NewGauge("gannet_retained_messages", func() float64 { return float64(s.retained.len()) })
	set.NewGauge("gannet_uptime_seconds", func() float64 { return time.Since(s.started).Seconds() })
	return st
}

// sentMessage counts one outgoing PUBLISH. Bytes out are counted where
// they are written (client.flush), every packet type included, like bytes
// in.
func (st *stats) sentMessage() {
	st.msgsOut.Inc()
}

// received counts n inbound bytes.
func (st *stats) received(n int) { st.bytesIn.Add(n) }

// dropped is the sum of every dropped-message counter.
func (st *stats) dropped() uint64 {
	return st.droppedQueueFull.Get() + st.droppedSlow.Get() + st.droppedExpired.Get() + st.droppedTooLarge.Get()
}
