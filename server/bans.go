package server

// Banned clients: an operator bans a client id, a username or an address
// range (POST /api/v1/bans), for a while or until the ban is lifted
// (DELETE /api/v1/bans/{id}).
//
//   - A CONNECT that a ban matches is refused: MQTT 5 with CONNACK 0x8A
//     Banned, MQTT 3 with return code 5 (not authorized), and counted in
//     gannet_connections_refused_total{reason="banned"}. The check runs
//     before authentication, on the client id and username the CONNECT
//     claims and on the address the connection comes from, so a banned
//     client costs no call to an auth backend.
//   - A connected client that a new ban matches is disconnected: MQTT 5
//     with DISCONNECT 0x98 Administrative action. As for any end the
//     server chose, its will stands and its session stays.
//   - Bans are kept in the store (Meta keys under banPrefix), so they
//     survive restarts, and sent to every peer (recBan), so a ban made on
//     one node holds on all. Each version of a ban carries a stamp
//     (Server.stamp); the newest wins, and a lifted ban is kept as a
//     tombstone until it would have expired (or banTombLife for one
//     without expiry) so that a peer's older copy does not bring it back.
//     A peer that links sends every ban and tombstone it has (PeerUp).

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"

	"github.com/gannetmq/gannet/codec"
)

// banPrefix starts the store's Meta keys of bans.
const banPrefix = "ban/"

// banTombLife is how long a lifted ban without expiry is remembered, so
// that a peer that was away when it was lifted does not bring it back.
const banTombLife = 7 * 24 * time.Hour

// maxBanBody bounds the body of POST /api/v1/bans.
const maxBanBody = 64 << 10

// banRecord is one version of a ban: its JSON form in the API, in the
// store and between nodes. Exactly one of ClientID, Username and CIDR is
// set.
type banRecord struct {
	ID       string     `json:"id"`
	ClientID string     `json:"client_id,omitempty"`
	Username string     `json:"username,omitempty"`
	CIDR     string     `json:"cidr,omitempty"`
	Reason   string     `json:"reason,omitempty"`
	Created  time.Time  `json:"created"`
	Expires  *time.Time `json:"expires,omitempty"`
	// Stamp orders versions across the cluster; Lifted marks a
	// tombstone. Neither is shown by the API.
	Stamp  int64 `json:"stamp,omitempty"`
	Lifted bool  `json:"lifted,omitempty"`
}

// banView is a ban as the API shows it.
type banView struct {
	ID       string     `json:"id"`
	ClientID string     `json:"client_id,omitempty"`
	Username string     `json:"username,omitempty"`
	CIDR     string     `json:"cidr,omitempty"`
	Reason   string     `json:"reason,omitempty"`
	Created  time.Time  `json:"created"`
	Expires  *time.Time `json:"expires,omitempty"`
}

func (r *banRecord) view() banView {
	return banView{ID: r.ID, ClientID: r.ClientID, Username: r.Username, CIDR: r.CIDR, Reason: r.Reason,
		Created: r.Created, Expires: r.Expires}
}

// ban is a banRecord with its range parsed.
type ban struct {
	banRecord
	prefix netip.Prefix // valid for a CIDR ban
}

// expired reports whether the ban has run out at now.
func (b *ban) expired(now time.Time) bool {
	return b.Expires != nil && !now.Before(*b.Expires)
}

// gone reports whether nothing needs b any more: an expired ban, or a
// tombstone past its life.
func (b *ban) gone(now time.Time) bool {
	if !b.Lifted {
		return b.expired(now)
	}
	if b.Expires != nil {
		return !now.Before(*b.Expires)
	}
	return now.Sub(time.Unix(0, b.Stamp)) > banTombLife
}

// matches reports whether b bans a client with this id, username and
// address.
func (b *ban) matches(id, user string, ip netip.Addr) bool {
	switch {
	case b.ClientID != "":
		return b.ClientID == id
	case b.Username != "":
		return b.Username == user
	case b.prefix.IsValid():
		return ip.IsValid() && b.prefix.Contains(ip.Unmap())
	}
	return false
}

