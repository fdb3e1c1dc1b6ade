package interlink

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Handler is the broker's side of the link. Its methods may be called from
// several goroutines at once.
type Handler interface {
	// PeerUp reports that this node's control lane to peer connected:
	// the broker sends its full state (routes, retained messages, clients)
	// now, and deltas after.
	PeerUp(peer string)
	// PeerForget reports that peer has been gone longer than
	// Config.ForgetAfter: what it announced no longer holds.
	PeerForget(peer string)
	// Receive handles one batch of records from peer. Bodies alias a buffer
	// reused once Receive returns. done must be called exactly once, from
	// any goroutine and in any order among batches: with nil once the
	// effects of the batch's reliable records are safe (durable, when the
	// broker persists), or with the error that kept them from being made
	// safe (the store could not write). Only safe records are acknowledged
	// to the sender, and none after a record that is not: the sender keeps
	// those, the link asks for them again, and a later Receive hands them
	// over again (the reliable records after them that were safe are not
	// handed over twice). So the broker sees the records of a batch that
	// failed a second time; refusing a batch, with done(err) before
	// applying it, spares it undoing what the first time did.
	//
	// pos says how far the peer's stream has been accepted; a broker that
	// persists stores it with the batch's effects and hands it back to
	// Restore after a restart, so that a replay of records it already has
	// is recognised. It stops short of a batch known to have failed, so
	// that the records of that batch are taken again after a restart; and
	// since a batch handed over before an earlier one failed carried a
	// position past it, Receive is then called with no records, to store
	// pos (Seq 0 included) and nothing else.
	Receive(peer string, pos Position, recs []Record, done func(error))
	// Settled reports the tokens of records sent with SendTracked that no
	// longer need keeping: peer acknowledged them, or peer was forgotten.
	Settled(peer string, tokens []uint64)
}

// Position is how far one sender's stream (its run and lane) has been
// accepted: every reliable record up to Seq was handed to the broker, in
// this batch or an earlier one, and none of them is known to have failed.
// Seq is 0 when there is nothing to store (the batch held no reliable
// record to keep, or the stream's first one failed).
type Position struct {
	Epoch uint64
	Lane  uint8
	Seq   uint64
}

// Restore seeds what was accepted from a sender's stream before a
// restart. Call it before Start.
func (n *Node) Restore(peer string, pos Position) {
	st := n.stream(streamKey{peer, pos.Epoch, pos.Lane})
	st.mu.Lock()
	st.restoreLocked(pos.Seq)
	st.mu.Unlock()
}

// Errors from Send.
var (
	ErrUnknownPeer = errors.New("interlink: unknown peer")
	ErrQueueFull   = errors.New("interlink: peer queue full")
	ErrNotLinked   = errors.New("interlink: peer not connected")
	ErrStopped     = errors.New("interlink: stopped")
	ErrTooLarge    = errors.New("interlink: record larger than half of a frame")
)

// Node is this broker's membership in the cluster and its links to peers.
type Node struct {
	cfg       Config
	log       *slog.Logger
	h         Handler
	secret    []byte
	epoch     uint64
	advertise string
	// gossipAddr is this node's gossip address, read once at start
	// (Members).
	gossipAddr string
	seed       maphash.Seed

	ml  *memberlist.Memberlist
	ln  net.Listener
	tls *linkTLS // nil: links without TLS

	// ctx ends with done; it interrupts TLS handshakes at Stop.
	ctx    context.Context
	cancel context.CancelFunc

	gossipEncrypted bool // set by Start

	mu      sync.Mutex
	peers   map[string]*peer
	streams map[streamKey]*stream
	inLanes map[streamKey]*inLane // per sender lane (epoch 0)
	conns   map[net.Conn]struct{} // accepted, for Stop

	pending   atomic.Int32 // accepted connections still in their handshake
	shedMu    sync.Mutex
	shedCount int       // connections refused since shedLog
	shedLog   time.Time // when the last refusal was logged

	stats *nodeStats
	pace  *pacer
	mark  int // backlog bytes from which a lane is behind
	done  chan struct{}
	wg    sync.WaitGroup
}

