package server

// The admin API answers for the whole cluster from any node: the calls
// about clients, sessions, subscriptions and stats, which each node
// knows only of its own, are also asked of every linked peer over the interlink
// (recAdminReq, answered by recAdminAns), and the answers are merged:
// lists are sorted and cut again, a client that is not here is looked up
// (or disconnected) on the node that has it. A peer that does not answer
// within adminPeerWait is named in the answer's "unreachable" list
// rather than failing the call. ?scope=node asks the answering node
// alone; it is what a node sends its peers.
//
// A peer runs the request on its own routes without an API key check: it
// comes over the authenticated interlink from a node that checked the
// caller's key, and only the read and disconnect calls of peerAPIPaths
// are served this way.
//
// Request (recAdminReq):
//
//	+---------+------------+--------+--------------------+
//	| version | request id | method | path and query     |
//	| 1 byte  | uvarint    | str    | str                |
//	+---------+------------+--------+--------------------+
//
// Answer (recAdminAns):
//
//	+---------+------------+---------+------+
//	| version | request id | status  | body |
//	| 1 byte  | uvarint    | uvarint | str  |
//	+---------+------------+---------+------+

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// adminPeerWait bounds how long a call waits for its peers' answers.
const adminPeerWait = 3 * time.Second

// peerAPIPaths are the routes a peer may run here, by prefix.
var peerAPIPaths = []string{"/api/v1/clients", "/api/v1/sessions", "/api/v1/subscriptions", "/api/v1/stats"}

// adminPeers is the node's side of the API calls between nodes.
type adminPeers struct {
	// mux holds the API's routes, set by startHTTP; peers may ask
	// before (nil: they are told the call is not served).
	mux atomic.Pointer[http.ServeMux]
	mu  struct {
		sync.Mutex
		next uint64
		wait map[uint64]chan peerAnswer
	}
}

// peerAnswer is one peer's answer to a call.
type peerAnswer struct {
	node   string
	status int
	body   []byte
}

// nodeScope reports whether r asks this node alone (?scope=node), or
// there is no cluster to ask.
func (s *Server) nodeScope(r *http.Request) bool {
	return s.cl == nil || r.URL.Query().Get("scope") == "node"
}

// askPeers sends r (method, path and query, with scope=node) to every
// linked peer and returns the answers that came within adminPeerWait,
// and the peers that gave none.
func (s *Server) askPeers(r *http.Request) (answers []peerAnswer, unreachable []string) {
	q := r.URL.Query()
	q.Set("scope", "node")
	target := (&url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: q.Encode()}).RequestURI()
	ap := &s.apiPeers
	peers := s.cl.node.Peers()
	ch := make(chan peerAnswer, len(peers))
	var ids []uint64
	asked := map[string]bool{}
	for _, p := range peers {
		ap.mu.Lock()
		if ap.mu.wait == nil {
			ap.mu.wait = make(map[uint64]chan peerAnswer)
		}
		ap.mu.next++
		id := ap.mu.next
		ap.mu.wait[id] = ch
		ap.mu.Unlock()
		ids = append(ids, id)
		body := appendAdminReq(nil, id, r.Method, target)
		if !s.cl.node.Linked(p) || s.cl.node.Send(p, 0, recAdminReq, body, false) != nil {
			unreachable = append(unreachable, p)
			continue
		}
		asked[p] = true
	}
	defer func() {
		ap.mu.Lock()
		for _, id := range ids {
			delete(ap.mu.wait, id)
		}
		ap.mu.Unlock()
	}()
	timer := time.NewTimer(adminPeerWait)
	defer timer.Stop()
	for len(asked) > 0 {
		select {
		case a := <-ch:
			if asked[a.node] {
				delete(asked, a.node)
				answers = append(answers, a)
			}
		case <-timer.C:
			for p := range asked {
				unreachable = append(unreachable, p)
			}
			return answers, unreachable
		case <-r.Context().Done():
			return answers, unreachable
		}
	}
	return answers, unreachable
}

func appendAdminReq(dst []byte, id uint64, method, target string) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, id)
	dst = appendStr(dst, []byte(method))
	return appendStr(dst, []byte(target))
}

