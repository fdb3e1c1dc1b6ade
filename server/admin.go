package server

// The admin API: JSON over HTTP under /api/v1/, described by the OpenAPI
// 3 document openapi.json (served at /api/v1/openapi.json, and checked
// against these handlers by admin_test.go). Who may call what is
// guardHTTP's business (apiauth.go): GET needs a read key, the rest a
// write key.
//
// Lists are sorted by their key (client id, topic) and paginated by
// cursor: an answer that stops at limit items carries next_cursor, which
// the next request passes as cursor to go on after the last item. A
// cursor stays valid whatever is added or removed meanwhile.
//
// Every call answers for the whole cluster. Clients, sessions and
// subscriptions are each node's own: the node asked gathers its peers'
// (admincluster.go), and each item's node field names the node that has
// it. Bans and retained messages are replicated to every node, and a
// publish reaches subscribers on every node. Stats are the answering
// node's, with each peer's beside them; the drain and the reload are the
// answering node's, as their paths say.
//
// What a handler reads of a connection it reads under its session's
// mutex: the fields it shows are set before CONNECT attaches the session
// and never change after, so the mutex orders them; counters that the
// loop changes (inflight, queue) are the session's own, under that mutex
// too.

import (
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
)

//go:embed openapi.json
var openAPIDoc []byte

// Page sizes of the lists.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// maxPublishBody bounds the body of POST /api/v1/publish.
const maxPublishBody = 1 << 20

// adminRoutes serves the admin API's routes but /api/v1/cluster and
// /api/v1/node/drain (http.go, drain.go).
func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPIDoc)
	})
	mux.HandleFunc("GET /api/v1/clients", s.listClients)
	mux.HandleFunc("GET /api/v1/clients/{clientid}", s.getClient)
	mux.HandleFunc("DELETE /api/v1/clients/{clientid}", s.deleteClient)
	mux.HandleFunc("GET /api/v1/sessions", s.listSessions)
	mux.HandleFunc("GET /api/v1/subscriptions", s.listSubscriptions)
	mux.HandleFunc("GET /api/v1/retained", s.listRetained)
	mux.HandleFunc("GET /api/v1/retained/{topic...}", s.getRetained)
	mux.HandleFunc("DELETE /api/v1/retained/{topic...}", s.deleteRetained)
	mux.HandleFunc("POST /api/v1/publish", s.postPublish)
	mux.HandleFunc("GET /api/v1/stats", s.getStats)
	mux.HandleFunc("POST /api/v1/reload", s.postReload)
	s.banRoutes(mux) // bans.go
}

// nodeName is this node's name in the cluster; "" alone.
func (s *Server) nodeName() string {
	if s.cl == nil {
		return ""
	}
	return s.cl.node.Name()
}

// page is a request's pagination: at most limit items after the key in
// cursor.
type page struct {
	limit int
	after string
	set   bool // a cursor was given
}

// parsePage reads limit and cursor; on error it answers 400 and returns
// false.
func parsePage(w http.ResponseWriter, r *http.Request) (page, bool) {
	p := page{limit: defaultPageSize}
	q := r.URL.Query()
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			apiError(w, http.StatusBadRequest, "limit must be a whole number from 1 to %d, got %q", maxPageSize, v)
			return p, false
		}
		p.limit = n
	}
	if v := q.Get("cursor"); v != "" {
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil {
			apiError(w, http.StatusBadRequest, "cursor %q is not one that a list answered with", v)
			return p, false
		}
		p.after, p.set = string(b), true
	}
	return p, true
}

// cut sorts keys' items by key, keeps those after the cursor, at most
// limit, and returns them with the next cursor ("" at the end).
func cut[T any](p page, items []T, key func(*T) string) ([]T, string) {
	slices.SortFunc(items, func(a, b T) int { return strings.Compare(key(&a), key(&b)) })
	if p.set {
		i, _ := slices.BinarySearchFunc(items, p.after, func(it T, k string) int { return strings.Compare(key(&it), k) })
		for i < len(items) && key(&items[i]) <= p.after {
			i++
		}
		items = items[i:]
	}
	if len(items) <= p.limit {
		return items, ""
	}
	items = items[:p.limit]
	return items, base64.RawURLEncoding.EncodeToString([]byte(key(&items[len(items)-1])))
}

