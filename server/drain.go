package server

// Draining a node: taking it out of service without the reconnect storm
// of disconnecting every client at once.
//
// A drain starts with POST /api/v1/node/drain or, in cmd/gannet, with
// SIGTERM (which then stops the broker once the drain is over, or after
// --drain-timeout). It never ends short of a restart:
//
//  1. /readyz answers 503 at once, so that load balancers stop sending
//     clients here, and every CONNECT from then on is refused: MQTT 5
//     gets CONNACK 0x9C Use another server with --drain-redirect as the
//     Server Reference, or 0x88 Server unavailable without it; MQTT 3
//     gets CONNACK 3 (server unavailable). A refusal is answered at once,
//     so a client that a balancer still sent here retries (and lands
//     elsewhere) sooner than if it were kept and disconnected later.
//  2. The drain waits --drain-lb-grace, the time the balancers' health
//     checks take to notice (skipped when no client is connected: then
//     nobody is to be disconnected).
//  3. It disconnects the connected clients at --drain-rate a second:
//     MQTT 5 clients get DISCONNECT 0x8B Server shutting down (with the
//     Server Reference when --drain-redirect names one), MQTT 3 clients
//     are closed. Clients whose CONNECT was still being settled when the
//     drain began are disconnected in a later round. A client is
//     disconnected once: it cannot connect here again. As when the broker
//     stops, the server ended the connection, so a client's will stands
//     ([MQTT-3.1.2-8]); an MQTT 5 will delay longer than the client takes
//     to reconnect elsewhere lets the session move before the will is due,
//     and the move cancels it.
//  4. In a cluster, the persistent sessions of the clients it
//     disconnected stay here, offline, until their clients reconnect to
//     another node, which takes them over as on any CONNECT (takeover.go):
//     subscriptions, queued and inflight messages move with them. The
//     drain waits until every one has moved, then a moment more
//     (drainSettle) for messages that peers routed here before they
//     learned of a move, which are sent on to the session's new node. A
//     node without linked peers has nobody to hand sessions to: they stay
//     in its store for its return.
//
// GET /api/v1/node/drain shows where a drain is (DrainStatus).

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/time/rate"

	"github.com/gannetmq/gannet/codec"
)

// Drain phases, as DrainStatus names them.
const (
	drainWaitingLB     = "waiting_for_load_balancer"
	drainDisconnecting = "disconnecting"
	drainHandingOver   = "handing_over_sessions"
	drainDone          = "drained"
)

// drainSettle is how long a drain waits after the last session it
// disconnected has moved to a peer: peers that routed a message here
// before they learned of the move have it arrive here, and it is sent on
// (takeover.go's redirect) only while this node runs.
const drainSettle = time.Second

// drainPoll is how often a drain looks whether the sessions it waits for
// have moved.
const drainPoll = 50 * time.Millisecond

// DrainOptions are the settings of one drain: the flags' values unless
// POST /api/v1/node/drain gives others.
type DrainOptions struct {
	LBGrace  time.Duration
	Rate     float64 // clients a second; 0: all at once
	Redirect string  // Server Reference for MQTT 5 clients; empty: none
}

// drainer runs the node's drain: at most one, for the life of the
// Server.
type drainer struct {
	s *Server
	// active is set when the drain starts and never cleared; CONNECT
	// reads it.
	active atomic.Bool
	// ref is the Server Reference, set before active and not changed
	// after.
	ref          []byte
	disconnected atomic.Int64
	refused      atomic.Int64
	// waitGrace waits out the load balancers' grace, or until ctx ends
	// (false); tests replace it.
	waitGrace func(ctx context.Context, d time.Duration) bool

	mu struct {
		sync.Mutex
		phase   string
		started time.Time
		opts    DrainOptions
		atStart int64
		// moving holds the persistent sessions whose clients the drain
		// disconnected, until they have left this node.
		moving  []*session
		stopped bool // Shutdown ran: no drain may start
	}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the drain has run its course (or was stopped)
	exited chan struct{} // closed when the drain's goroutine returns

	disconnectedTotal *metrics.Counter
	refusedTotal      *metrics.Counter
}

