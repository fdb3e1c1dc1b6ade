package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/gannetmq/gannet/codec"
)

// Credentials and names. Every client sends Config.Username and
// Config.Password when they are set; "%d" in the username, in the conn
// scenario's client id and in a topic template is replaced by the client's
// index (i of bench-conn-i, bench-pub-i, bench-sub-i), so that one flag
// makes thousands of distinct users. Config.Users folds the indexes onto
// fewer users: client i is then user i mod Users.

// setupTimeout bounds the wait for one CONNACK or SUBACK.
const setupTimeout = 30 * time.Second

// expand returns tmpl with each "%d" replaced by i and each "%u" by user.
func expand(tmpl string, i int, user string) string {
	if !strings.Contains(tmpl, "%") {
		return tmpl
	}
	s := strings.ReplaceAll(tmpl, "%d", itoa(i))
	return strings.ReplaceAll(s, "%u", user)
}

// username returns the username client i sends; "" sends none.
func (cfg *Config) username(i int) string {
	if cfg.Username == "" {
		return ""
	}
	if cfg.Users > 0 {
		i %= cfg.Users
	}
	return expand(cfg.Username, i, "")
}

// checkNames validates the name templates of cfg.
func (cfg *Config) checkNames() error {
	if cfg.Users < 0 {
		return errors.New("--users must not be negative")
	}
	if cfg.ConnectWindow < 0 {
		return errors.New("--connect-window must not be negative")
	}
	if (cfg.ConnSubscribe != "" || cfg.Disconnect) && cfg.Scenario != "conn" {
		return errors.New("--subscribe and --disconnect apply to the conn scenario only")
	}
	if cfg.Disconnect && cfg.Transport.Name() != "tcp" {
		return errors.New("--disconnect works over plain TCP only")
	}
	if cfg.ClientID != "" {
		if cfg.Scenario != "conn" {
			return errors.New("--client-id applies to the conn scenario only")
		}
		if !strings.Contains(cfg.ClientID, "%d") {
			return errors.New("--client-id must hold %d, so that every client has an id of its own")
		}
	}
	if cfg.Topic != "" {
		switch cfg.Scenario {
		case "p2p", "cluster", "stresser":
		default:
			return errors.New("--topic applies to the p2p, cluster and stresser scenarios only")
		}
		if strings.Contains(cfg.Topic, "%u") && cfg.Username == "" {
			return errors.New("--topic holds %u but no --username is set")
		}
	}
	return nil
}

// connackName names a CONNACK code as the client's protocol level means
// it: MQTT 3 return codes differ from MQTT 5 reason codes.
func connackName(code codec.ReasonCode, v codec.Version) string {
	if v != codec.V5 {
		switch code {
		case codec.V3UnacceptableProtocolVersion:
			return "unacceptable protocol version"
		case codec.V3IdentifierRejected:
			return "identifier rejected"
		case codec.V3ServerUnavailable:
			return "server unavailable"
		case codec.V3BadUsernameOrPassword:
			return "bad user name or password"
		case codec.V3NotAuthorized:
			return "not authorized"
		}
	}
	return code.String()
}

// refused records that the broker answered c's CONNECT with code.
func (c *client) refused(code codec.ReasonCode) {
	r := c.run
	key := fmt.Sprintf("0x%02x %s", byte(code), connackName(code, c.v))
	r.errMu.Lock()
	if r.refusals == nil {
		r.refusals = map[string]int64{}
	}
	r.refusals[key]++
	r.errMu.Unlock()
	c.refusal.Store(uint32(code) | 0x100)
	r.errorf("%s: CONNACK %s", c.id, key)
	c.ready()
}

// refusalError describes the refusals so far, for a scenario that cannot
// go on without every client.
func (r *runner) refusalError() error {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	var n int64
	var parts []string
	for k, v := range r.refusals {
		n += v
		parts = append(parts, fmt.Sprintf("%d with %s", v, k))
	}
	if n == 0 {
		return nil
	}
	slices.Sort(parts)
	return fmt.Errorf("the broker refused %d CONNECTs (%s)", n, strings.Join(parts, ", "))
}