// banList holds the node's bans and tombstones by id.
type banList struct {
	// active counts the bans in force (not lifted), so that CONNECT skips
	// the lock when there are none.
	active  atomic.Int64
	refused *metrics.Counter
	// write serialises changes, so that the store gets each ban's
	// versions in the order they took effect. It is held while the store
	// commits one (nothing else waits on it) and taken before mu.
	write sync.Mutex
	// purged is when setBan last purged the list (under write).
	purged time.Time
	mu     struct {
		sync.RWMutex
		m map[string]*ban
		// The bans in force by what they match, so that a CONNECT
		// looks up its own client id and username rather than every
		// ban (flapping detection can make many): client id and
		// username bans by the name, address ranges by ban id.
		byClient map[string][]*ban
		byUser   map[string][]*ban
		byCIDR   map[string]*ban
	}
}

// init readies the list, its counter in set, for New.
func (bl *banList) init(set *metrics.Set) {
	bl.mu.m = make(map[string]*ban)
	bl.mu.byClient = make(map[string][]*ban)
	bl.mu.byUser = make(map[string][]*ban)
	bl.mu.byCIDR = make(map[string]*ban)
	bl.refused = set.NewCounter(`gannet_connections_refused_total{reason="banned"}`)
}

// parseBan checks r and parses its range.
func parseBan(r banRecord) (*ban, error) {
	n := 0
	for _, v := range []string{r.ClientID, r.Username, r.CIDR} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("a ban names exactly one of client_id, username and cidr")
	}
	b := &ban{banRecord: r}
	if r.CIDR != "" {
		p, err := netip.ParsePrefix(r.CIDR)
		if err != nil {
			a, aerr := netip.ParseAddr(r.CIDR)
			if aerr != nil {
				return nil, fmt.Errorf("cidr %q is neither an address nor a range such as 10.0.0.0/8", r.CIDR)
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		b.prefix = p.Masked()
		b.CIDR = b.prefix.String()
	}
	return b, nil
}

// apply stores b unless the list holds a version of its id at least as
// new; it reports whether b took effect.
func (bl *banList) apply(b *ban) bool {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	old := bl.mu.m[b.ID]
	if old != nil && old.Stamp >= b.Stamp {
		return false
	}
	if old != nil && !old.Lifted {
		bl.active.Add(-1)
		bl.unindexLocked(old)
	}
	if !b.Lifted {
		bl.active.Add(1)
		bl.indexLocked(b)
	}
	bl.mu.m[b.ID] = b
	return true
}

// byName returns the index of b's kind and b's key in it, or nil for an
// address range (bl.mu.byCIDR).
func (bl *banList) byName(b *ban) (map[string][]*ban, string) {
	switch {
	case b.ClientID != "":
		return bl.mu.byClient, b.ClientID
	case b.Username != "":
		return bl.mu.byUser, b.Username
	}
	return nil, ""
}

// indexLocked adds b, a ban in force, to the index of what it matches.
// REQUIRES: bl.mu held for writing.
func (bl *banList) indexLocked(b *ban) {
	if idx, key := bl.byName(b); idx != nil {
		idx[key] = append(idx[key], b)
	} else {
		bl.mu.byCIDR[b.ID] = b
	}
}

// unindexLocked takes b out of the index.
// REQUIRES: bl.mu held for writing.
func (bl *banList) unindexLocked(b *ban) {
	idx, key := bl.byName(b)
	if idx == nil {
		delete(bl.mu.byCIDR, b.ID)
		return
	}
	if l := slices.DeleteFunc(idx[key], func(x *ban) bool { return x == b }); len(l) > 0 {
		idx[key] = l
	} else {
		delete(idx, key)
	}
}

// check returns the ban in force that matches a client, or nil.
func (bl *banList) check(id, user string, ip netip.Addr) *ban {
	if bl.active.Load() == 0 {
		return nil
	}
	now := time.Now()
	bl.mu.RLock()
	defer bl.mu.RUnlock()
	for _, b := range bl.mu.byClient[id] {
		if !b.expired(now) {
			return b
		}
	}
	if user != "" {
		for _, b := range bl.mu.byUser[user] {
			if !b.expired(now) {
				return b
			}
		}
	}
	for _, b := range bl.mu.byCIDR {
		if !b.expired(now) && b.matches(id, user, ip) {
			return b
		}
	}
	return nil
}

// list returns the bans in force, oldest first.
func (bl *banList) list() []banView {
	now := time.Now()
	bl.mu.RLock()
	out := make([]banView, 0, len(bl.mu.m))
	for _, b := range bl.mu.m {
		if !b.Lifted && !b.expired(now) {
			out = append(out, b.view())
		}
	}
	bl.mu.RUnlock()
	slices.SortFunc(out, func(a, b banView) int {
		return cmp.Or(a.Created.Compare(b.Created), strings.Compare(a.ID, b.ID))
	})
	return out
}

// all returns every ban and tombstone, for a peer that links.
func (bl *banList) all() []banRecord {
	bl.mu.RLock()
	defer bl.mu.RUnlock()
	out := make([]banRecord, 0, len(bl.mu.m))
	for _, b := range bl.mu.m {
		out = append(out, b.banRecord)
	}
	return out
}

// purge forgets the bans and tombstones nothing needs any more and
// returns their ids, for the store.
func (bl *banList) purge(now time.Time) []string {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	var ids []string
	for id, b := range bl.mu.m {
		if b.gone(now) {
			if !b.Lifted {
				bl.active.Add(-1)
				bl.unindexLocked(b)
			}
			delete(bl.mu.m, id)
			ids = append(ids, id)
		}
	}
	return ids
}

// restoreBan loads a ban kept in the store; it reports whether key was a
// ban's.
func (s *Server) restoreBan(key string, val []byte) bool {
	if !strings.HasPrefix(key, banPrefix) {
		return false
	}
	var r banRecord
	b, err := (*ban)(nil), json.Unmarshal(val, &r)
	if err == nil {
		b, err = parseBan(r)
	}
	if err != nil {
		s.log.Warn("ignoring a stored ban that does not parse", "key", key, "err", err)
		return true
	}
	s.observe(b.Stamp)
	s.bans.apply(b)
	return true
}

// setBan applies a new version of a ban made here or by a peer: it is
// kept in the store and, when it was made here (from == ""), sent to
// every peer. A ban in force disconnects the connected clients it
// matches. It returns once the store has the ban (or could not take it).
func (s *Server) setBan(b *ban, from string) error {
	s.bans.write.Lock()
	defer s.bans.write.Unlock()
	if !s.bans.apply(b) {
		return nil
	}
	if from == "" && s.cl != nil {
		s.cl.broadcast(recBan, appendBan(nil, b.banRecord))
	}
	if !b.Lifted {
		s.kickBanned(b)
	}
	if s.store == nil {
		return nil
	}
	ob := newOutbox(s, nil)
	if now := time.Now(); now.Sub(s.bans.purged) >= time.Second {
		// At most once a second: a purge looks at every ban, and
		// flapping detection can make bans many a second.
		s.bans.purged = now
		for _, id := range s.bans.purge(now) {
			if id != b.ID {
				ob.batch.DeleteMeta(banPrefix + id)
			}
		}
	}
	if b.gone(time.Now()) {
		ob.batch.DeleteMeta(banPrefix + b.ID)
	} else {
		val, _ := json.Marshal(b.banRecord)
		ob.batch.PutMeta(banPrefix+b.ID, val)
	}
	done := make(chan error, 1)
	ob.after = func(err error) { done <- err }
	ob.flush()
	return <-done
}

// receiveBan applies a ban a peer sent (recBan).
func (cl *cluster) receiveBan(peer string, body []byte) error {
	if len(body) < 1 || body[0] != wireVersion {
		return fmt.Errorf("%w: bad ban version", errWire)
	}
	var r banRecord
	if err := json.Unmarshal(body[1:], &r); err != nil {
		return fmt.Errorf("%w: bad ban: %v", errWire, err)
	}
	b, err := parseBan(r)
	if err != nil {
		return err
	}
	cl.s.observe(b.Stamp)
	// Storing the ban waits for the disk: not on the goroutine that
	// receives the peer's batches.
	go func() {
		if err := cl.s.setBan(b, peer); err != nil {
			cl.s.log.Warn("cannot keep a peer's ban in the store", "peer", peer, "ban", b.ID, "err", err)
		}
	}()
	return nil
}

// appendBan appends a ban's body between nodes: the wire version, then
// the ban's JSON form (small, rare and easier to extend than a binary
// one).
func appendBan(dst []byte, r banRecord) []byte {
	v, _ := json.Marshal(r)
	return append(append(dst, wireVersion), v...)
}

// sendBans sends a peer that linked every ban and tombstone (PeerUp).
func (cl *cluster) sendBans(peer string) {
	var body []byte
	for _, r := range cl.s.bans.all() {
		body = appendBan(body[:0], r)
		_ = cl.node.Send(peer, 0, recBan, body, false)
	}
}

// kickBanned disconnects the connected clients that b matches, each on
// its loop.
func (s *Server) kickBanned(b *ban) {
	s.onLoops(func(l *loop) {
		for _, c := range l.conns {
			if !c.connected || c.closed || !b.matches(c.id, c.user(), c.ipAddr()) {
				continue
			}
			c.logger().Info("disconnecting client", "reason", "banned", "ban", b.ID)
			c.kickNow(codec.AdministrativeAction)
		}
	})
}

// onLoops runs fn on every event loop and returns when all have run it.
func (s *Server) onLoops(fn func(l *loop)) {
	var wg sync.WaitGroup
	for _, l := range s.loopList() {
		wg.Add(1)
		err := l.el.Execute(context.Background(), runFunc(func() {
			defer wg.Done()
			fn(l)
		}))
		if err != nil {
			wg.Done()
		}
	}
	wg.Wait()
}

// kickNow disconnects c, on its loop: a v5 client gets DISCONNECT with
// code first [MQTT-3.1.4-3].
func (c *client) kickNow(code codec.ReasonCode) {
	if c.closed {
		return
	}
	c.loop.takeInbox(monotime(), nil) // what other loops left for c goes first
	if c.closed {
		return
	}
	if c.version == codec.V5 {
		c.pend = append(c.pend, (&codec.Disconnect{Code: code}).Append(nil, codec.V5))
		c.dirty = true
	}
	c.close()
}

// refuseBanned answers a CONNECT that a ban matches and ends the
// connection.
func (c *client) refuseBanned(ob *outbox, b *ban) error {
	c.srv.bans.refused.Inc()
	c.logger().Info("refusing connection", "reason", "banned", "ban", b.ID)
	code := codec.V3NotAuthorized
	if c.version == codec.V5 {
		code = codec.Banned
	}
	c.writeNow(ob, (&codec.Connack{Code: code}).Append(nil, c.version))
	return errClose
}

// bannedLate refuses a CONNECT that a ban made while it was being
// settled (authenticated, or its session fetched from peers) matches, or,
// with counted, one whose client id is flapping (flapping.go: counted
// here, once the client has authenticated, so that no one can get
// another's client id banned without its credentials), and reports
// whether it did. A ban takes effect before the loops are
// searched for the clients it matches (setBan), so a CONNECT finishing
// on a loop either is refused here or is connected when that loop is
// searched.
func (c *client) bannedLate(ob *outbox, counted bool) bool {
	b := c.srv.bans.check(c.id, c.user(), c.ipAddr())
	if b == nil && counted {
		b = c.srv.flapping(c.id)
	}
	if b == nil {
		return false
	}
	c.srv.bans.refused.Inc()
	c.logger().Info("refusing connection", "reason", "banned", "ban", b.ID)
	c.refuseConnect(ob, codec.Banned, codec.V3NotAuthorized, "")
	return true
}

// banRoutes serves /api/v1/bans.
func (s *Server) banRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/bans", func(w http.ResponseWriter, _ *http.Request) {
		apiJSON(w, http.StatusOK, struct {
			Bans []banView `json:"bans"`
		}{s.bans.list()})
	})
	mux.HandleFunc("POST /api/v1/bans", s.postBan)
	mux.HandleFunc("DELETE /api/v1/bans/{id}", s.deleteBan)
}