func newDrainer(s *Server) *drainer {
	d := &drainer{s: s, waitGrace: sleepCtx, done: make(chan struct{}), exited: make(chan struct{})}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.disconnectedTotal = s.stats.set.NewCounter("gannet_drain_disconnected_total")
	d.refusedTotal = s.stats.set.NewCounter(`gannet_connections_refused_total{reason="draining"}`)
	s.stats.set.NewGauge("gannet_draining", func() float64 {
		if d.active.Load() {
			return 1
		}
		return 0
	})
	return d
}

// sleepCtx waits d, or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// drainDefaults are the drain settings the flags gave.
func (s *Server) drainDefaults() DrainOptions {
	return DrainOptions{LBGrace: s.cfg.DrainLBGrace, Rate: s.cfg.DrainRate, Redirect: s.cfg.DrainRedirect}
}

// Drain starts draining the node with the configured settings, unless a
// drain is under way, and returns a channel closed once the drain has run
// its course: every client disconnected and, in a cluster, their
// sessions taken over by peers. The node keeps running; Shutdown stops a
// drain that is still under way. Safe for concurrent use.
func (s *Server) Drain() <-chan struct{} {
	done, _ := s.drain.start(s.drainDefaults())
	return done
}

// Draining reports whether a drain has started.
func (s *Server) Draining() bool { return s.drain.active.Load() }

// start begins a drain with o; started is false when one was under way
// (its settings stay) or the broker has stopped.
func (d *drainer) start(o DrainOptions) (done <-chan struct{}, started bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.stopped {
		return d.done, false
	}
	if d.active.Load() {
		return d.done, false
	}
	d.mu.opts, d.mu.started, d.mu.phase = o, time.Now(), drainWaitingLB
	d.mu.atStart = d.s.stats.clients.Load()
	d.ref = []byte(o.Redirect)
	d.active.Store(true)
	d.s.log.Info("draining: /readyz fails and new clients are refused from now on", "clients", d.mu.atStart,
		"lb_grace", o.LBGrace.String(), "rate", o.Rate, "redirect", o.Redirect)
	go d.run(o)
	return d.done, true
}

// stop ends a drain under way and waits for its goroutine, for Shutdown,
// which disconnects whoever is left.
func (d *drainer) stop() {
	d.mu.Lock()
	d.mu.stopped = true
	running := d.active.Load()
	d.mu.Unlock()
	d.cancel()
	if running {
		<-d.exited
	} else {
		close(d.done) // for a Drain called after this, which starts none
	}
}

func (d *drainer) setPhase(p string) {
	d.mu.Lock()
	d.mu.phase = p
	d.mu.Unlock()
}

// run is the drain's goroutine.
func (d *drainer) run(o DrainOptions) {
	defer close(d.exited)
	defer close(d.done)
	s := d.s
	if o.LBGrace > 0 && s.stats.clients.Load() > 0 {
		if !d.waitGrace(d.ctx, o.LBGrace) {
			return
		}
	}
	d.setPhase(drainDisconnecting)
	if !d.disconnect(o.Rate) {
		return
	}
	s.log.Info("draining: every client is disconnected", "disconnected", d.disconnected.Load())
	if !d.handOver() {
		return
	}
	d.setPhase(drainDone)
	s.log.Info("drained", "disconnected", d.disconnected.Load(), "refused", d.refused.Load())
}

// disconnect disconnects every connected client at r a second (0: no
// bound), round after round until a round finds none. It returns false
// when the drain was stopped.
func (d *drainer) disconnect(r float64) bool {
	var lim *rate.Limiter
	if r > 0 && !math.IsInf(r, 1) {
		// Bursts of 20 ms worth, so that a high rate does not mean a
		// timer per client.
		lim = rate.NewLimiter(rate.Limit(r), max(1, int(r/50)))
	}
	for {
		list := d.s.connectedClients()
		if len(list) == 0 {
			return d.ctx.Err() == nil
		}
		for _, c := range list {
			if lim != nil {
				if err := lim.Wait(d.ctx); err != nil {
					return false
				}
			} else if d.ctx.Err() != nil {
				return false
			}
			d.kick(c)
		}
	}
}

// connectedClients lists the clients connected now, each loop asked on
// the loop.
func (s *Server) connectedClients() []*client {
	var (
		mu  sync.Mutex
		out []*client
		wg  sync.WaitGroup
	)
	for _, l := range s.loopList() {
		wg.Add(1)
		err := l.el.Execute(context.Background(), runFunc(func() {
			defer wg.Done()
			var mine []*client
			for _, c := range l.conns {
				if c.connected && !c.closed {
					mine = append(mine, c)
				}
			}
			mu.Lock()
			out = append(out, mine...)
			mu.Unlock()
		}))
		if err != nil {
			wg.Done()
		}
	}
	wg.Wait()
	return out
}

