package chaos

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Guarantees the checker asserts, as they name a violation.
const (
	GuaranteeNoLoss     = "no loss"            // an acknowledged message reaches every matching persistent session
	GuaranteeExactlyOne = "QoS 2 exactly once" // and a QoS 2 one exactly once
	GuaranteeOrder      = "order"              // see Spec and doc.go for the exact promise
	GuaranteeRetained   = "retained converge"  // every node holds the same, latest retained messages
	GuaranteeRoutes     = "routes converge"    // every node routes to every subscriber; a session's subscriptions live on one node
	GuaranteeOneNode    = "one node"           // no client is connected to two nodes at once
	GuaranteeDisconnect = "one disconnect"     // rolling restart: a client is disconnected at most once per restart
)

// Spec is what the checker knows of the run besides its history.
type Spec struct {
	Seed  uint64
	Pubs  map[string]byte // publisher id -> QoS it publishes at
	Subs  map[string]byte // subscriber id -> QoS it subscribed with
	Nodes []string
	// Collect is when every subscriber was made to reconnect once after
	// the cluster settled (0: never); messages first delivered after it
	// had waited in a session on a node the subscriber had left.
	Collect time.Duration
	// Restarts are the rolling restart's windows, one per node.
	Restarts []Restart
	// Snapshot is what the admin API said after the run settled.
	Snapshot Snapshot
	// Doubles are clients that two nodes listed as connected in two
	// samples in a row during the run.
	Doubles []string
}

// Restart is one node's drain-and-restart window of a rolling restart.
type Restart struct {
	Node     string
	From, To time.Duration
	OnNode   []string // clients connected to the node when its drain began
}

// Snapshot is each node's view through the admin API, by node name.
type Snapshot struct {
	Clients       map[string][]apiClient
	Subscriptions map[string][]apiSubscription
	Retained      map[string][]apiRetained
	Errors        []string // nodes that did not answer
}

// Violation is one broken guarantee, with the operations around it.
type Violation struct {
	Guarantee string
	What      string
	At        time.Duration
	Around    []Op
}

// Report is the checker's verdict.
type Report struct {
	Messages   int // messages the publishers sent (data topics)
	Acked      int // of them, acknowledged
	Refused    int // refused by the broker (0x97 disk full and the like)
	InDoubt    int // QoS 2 given up unacknowledged after a lost session
	Checked    int // (acknowledged message, subscriber) pairs checked for delivery
	Deliveries int // deliveries recorded (resends of a QoS 2 id excluded)
	Duplicates int // QoS 1 deliveries beyond the first (allowed)
	// Unreleased counts QoS 2 messages delivered again after a lost
	// session whose first delivery the broker never had the PUBREC of
	// (allowed: it cannot know the client got it).
	Unreleased int
	// Stranded counts deliveries that came only after the final
	// reconnect: they had waited in a session on a node the subscriber had
	// left (not lost, but late without a reconnect).
	Stranded int
	// RefusedDelivered counts refused messages that were delivered anyway.
	RefusedDelivered int
	// Reordered counts order breaks the promise allows (across a
	// publisher's reconnect, a subscriber's lost session or a late
	// stranded delivery), by reason.
	Reordered  map[string]int
	Violations []Violation
}

// msgKey names a message: its publisher and sequence number.
type msgKey struct {
	pub string
	seq int64
}

func (k msgKey) String() string { return k.pub + ":" + strconv.FormatInt(k.seq, 10) }

// msgInfo is what the publisher's records say of one message.
type msgInfo struct {
	topic   string
	retain  bool
	sent    bool
	sentAt  time.Duration // the first send
	sentOn  int           // the connection of the first send
	acked   bool
	ack     Op // the first acknowledgement
	refused bool
	inDoubt bool
}

