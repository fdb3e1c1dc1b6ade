package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"

	"github.com/gannetmq/gannet/codec"
)

// The bodies the broker sends to its peers inside interlink frames. The
// interlink carries them as opaque bytes; they are ours, so this file is
// their definition. Every body starts with a version byte.
//
// Forwarded message (recForward):
//
//	+---------+-------+------------------+------------------+-------------------+
//	| version | flags | groups           | skip (bit 1)     | message           |
//	| 1 byte  | 1     | uvarint n, n str | uvarint n, n str | see appendMessage |
//	+---------+-------+------------------+------------------+-------------------+
//	flags: bit 0 plain (deliver to plain subscriptions), bit 1 a skip
//	list follows the groups, others zero.
//	groups: the shared groups ("$share/<name>/<filter>") this node picked
//	the receiver for.
//	skip: client ids whose plain subscriptions do not take the message:
//	their live sessions are the sender's (away.go); at most maxSkip.
//
// Message:
//
//	+-------+---------+-----------+----------+------+-------+---------+---------+
//	| bits  | origin  | routed    | expiry   | from | topic | props   | payload |
//	| 1     | u64 BE? | uvarint?  | uvarint? | str  | str   | (below) | str     |
//	+-------+---------+-----------+----------+------+-------+---------+---------+
//	bits: qos (bits 0-1), retain (2), has expiry (3), has origin (4, see
//	origin.go), has routed (5: QoS 1/2 only, to peers that read it,
//	features.go). The expiry is the milliseconds left when sent, so that
//	peers' clocks need not agree; routed is when the message was routed,
//	unix milliseconds of the routing node's clock (away.go).
//	props: uvarint presence mask (bit i = codec property i of the kept
//	set), then payload format (1 byte), content type, response topic,
//	correlation data (str each), user properties (uvarint n, n key/value
//	str pairs), each only when present.
//
// Route records (clusterroutes.go says how they converge):
//
//	delta:  version | seq uvarint | route
//	chunk:  version | flags u8 | seq uvarint | digest u64 BE | routes
//	        flags: bit 0 first chunk of a set, bit 1 last
//	route:  filter str | durable u8 (1: a persistent session holds it)
//	digest: version | seq uvarint | digest u64 BE
//
// str is a uvarint length and that many bytes. Do not reorder: exchanged
// between nodes.

const wireVersion = 1

// Record kinds the broker sends its peers. Do not renumber: exchanged
// between nodes.
const (
	recForward      byte = 1  // a message to deliver here (reliable for QoS 1/2)
	recRouteAdd     byte = 2  // a filter the sender now has subscribers for (appendRouteDelta)
	recRouteDel     byte = 3  // a filter the sender no longer has (appendRouteDelta)
	recRoutesAll    byte = 4  // the sender's whole route set, in chunks (appendRouteSetHeader)
	recRetained     byte = 5  // a retained message set or cleared, with its stamp
	recTakeover     byte = 6  // request: hand over a client's session
	recSession      byte = 7  // answer: the session, if the sender had it
	recConnected    byte = 8  // a client connected at the sender, at a stamp
	recRedirect     byte = 9  // a delivery for a session that moved to the receiver
	recBan          byte = 10 // a ban set or lifted, JSON (bans.go)
	recAdminReq     byte = 11 // request: an admin API call (admincluster.go)
	recAdminAns     byte = 12 // answer: its status and body
	recRouteDigest  byte = 13 // the number and digest of the sender's route set (appendRouteDigest)
	recRouteResync  byte = 14 // request: send me your whole route set (version byte only)
	recClaims       byte = 15 // restored sessions the sender holds: id, last disconnect (stale.go)
	recOwned        byte = 16 // answer: the claimed ids the sender holds newer sessions for
	recStale        byte = 17 // a restored session handed to the node that owns its client
	recRetainDigest byte = 18 // the sender's retained digest (retainsync.go)
	recHello        byte = 19 // what the sender reads beyond the rest (features.go)
)

var errWire = errors.New("server: malformed peer body")

type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: bad %s", errWire, what)
	}
	r.b = nil
}