// kick disconnects c on its loop, noting its session when it is to move
// to a peer.
func (d *drainer) kick(c *client) {
	_ = c.loop.el.Execute(context.Background(), runFunc(func() {
		if c.closed || !c.connected {
			return
		}
		c.loop.takeInbox(monotime(), nil) // what other loops left for c goes first
		if c.closed {
			return
		}
		if sess := c.sess; d.s.cl != nil && sess != nil {
			sess.mu.Lock()
			moves := sess.mu.cl == c && sess.mu.expiry > 0 && !sess.mu.ended
			sess.mu.Unlock()
			if moves {
				d.mu.Lock()
				d.mu.moving = append(d.mu.moving, sess)
				d.mu.Unlock()
			}
		}
		c.drainOut(d.ref)
		d.disconnected.Add(1)
		d.disconnectedTotal.Inc()
	}))
}

// drainOut is the drain's last word to a connected client: DISCONNECT
// 0x8B for MQTT 5, with the Server Reference when there is one and the
// client's maximum packet size allows it; then the connection closes.
// It runs on the client's loop.
func (c *client) drainOut(ref []byte) {
	if c.version == codec.V5 {
		p := codec.Disconnect{Code: codec.ServerShuttingDown}
		if len(ref) > 0 {
			p.Props.ServerReference = ref
			p.Props.Set(codec.PropServerReference)
		}
		b := p.Append(nil, codec.V5)
		if mp := c.maxPacket(); mp > 0 && len(b) > mp {
			b = (&codec.Disconnect{Code: codec.ServerShuttingDown}).Append(nil, codec.V5)
		}
		c.pend = append(c.pend, b)
		c.dirty = true
	}
	c.logger().Debug("disconnecting client: the node is draining")
	c.close()
}

// refuseDraining answers a CONNECT that reached a draining node (see the
// top of this file) and ends the connection.
func (c *client) refuseDraining(ob *outbox) error {
	d := c.srv.drain
	d.refused.Add(1)
	d.refusedTotal.Inc()
	c.logger().Info("refusing connection", "reason", "the node is draining")
	var ack codec.Connack
	switch {
	case c.version != codec.V5:
		ack.Code = codec.V3ServerUnavailable
	case len(d.ref) > 0:
		ack.Code = codec.UseAnotherServer
		ack.Props.ServerReference = d.ref
		ack.Props.Set(codec.PropServerReference)
	default:
		ack.Code = codec.ServerUnavailable
	}
	c.writeNow(ob, ack.Append(nil, c.version))
	return errClose
}

// handOver waits until the sessions the drain disconnected have moved to
// peers (see the top of this file). It returns false when the drain was
// stopped.
func (d *drainer) handOver() bool {
	cl := d.s.cl
	if cl == nil {
		return true
	}
	d.mu.Lock()
	waited := len(d.mu.moving) > 0
	d.mu.Unlock()
	if !waited {
		return true
	}
	d.setPhase(drainHandingOver)
	for {
		if d.stillHere() == 0 {
			break
		}
		if !d.peersLinked() {
			d.s.log.Warn("draining: no peer is linked to take sessions over; they stay in the store for this node's return",
				"sessions", d.stillHere())
			return true
		}
		if !sleepCtx(d.ctx, drainPoll) {
			return false
		}
	}
	d.s.log.Info("draining: every disconnected client's session has moved to a peer")
	return sleepCtx(d.ctx, drainSettle)
}

