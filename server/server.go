package server

import (
	"context"
	"errors"
	"fmt"
	"github.com/gannetmq/gannet/codec"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/gannetmq/gannet/apikey"
	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/interlink"
	"github.com/gannetmq/gannet/trie"
)

// Server is one MQTT broker node.
type Server struct {
	cfg Config
	log *slog.Logger

	subs     *trie.Trie[*session, fanout.Options]
	retained retainStore
	stats    *stats
	store    *storeGate // nil with --durability=none
	cl       *cluster   // nil unless clustered
	marks    []mark     // peers' stream positions loaded from the store
	spool    []spooled  // records kept for peers, loaded from the store

	// retainWaiting counts the loops' retainWait entries (retainpace.go).
	retainWaiting atomic.Int64

	sessions struct {
		sync.Mutex
		m map[string]*session
	}

	loops struct {
		sync.Mutex
		m map[gnet.EventLoop]*loop
	}

	clock   atomic.Int64 // unix nanoseconds, refreshed by the ticker
	stamps  atomic.Int64 // the last stamp handed out (stamp)
	started time.Time

	eng      gnet.Engine
	engReady chan struct{} // closed once the event loops run (OnTick)
	runErr   chan error
	ready    atomic.Bool
	stopping atomic.Bool
	addr     net.Addr

	http     *http.Server
	httpCert *httpCert    // nil when HTTP is served in the clear
	apiKeys  *apikey.File // nil without --api-key-file (apiauth.go)
	drain    *drainer     // drain.go
	bans     banList      // bans.go
	flaps    flapTable    // flapping.go
	apiPeers adminPeers   // admincluster.go
	adm      *admission
	// queuedBytes is what every session queue holds (msgQueue).
	queuedBytes atomic.Int64
	mem         memGuard // memory.go
	// logLimit throttles broker-wide warnings, connLog is the log of
	// connections, throttled too (logthrottle.go).
	logLimit *logThrottle
	connLog  *slog.Logger
	httpAddr net.Addr
	tlsl     *tlsListener // nil without --tls-listen and --wss-listen
	wsAddr   net.Addr     // the WebSocket listener's; nil without --ws-listen
	wsPort   atomic.Int32 // its port, for OnOpen; 0 without

	done chan struct{} // closed by Shutdown to stop the background goroutines
	wg   sync.WaitGroup

	live liveConfig // the reloadable limits (reload.go)
	// rates keeps the publish buckets clients left with (ratelimit.go).
	rates rateMemo
}

// loop is Gannet's state for one gnet event loop. Its fields are touched
// only on that loop.
type loop struct {
	el gnet.EventLoop
	// conns is every connection of the loop, a few closed ones among
	// them until the next sweep lets go of them: a closed connection
	// that does not linger is skipped by every walk of the list (each
	// checks closed), so OnClose need not find it. A slice rather than
	// a set: 8 bytes a connection instead of a map entry's 30 to 50.
	conns []*client
	// sweepNext is where in conns the next part of the sweep begins
	// (sweepPart).
	sweepNext int
	ob        *outbox
	coalesce  // write delay and inbox (coalesce.go)
	// retainWait is the connections whose retained backlogs wait for
	// their output to drain (retainpace.go).
	retainWait []*client
	// scratch holds the packets OnTraffic decodes into, one set per loop
	// rather than per connection: fields alias the read buffer and die with
	// the call, and handlers copy what they keep. Kept per connection they
	// would cost about 1.7 KB of every idle client.
	scratch struct {
		pub  codec.Publish
		ack  codec.Ack
		sub  codec.Subscribe
		uns  codec.Unsubscribe
		disc codec.Disconnect
	}
}

// runFunc adapts a function to gnet.Runnable.
type runFunc func()

func (f runFunc) Run(context.Context) error { f(); return nil }