// sessionList returns the live sessions, copied from under
// Server.sessions so that each is looked at after that lock is released
// (doc.go's lock order).
func (s *Server) sessionList() []*session {
	s.sessions.Lock()
	all := make([]*session, 0, len(s.sessions.m))
	for _, sess := range s.sessions.m {
		all = append(all, sess)
	}
	s.sessions.Unlock()
	return all
}

// clientSummary is one item of GET /api/v1/clients.
type clientSummary struct {
	ClientID    string    `json:"client_id"`
	Username    string    `json:"username,omitempty"`
	IP          string    `json:"ip,omitempty"`
	Node        string    `json:"node,omitempty"`
	Protocol    string    `json:"protocol"`
	ConnectedAt time.Time `json:"connected_at"`
}

// subscriptionView is one subscription in the API.
type subscriptionView struct {
	ClientID          string `json:"client_id,omitempty"`
	Node              string `json:"node,omitempty"`
	Filter            string `json:"filter"`
	QoS               byte   `json:"qos"`
	NoLocal           bool   `json:"no_local"`
	RetainAsPublished bool   `json:"retain_as_published"`
	SubscriptionID    uint32 `json:"subscription_id,omitempty"`
}

// clientDetail is the body of GET /api/v1/clients/{clientid}: the
// client's session, and its connection when it has one here.
type clientDetail struct {
	ClientID      string             `json:"client_id"`
	Connected     bool               `json:"connected"`
	Node          string             `json:"node,omitempty"`
	Username      string             `json:"username,omitempty"`
	IP            string             `json:"ip,omitempty"`
	Address       string             `json:"address,omitempty"`
	Protocol      string             `json:"protocol,omitempty"`
	KeepAlive     int64              `json:"keepalive,omitempty"` // seconds, as the broker enforces it
	ConnectedAt   *time.Time         `json:"connected_at,omitempty"`
	SessionExpiry int64              `json:"session_expiry"` // seconds
	Inflight      int                `json:"inflight"`
	QueueLength   int                `json:"queue_length"`
	QueueBytes    int64              `json:"queue_bytes"`
	Subscriptions []subscriptionView `json:"subscriptions"`
}

// detail reads sess (and its connection, if any) for the API; ok is false
// for a session that has ended.
func (s *Server) detail(sess *session, subs bool) (d clientDetail, ok bool) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.mu.ended {
		return d, false
	}
	d = clientDetail{ClientID: sess.id, Node: s.nodeName(), SessionExpiry: int64(sess.mu.expiry / time.Second),
		Inflight: len(sess.mu.inflight), QueueLength: sess.mu.queue.len(), QueueBytes: sess.mu.queue.bytes,
		Subscriptions: []subscriptionView{}}
	if c := sess.mu.cl; c != nil {
		d.Connected = true
		d.Username, d.Address, d.Protocol = c.user(), c.remote(), c.version.String()
		if ip := c.ipAddr(); ip.IsValid() {
			d.IP = ip.String()
		}
		d.KeepAlive = int64(c.keepAlive)
		at := time.Unix(0, sess.mu.since).UTC()
		d.ConnectedAt = &at
	}
	if subs {
		for f, o := range sess.mu.subs {
			d.Subscriptions = append(d.Subscriptions, subscriptionView{Filter: f, QoS: o.QoS, NoLocal: o.NoLocal,
				RetainAsPublished: o.RetainAsPublished, SubscriptionID: o.SubID})
		}
		slices.SortFunc(d.Subscriptions, func(a, b subscriptionView) int { return strings.Compare(a.Filter, b.Filter) })
	}
	return d, true
}