func appendAdminAns(dst []byte, id uint64, status int, body []byte) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, id)
	dst = binary.AppendUvarint(dst, uint64(status))
	return appendStr(dst, body)
}

// adminRequest runs a peer's API call here and sends the answer.
func (cl *cluster) adminRequest(peer string, body []byte) error {
	r := wireReader{b: body}
	if r.byte1("version") != wireVersion {
		return fmt.Errorf("%w: bad admin request version", errWire)
	}
	id := r.uvarint("request id")
	method := string(r.str("method"))
	target := string(r.str("target"))
	if r.err != nil {
		return r.err
	}
	allowed := method == http.MethodGet || method == http.MethodDelete
	if allowed {
		allowed = false
		for _, p := range peerAPIPaths {
			if strings.HasPrefix(target, p) {
				allowed = true
			}
		}
	}
	s := cl.s
	// The call may wait on event loops and the disk: not on the
	// goroutine that receives the peer's batches.
	go func() {
		rec := &peerRecorder{h: http.Header{}, code: http.StatusOK}
		func() {
			defer func() {
				if v := recover(); v != nil {
					s.stats.panics.Inc()
					s.log.Error("panic in an admin call from a peer", "peer", peer, "method", method, "target", target, "panic", fmt.Sprint(v))
					rec.code = http.StatusInternalServerError
					rec.buf.Reset()
					rec.buf.WriteString(`{"error":"internal error"}`)
				}
			}()
			req, err := http.NewRequestWithContext(context.Background(), method, target, nil)
			switch {
			case !allowed || err != nil || s.apiPeers.mux.Load() == nil:
				apiError(rec, http.StatusNotFound, "a peer may not call %s %s here", method, target)
			default:
				s.apiPeers.mux.Load().ServeHTTP(rec, req)
			}
		}()
		_ = cl.node.Send(peer, 0, recAdminAns, appendAdminAns(nil, id, rec.code, rec.buf.Bytes()), false)
	}()
	return nil
}

// adminAnswer hands a peer's answer to the call waiting for it, if any.
func (cl *cluster) adminAnswer(peer string, body []byte) error {
	r := wireReader{b: body}
	if r.byte1("version") != wireVersion {
		return fmt.Errorf("%w: bad admin answer version", errWire)
	}
	id := r.uvarint("request id")
	status := int(r.uvarint("status"))
	b := r.str("body")
	if r.err != nil {
		return r.err
	}
	ap := &cl.s.apiPeers
	ap.mu.Lock()
	ch := ap.mu.wait[id]
	ap.mu.Unlock()
	if ch != nil {
		select {
		case ch <- peerAnswer{node: peer, status: status, body: bytes.Clone(b)}:
		default:
		}
	}
	return nil
}

// peerRecorder is an http.ResponseWriter that keeps the answer, for a
// peer's call.
type peerRecorder struct {
	h    http.Header
	code int
	buf  bytes.Buffer
}

func (w *peerRecorder) Header() http.Header { return w.h }

func (w *peerRecorder) Write(b []byte) (int, error) { return w.buf.Write(b) }

func (w *peerRecorder) WriteHeader(code int) { w.code = code }

// withPeers adds to this node's list items those of every linked peer
// (field names the list in their answers), unless the request asks for
// this node alone, and returns the peers that did not answer.
func withPeers[T any](s *Server, r *http.Request, items []T, field string) ([]T, []string) {
	if s.nodeScope(r) {
		return items, nil
	}
	answers, unreachable := s.askPeers(r)
	return mergeList(items, answers, field), unreachable
}

// mergeList adds the items of the peers' list answers (field name in
// their JSON bodies) to local.
func mergeList[T any](local []T, answers []peerAnswer, field string) []T {
	for _, a := range answers {
		if a.status != http.StatusOK {
			continue
		}
		var body map[string]json.RawMessage
		var items []T
		if json.Unmarshal(a.body, &body) == nil && json.Unmarshal(body[field], &items) == nil {
			local = append(local, items...)
		}
	}
	return local
}