// New builds a broker from cfg. It does not listen until Start.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:      cfg,
		log:      log,
		subs:     trie.New[*session, fanout.Options](),
		engReady: make(chan struct{}),
		runErr:   make(chan error, 1),
		done:     make(chan struct{}),
	}
	s.stats = newStats(s)
	s.logLimit = newLogThrottle()
	burst := connLogBurst
	if cfg.connLogBurst != 0 {
		burst = cfg.connLogBurst
	}
	s.connLog = slog.New(throttledHandler{log.Handler(), newLogThrottle(), burst})
	s.adm = newAdmission(s)
	s.drain = newDrainer(s)
	s.bans.init(s.stats.set)
	if err := s.loadAPIKeys(); err != nil {
		return nil, err
	}
	s.sessions.m = make(map[string]*session)
	s.loops.m = make(map[gnet.EventLoop]*loop)
	s.clock.Store(time.Now().UnixNano())
	if cfg.TLS != nil {
		l, err := newTLSListener(s, s.cfg.TLS)
		if err != nil {
			return nil, err
		}
		s.tlsl = l
	}
	if cfg.HTTPTLSCertFile != "" {
		s.httpCert = &httpCert{certFile: cfg.HTTPTLSCertFile, keyFile: cfg.HTTPTLSKeyFile}
		if err := s.httpCert.load(); err != nil {
			return nil, fmt.Errorf("HTTP listener: %w", err)
		}
	}
	return s, nil
}

// stamp returns a time for ordering versions across the cluster (a
// retained message, a client's connection): the wall clock in unix
// nanoseconds, made strictly increasing on this node, so that two
// versions made here in one tick of the broker clock still order, and
// moved past every stamp seen from a peer (observe). It is a hybrid
// logical clock: a version made here after this node learned of another
// orders after it even when the other node's clock runs ahead; only
// versions made on two nodes without either knowing of the other are
// ordered by their wall clocks.
func (s *Server) stamp() int64 {
	now := time.Now().UnixNano()
	for {
		last := s.stamps.Load()
		next := max(now, last+1)
		if s.stamps.CompareAndSwap(last, next) {
			return next
		}
	}
}

// observe takes in a stamp made on a peer (see stamp).
func (s *Server) observe(stamp int64) {
	for {
		last := s.stamps.Load()
		if stamp <= last || s.stamps.CompareAndSwap(last, stamp) {
			return
		}
	}
}

// now returns the broker clock in unix nanoseconds, at most a few
// milliseconds stale.
func (s *Server) now() int64 { return s.clock.Load() }