// listClients answers GET /api/v1/clients: the clients connected to this
// node, filtered by client id prefix, username, IP (an address or a
// range) and node.
func (s *Server) listClients(w http.ResponseWriter, r *http.Request) {
	p, ok := parsePage(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	prefix, user, node := q.Get("prefix"), q.Get("username"), q.Get("node")
	var ipr netip.Prefix
	if v := q.Get("ip"); v != "" {
		b, err := parseBan(banRecord{CIDR: v})
		if err != nil {
			apiError(w, http.StatusBadRequest, "ip: %v", err)
			return
		}
		ipr = b.prefix
	}
	items := []clientSummary{}
	if node == "" || node == s.nodeName() {
		for _, sess := range s.sessionList() {
			if !strings.HasPrefix(sess.id, prefix) {
				continue
			}
			d, live := s.detail(sess, false)
			if !live || !d.Connected || (user != "" && d.Username != user) {
				continue
			}
			if ipr.IsValid() {
				a, err := netip.ParseAddr(d.IP)
				if err != nil || !ipr.Contains(a) {
					continue
				}
			}
			items = append(items, clientSummary{ClientID: d.ClientID, Username: d.Username, IP: d.IP, Node: d.Node,
				Protocol: d.Protocol, ConnectedAt: *d.ConnectedAt})
		}
	}
	items, unreachable := withPeers(s, r, items, "clients")
	items, next := cut(p, items, func(c *clientSummary) string { return c.ClientID })
	apiJSON(w, http.StatusOK, struct {
		Clients     []clientSummary `json:"clients"`
		NextCursor  string          `json:"next_cursor,omitempty"`
		Unreachable []string        `json:"unreachable,omitempty"`
	}{items, next, unreachable})
}

// lookupSession returns the live session of a client id, or nil.
func (s *Server) lookupSession(id string) *session {
	s.sessions.Lock()
	sess := s.sessions.m[id]
	s.sessions.Unlock()
	return sess
}

// getClient answers GET /api/v1/clients/{clientid}: 404 when no node
// has a connection or a session for it.
func (s *Server) getClient(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("clientid")
	if sess := s.lookupSession(id); sess != nil {
		if d, ok := s.detail(sess, true); ok {
			apiJSON(w, http.StatusOK, d)
			return
		}
	}
	s.notHere(w, r, id, http.StatusOK)
}

// notHere answers a call about a client this node does not know: the
// answer of the peer that knows it (with status ok), or 404.
func (s *Server) notHere(w http.ResponseWriter, r *http.Request, id string, ok int) {
	if s.nodeScope(r) {
		if s.cl != nil {
			apiError(w, http.StatusNotFound, "no client %q on node %s", id, s.nodeName())
			return
		}
		apiError(w, http.StatusNotFound, "no client %q", id)
		return
	}
	answers, unreachable := s.askPeers(r)
	for _, a := range answers {
		if a.status == ok {
			if len(a.body) > 0 {
				w.Header().Set("Content-Type", "application/json")
			}
			w.WriteHeader(ok)
			_, _ = w.Write(a.body)
			return
		}
	}
	if len(unreachable) > 0 {
		apiError(w, http.StatusNotFound, "no client %q on the nodes that answered (no answer from %s)", id, strings.Join(unreachable, ", "))
		return
	}
	apiError(w, http.StatusNotFound, "no client %q in the cluster", id)
}

// deleteClient answers DELETE /api/v1/clients/{clientid}: the connected
// client is disconnected (MQTT 5: DISCONNECT 0x98 Administrative action;
// its will stands, as for any end the server chose), and with
// ?discard_session=true its session ends too, connected or not. 204, or
// 404 when there is nothing to disconnect or discard.
func (s *Server) deleteClient(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("clientid")
	discard := false
	if v := r.URL.Query().Get("discard_session"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			apiError(w, http.StatusBadRequest, "discard_session must be true or false, got %q", v)
			return
		}
		discard = b
	}
	sess := s.lookupSession(id)
	if sess == nil {
		s.notHere(w, r, id, http.StatusNoContent)
		return
	}
	sess.mu.Lock()
	c, ended := sess.mu.cl, sess.mu.ended
	sess.mu.Unlock()
	switch {
	case ended, c == nil && !discard:
		s.notHere(w, r, id, http.StatusNoContent)
		return
	case c != nil:
		done := make(chan struct{})
		err := c.loop.el.Execute(r.Context(), runFunc(func() {
			defer close(done)
			if c.closed || !c.connected {
				return
			}
			c.logger().Info("disconnecting client", "reason", "administrative action", "discard_session", discard)
			c.kickNow(codec.AdministrativeAction) // bans.go
			if discard {
				ob := newOutbox(s, nil)
				s.endSession(ob, c.sess)
				ob.flush()
			}
		}))
		if err != nil {
			apiError(w, http.StatusServiceUnavailable, "cannot reach the client's event loop: %v", err)
			return
		}
		<-done
		if !discard {
			break
		}
		fallthrough
	default:
		// Offline, or it went offline meanwhile: ended as an expiry
		// would (ending an ended session does nothing).
		ob := newOutbox(s, nil)
		s.endSession(ob, sess)
		ob.flush()
	}
	w.WriteHeader(http.StatusNoContent)
}