// Check reads the history and asserts the guarantees of Spec.
func Check(ops []Op, spec Spec) *Report {
	r := &Report{Reordered: map[string]int{}}
	msgs := map[msgKey]*msgInfo{}
	info := func(k msgKey) *msgInfo {
		m := msgs[k]
		if m == nil {
			m = &msgInfo{}
			msgs[k] = m
		}
		return m
	}
	// deliveries by subscriber, in the order they happened.
	dels := map[string][]Op{}
	for _, o := range ops {
		switch o.Kind {
		case OpSend:
			m := info(msgKey{o.Pub, o.Seq})
			if !m.sent {
				m.sentAt, m.sentOn = o.T, o.Conn
			}
			m.topic, m.retain, m.sent = o.Topic, o.Retain, true
		case OpAck:
			if m := info(msgKey{o.Pub, o.Seq}); !m.acked {
				m.acked, m.ack = true, o
			}
		case OpRefused:
			info(msgKey{o.Pub, o.Seq}).refused = true
		case OpInDoubt:
			info(msgKey{o.Pub, o.Seq}).inDoubt = true
		case OpDeliver:
			if _, ok := spec.Subs[o.Client]; ok && o.Pub != "" {
				dels[o.Client] = append(dels[o.Client], o)
				r.Deliveries++
			}
		}
	}
	for _, m := range msgs {
		if m.retain || !m.sent {
			continue
		}
		r.Messages++
		if m.acked {
			r.Acked++
		}
		if m.refused {
			r.Refused++
		}
		if m.inDoubt {
			r.InDoubt++
		}
	}
	subs := sortedKeys(spec.Subs)
	for _, sub := range subs {
		r.checkSubscriber(ops, spec, sub, dels[sub], msgs)
	}
	r.checkRetained(ops, spec, msgs)
	r.checkRoutes(ops, spec)
	r.checkOneNode(spec)
	r.checkRestarts(ops, spec)
	return r
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// checkSubscriber checks one subscriber's deliveries: every acknowledged
// message at least once, QoS 2 at most once, and the order.
func (r *Report) checkSubscriber(ops []Op, spec Spec, sub string, dels []Op, msgs map[msgKey]*msgInfo) {
	subQoS := spec.Subs[sub]
	lost := lostSessions(ops, sub)
	released := releasedDeliveries(ops, sub)
	count := map[msgKey]int{}
	first := map[msgKey]Op{}
	for _, d := range dels {
		k := msgKey{d.Pub, d.Seq}
		count[k]++
		if count[k] == 1 {
			first[k] = d
			if spec.Collect > 0 && d.T >= spec.Collect {
				r.Stranded++
			}
		}
	}
	keys := make([]msgKey, 0, len(msgs))
	for k := range msgs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b msgKey) int {
		if c := strings.Compare(a.pub, b.pub); c != 0 {
			return c
		}
		return int(a.seq - b.seq)
	})
	for _, k := range keys {
		m := msgs[k]
		if m.retain {
			continue
		}
		n := count[k]
		if m.refused && n > 0 {
			r.RefusedDelivered++
		}
		if m.acked {
			r.Checked++
			if n == 0 {
				r.violate(ops, GuaranteeNoLoss, m.ack.T, sub, k,
					fmt.Sprintf("%s never reached %s (QoS %d publish, acknowledged by %s at %.3fs)",
						k, sub, spec.Pubs[k.pub], m.ack.Node, m.ack.T.Seconds()))
			}
		}
		exactly := min(spec.Pubs[k.pub], subQoS) == 2
		if n == 2 && exactly && !released[deliveryKey{first[k].Conn, first[k].PID, first[k].T}] &&
			lost(first[k].T, lastDelivery(dels, k).T) {
			// The broker never had the first delivery's PUBREC and the
			// session was lost: it cannot know the client got it.
			r.Unreleased++
		} else if n > 1 && exactly {
			var at []string
			for _, d := range dels {
				if d.Pub == k.pub && d.Seq == k.seq {
					at = append(at, fmt.Sprintf("%.3fs on %s conn %d pid %d", d.T.Seconds(), d.Node, d.Conn, d.PID))
				}
			}
			r.violate(ops, GuaranteeExactlyOne, first[k].T, sub, k,
				fmt.Sprintf("%s reached %s %d times at QoS 2: %s", k, sub, n, strings.Join(at, "; ")))
		} else if n > 1 {
			r.Duplicates += n - 1
		}
	}
	r.checkOrder(ops, spec, sub, dels, msgs)
}