// stillHere counts the sessions the drain waits for that are still this
// node's, and forgets those that are not.
func (d *drainer) stillHere() int {
	d.mu.Lock()
	moving := d.mu.moving
	d.mu.Unlock()
	gone := make(map[*session]bool)
	for _, sess := range moving {
		d.s.sessions.Lock()
		cur := d.s.sessions.m[sess.id]
		d.s.sessions.Unlock()
		if cur != sess {
			gone[sess] = true
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	here := d.mu.moving[:0:0]
	for _, sess := range d.mu.moving {
		if !gone[sess] {
			here = append(here, sess)
		}
	}
	d.mu.moving = here
	return len(here)
}

// peersLinked reports whether any peer's link is up.
func (d *drainer) peersLinked() bool {
	n := d.s.cl.node
	for _, p := range n.Peers() {
		if n.Linked(p) {
			return true
		}
	}
	return false
}

// DrainStatus is where the node's drain is: the body of GET and POST
// /api/v1/node/drain.
type DrainStatus struct {
	Draining bool `json:"draining"`
	// Phase is waiting_for_load_balancer, disconnecting,
	// handing_over_sessions or drained; empty when not draining.
	Phase    string     `json:"phase,omitempty"`
	Started  *time.Time `json:"started,omitempty"`
	LBGrace  string     `json:"lb_grace,omitempty"`
	Rate     float64    `json:"rate"`
	Redirect string     `json:"redirect,omitempty"`
	// ClientsAtStart were connected when the drain began; Disconnected
	// the drain has disconnected since; Refused the CONNECTs it refused;
	// ClientsConnected are connected now.
	ClientsAtStart   int64 `json:"clients_at_start"`
	Disconnected     int64 `json:"disconnected"`
	Refused          int64 `json:"refused"`
	ClientsConnected int64 `json:"clients_connected"`
	// SessionsToHandOver are sessions of disconnected clients still
	// waiting here for their clients to reconnect to a peer.
	SessionsToHandOver int `json:"sessions_to_hand_over"`
}

// DrainStatus reports the node's drain.
func (s *Server) DrainStatus() DrainStatus {
	d := s.drain
	st := DrainStatus{ClientsConnected: s.stats.clients.Load()}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.active.Load() {
		return st
	}
	started := d.mu.started.UTC()
	st.Draining, st.Phase, st.Started = true, d.mu.phase, &started
	st.LBGrace, st.Rate, st.Redirect = d.mu.opts.LBGrace.String(), d.mu.opts.Rate, d.mu.opts.Redirect
	st.ClientsAtStart, st.Disconnected, st.Refused = d.mu.atStart, d.disconnected.Load(), d.refused.Load()
	st.SessionsToHandOver = len(d.mu.moving)
	return st
}

// drainRoutes serves GET and POST /api/v1/node/drain.
func (s *Server) drainRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/node/drain", func(w http.ResponseWriter, _ *http.Request) {
		apiJSON(w, http.StatusOK, s.DrainStatus())
	})
	mux.HandleFunc("POST /api/v1/node/drain", s.postDrain)
}

// maxDrainBody bounds the body of POST /api/v1/node/drain.
const maxDrainBody = 64 << 10

// postDrain starts a drain: 202 with its status, or 200 with the status
// of the one under way. An optional JSON body replaces the flags'
// settings for this drain: {"lb_grace": "10s", "rate": 100,
// "redirect": "mqtt.example.com:1883"}.
func (s *Server) postDrain(w http.ResponseWriter, r *http.Request) {
	o := s.drainDefaults()
	var body struct {
		LBGrace  *string  `json:"lb_grace"`
		Rate     *float64 `json:"rate"`
		Redirect *string  `json:"redirect"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxDrainBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		apiError(w, http.StatusBadRequest, "bad JSON body: %v", err)
		return
	}
	if dec.More() {
		apiError(w, http.StatusBadRequest, "bad JSON body: more than one value")
		return
	}
	if body.LBGrace != nil {
		g, err := time.ParseDuration(*body.LBGrace)
		if err != nil || g < 0 {
			apiError(w, http.StatusBadRequest, "lb_grace must be a duration such as \"10s\", at least 0, got %q", *body.LBGrace)
			return
		}
		o.LBGrace = g
	}
	if body.Rate != nil {
		if *body.Rate < 0 || math.IsNaN(*body.Rate) {
			apiError(w, http.StatusBadRequest, "rate must be at least 0 (clients a second; 0: all at once), got %g", *body.Rate)
			return
		}
		o.Rate = *body.Rate
	}
	if body.Redirect != nil {
		if len(*body.Redirect) > 65535 || !utf8.ValidString(*body.Redirect) {
			apiError(w, http.StatusBadRequest, "redirect must be UTF-8, at most 65535 bytes")
			return
		}
		o.Redirect = *body.Redirect
	}
	code := http.StatusAccepted
	if _, started := s.drain.start(o); !started {
		if s.stopping.Load() {
			apiError(w, http.StatusServiceUnavailable, "the broker is stopping")
			return
		}
		code = http.StatusOK
	}
	apiJSON(w, code, s.DrainStatus())
}