// Start opens the listeners and returns once the broker accepts clients.
func (s *Server) Start() error {
	s.started = time.Now()
	if before, after, err := s.adm.raiseFDLimit(); err != nil {
		s.log.Warn("cannot raise the open-file limit", "limit", before, "err", err)
	} else {
		s.log.Info("open-file limit", "soft_was", before, "now", after,
			"connections_until_refused", max(0, int64(after)-fdReserve))
	}
	if err := s.openStore(); err != nil {
		return err
	}
	if s.cfg.Cluster != nil {
		cl, err := newCluster(s)
		if err != nil {
			_ = s.closeStore()
			return err
		}
		// Peers may deliver as soon as the link is up: s.cl is set first.
		s.cl = cl
		if err := cl.node.Start(); err != nil {
			_ = s.closeStore()
			return err
		}
		go cl.release()
	}

	loops := s.cfg.EventLoops
	if loops == 0 {
		loops = runtime.NumCPU()
	}
	h := &handler{srv: s}
	addrs := []string{"tcp://" + s.cfg.Listen}
	if s.tlsl != nil {
		// The TLS listener hands its connections to the loops through
		// a unix socket of the engine's own (tls.go).
		a, err := s.tlsl.prepare()
		if err != nil {
			s.stopCluster()
			_ = s.closeStore()
			return err
		}
		addrs = append(addrs, a)
	}
	wsListen := s.cfg.WSListen
	if wsListen != "" {
		// MQTT over WebSocket is one more of the engine's listeners;
		// OnOpen tells its connections by their local port (ws.go).
		// The engine names its listeners by their configured address,
		// so a port left to the kernel (":0", in tests) is picked here,
		// or it could not be told from the MQTT listener's.
		var err error
		if wsListen, err = pickPort(wsListen); err != nil {
			s.stopTLS()
			s.stopCluster()
			_ = s.closeStore()
			return err
		}
		s.wsPort.Store(int32(portOf(wsListen)))
		addrs = append(addrs, "tcp://"+wsListen)
	}
	// Round robin spreads connections evenly. Its counter belongs to the
	// main reactor, so nothing else may pick a loop: no Engine.Register.
	lb := gnet.RoundRobin
	go func() {
		err := gnet.Rotate(h, addrs,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(loops),
			gnet.WithReadBufferCap(s.cfg.ReadBufferSize),
			gnet.WithWriteBufferCap(s.cfg.WriteBufferSize),
			gnet.WithReusePort(false),
			gnet.WithReuseAddr(true),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithLoadBalancing(lb),
			gnet.WithTicker(true), // for OnTick: the loops are running
			gnet.WithLogger(gnetLogger{s.log}),
		)
		s.runErr <- err
	}()
	select {
	case <-s.engReady:
	case err := <-s.runErr:
		s.stopTLS()
		s.stopCluster()
		_ = s.closeStore()
		return fmt.Errorf("cannot listen on %s: %w", s.cfg.Listen, err)
	}
	if s.tlsl != nil {
		// TLS 1.3 connections are handed to the loops by the listener
		// itself, which must know them first (tls.go).
		s.tlsl.probeLoops(loops)
	}
	// Learn the bound address (":0" picks a port) from gnet's own socket:
	// binding a probe socket first and handing its port over would race
	// with anything else taking that port in between.
	if err := s.listen(wsListen); err != nil {
		_ = s.eng.Stop(context.Background())
		s.stopTLS()
		s.stopCluster()
		_ = s.closeStore()
		return err
	}
	s.wg.Add(1)
	go s.tick()
	if s.cfg.SysInterval > 0 {
		s.wg.Add(1)
		go s.sysLoop()
	}
	if s.store != nil {
		s.wg.Add(1)
		go s.purgeLoop()
	}
	if s.cl != nil {
		s.wg.Add(1)
		go s.cl.digestLoop()
	}
	if s.cfg.Auth != nil {
		s.wg.Add(1)
		go s.aclLoop()
	}
	if s.cfg.MemoryLimit > 0 {
		s.mem.limit.Store(s.cfg.MemoryLimit)
		s.wg.Add(1)
		go s.memoryLoop()
	}
	s.ready.Store(true)
	s.log.Info("gannet started", "mqtt", s.addr.String(), "mqtts", s.TLSAddr(), "ws", s.WSAddr(), "wss", s.WSSAddr(),
		"http", s.HTTPAddr(), "event_loops", loops)
	return nil
}

// Addr returns the MQTT listener's address.
func (s *Server) Addr() string { return s.addr.String() }

// HTTPAddr returns the HTTP listener's address, or "" when it is off.
func (s *Server) HTTPAddr() string {
	if s.httpAddr == nil {
		return ""
	}
	return s.httpAddr.String()
}

// Shutdown stops accepting clients, tells v5 clients the server is shutting
// down (DISCONNECT 0x8B), flushes what it holds and stops.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.stopping.CompareAndSwap(false, true) {
		return errors.New("server: already shut down")
	}
	s.ready.Store(false)
	s.drain.stop() // what a drain left is disconnected below
	close(s.done)
	s.wg.Wait()
	if s.tlsl != nil {
		s.tlsl.stop()
	}
	s.stopCluster()
	s.disconnectAll(ctx)
	err := s.eng.Stop(ctx)
	if s.tlsl != nil {
		// The engine closed the loops' ends: the bridges send the
		// last bytes on and end.
		err = errors.Join(err, s.tlsl.wait(ctx))
		s.tlsl.removeDir()
	}
	s.loops.Lock()
	for _, l := range s.loops.m {
		l.timer.Stop()
	}
	s.loops.Unlock()
	if s.http != nil {
		_ = s.http.Shutdown(ctx)
	}
	if serr := s.closeStore(); serr != nil {
		err = errors.Join(err, fmt.Errorf("cannot close the store: %w", serr))
	}
	s.log.Info("gannet stopped")
	return err
}