// postBan bans a client id, a username or an address range: {"client_id"
// | "username" | "cidr": ..., "reason": ..., "expires_in": "1h" |
// "expires": "2030-01-01T00:00:00Z"}; 201 with the ban.
func (s *Server) postBan(w http.ResponseWriter, r *http.Request) {
	var body struct {
		ClientID  string     `json:"client_id"`
		Username  string     `json:"username"`
		CIDR      string     `json:"cidr"`
		Reason    string     `json:"reason"`
		ExpiresIn string     `json:"expires_in"`
		Expires   *time.Time `json:"expires"`
	}
	if !decodeBody(w, r, maxBanBody, &body) {
		return
	}
	for _, v := range []string{body.ClientID, body.Username, body.Reason} {
		if len(v) > 65535 || !utf8.ValidString(v) {
			apiError(w, http.StatusBadRequest, "client_id, username and reason must be UTF-8, at most 65535 bytes")
			return
		}
	}
	now := time.Now().UTC()
	rec := banRecord{ID: newBanID(), ClientID: body.ClientID, Username: body.Username, CIDR: body.CIDR,
		Reason: body.Reason, Created: now.Truncate(time.Millisecond)}
	switch {
	case body.ExpiresIn != "" && body.Expires != nil:
		apiError(w, http.StatusBadRequest, "give expires_in or expires, not both")
		return
	case body.ExpiresIn != "":
		d, err := time.ParseDuration(body.ExpiresIn)
		if err != nil || d <= 0 {
			apiError(w, http.StatusBadRequest, "expires_in must be a positive duration such as \"1h\", got %q", body.ExpiresIn)
			return
		}
		e := now.Add(d).Truncate(time.Millisecond)
		rec.Expires = &e
	case body.Expires != nil:
		if !body.Expires.After(now) {
			apiError(w, http.StatusBadRequest, "expires must be in the future, got %s", body.Expires.Format(time.RFC3339))
			return
		}
		e := body.Expires.UTC()
		rec.Expires = &e
	}
	b, err := parseBan(rec)
	if err != nil {
		apiError(w, http.StatusBadRequest, "%v", err)
		return
	}
	b.Stamp = s.stamp()
	if err := s.setBan(b, ""); err != nil {
		// In force on this node and sent to peers, but not kept.
		apiError(w, http.StatusServiceUnavailable, "the ban is in force but the store cannot keep it across a restart: %v", err)
		return
	}
	apiJSON(w, http.StatusCreated, b.view())
}

// deleteBan lifts a ban: 204, or 404 when no ban has that id.
func (s *Server) deleteBan(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.bans.mu.RLock()
	old := s.bans.mu.m[id]
	s.bans.mu.RUnlock()
	if old == nil || old.Lifted || old.expired(time.Now()) {
		apiError(w, http.StatusNotFound, "no ban with id %q", id)
		return
	}
	b := &ban{banRecord: old.banRecord, prefix: old.prefix}
	b.Lifted, b.Stamp = true, s.stamp()
	if err := s.setBan(b, ""); err != nil {
		apiError(w, http.StatusServiceUnavailable, "the ban is lifted but the store cannot keep that across a restart: %v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// newBanID makes a ban's id, unique across the cluster.
func newBanID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// decodeBody decodes r's JSON body into v, refusing unknown fields, more
// than one value and more than limit bytes; on error it answers 400 and
// returns false.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			apiError(w, http.StatusBadRequest, "bad JSON body: empty")
		} else {
			apiError(w, http.StatusBadRequest, "bad JSON body: %v", err)
		}
		return false
	}
	if dec.More() {
		apiError(w, http.StatusBadRequest, "bad JSON body: more than one value")
		return false
	}
	return true
}
