package server

// Admission: what a connection must pass before the broker spends
// anything on it.
//
//   - A new-connection rate per listener (--max-connection-rate, a token
//     bucket per listener): past it a connection is closed as soon as it
//     is accepted, before any byte is read. In a reconnect storm that is
//     the cheapest answer: the client backs off and retries, while the
//     clients already admitted keep the loops.
//   - Connections in total (--max-connections) and per source address
//     (--max-connections-per-ip), counted once the client's address is
//     known (after a PROXY header, after a TLS handshake): past them the
//     client's CONNECT is answered with CONNACK 0x97 Quota exceeded (3,
//     server unavailable, for MQTT 3) and the connection closed, so that
//     it learns why. Connections waiting for that answer are themselves
//     bounded (refusingMax); past it they are closed at once.
//   - Descriptors. gnet's acceptor stops the whole engine when accept
//     fails (EMFILE included), so the broker must never let the process
//     reach its open-file limit through client connections: at start the
//     soft limit is raised to the hard one, and connections are closed at
//     once when the descriptors they hold would come within fdReserve of
//     it. A TLS connection on the bridge holds three (its socket and both
//     ends of the bridge to the loops); a plain, WebSocket or TLS 1.3 one
//     served on a loop one.
//
// Every refusal counts in gannet_connections_refused_total{reason} and is
// logged, throttled per reason (logthrottle.go).

import (
	"bytes"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/VictoriaMetrics/metrics"

	"github.com/gannetmq/gannet/codec"
)

// fdReserve is the descriptors kept free of client connections: the
// store's files, cluster links, HTTP connections, and the connections the
// acceptor may take off the listen queue before a loop sees them.
const fdReserve = 1024

// refusingMax bounds the connections kept open only to be told they are
// refused.
const refusingMax = 1024

// Listener kinds, for the per-listener rate.
const (
	kindMQTT = iota
	kindWS
	kindTLS
	kindWSS
	kindCount
)

var kindNames = [kindCount]string{"mqtt", "ws", "tls", "wss"}

// Reasons a connection is refused at admission, as the metric says them.
const (
	refusedRate  = "connection_rate"
	refusedMax   = "max_connections"
	refusedPerIP = "max_connections_per_ip"
	refusedFDs   = "open_file_limit"
	refusedMem   = "memory_limit"
)

// admission holds the counters and buckets of admission control.
type admission struct {
	s        *Server
	fdLimit  atomic.Int64                            // the soft open-file limit; 0: unknown
	limiters [kindCount]atomic.Pointer[rate.Limiter] // nil: no bound (reload.go)

	admitted atomic.Int64 // connections counted against max
	refusing atomic.Int64 // connections waiting to be told they are refused

	// byIP counts connections by source address, whether or not
	// --max-connections-per-ip is set, so that a bound set at reload
	// holds the connections already open to it.
	mu   sync.Mutex
	byIP map[netip.Addr]int32

	refused map[string]*metrics.Counter

	// Per-client limits (limitTopic and friends).
	pubTopicRefused *metrics.Counter
	subTopicRefused *metrics.Counter
	subMaxRefused   *metrics.Counter
	subLongRefused  *metrics.Counter
	clientIDRefused *metrics.Counter
}

func newAdmission(s *Server) *admission {
	a := &admission{s: s, byIP: make(map[netip.Addr]int32), refused: make(map[string]*metrics.Counter)}
	a.setConnectionRate(s.cfg.MaxConnectionRate)
	for _, r := range []string{refusedRate, refusedMax, refusedPerIP, refusedFDs, refusedMem} {
		a.refused[r] = s.stats.set.NewCounter(`gannet_connections_refused_total{reason="` + r + `"}`)
	}
	a.pubTopicRefused = s.stats.set.NewCounter(`gannet_publishes_refused_total{reason="topic_limit"}`)
	a.subTopicRefused = s.stats.set.NewCounter(`gannet_subscriptions_refused_total{reason="topic_limit"}`)
	a.subMaxRefused = s.stats.set.NewCounter(`gannet_subscriptions_refused_total{reason="max_subscriptions"}`)
	a.subLongRefused = s.stats.set.NewCounter(`gannet_subscriptions_refused_total{reason="filters_per_subscribe"}`)
	a.clientIDRefused = s.stats.set.NewCounter(`gannet_connections_refused_total{reason="client_id_length"}`)
	s.stats.set.NewGauge("gannet_open_file_limit", func() float64 { return float64(a.fdLimit.Load()) })
	return a
}

// raiseFDLimit raises the soft open-file limit to the hard one and notes
// it; the broker logs the outcome at start.
func (a *admission) raiseFDLimit() (before, after uint64, err error) {
	var rl unix.Rlimit
	if err = unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	before = rl.Cur
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err = unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			rl.Cur = before
		}
	}
	a.fdLimit.Store(int64(min(rl.Cur, 1<<40)))
	return before, rl.Cur, err
}

// fdsFull reports whether client connections hold so many descriptors
// that another could bring the process near its limit.
func (a *admission) fdsFull() bool {
	limit := a.fdLimit.Load()
	if limit == 0 {
		return false
	}
	held := a.s.stats.connections.Load()
	if l := a.s.tlsl; l != nil {
		// A bridged TLS connection holds two descriptors besides the
		// loop's; one served on a loop holds none besides it, but for a
		// moment while it is handed over.
		held += 2*l.bridged.Load() + l.enrolling.Load() + l.inProgress.Load()
	}
	return held > limit-fdReserve
}

// rateOK takes a token of kind's bucket, or reports there is none.
func (a *admission) rateOK(kind int) bool {
	l := a.limiters[kind].Load()
	return l == nil || l.Allow()
}