// stopTLS closes the TLS listener, waits for its goroutines and removes
// its socket's directory, for a Start that fails after preparing it.
func (s *Server) stopTLS() {
	if s.tlsl != nil {
		s.tlsl.stop()
		_ = s.tlsl.wait(context.Background())
		s.tlsl.removeDir()
	}
}

// mark is a peer's stream position read from the store.
type mark struct {
	peer string
	pos  interlink.Position
}

// stopCluster leaves the cluster: peers keep this node's routes and queue
// its messages until it returns or is forgotten.
func (s *Server) stopCluster() {
	if s.cl != nil {
		s.cl.node.Stop()
		close(s.cl.held.stop)
		<-s.cl.held.done
	}
}

// disconnectAll sends every v5 client DISCONNECT 0x8B and closes every
// connection, loop by loop, waiting until each loop has done it.
func (s *Server) disconnectAll(ctx context.Context) {
	loops := s.loopList()
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Add(1)
		err := l.el.Execute(ctx, runFunc(func() {
			defer wg.Done()
			l.takeInbox(monotime(), nil) // what other loops left for these clients goes first
			for _, c := range l.conns {
				c.shutdown()
			}
		}))
		if err != nil {
			wg.Done()
		}
	}
	wg.Wait()
}

// tick refreshes the clock and sweeps every loop for keepalive, connect and
// slow-receiver deadlines.
func (s *Server) tick() {
	defer s.wg.Done()
	clock := time.NewTicker(10 * time.Millisecond)
	defer clock.Stop()
	var n int
	for {
		select {
		case <-s.done:
			return
		case t := <-clock.C:
			s.clock.Store(t.UnixNano())
			if s.retainWaiting.Load() > 0 {
				s.resumeRetained()
			}
			n++
			// A part of each loop's connections each tick: every
			// connection each 250 ms.
			s.sweep()
			if n%6000 == 0 && s.cl != nil { // every minute
				s.forgetClearings(t) // clusterretained.go
			}
		}
	}
}

// loopList returns the event loops that have had a connection, taken
// under the loops lock so that the caller can Execute on them outside it,
// as doc.go's lock order asks.
func (s *Server) loopList() []*loop {
	s.loops.Lock()
	defer s.loops.Unlock()
	loops := make([]*loop, 0, len(s.loops.m))
	for _, l := range s.loops.m {
		loops = append(loops, l)
	}
	return loops
}

// sweepParts is how many parts a loop's connections are swept in, a
// part each tick of the broker clock: each connection is looked at every
// sweepParts ticks (250 ms). Swept whole every 250 ms, a loop with
// thousands of connections was held for over a millisecond each time
// (and more for the connections that reached their deadlines together),
// and the clients on it waited.
const sweepParts = 25

// sweep has every loop sweep its next part.
func (s *Server) sweep() {
	loops := s.loopList()
	// Execute outside the lock, as doc.go's lock order asks. How late
	// each sweep starts is the loop's lag: the time a task handed to it
	// waits behind the work it is doing.
	at := monotime()
	for _, l := range loops {
		_ = l.el.Execute(context.Background(), runFunc(func() {
			since(s.stats.lat.loopLag, at, monotime())
			l.sweepPart(s.now())
		}))
	}
}

// sweep enforces deadlines on all this loop's connections at once, up to
// sweepCloses ended, and drops the closed ones that no longer linger from
// l.conns.
func (l *loop) sweep(now int64) {
	l.sweepRange(now, 0, len(l.conns))
}

// sweepPart is sweep for the loop's next sweepParts-th of its
// connections.
func (l *loop) sweepPart(now int64) {
	if l.sweepNext >= len(l.conns) {
		l.sweepNext = 0
	}
	size := (len(l.conns) + sweepParts - 1) / sweepParts
	l.sweepRange(now, l.sweepNext, l.sweepNext+size)
}