// Refusals describes the refused CONNECTs of a conn run by code, as
// "3 with 0x86 bad user name or password"; "" when none was refused.
func (r *Result) Refusals() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.RefusedBy)) {
		parts = append(parts, fmt.Sprintf("%d with %s", r.RefusedBy[k], k))
	}
	return strings.Join(parts, ", ")
}

// settle waits until every client of cs has its CONNACK, was refused or
// was closed. It fails only when one of them gets no answer in time.
func (r *runner) settle(ctx context.Context, cs []*client) error {
	t := time.NewTimer(setupTimeout)
	defer t.Stop()
	for _, c := range cs {
		select {
		case <-c.connected:
			continue
		default:
		}
		t.Reset(setupTimeout)
		select {
		case <-c.connected:
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return fmt.Errorf("%s: no CONNACK within %v", c.id, setupTimeout)
		}
	}
	return nil
}

// conn opens Clients connections and keeps them open (idle, keepalive
// 300 s unless KeepAlive; each subscribed to ConnSubscribe if set) until
// the run ends, or with Disconnect until they are measured. It reports the connection rate (clients over
// the time from the first dial to the last CONNACK), the CONNECT-to-CONNACK
// latency percentiles (over TLS or WebSocket, from the start of the
// handshake), the CONNECTs refused by code, the generator's own CPU time
// per connection, and with BrokerPID the broker's CPU time per connection
// and memory per connection.
//
// Pacing: ConnectRate spaces the dials; ConnectWindow keeps at most that
// many CONNECTs waiting for their CONNACK (a closed loop, so that the rate
// is what the broker sustains rather than how long its listen backlog
// is); neither: every client is dialled as fast as one goroutine can.
func (r *runner) conn(ctx context.Context) (*Result, error) {
	cfg := &r.cfg
	res := &Result{Scenario: "conn", Clients: cfg.Clients, LossAllowed: true}
	var before ProcSample
	if cfg.BrokerPID > 0 {
		var err error
		if before, err = SampleProc(cfg.BrokerPID); err != nil {
			return nil, err
		}
	}
	var every time.Duration
	if cfg.ConnectRate > 0 {
		every = time.Second / time.Duration(cfg.ConnectRate)
	}
	var slots chan struct{}
	if cfg.ConnectWindow > 0 {
		slots = make(chan struct{}, cfg.ConnectWindow)
	}
	idTmpl := cfg.ClientID
	if idTmpl == "" {
		idTmpl = "bench-conn-%d"
	}
	wait := time.NewTimer(setupTimeout)
	defer wait.Stop()
	tool0 := SelfCPU()
	start := time.Now()
	for i := range cfg.Clients {
		if slots != nil {
			wait.Reset(setupTimeout)
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-wait.C:
				return nil, fmt.Errorf("no CONNACK within %v with %d CONNECTs outstanding (%d of %d dialled)",
					setupTimeout, cfg.ConnectWindow, i, cfg.Clients)
			}
		}
		c := &client{id: expand(idTmpl, i, ""), user: cfg.username(i), v: cfg.Version, slot: slots}
		if cfg.ConnSubscribe != "" {
			c.subscribe = []codec.Subscription{{Filter: []byte(expand(cfg.ConnSubscribe, i, c.user)), QoS: cfg.QoS}}
		}
		r.clients = append(r.clients, c)
		if err := r.dial(c, cfg.Addr); err != nil {
			return nil, fmt.Errorf("%w (after %d connections)", err, i)
		}
		if every > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * every)))
		}
		if i%1000 == 999 {
			if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "\rconnected %d/%d", i+1, cfg.Clients)
			}
			if cfg.BrokerPID > 0 {
				// Without a window, wait for the broker to catch up so that
				// the point is exact; with one, at most the window is
				// outstanding, and waiting would stall the loop the rate
				// measures.
				if slots == nil {
					if err := r.settle(ctx, r.clients); err != nil {
						return nil, err
					}
				}
				if s, err := SampleProc(cfg.BrokerPID); err == nil {
					res.RSSCurve = append(res.RSSCurve, RSSPoint{Conns: i + 1, RSS: s.RSS})
				}
			}
		}
	}
	if err := r.settle(ctx, r.clients); err != nil {
		return nil, err
	}
	el := time.Since(start)
	res.Window = el
	res.ConnectRate = float64(cfg.Clients) / el.Seconds()
	res.ToolCPU = SelfCPU() - tool0
	res.ToolUsPer = float64(res.ToolCPU.Microseconds()) / float64(cfg.Clients)
	if cfg.BrokerPID > 0 {
		after, err := SampleProc(cfg.BrokerPID)
		if err != nil {
			return nil, err
		}
		res.BrokerCPU = after.CPU - before.CPU
		res.BrokerUsPer = float64(res.BrokerCPU.Microseconds()) / float64(cfg.Clients)
		// Let the broker settle, then measure its memory.
		time.Sleep(time.Second)
		if after, err = SampleProc(cfg.BrokerPID); err != nil {
			return nil, err
		}
		res.BrokerRSS, res.BrokerPeak = after.RSS, after.Peak
		res.RSSPerConn = float64(after.RSS-before.RSS) / float64(cfg.Clients)
	}
	if cfg.Disconnect {
		if err := r.disconnectAll(ctx); err != nil {
			return nil, err
		}
		if cfg.BrokerPID > 0 {
			time.Sleep(time.Second) // the broker's side of the closes, as above
			after, err := SampleProc(cfg.BrokerPID)
			if err != nil {
				return nil, err
			}
			res.RSSPerOffline = float64(after.RSS-before.RSS) / float64(cfg.Clients)
		}
	}
	for _, c := range r.clients {
		res.Errors += c.errs.Load()
		if c.refusal.Load() == 0 && !c.acked.Load() {
			res.Unanswered++
		}
	}
	r.errMu.Lock()
	for k, v := range r.refusals {
		if res.RefusedBy == nil {
			res.RefusedBy = map[string]int64{}
		}
		res.RefusedBy[k] = v
		res.Refused += v
	}
	res.FirstErrors = slices.Clone(r.errors)
	r.errMu.Unlock()
	r.histMu.Lock()
	us := time.Microsecond
	res.P50 = time.Duration(r.hist.ValueAtQuantile(50)) * us
	res.P90 = time.Duration(r.hist.ValueAtQuantile(90)) * us
	res.P99 = time.Duration(r.hist.ValueAtQuantile(99)) * us
	res.P999 = time.Duration(r.hist.ValueAtQuantile(99.9)) * us
	res.Max = time.Duration(r.hist.Max()) * us
	res.Connected = r.hist.TotalCount()
	r.histMu.Unlock()
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	return res, nil
}

// disconnectAll sends every client DISCONNECT, closes it, and waits until
// every connection is closed.
func (r *runner) disconnectAll(ctx context.Context) error {
	disc := (&codec.Disconnect{}).Append(nil, r.cfg.Version)
	r.stopping.Store(true) // the closes that follow are ours, not errors
	for _, c := range r.clients {
		if c.conn == nil || c.closed.Load() {
			continue
		}
		cl := c
		if err := cl.conn.AsyncWrite(disc, func(gnet.Conn, error) error { return cl.conn.Close() }); err != nil {
			_ = cl.conn.Close()
		}
	}
	deadline := time.Now().Add(setupTimeout)
	for _, c := range r.clients {
		for !c.closed.Load() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: not closed within %v of its DISCONNECT", c.id, setupTimeout)
			}
			time.Sleep(10 * time.Millisecond) // no signal for it but the flag
		}
	}
	return nil
}