// beforeRead checks a new connection's rate and the descriptors, before
// anything is read from it, and returns the reason it is refused or "".
func (a *admission) beforeRead(kind int) string {
	switch {
	case !a.rateOK(kind):
		return refusedRate
	case a.fdsFull():
		return refusedFDs
	}
	return ""
}

// beforeHandshake is beforeRead for a TLS connection, which is refused
// while memory is short too: a handshake is dear, and a refused one
// cannot be told why at CONNECT.
func (a *admission) beforeHandshake(kind int) string {
	if r := a.beforeRead(kind); r != "" {
		return r
	}
	if a.s.mem.high.Load() {
		return refusedMem
	}
	return ""
}

// refuse counts and logs a refusal at admission.
func (a *admission) refuse(reason, remote string, kind int) {
	a.refused[reason].Inc()
	a.s.logThrottled("refusing connection: "+reason, "reason", reason, "remote", remote, "listener", kindNames[kind])
}

// admit counts a connection from ip against the limits, or returns the
// reason it is refused. A connection admitted must be released once.
func (a *admission) admit(ip netip.Addr) string {
	if a.s.mem.high.Load() {
		return refusedMem
	}
	lim := a.s.limits()
	if n := a.admitted.Add(1); lim.MaxConnections > 0 && n > int64(lim.MaxConnections) {
		a.admitted.Add(-1)
		return refusedMax
	}
	if ip.IsValid() {
		a.mu.Lock()
		n := a.byIP[ip]
		if perIP := lim.MaxConnectionsPerIP; perIP > 0 && int(n) >= perIP {
			a.mu.Unlock()
			a.admitted.Add(-1)
			return refusedPerIP
		}
		a.byIP[ip] = n + 1
		a.mu.Unlock()
	}
	return ""
}

// release undoes admit.
func (a *admission) release(ip netip.Addr) {
	a.admitted.Add(-1)
	if ip.IsValid() {
		a.mu.Lock()
		if n := a.byIP[ip] - 1; n > 0 {
			a.byIP[ip] = n
		} else {
			delete(a.byIP, ip)
		}
		a.mu.Unlock()
	}
}

// ipOf returns the address part of a host:port string, or the zero Addr.
func ipOf(hostport string) netip.Addr {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// admitClient runs admission for c once its address is final: on success
// c is counted (OnClose releases it); otherwise c is marked to be refused
// at CONNECT, or, when too many already wait for that, false is returned
// and the caller closes c at once.
func (c *client) admitClient() bool {
	a := c.srv.adm
	reason := a.admit(c.ipAddr())
	if reason == "" {
		c.admitted = true
		return true
	}
	a.refuse(reason, c.remote(), c.kind())
	if a.refusing.Add(1) > refusingMax {
		a.refusing.Add(-1)
		return false
	}
	c.rareState().refusal = reason
	return true
}

// kind is the listener c came from.
func (c *client) kind() int {
	switch {
	case c.tls != nil && c.ws != nil:
		return kindWSS
	case c.tls != nil:
		return kindTLS
	case c.ws != nil:
		return kindWS
	}
	return kindMQTT
}

// releaseAdmission is OnClose's part of admission.
func (c *client) releaseAdmission() {
	switch {
	case c.admitted:
		c.admitted = false
		c.srv.adm.release(c.ipAddr())
	case c.rare != nil && c.rare.refusal != "":
		c.rare.refusal = ""
		c.srv.adm.refusing.Add(-1)
	}
}

// topicOverLimit says why a topic name or filter (the part after
// $share/group/ for a shared one) is beyond --max-topic-length or
// --max-topic-levels, or "" when it is not.
func (s *Server) topicOverLimit(topic []byte) string {
	cfg := s.limits()
	if cfg.MaxTopicLength > 0 && len(topic) > cfg.MaxTopicLength {
		return "longer than --max-topic-length"
	}
	if _, inner, ok := codec.SplitShared(topic); ok {
		topic = inner
	}
	// n levels take n-1 separators: shorter topics need no count.
	if n := cfg.MaxTopicLevels; n > 0 && len(topic) >= n && bytes.Count(topic, []byte{'/'}) >= n {
		return "more levels than --max-topic-levels"
	}
	return ""
}

// refuseTopic answers a PUBLISH to a topic beyond the limits: MQTT 5
// QoS 1/2 with 0x90 Topic Name invalid, MQTT 3 QoS 1/2 with its
// acknowledgement (it has no way to say no, and a close would make the
// client resend), QoS 0 not at all; the message goes nowhere.
func (c *client) refuseTopic(ob *outbox, p *codec.Publish, why string) error {
	c.srv.adm.pubTopicRefused.Inc()
	c.logger().Info("publish refused", "topic", clip(p.Topic), "reason", why)
	if c.version == codec.V5 {
		return c.ackPublish(ob, p, -1, codec.TopicNameInvalid)
	}
	return c.ackPublish(ob, p, -1, codec.Success)
}

// makeRoom shrinks m, a table kept by client id that reached its bound:
// the entries done reports true for go first, then others, met in the
// map's order, until m holds fewer than keep.
func makeRoom[V any](m map[string]V, keep int, done func(V) bool) {
	for k, v := range m {
		if done(v) {
			delete(m, k)
		}
	}
	for k := range m {
		if len(m) < keep {
			break
		}
		delete(m, k)
	}
}

// clip returns at most the first 256 bytes of a client's string, for a
// log line.
func clip(b []byte) string {
	if len(b) > 256 {
		return string(b[:256]) + "..."
	}
	return string(b)
}