func (r *wireReader) byte1(what string) byte {
	if len(r.b) < 1 {
		r.fail(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *wireReader) uvarint(what string) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

// version reads a body's version byte; another version fails.
func (r *wireReader) version() {
	if v := r.byte1("version"); r.err == nil && v != wireVersion {
		r.fail("version")
	}
}

func (r *wireReader) u64(what string) uint64 {
	if len(r.b) < 8 {
		r.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *wireReader) str(what string) []byte {
	n := r.uvarint(what)
	if n > uint64(len(r.b)) {
		r.fail(what)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func appendStr(dst, s []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// appendMessage encodes m as it stands at now.
func appendMessage(dst []byte, m *message, now int64, routed bool) []byte {
	bits := m.qos & 3
	if m.retain {
		bits |= 4
	}
	if m.expiresAt != 0 {
		bits |= 8
	}
	if m.origin != 0 {
		bits |= 16
	}
	ms := m.stamp / int64(time.Millisecond)
	routed = routed && m.qos > 0 && ms > 0
	if routed {
		bits |= 32
	}
	dst = append(dst, bits)
	if m.origin != 0 {
		dst = binary.BigEndian.AppendUint64(dst, m.origin)
	}
	if routed {
		dst = binary.AppendUvarint(dst, uint64(ms))
	}
	if m.expiresAt != 0 {
		left := max(m.expiresAt-now, 0) / int64(time.Millisecond)
		dst = binary.AppendUvarint(dst, uint64(left))
	}
	dst = appendStr(dst, []byte(m.from))
	dst = appendStr(dst, m.topic)
	pr := m.prop()
	var mask uint64
	for i, id := range keptProps {
		if pr.Has(id) {
			mask |= 1 << i
		}
	}
	if len(pr.User) > 0 {
		mask |= 1 << len(keptProps)
	}
	dst = binary.AppendUvarint(dst, mask)
	if pr.Has(codec.PropPayloadFormat) {
		dst = append(dst, pr.PayloadFormat)
	}
	if pr.Has(codec.PropContentType) {
		dst = appendStr(dst, pr.ContentType)
	}
	if pr.Has(codec.PropResponseTopic) {
		dst = appendStr(dst, pr.ResponseTopic)
	}
	if pr.Has(codec.PropCorrelationData) {
		dst = appendStr(dst, pr.CorrelationData)
	}
	if len(pr.User) > 0 {
		dst = binary.AppendUvarint(dst, uint64(len(pr.User)))
		for _, u := range pr.User {
			dst = appendStr(dst, u.Key)
			dst = appendStr(dst, u.Value)
		}
	}
	return appendStr(dst, m.payload)
}

// readMessage decodes a message into m. All its fields, from included,
// alias r's input: call own to keep it.
func readMessage(r *wireReader, now int64, m *message) bool {
	bits := r.byte1("message flags")
	if bits&^0x3F != 0 || bits&3 == 3 || bits&32 != 0 && bits&3 == 0 {
		r.fail("message flags")
		return false
	}
	*m = message{qos: bits & 3, retain: bits&4 != 0}
	if bits&16 != 0 {
		if m.origin = r.u64("origin"); m.origin == 0 {
			r.fail("origin")
			return false
		}
	}
	if bits&32 != 0 {
		ms := r.uvarint("routed")
		if ms == 0 || ms > uint64(math.MaxInt64/int64(time.Millisecond)) {
			r.fail("routed")
			return false
		}
		m.stamp = int64(ms) * int64(time.Millisecond)
	}
	if bits&8 != 0 {
		left := r.uvarint("expiry")
		if left > 1<<42 {
			r.fail("expiry")
			return false
		}
		m.expiresAt = now + int64(left)*int64(time.Millisecond)
	}
	if from := r.str("publisher"); len(from) > 0 {
		m.from = unsafe.String(&from[0], len(from))
	}
	m.topic = r.str("topic")
	mask := r.uvarint("property mask")
	if mask>>(len(keptProps)+1) != 0 {
		r.fail("property mask")
		return false
	}
	if mask != 0 {
		pr := new(codec.Properties)
		if mask&1 != 0 {
			pr.PayloadFormat = r.byte1("payload format")
			pr.Set(codec.PropPayloadFormat)
		}
		if mask&2 != 0 {
			pr.ContentType = r.str("content type")
			pr.Set(codec.PropContentType)
		}
		if mask&4 != 0 {
			pr.ResponseTopic = r.str("response topic")
			pr.Set(codec.PropResponseTopic)
		}
		if mask&8 != 0 {
			pr.CorrelationData = r.str("correlation data")
			pr.Set(codec.PropCorrelationData)
		}
		if mask&16 != 0 {
			n := r.uvarint("user properties")
			if n == 0 || n > uint64(len(r.b)) {
				r.fail("user properties")
				return false
			}
			pr.User = make([]codec.UserProperty, n)
			for i := range pr.User {
				pr.User[i] = codec.UserProperty{Key: r.str("user property"), Value: r.str("user property")}
			}
		}
		m.props = pr
	}
	m.payload = r.str("payload")
	if r.err != nil {
		return false
	}
	if codec.ValidateTopicName(m.topic) != nil {
		r.fail("topic")
		return false
	}
	return true
}

// forward is one message on its way to a peer, with what the peer is to
// deliver it to.
type forward struct {
	plain  bool
	groups []string
	skip   []string
}

// appendForward encodes a forwarded message.
func appendForward(dst []byte, f *forward, msg []byte) []byte {
	var flags byte
	if f.plain {
		flags |= 1
	}
	if len(f.skip) > 0 {
		flags |= 2
	}
	dst = append(dst, wireVersion, flags)
	dst = appendStrs(dst, f.groups)
	if len(f.skip) > 0 {
		dst = appendStrs(dst, f.skip)
	}
	return append(dst, msg...)
}

// appendStrs appends a uvarint count and that many str.
func appendStrs(dst []byte, ss []string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(ss)))
	for _, s := range ss {
		dst = appendStr(dst, []byte(s))
	}
	return dst
}

// strs reads a uvarint count, at most max, and that many str, appended to
// dst.
func (r *wireReader) strs(dst []string, what string, max uint64) []string {
	n := r.uvarint(what + " count")
	if n > max || n > uint64(len(r.b)) {
		r.fail(what + " count")
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		dst = append(dst, string(r.str(what)))
	}
	return dst
}

// decodeForward decodes a forwarded message into f and m; m's fields
// alias b (see readMessage).
func decodeForward(b []byte, now int64, f *forward, m *message) error {
	r := &wireReader{b: b}
	if v := r.byte1("version"); r.err == nil && v != wireVersion {
		return fmt.Errorf("%w: version %d, this node speaks %d", errWire, v, wireVersion)
	}
	flags := r.byte1("flags")
	if flags&^3 != 0 {
		r.fail("flags")
	}
	f.plain = flags&1 != 0
	f.groups = r.strs(f.groups[:0], "group", uint64(len(r.b)))
	f.skip = f.skip[:0]
	if flags&2 != 0 {
		f.skip = r.strs(f.skip, "skip", maxSkip)
	}
	readMessage(r, now, m)
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return r.err
}

// routeEntry is one route of a node: a filter, and whether a persistent
// session holds it.
type routeEntry struct {
	filter  string
	durable bool
}

func appendRouteEntry(dst []byte, e routeEntry) []byte {
	dst = appendStr(dst, []byte(e.filter))
	if e.durable {
		return append(dst, 1)
	}
	return append(dst, 0)
}

func (r *wireReader) routeEntry() routeEntry {
	f := r.str("route filter")
	d := r.byte1("route durable")
	if r.err == nil && (len(f) == 0 || d > 1) {
		r.fail("route")
	}
	return routeEntry{string(f), d == 1}
}

func appendRouteDelta(dst []byte, seq uint64, e routeEntry) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, seq)
	return appendRouteEntry(dst, e)
}

func decodeRouteDelta(b []byte) (seq uint64, e routeEntry, err error) {
	r := &wireReader{b: b}
	r.version()
	seq = r.uvarint("route number")
	e = r.routeEntry()
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return seq, e, r.err
}

// routeSetHeader starts each chunk of a whole route set.
type routeSetHeader struct {
	first, last bool
	seq, digest uint64
}

func (h routeSetHeader) flags() byte {
	var f byte
	if h.first {
		f |= 1
	}
	if h.last {
		f |= 2
	}
	return f
}

func appendRouteSetHeader(dst []byte, h routeSetHeader) []byte {
	dst = append(dst, wireVersion, h.flags())
	dst = binary.AppendUvarint(dst, h.seq)
	return binary.BigEndian.AppendUint64(dst, h.digest)
}

func decodeRouteSet(b []byte) (h routeSetHeader, es []routeEntry, err error) {
	r := &wireReader{b: b}
	r.version()
	f := r.byte1("route set flags")
	h.first, h.last = f&1 != 0, f&2 != 0
	h.seq = r.uvarint("route number")
	h.digest = r.u64("route digest")
	for len(r.b) > 0 && r.err == nil {
		es = append(es, r.routeEntry())
	}
	return h, es, r.err
}

func appendRouteDigest(dst []byte, seq, digest uint64) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, seq)
	return binary.BigEndian.AppendUint64(dst, digest)
}

func decodeRouteDigest(b []byte) (seq, digest uint64, err error) {
	r := &wireReader{b: b}
	r.version()
	seq = r.uvarint("route number")
	digest = r.u64("route digest")
	return seq, digest, r.err
}