// sweepCloses bounds the connections one pass of a sweep ends (closes, or
// lets go of after their linger): past it, the pass stops and the next
// tick's part begins where it stopped. Thousands of connections reach
// their deadline together after a reconnect storm (silent ones the
// connect timeout closes, and their lingers a second later); ending them
// all in one pass held a loop for 20 to 55 ms, and every client on it
// waited. The rest must wait for a tick, not for a task of its own: gnet
// runs every task queued on a loop, those that the tasks queue included,
// before it looks for I/O again, so passes queued one after another were
// one pass again, with the loop's clients unread until its end.
const sweepCloses = 32

// testSweepPass, when a test sets it, is told how many connections each
// pass of a sweep ended, and how many its range held.
var testSweepPass atomic.Pointer[func(ended, size int)]

// sweepRange is a pass of sweep (or part) over l.conns[from:to]. One that
// ends sweepCloses connections stops there, and the next part begins where
// it stopped.
func (l *loop) sweepRange(now int64, from, to int) {
	conns := l.conns
	to = min(to, len(conns))
	kept, ended, i := from, 0, from
	for ; i < to && ended < sweepCloses; i++ {
		c := conns[i]
		if c.closed && !c.lingering() {
			continue
		}
		conns[kept] = c
		kept++
		closed, lingering := c.closed, c.lingering()
		c.checkDeadlines(l.ob, now)
		if c.closed != closed || c.lingering() != lingering {
			ended++
		}
	}
	// The rest of the list, and those opened meanwhile, if any (nothing
	// the sweep does opens one, but the list must not lose a connection
	// if that ever changes).
	n := len(l.conns)
	conns = append(conns[:kept], l.conns[i:]...)
	clear(l.conns[len(conns):n])
	if i == to && cap(conns) > 1024 && len(conns) < cap(conns)/4 {
		conns = slices.Clone(conns) // most connections went: give the room back
	}
	l.conns = conns
	l.sweepNext = kept // where the range, or the list, goes on
	l.ob.flush()
	if f := testSweepPass.Load(); f != nil {
		(*f)(ended, to-from)
	}
}

// listen learns the engine's bound addresses and opens the listeners that
// are not the engine's (TLS, HTTP), for Start once the engine runs.
func (s *Server) listen(wsListen string) error {
	addr, err := s.boundAddr()
	if err != nil {
		return err
	}
	s.addr = addr
	if s.tlsl != nil {
		if err := s.tlsl.listen(); err != nil {
			return err
		}
	}
	if wsListen != "" {
		a, err := s.listenerAddr(wsListen)
		if err != nil {
			return err
		}
		s.wsAddr = a
		s.wsPort.Store(int32(a.(*net.TCPAddr).Port))
	}
	if s.cfg.HTTPListen != "" {
		return s.startHTTP()
	}
	return nil
}

// boundAddr is the address of the engine's listening socket.
func (s *Server) boundAddr() (net.Addr, error) {
	return s.listenerAddr(s.cfg.Listen)
}

// listenerAddr is the bound address of the engine's TCP listener on addr.
func (s *Server) listenerAddr(addr string) (net.Addr, error) {
	fd, err := s.eng.DupListener("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot read the MQTT listener's address: %w", err)
	}
	if ka := s.cfg.TCPKeepAlive; ka > 0 {
		// Set on the listening socket, whose accepted sockets inherit it
		// (Linux), rather than through gnet's option: with it, a listener
		// that failed to open reported a setsockopt error in place of the
		// real one ("address already in use").
		if err := setKeepAlive(fd, ka); err != nil {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("cannot set TCP keepalive on the listener %s: %w", addr, err)
		}
	}
	f := os.NewFile(uintptr(fd), "mqtt-listener")
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("cannot read the MQTT listener's address: %w", err)
	}
	defer ln.Close()
	return ln.Addr(), nil
}

// setKeepAlive has the kernel probe a socket idle for d, then every d/5,
// and give up after 5 unanswered probes.
func setKeepAlive(fd int, d time.Duration) error {
	idle := max(1, int(d/time.Second))
	for _, o := range []struct{ level, opt, v int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, idle},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, max(1, idle/5)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 5},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return err
		}
	}
	return nil
}