// New checks cfg and builds a node; Start joins the cluster.
func New(cfg Config, h Handler) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// The certificate files are read before anything is registered, so
	// that a node refused for them leaves nothing behind.
	var tm *tlsMaterial
	if cfg.CertFile != "" {
		var err error
		if tm, err = loadTLS(&cfg); err != nil {
			return nil, err
		}
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	var e [8]byte
	_, _ = rand.Read(e[:])
	n := &Node{
		cfg:     cfg,
		log:     lg.With("component", "cluster"),
		h:       h,
		secret:  []byte(cfg.Secret),
		epoch:   binary.BigEndian.Uint64(e[:]) | 1,
		seed:    maphash.MakeSeed(),
		peers:   make(map[string]*peer),
		streams: make(map[streamKey]*stream),
		inLanes: make(map[streamKey]*inLane),
		conns:   make(map[net.Conn]struct{}),
		done:    make(chan struct{}),
		pace:    newPacer(),
		mark:    paceMark(&cfg),
	}
	n.stats = newNodeStats(cfg.Metrics)
	if tm != nil {
		n.tls = newLinkTLS(&n.cfg, tm, n.stats.set)
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	return n, nil
}

// sealed reports whether the links' frames are sealed after the handshake
// (seal.go): whenever there is a secret and the links do not run over
// TLS, which encrypts and authenticates them already.
func (n *Node) sealed() bool { return len(n.secret) > 0 && n.tls == nil }

// keyed reports whether there is a secret: it keys gossip's encryption.
func (n *Node) keyed() bool { return len(n.secret) > 0 }

// stopping reports whether Stop has begun.
func (n *Node) stopping() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// links says how the links are protected, for the log.
func (n *Node) links() string {
	switch {
	case n.tls != nil:
		return "tls"
	case n.sealed():
		return "sealed"
	}
	return "plain"
}

// Name is this node's name.
func (n *Node) Name() string { return n.cfg.NodeName }

// Addr is the interlink listener's address (after Start).
func (n *Node) Addr() string { return n.ln.Addr().String() }

// Start listens for peers, starts gossip and joins the seeds. An
// unreachable seed is not an error: the node serves alone and keeps
// trying.
func (n *Node) Start() error {
	ln, err := net.Listen("tcp", n.cfg.Listen)
	if err != nil {
		return fmt.Errorf("cannot listen for the cluster on %s: %w", n.cfg.Listen, err)
	}
	n.ln = ln
	n.advertise = n.cfg.Advertise
	if n.advertise == "" {
		n.advertise = n.advertiseFor(ln.Addr().String(), hostAddrs) // discover.go
	}
	if err := n.startGossip(); err != nil {
		ln.Close()
		return err
	}
	n.wg.Add(3)
	go n.accept()
	go n.maintain()
	go n.watchPace()
	if len(n.cfg.Join) > 0 {
		n.joinSeeds()
	}
	n.log.Info("cluster link up", "node", n.cfg.NodeName, "listen", ln.Addr().String(), "advertise", n.advertise,
		"gossip", n.gossipAddr, "compression", n.cfg.Compression.String(), "lanes", n.cfg.Lanes,
		"links", n.links(), "gossip_encrypted", n.gossipEncrypted)
	switch {
	case !n.keyed() && n.tls != nil:
		n.log.Warn("cluster running without a secret (--cluster-insecure): the links between nodes are TLS with " +
			"certificates from the cluster CA, but gossip travels in the clear: anyone who reaches the gossip port " +
			"can read the member list and disturb membership, though not link to a node")
	case !n.keyed():
		n.log.Warn("cluster running without a secret (--cluster-insecure): anyone who reaches the cluster or gossip port " +
			"can join, read every message between the nodes and inject their own")
	}
	return nil
}

func (n *Node) startGossip() error {
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.cfg.NodeName
	gl := n.cfg.GossipListen
	if gl == "" {
		host, port, _ := splitPort(n.ln.Addr().String())
		gl = net.JoinHostPort(host, strconv.Itoa(port+1))
	}
	host, port, err := splitPort(gl)
	if err != nil {
		return fmt.Errorf("--gossip-listen: %w", err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port
	ahost, _, _ := splitPort(n.advertise)
	if ip := net.ParseIP(ahost); ip != nil && !ip.IsUnspecified() {
		mc.AdvertiseAddr, mc.AdvertisePort = ahost, port
	}
	// Gossip is encrypted (and unencrypted packets refused: memberlist's
	// GossipVerifyIncoming and GossipVerifyOutgoing are on by default)
	// whenever there is a secret, links over TLS or not; only
	// --cluster-insecure leaves it plain.
	if n.keyed() {
		k := sha256.Sum256(append([]byte("gannet gossip key\x00"), n.secret...))
		mc.SecretKey = k[:]
	}
	ft := n.cfg.FailureTimeout
	// A failed peer is suspected after a missed probe and declared dead
	// after the suspicion timeout (SuspicionMult probe intervals): about
	// FailureTimeout in all.
	mc.ProbeInterval = ft / 3
	mc.ProbeTimeout = ft / 6
	mc.SuspicionMult = 2
	mc.GossipInterval = 100 * time.Millisecond
	mc.DeadNodeReclaimTime = ft
	mc.Delegate = delegate{n}
	mc.Events = events{n}
	mc.Logger = log.New(gossipLog{n.log}, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("cannot start gossip on %s: %w", gl, err)
	}
	n.ml = ml
	n.gossipAddr = ml.LocalNode().Address() // before gossip can rewrite it
	// Create builds the keyring from SecretKey.
	n.gossipEncrypted = mc.EncryptionEnabled() && mc.GossipVerifyIncoming && mc.GossipVerifyOutgoing
	return nil
}

// Stop leaves the cluster and closes every link.
func (n *Node) Stop() {
	select {
	case <-n.done:
		return
	default:
	}
	_ = n.ml.Leave(time.Second)
	close(n.done)
	n.cancel()
	_ = n.ml.Shutdown()
	n.ln.Close()
	n.mu.Lock()
	for c := range n.conns {
		c.Close()
	}
	for _, p := range n.peers {
		p.stop()
	}
	for _, il := range n.inLanes {
		il.stop()
	}
	n.mu.Unlock()
	n.wg.Wait()
}

// LaneFor picks the lane for records keyed by key (a publisher's client
// id): one key always takes the same lane, so its records stay in order.
// With more than one lane, lane 0 is left to control records (routes,
// takeovers), so that they never queue behind bulk traffic.
func (n *Node) LaneFor(key string) int {
	if n.cfg.Lanes == 1 {
		return 0
	}
	return 1 + int(maphash.String(n.seed, key)%uint64(n.cfg.Lanes-1))
}

// Send queues a record for peer on a lane. A reliable record is kept until
// the peer acknowledges it and refused with ErrQueueFull past the queue
// bound; an unreliable one is dropped (ErrNotLinked) while the lane is not
// connected. Send never blocks on the network.
func (n *Node) Send(peerName string, lane int, kind byte, body []byte, reliable bool) error {
	n.mu.Lock()
	p := n.peers[peerName]
	n.mu.Unlock()
	if p == nil {
		return ErrUnknownPeer
	}
	return p.lanes[lane].send(kind, body, reliable)
}

// SentTo returns this run's epoch and, per lane, the sequence number of
// the last reliable record queued for peer in this run (0: none yet).
// A record a later call to Send queues for peer gets a higher one: the
// broker marks with it what it sent before a moment, such as a session
// leaving this node, so that peer can tell those records apart when they
// arrive (Record.Seq). It returns a nil slice for an unknown peer.
func (n *Node) SentTo(peerName string) (epoch uint64, seqs []uint64) {
	n.mu.Lock()
	p := n.peers[peerName]
	n.mu.Unlock()
	if p == nil {
		return n.epoch, nil
	}
	seqs = make([]uint64, len(p.lanes))
	for i, l := range p.lanes {
		l.mu.Lock()
		seqs[i] = l.mu.nextSeq
		l.mu.Unlock()
	}
	return n.epoch, seqs
}

// PeerPosition is a place in one peer's stream of records (its run and
// lane).
type PeerPosition struct {
	Peer string
	Position
}

// Heard appends to dst the senders' streams with reliable records this
// node has received but not yet stored, each at the last one received:
// up to it, all were sent before Heard returned. The broker may be handed
// some of them later (the sender's resend of records it could not store,
// or of those held back behind them).
func (n *Node) Heard(dst []PeerPosition) []PeerPosition {
	type keyed struct {
		k  streamKey
		st *stream
	}
	n.mu.Lock()
	all := make([]keyed, 0, len(n.streams))
	for k, st := range n.streams {
		all = append(all, keyed{k, st})
	}
	n.mu.Unlock()
	for _, e := range all {
		e.st.mu.Lock()
		seen, done := e.st.seen, e.st.done
		e.st.mu.Unlock()
		if seen > done {
			dst = append(dst, PeerPosition{Peer: e.k.node, Position: Position{Epoch: e.k.epoch, Lane: e.k.lane, Seq: seen}})
		}
	}
	return dst
}

// SendTracked queues a reliable record that the broker also keeps (in its
// store) under token, until Handler.Settled reports the token. It returns
// the record's identity on the link, for Preload after a restart.
func (n *Node) SendTracked(peerName string, lane int, kind byte, body []byte, token uint64) (Position, error) {
	n.mu.Lock()
	p := n.peers[peerName]
	n.mu.Unlock()
	if p == nil {
		return Position{}, ErrUnknownPeer
	}
	seq, err := p.lanes[lane].sendRel(kind, body, token)
	return Position{Epoch: n.epoch, Lane: uint8(lane), Seq: seq}, err
}

// Preload queues a record kept from before a restart, under the identity
// SendTracked gave it, for a peer that may not have gossiped yet: it goes
// once the peer is seen, and a peer that had it already drops it. Call it
// before Start, for each peer and lane in the order the records were
// first sent.
func (n *Node) Preload(peerName string, pos Position, kind byte, body []byte, token uint64) error {
	lane := int(pos.Lane)
	if lane < 0 || lane >= n.cfg.Lanes {
		lane = 0
	}
	n.mu.Lock()
	p := n.peers[peerName]
	if p == nil {
		p = newPeer(n, peerName)
		n.peers[peerName] = p
		p.mu.goneAt = time.Now()
	}
	n.mu.Unlock()
	_, err := p.lanes[lane].enqueue(kind, body, true, false, token, pos.Epoch, pos.Seq)
	return err
}

// Peers lists the peers that messages can be queued for: alive ones, and
// failed ones not yet forgotten.
func (n *Node) Peers() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.peers))
	for name := range n.peers {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// Linked reports whether this node's control lane to peer is connected.
func (n *Node) Linked(peerName string) bool {
	n.mu.Lock()
	p := n.peers[peerName]
	n.mu.Unlock()
	return p != nil && p.lanes[0].isConnected()
}

// Member is one node as GET /api/v1/cluster shows it.
type Member struct {
	Name      string  `json:"name"`
	Interlink string  `json:"interlink"`
	Gossip    string  `json:"gossip"`
	State     string  `json:"state"` // alive, dead, left
	Self      bool    `json:"self,omitempty"`
	LanesUp   int     `json:"lanes_up"`
	Queued    int     `json:"queued"`
	RTTMillis float64 `json:"rtt_ms"`
}

// Members lists this node and every peer it knows, by name.
func (n *Node) Members() []Member {
	out := []Member{{Name: n.cfg.NodeName, Interlink: n.advertise, Gossip: n.gossipAddr,
		State: "alive", Self: true, LanesUp: n.cfg.Lanes}}
	// Which members gossip counts as live is read under memberlist's lock
	// (Members); their fields are not: memberlist rewrites them in place
	// as gossip arrives. Names are fixed, and the gossip address is the
	// one the join or update event gave (gossipSeen). A suspect member is
	// listed as alive.
	live := make(map[string]bool)
	for _, m := range n.ml.Members() {
		live[m.Name] = true
	}
	n.mu.Lock()
	for _, p := range n.peers {
		m := Member{Name: p.name, Interlink: p.address(), State: "dead"}
		p.mu.Lock()
		m.Gossip = p.mu.gossip
		p.mu.Unlock()
		if live[p.name] {
			m.State = "alive"
		} else if p.left() {
			m.State = "left"
		}
		for _, l := range p.lanes {
			if l.isConnected() {
				m.LanesUp++
			}
			m.Queued += l.queued()
		}
		m.RTTMillis = float64(p.rtt.Load()) / 1e6
		out = append(out, m)
	}
	n.mu.Unlock()
	slices.SortFunc(out[1:], func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// memberUp (re)starts the lanes to a member at addr.
func (n *Node) memberUp(name, addr string) {
	if name == n.cfg.NodeName {
		return
	}
	select {
	case <-n.done:
		return
	default:
	}
	n.mu.Lock()
	p := n.peers[name]
	if p == nil {
		p = newPeer(n, name)
		n.peers[name] = p
		n.log.Info("peer joined", "peer", name, "interlink", addr)
	} else if !p.isAlive() {
		n.log.Info("peer back", "peer", name, "interlink", addr, "queued", p.queued())
		p.forgotten = false // it announces its routes again
	}
	n.mu.Unlock()
	p.setAlive(addr)
}

// memberDown marks a member failed or gone; its queue is kept until
// ForgetAfter.
func (n *Node) memberDown(name string, left bool) {
	n.mu.Lock()
	p := n.peers[name]
	n.mu.Unlock()
	if p == nil {
		return
	}
	if left {
		n.log.Info("peer left", "peer", name)
	} else {
		n.log.Warn("peer failed", "peer", name)
	}
	p.setGone(left)
}

// maintain forgets long-gone peers and rejoins seeds and failed members,
// so that a restarted node or a healed partition merges back by itself.
// The seeds' names are looked up again on every tick while the node is
// alone, and every rediscoverEvery after (discover.go).
func (n *Node) maintain() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.FailureTimeout)
	defer t.Stop()
	looked := time.Now() // Start looked the seeds up
	for {
		select {
		case <-n.done:
			return
		case <-t.C:
		}
		now := time.Now()
		var forget, unroute []*peer
		var rejoin []string
		n.mu.Lock()
		for name, p := range n.peers {
			since, gone := p.goneSince()
			if !gone {
				continue
			}
			if n.cfg.ForgetAfter > 0 && now.Sub(since) > n.cfg.ForgetAfter {
				// Its routes go now; what was queued for it stays
				// for KeepQueued more (or until nothing is), under
				// its name, for its return.
				if !p.forgotten {
					p.forgotten = true
					unroute = append(unroute, p)
				}
				if p.queued() == 0 || now.Sub(since) > n.cfg.ForgetAfter+n.cfg.KeepQueued {
					delete(n.peers, name)
					forget = append(forget, p)
				}
				continue
			}
			if g := p.gossipAddr(); g != "" {
				rejoin = append(rejoin, g)
			}
		}
		n.mu.Unlock()
		for _, p := range unroute {
			n.log.Warn("peer forgotten", "peer", p.name, "gone_for", n.cfg.ForgetAfter.String(), "queued_kept", p.queued())
			n.h.PeerForget(p.name)
		}
		for _, p := range forget {
			p.stop()
			if dropped := p.dropQueues(); dropped > 0 {
				n.log.Warn("dropping what was queued for a forgotten peer", "peer", p.name,
					"gone_for", now.Sub(p.goneAt()).Round(time.Second).String(), "dropped", dropped)
			}
		}
		if len(n.cfg.Join) > 0 && (n.ml.NumMembers() <= 1 || now.Sub(looked) >= rediscoverEvery) {
			looked = now
			seeds, err := n.lookupSeeds(n.knownGossip())
			if err != nil {
				n.log.Debug("seed lookup", "join", strings.Join(n.cfg.Join, ","), "err", err)
			}
			rejoin = append(rejoin, seeds...)
		}
		if len(rejoin) > 0 {
			if _, err := n.join(rejoin); err != nil {
				n.log.Debug("rejoin attempt", "addrs", strings.Join(rejoin, ","), "err", err)
			}
		}
	}
}

// delegate gives memberlist this node's interlink address as metadata.
type delegate struct{ n *Node }

func (d delegate) NodeMeta(limit int) []byte {
	if len(d.n.advertise) > limit {
		return nil
	}
	return []byte(d.n.advertise)
}
func (d delegate) NotifyMsg([]byte)                           {}
func (d delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d delegate) LocalState(join bool) []byte                { return nil }
func (d delegate) MergeRemoteState(buf []byte, join bool)     {}

// events feeds memberlist's view of the members into the links.
type events struct{ n *Node }

func (e events) NotifyJoin(m *memberlist.Node) {
	e.n.memberUp(m.Name, string(m.Meta))
	e.n.gossipSeen(m)
}
func (e events) NotifyUpdate(m *memberlist.Node) {
	e.n.memberUp(m.Name, string(m.Meta))
	e.n.gossipSeen(m)
}
func (e events) NotifyLeave(m *memberlist.Node) {
	e.n.memberDown(m.Name, m.State == memberlist.StateLeft)
}

func (n *Node) gossipSeen(m *memberlist.Node) {
	n.mu.Lock()
	if p := n.peers[m.Name]; p != nil {
		p.mu.Lock()
		p.mu.gossip = m.Address()
		p.mu.Unlock()
	}
	n.mu.Unlock()
}

// gossipLog sends memberlist's log lines to slog at their own level.
type gossipLog struct{ l *slog.Logger }

func (g gossipLog) Write(b []byte) (int, error) {
	s := strings.TrimSpace(string(b))
	switch {
	case strings.Contains(s, "[ERR]"):
		g.l.Error(s)
	case strings.Contains(s, "[WARN]"):
		g.l.Warn(s)
	default:
		g.l.Debug(s)
	}
	return len(b), nil
}

var _ io.Writer = gossipLog{}