// sessionSummary is one item of GET /api/v1/sessions.
type sessionSummary struct {
	ClientID      string `json:"client_id"`
	Connected     bool   `json:"connected"`
	Node          string `json:"node,omitempty"`
	SessionExpiry int64  `json:"session_expiry"`
	Subscriptions int    `json:"subscriptions"`
	Inflight      int    `json:"inflight"`
	QueueLength   int    `json:"queue_length"`
	QueueBytes    int64  `json:"queue_bytes"`
}

// listSessions answers GET /api/v1/sessions: this node's sessions,
// online and offline, filtered by client id prefix and ?connected.
func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	p, ok := parsePage(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	prefix := q.Get("prefix")
	var want *bool
	if v := q.Get("connected"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			apiError(w, http.StatusBadRequest, "connected must be true or false, got %q", v)
			return
		}
		want = &b
	}
	items := []sessionSummary{}
	for _, sess := range s.sessionList() {
		if !strings.HasPrefix(sess.id, prefix) {
			continue
		}
		sess.mu.Lock()
		it := sessionSummary{ClientID: sess.id, Connected: sess.mu.cl != nil, Node: s.nodeName(),
			SessionExpiry: int64(sess.mu.expiry / time.Second), Subscriptions: len(sess.mu.subs),
			Inflight: len(sess.mu.inflight), QueueLength: sess.mu.queue.len(), QueueBytes: sess.mu.queue.bytes}
		ended := sess.mu.ended
		sess.mu.Unlock()
		if ended || (want != nil && *want != it.Connected) {
			continue
		}
		items = append(items, it)
	}
	items, unreachable := withPeers(s, r, items, "sessions")
	items, next := cut(p, items, func(s *sessionSummary) string { return s.ClientID })
	apiJSON(w, http.StatusOK, struct {
		Sessions    []sessionSummary `json:"sessions"`
		NextCursor  string           `json:"next_cursor,omitempty"`
		Unreachable []string         `json:"unreachable,omitempty"`
	}{items, next, unreachable})
}