// checkOrder checks that the first deliveries of one publisher's messages
// on one topic come in the order they were published. A break is a
// violation when both messages were acknowledged on one connection of the
// publisher and delivered on one connection of the subscriber that found
// its session (or the second delivery came on a later connection of the
// same session); it is counted as allowed when the publisher reconnected
// between them (its resends and the old node's forwards may then pass
// each other), when the subscriber's session was lost in between or
// after the message delivered late was sent, or up to routeGrace before
// (routed then, the lost session may have held it), when the session
// moved off a node a fault hit in that span (what was on its way to the
// old node is sent on after newer messages), or when the earlier message
// arrived only with the final collection.
func (r *Report) checkOrder(ops []Op, spec Spec, sub string, dels []Op, msgs map[msgKey]*msgInfo) {
	type stream struct {
		top  int64
		last Op
	}
	streams := map[string]*stream{} // pub + topic
	seen := map[msgKey]bool{}
	lost := lostSessions(ops, sub)
	movedOff := movedOffFailed(ops, sub)
	for _, d := range dels {
		k := msgKey{d.Pub, d.Seq}
		if seen[k] {
			continue
		}
		seen[k] = true
		s := streams[d.Pub+" "+d.Topic]
		if s == nil {
			streams[d.Pub+" "+d.Topic] = &stream{top: d.Seq, last: d}
			continue
		}
		if d.Seq > s.top {
			s.top, s.last = d.Seq, d
			continue
		}
		late, early := msgs[k], msgs[msgKey{s.last.Pub, s.last.Seq}]
		var reason string
		switch {
		case late == nil || early == nil || !late.acked || !early.acked:
			reason = "unacknowledged message"
		case late.ack.Conn != early.ack.Conn || late.sentOn != late.ack.Conn:
			// Or the later one was first sent on an earlier connection:
			// what reached the subscriber may be that send, taken by
			// the node it went to when it resumed (paused), passing the
			// resend's neighbours.
			reason = "publisher reconnected between them"
		case lost(s.last.T, d.T) || lost(late.sentAt-routeGrace, d.T):
			// Lost between the deliveries, or after the later-delivered
			// message was sent (or just before: the new subscriptions
			// take a moment to reach every node): the lost session may
			// have held it, and it came with the merge.
			reason = "subscriber's session lost between them"
		case movedOff(late.sentAt-routeGrace, d.T):
			reason = "session moved off a failed node; what was on its way there came later"
		case spec.Collect > 0 && d.T >= spec.Collect:
			reason = "stranded until the final reconnect"
		}
		if reason != "" {
			r.Reordered[reason]++
			continue
		}
		r.violate(ops, GuaranteeOrder, d.T, sub, k,
			fmt.Sprintf("%s reached %s on %s (conn %d) at %.3fs after %s (delivered at %.3fs on %s conn %d); both acknowledged on %s's connection %d",
				k, sub, d.Node, d.Conn, d.T.Seconds(), msgKey{s.last.Pub, s.last.Seq}, s.last.T.Seconds(), s.last.Node, s.last.Conn,
				k.pub, late.ack.Conn))
	}
}

// routeGrace is how long after a subscriber's new connection a message
// may still be routed to where its session was: the new subscriptions
// reach the other nodes within it. That is at most the nodes' failure
// timeout (1 s) while links are up; a link that was just cut takes as
// long again to come back (a redial once gossip finds the peer), and the
// subscriptions wait for it.
const routeGrace = 2 * time.Second

// deliveryKey names a delivery by its connection, packet id and time.
type deliveryKey struct {
	conn int
	pid  uint16
	t    time.Duration
}

// releasedDeliveries returns sub's QoS 2 deliveries whose PUBREL came on
// their connection before that packet id was used again.
func releasedDeliveries(ops []Op, sub string) map[deliveryKey]bool {
	out := map[deliveryKey]bool{}
	open := map[[2]int]deliveryKey{} // conn, pid -> the delivery awaiting PUBREL
	for _, o := range ops {
		if o.Client != sub {
			continue
		}
		k := [2]int{o.Conn, int(o.PID)}
		switch o.Kind {
		case OpDeliver:
			if o.QoS == 2 {
				open[k] = deliveryKey{o.Conn, o.PID, o.T}
			}
		case OpReleased:
			if d, ok := open[k]; ok {
				out[d] = true
				delete(open, k)
			}
		}
	}
	return out
}

// lastDelivery returns the last of dels that delivered k.
func lastDelivery(dels []Op, k msgKey) Op {
	var last Op
	for _, d := range dels {
		if d.Pub == k.pub && d.Seq == k.seq {
			last = d
		}
	}
	return last
}

// lostSessions returns a test of whether sub connected without finding
// its session between two moments.
func lostSessions(ops []Op, sub string) func(from, to time.Duration) bool {
	var at []time.Duration
	for _, o := range ops {
		if o.Kind == OpConnect && o.Client == sub && !o.Present && o.Conn > 1 {
			at = append(at, o.T)
		}
	}
	return func(from, to time.Duration) bool {
		for _, t := range at {
			if t > from && t <= to {
				return true
			}
		}
		return false
	}
}

// movedOffFailed returns a test of whether sub's session moved, between
// two moments, to another node from one that a fault (not a drain) hit
// while sub was on it: what was routed to the old node while it was away
// reaches the session later, sent on after the move, behind newer
// messages that went to the new node directly.
func movedOffFailed(ops []Op, sub string) func(from, to time.Duration) bool {
	var at []time.Duration
	var prev *Op
	for i := range ops {
		o := &ops[i]
		if o.Kind != OpConnect || o.Client != sub {
			continue
		}
		if prev != nil && o.Node != prev.Node && o.Present && faulted(ops, prev.Node, prev.T, o.T) {
			at = append(at, o.T)
		}
		prev = o
	}
	return func(from, to time.Duration) bool {
		for _, t := range at {
			if t > from && t <= to {
				return true
			}
		}
		return false
	}
}

// faulted reports whether a fault other than a drain hit node between
// two moments.
func faulted(ops []Op, node string, from, to time.Duration) bool {
	for _, o := range ops {
		if o.Kind == OpFault && o.T >= from && o.T <= to && !strings.HasPrefix(o.Note, "drain") &&
			(o.Node == node || strings.Contains(o.Note, node)) {
			return true
		}
	}
	return false
}

// checkRetained checks that every node holds, for each publisher's
// retained topic, the same message: its last acknowledged retained one
// or one it sent later without an answer.
func (r *Report) checkRetained(ops []Op, spec Spec, msgs map[msgKey]*msgInfo) {
	allowed := map[string]map[int64]bool{} // topic -> seqs
	lastAcked := map[string]int64{}
	for k, m := range msgs {
		if !m.retain || !m.sent {
			continue
		}
		if m.acked && k.seq > lastAcked[m.topic] {
			lastAcked[m.topic] = k.seq
		}
	}
	for k, m := range msgs {
		if !m.retain || !m.sent || m.refused || k.seq < lastAcked[m.topic] {
			continue
		}
		if allowed[m.topic] == nil {
			allowed[m.topic] = map[int64]bool{}
		}
		allowed[m.topic][k.seq] = true
	}
	views := map[string]map[string]string{} // node -> topic -> payload
	for node, rs := range spec.Snapshot.Retained {
		v := map[string]string{}
		for _, m := range rs {
			if strings.HasPrefix(m.Topic, "chaos/r/") {
				v[m.Topic] = m.Payload
			}
		}
		views[node] = v
	}
	for _, node := range spec.Nodes {
		v, ok := views[node]
		if !ok {
			r.violate(ops, GuaranteeRetained, 0, "", msgKey{}, fmt.Sprintf("no retained messages read from %s", node))
			continue
		}
		for _, topic := range sortedKeys(allowed) {
			got, has := v[topic]
			_, seq, _ := parsePayload([]byte(got))
			switch {
			case !has && lastAcked[topic] > 0:
				r.violate(ops, GuaranteeRetained, 0, "", msgKey{}, fmt.Sprintf("%s holds no retained message on %s; the last acknowledged was seq %d", node, topic, lastAcked[topic]))
			case has && !allowed[topic][seq]:
				r.violate(ops, GuaranteeRetained, 0, "", msgKey{}, fmt.Sprintf("%s holds %q on %s; the last acknowledged was seq %d", node, got, topic, lastAcked[topic]))
			}
		}
	}
	for i := 1; i < len(spec.Nodes); i++ {
		a, b := spec.Nodes[0], spec.Nodes[i]
		for _, topic := range sortedKeys(allowed) {
			if views[a][topic] != views[b][topic] {
				r.violate(ops, GuaranteeRetained, 0, "", msgKey{}, fmt.Sprintf("%s and %s differ on %s: %q and %q", a, b, topic, views[a][topic], views[b][topic]))
			}
		}
	}
}