// listSubscriptions answers GET /api/v1/subscriptions: this node's
// subscriptions, by client id and by filter (exactly as subscribed).
func (s *Server) listSubscriptions(w http.ResponseWriter, r *http.Request) {
	p, ok := parsePage(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	id, filter := q.Get("client_id"), q.Get("filter")
	var list []*session
	if id != "" {
		if sess := s.lookupSession(id); sess != nil {
			list = []*session{sess}
		}
	} else {
		list = s.sessionList()
	}
	items := []subscriptionView{}
	for _, sess := range list {
		sess.mu.Lock()
		if !sess.mu.ended {
			for f, o := range sess.mu.subs {
				if filter == "" || f == filter {
					items = append(items, subscriptionView{ClientID: sess.id, Node: s.nodeName(), Filter: f, QoS: o.QoS, NoLocal: o.NoLocal,
						RetainAsPublished: o.RetainAsPublished, SubscriptionID: o.SubID})
				}
			}
		}
		sess.mu.Unlock()
	}
	// The key holds both parts, split by a byte neither can contain
	// (MQTT strings are UTF-8 without U+0000).
	items, unreachable := withPeers(s, r, items, "subscriptions")
	items, next := cut(p, items, func(v *subscriptionView) string { return v.ClientID + "\x00" + v.Filter })
	apiJSON(w, http.StatusOK, struct {
		Subscriptions []subscriptionView `json:"subscriptions"`
		NextCursor    string             `json:"next_cursor,omitempty"`
		Unreachable   []string           `json:"unreachable,omitempty"`
	}{items, next, unreachable})
}

// retainedView is one retained message in the API. The payload is shown
// as text when it is UTF-8, else in base64 (payload_encoding says which).
type retainedView struct {
	Topic           string          `json:"topic"`
	Payload         string          `json:"payload"`
	PayloadEncoding string          `json:"payload_encoding"`
	QoS             byte            `json:"qos"`
	Properties      *propertiesView `json:"properties,omitempty"`
}

// propertiesView are the MQTT 5 properties that travel with a message.
type propertiesView struct {
	PayloadFormatIndicator *byte          `json:"payload_format_indicator,omitempty"`
	MessageExpiryInterval  *uint32        `json:"message_expiry_interval,omitempty"`
	ContentType            string         `json:"content_type,omitempty"`
	ResponseTopic          string         `json:"response_topic,omitempty"`
	CorrelationData        string         `json:"correlation_data,omitempty"` // base64
	UserProperties         []userProperty `json:"user_properties,omitempty"`
}

type userProperty struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

func (s *Server) retainedView(m *message) retainedView {
	v := retainedView{Topic: string(m.topic), QoS: m.qos, Payload: string(m.payload), PayloadEncoding: "utf-8"}
	if !utf8.Valid(m.payload) {
		v.Payload, v.PayloadEncoding = base64.StdEncoding.EncodeToString(m.payload), "base64"
	}
	pr := m.prop()
	var pv propertiesView
	set := false
	if pr.Has(codec.PropPayloadFormat) {
		f := pr.PayloadFormat
		pv.PayloadFormatIndicator, set = &f, true
	}
	if m.expiresAt != 0 {
		left := uint32(max(0, (m.expiresAt-s.now()+int64(time.Second)-1)/int64(time.Second)))
		pv.MessageExpiryInterval, set = &left, true
	}
	if pr.Has(codec.PropContentType) {
		pv.ContentType, set = string(pr.ContentType), true
	}
	if pr.Has(codec.PropResponseTopic) {
		pv.ResponseTopic, set = string(pr.ResponseTopic), true
	}
	if pr.Has(codec.PropCorrelationData) {
		pv.CorrelationData, set = base64.StdEncoding.EncodeToString(pr.CorrelationData), true
	}
	for _, u := range pr.User {
		pv.UserProperties, set = append(pv.UserProperties, userProperty{string(u.Key), string(u.Value)}), true
	}
	if set {
		v.Properties = &pv
	}
	return v
}

// listRetained answers GET /api/v1/retained: the retained messages
// whose topics match ?filter (default "#", which like any leading
// wildcard leaves out $ topics).
func (s *Server) listRetained(w http.ResponseWriter, r *http.Request) {
	p, ok := parsePage(w, r)
	if !ok {
		return
	}
	filter := r.URL.Query().Get("filter")
	if filter == "" {
		filter = "#"
	}
	if err := codec.ValidateTopicFilter([]byte(filter)); err != nil {
		apiError(w, http.StatusBadRequest, "filter %q is not a valid topic filter: %v", filter, err)
		return
	}
	now := s.now()
	items := []retainedView{}
	for _, m := range s.retained.match(nil, []byte(filter)) {
		if !m.expired(now) {
			items = append(items, s.retainedView(m))
		}
	}
	items, next := cut(p, items, func(v *retainedView) string { return v.Topic })
	apiJSON(w, http.StatusOK, struct {
		Retained   []retainedView `json:"retained"`
		NextCursor string         `json:"next_cursor,omitempty"`
	}{items, next})
}

// retainedTopic reads the topic of /api/v1/retained/{topic...}: the rest
// of the path, unescaped (%2F is a '/' like any other), which must be a
// topic name.
func retainedTopic(w http.ResponseWriter, r *http.Request) (string, bool) {
	t := r.PathValue("topic")
	if err := codec.ValidateTopicName([]byte(t)); err != nil {
		apiError(w, http.StatusBadRequest, "%q is not a valid topic name: %v", t, err)
		return "", false
	}
	return t, true
}

// getRetained answers GET /api/v1/retained/{topic...}.
func (s *Server) getRetained(w http.ResponseWriter, r *http.Request) {
	t, ok := retainedTopic(w, r)
	if !ok {
		return
	}
	m := s.retained.get([]byte(t))
	if m == nil || m.expired(s.now()) {
		apiError(w, http.StatusNotFound, "no retained message on topic %q", t)
		return
	}
	apiJSON(w, http.StatusOK, s.retainedView(m))
}

// deleteRetained answers DELETE /api/v1/retained/{topic...}: the topic's
// retained message is cleared as an empty retained publish would, on
// every node; 204, or 404 when the topic has none.
func (s *Server) deleteRetained(w http.ResponseWriter, r *http.Request) {
	t, ok := retainedTopic(w, r)
	if !ok {
		return
	}
	if s.retained.get([]byte(t)) == nil {
		apiError(w, http.StatusNotFound, "no retained message on topic %q", t)
		return
	}
	ob := newOutbox(s, nil)
	s.setRetained(ob, &message{topic: []byte(t), retain: true})
	done := make(chan error, 1)
	ob.after = func(err error) { done <- err }
	ob.flush()
	if err := <-done; err != nil {
		apiError(w, http.StatusServiceUnavailable, "the retained message is cleared but the store cannot keep that across a restart: %v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// publishRequest is the body of POST /api/v1/publish.
type publishRequest struct {
	Topic           string          `json:"topic"`
	Payload         string          `json:"payload"`
	PayloadEncoding string          `json:"payload_encoding"` // "utf-8" (default) or "base64"
	QoS             byte            `json:"qos"`
	Retain          bool            `json:"retain"`
	Properties      *propertiesView `json:"properties"`
}

// postPublish answers POST /api/v1/publish: the message is routed as a
// client's publish would be (retained, delivered here and forwarded to
// peers) and the answer comes once what it stored is on disk: 200 with
// the number of receivers (a peer counts as one).
func (s *Server) postPublish(w http.ResponseWriter, r *http.Request) {
	var req publishRequest
	if !decodeBody(w, r, maxPublishBody, &req) {
		return
	}
	var p codec.Publish
	p.Topic, p.QoS, p.Retain = []byte(req.Topic), req.QoS, req.Retain
	if why := s.topicOverLimit(p.Topic); why != "" {
		apiError(w, http.StatusBadRequest, "topic %s", why)
		return
	}
	if err := codec.ValidateTopicName(p.Topic); err != nil {
		apiError(w, http.StatusBadRequest, "%q is not a valid topic name: %v", req.Topic, err)
		return
	}
	if req.QoS > 2 {
		apiError(w, http.StatusBadRequest, "qos must be 0, 1 or 2, got %d", req.QoS)
		return
	}
	switch req.PayloadEncoding {
	case "", "utf-8":
		p.Payload = []byte(req.Payload)
	case "base64":
		b, err := base64.StdEncoding.DecodeString(req.Payload)
		if err != nil {
			apiError(w, http.StatusBadRequest, "payload is not base64 as payload_encoding says: %v", err)
			return
		}
		p.Payload = b
	default:
		apiError(w, http.StatusBadRequest, "payload_encoding must be \"utf-8\" or \"base64\", got %q", req.PayloadEncoding)
		return
	}
	if max := s.cfg.MaxPacketSize; max > 0 && len(p.Payload)+len(p.Topic) > max {
		apiError(w, http.StatusBadRequest, "the message is larger than --max-packet-size (%d bytes)", max)
		return
	}
	if pv := req.Properties; pv != nil {
		pr := &p.Props
		if f := pv.PayloadFormatIndicator; f != nil {
			if *f > 1 {
				apiError(w, http.StatusBadRequest, "payload_format_indicator must be 0 or 1, got %d", *f)
				return
			}
			if *f == 1 && !utf8.Valid(p.Payload) {
				apiError(w, http.StatusBadRequest, "the payload is not UTF-8 as payload_format_indicator 1 says")
				return
			}
			pr.PayloadFormat = *f
			pr.Set(codec.PropPayloadFormat)
		}
		if e := pv.MessageExpiryInterval; e != nil {
			pr.MessageExpiry = *e
			pr.Set(codec.PropMessageExpiry)
		}
		if pv.ContentType != "" {
			pr.ContentType = []byte(pv.ContentType)
			pr.Set(codec.PropContentType)
		}
		if pv.ResponseTopic != "" {
			if err := codec.ValidateTopicName([]byte(pv.ResponseTopic)); err != nil {
				apiError(w, http.StatusBadRequest, "response_topic %q is not a valid topic name: %v", pv.ResponseTopic, err)
				return
			}
			pr.ResponseTopic = []byte(pv.ResponseTopic)
			pr.Set(codec.PropResponseTopic)
		}
		if pv.CorrelationData != "" {
			b, err := base64.StdEncoding.DecodeString(pv.CorrelationData)
			if err != nil {
				apiError(w, http.StatusBadRequest, "correlation_data must be base64: %v", err)
				return
			}
			pr.CorrelationData = b
			pr.Set(codec.PropCorrelationData)
		}
		for _, u := range pv.UserProperties {
			pr.User = append(pr.User, codec.UserProperty{Key: []byte(u.Key), Value: []byte(u.Value)})
		}
	}
	m := newMessage(&p, "", s.now())
	ob := newOutbox(s, nil)
	n, queued := s.publishOrRefuse(ob, m)
	if n == 0 {
		s.stats.noSubscribers.Inc()
	}
	s.stats.msgsIn.Inc()
	done := make(chan error, 1)
	ob.after = func(err error) { done <- err }
	ob.flush()
	if err := <-done; err != nil {
		apiError(w, http.StatusServiceUnavailable, "the message was delivered to connected clients but the store cannot keep it: %v", err)
		return
	}
	if !queued {
		apiError(w, http.StatusServiceUnavailable, "the message could not be queued for every peer with subscribers (a link is behind): publish it again")
		return
	}
	apiJSON(w, http.StatusOK, struct {
		Receivers int `json:"receivers"`
	}{n})
}

// adminStats is the body of GET /api/v1/stats: a node's counters.
type adminStats struct {
	Node             string `json:"node,omitempty"`
	UptimeSeconds    int64  `json:"uptime_seconds"`
	Connections      int64  `json:"connections"`
	Clients          int64  `json:"clients"`
	Sessions         int    `json:"sessions"`
	Subscriptions    int    `json:"subscriptions"`
	Retained         int    `json:"retained"`
	MessagesIn       uint64 `json:"messages_in"`
	MessagesOut      uint64 `json:"messages_out"`
	BytesIn          uint64 `json:"bytes_in"`
	BytesOut         uint64 `json:"bytes_out"`
	MessagesDropped  uint64 `json:"messages_dropped"`
	QueuedBytes      int64  `json:"queued_bytes"`
	Bans             int    `json:"bans"`
	Draining         bool   `json:"draining"`
	ForwardedToPeers uint64 `json:"forwarded_to_peers"`
	FromPeers        uint64 `json:"forwarded_from_peers"`
	// Peers are the other nodes' stats, and Unreachable the peers that
	// gave none in time; both only in the whole cluster's answer.
	Peers       []adminStats `json:"peers,omitempty"`
	Unreachable []string     `json:"unreachable,omitempty"`
}

// getStats answers GET /api/v1/stats: this node's counters, with its
// peers' unless ?scope=node.
func (s *Server) getStats(w http.ResponseWriter, r *http.Request) {
	st := s.adminStats()
	if !s.nodeScope(r) {
		answers, unreachable := s.askPeers(r)
		for _, a := range answers {
			var ps adminStats
			if a.status == http.StatusOK && json.Unmarshal(a.body, &ps) == nil {
				st.Peers = append(st.Peers, ps)
			}
		}
		slices.SortFunc(st.Peers, func(a, b adminStats) int { return strings.Compare(a.Node, b.Node) })
		st.Unreachable = unreachable
	}
	apiJSON(w, http.StatusOK, st)
}

func (s *Server) adminStats() adminStats {
	st := s.stats
	s.sessions.Lock()
	sessions := len(s.sessions.m)
	s.sessions.Unlock()
	subs := 0
	s.subs.Walk(func(string, *session, fanout.Options) bool { subs++; return true })
	return adminStats{Node: s.nodeName(), UptimeSeconds: int64(time.Since(s.started) / time.Second),
		Connections: st.connections.Load(), Clients: st.clients.Load(), Sessions: sessions, Subscriptions: subs,
		Retained: s.retained.len(), MessagesIn: st.msgsIn.Get(), MessagesOut: st.msgsOut.Get(),
		BytesIn: st.bytesIn.Get(), BytesOut: st.bytesOut.Get(), MessagesDropped: st.dropped(),
		QueuedBytes: s.queuedBytes.Load(), Bans: len(s.bans.list()), Draining: s.drain.active.Load(),
		ForwardedToPeers: st.forwardedOut.Get(), FromPeers: st.forwardedIn.Get()}
}

// postReload answers POST /api/v1/reload: the configuration is reloaded
// as on SIGHUP (Config.Reload). 200 when everything took effect; 422
// with the reason when something did not (what did stays); 501 when the
// broker was started without a way to reload.
func (s *Server) postReload(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Reload == nil {
		apiError(w, http.StatusNotImplemented, "this broker was started without a configuration to reload")
		return
	}
	if err := s.cfg.Reload(); err != nil {
		apiError(w, http.StatusUnprocessableEntity, "%v", err)
		return
	}
	apiJSON(w, http.StatusOK, struct {
		Reloaded bool `json:"reloaded"`
	}{true})
}