// checkRoutes checks that a probe published on every node after the run
// settled reached every subscriber, and that each subscriber's
// subscriptions are held by one node only: the one it is connected to.
func (r *Report) checkRoutes(ops []Op, spec Spec) {
	got := map[string]map[string]bool{} // sub -> probing node
	for _, o := range ops {
		if o.Kind == OpProbe {
			if got[o.Client] == nil {
				got[o.Client] = map[string]bool{}
			}
			if f := strings.Fields(o.Note); len(f) >= 2 {
				got[o.Client][f[1]] = true
			}
		}
	}
	for _, sub := range sortedKeys(spec.Subs) {
		for _, node := range spec.Nodes {
			if !got[sub][node] {
				r.violate(ops, GuaranteeRoutes, 0, sub, msgKey{}, fmt.Sprintf("a probe published on %s after the run never reached %s", node, sub))
			}
		}
	}
	if spec.Snapshot.Subscriptions == nil {
		return
	}
	where := map[string][]string{} // client -> nodes holding its subscriptions
	for _, node := range spec.Nodes {
		held := map[string]bool{}
		for _, s := range spec.Snapshot.Subscriptions[node] {
			if _, ours := spec.Subs[s.ClientID]; ours && !held[s.ClientID] {
				held[s.ClientID] = true
				where[s.ClientID] = append(where[s.ClientID], node)
			}
		}
	}
	// Where each client is connected; one listed by two nodes is the
	// one-node check's to report.
	connected := map[string]string{}
	count := map[string]int{}
	for node, cs := range spec.Snapshot.Clients {
		for _, c := range cs {
			connected[c.ClientID] = node
			count[c.ClientID]++
		}
	}
	for id, k := range count {
		if k > 1 {
			delete(connected, id)
		}
	}
	for _, sub := range sortedKeys(spec.Subs) {
		ns := where[sub]
		switch {
		case len(ns) == 0:
			r.violate(ops, GuaranteeRoutes, 0, sub, msgKey{}, fmt.Sprintf("no node lists %s's subscriptions", sub))
		case len(ns) > 1:
			r.violate(ops, GuaranteeRoutes, 0, sub, msgKey{}, fmt.Sprintf("%s's subscriptions are held by %s (it is connected to %s)", sub, strings.Join(ns, " and "), connected[sub]))
		case connected[sub] != "" && ns[0] != connected[sub]:
			r.violate(ops, GuaranteeRoutes, 0, sub, msgKey{}, fmt.Sprintf("%s is connected to %s but its subscriptions are on %s", sub, connected[sub], ns[0]))
		}
	}
}

// checkOneNode checks that no client is listed as connected by two nodes,
// after the run and (Doubles) during it.
func (r *Report) checkOneNode(spec Spec) {
	on := map[string][]string{}
	for _, node := range spec.Nodes {
		for _, c := range spec.Snapshot.Clients[node] {
			on[c.ClientID] = append(on[c.ClientID], node)
		}
	}
	for _, id := range sortedKeys(on) {
		if len(on[id]) > 1 {
			r.violate(nil, GuaranteeOneNode, 0, id, msgKey{}, fmt.Sprintf("%s is connected to %s after the run", id, strings.Join(on[id], " and ")))
		}
	}
	for _, d := range spec.Doubles {
		r.violate(nil, GuaranteeOneNode, 0, "", msgKey{}, d)
	}
	for _, e := range spec.Snapshot.Errors {
		r.violate(nil, GuaranteeOneNode, 0, "", msgKey{}, "cannot read the admin API: "+e)
	}
}

// checkRestarts checks the rolling restart: within each node's window,
// no client lost more than one connection.
func (r *Report) checkRestarts(ops []Op, spec Spec) {
	for _, w := range spec.Restarts {
		lost := map[string]int{}
		for _, o := range ops {
			if o.Kind == OpDisconnect && o.T >= w.From && o.T <= w.To && !strings.HasPrefix(o.Note, "run over") && o.Note != "done" {
				lost[o.Client]++
			}
		}
		for _, id := range sortedKeys(lost) {
			if lost[id] > 1 {
				r.violate(ops, GuaranteeDisconnect, w.From, id, msgKey{},
					fmt.Sprintf("%s was disconnected %d times while %s was drained and restarted (%.3fs to %.3fs)", id, lost[id], w.Node, w.From.Seconds(), w.To.Seconds()))
			}
		}
	}
}

// aroundLimit bounds the operations quoted with one violation.
const aroundLimit = 40

// violate records a violation with the operations around it: those of
// the message, those of the client within two seconds of at, and the
// faults and node events within five.
func (r *Report) violate(ops []Op, guarantee string, at time.Duration, client string, k msgKey, what string) {
	v := Violation{Guarantee: guarantee, What: what, At: at}
	for _, o := range ops {
		near := func(d time.Duration) bool { return o.T >= at-d && o.T <= at+d }
		switch {
		case k.pub != "" && o.Pub == k.pub && o.Seq == k.seq && (o.Client == client || o.Client == k.pub):
		case client != "" && o.Client == client && o.Kind != OpDeliver && o.Kind != OpProbe && o.Kind != OpReleased && near(2*time.Second):
		case (o.Kind == OpFault || o.Kind == OpHeal || o.Kind == OpNode) && near(5*time.Second):
		default:
			continue
		}
		v.Around = append(v.Around, o)
	}
	if len(v.Around) > aroundLimit {
		v.Around = v.Around[len(v.Around)-aroundLimit:]
	}
	r.Violations = append(r.Violations, v)
}

// Pass reports whether no guarantee was broken.
func (r *Report) Pass() bool { return len(r.Violations) == 0 }
