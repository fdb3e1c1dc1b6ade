package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Kind names what an operation was.
type Kind string

// Operation kinds. Clients record what they did and saw on the wire; the
// injector records faults; the harness records node events.
const (
	OpConnect     Kind = "connect"      // CONNACK success; Present says whether the session was found
	OpConnectFail Kind = "connect-fail" // dial, CONNACK refusal or timeout; Note says which
	OpDisconnect  Kind = "disconnect"   // an established connection ended; Note says why
	OpSubscribe   Kind = "subscribe"    // SUBACK granted QoS for Topic
	OpSend        Kind = "send"         // PUBLISH sent (Dup on a resend of the same packet id)
	OpAck         Kind = "ack"          // PUBACK (QoS 1) or PUBREC (QoS 2) with a success code: the broker owns the message
	OpRefused     Kind = "refused"      // PUBACK or PUBREC with an error code: the message was not taken
	OpComplete    Kind = "complete"     // PUBCOMP: the QoS 2 exchange ended
	OpInDoubt     Kind = "in-doubt"     // a QoS 2 message sent but never PUBRECed, whose session was lost: not resent
	OpDeliver     Kind = "deliver"      // a PUBLISH reached a subscriber (QoS 2: new packet id, not a resend of one awaiting PUBREL)
	OpRedeliver   Kind = "redeliver"    // a QoS 2 PUBLISH whose packet id still awaits PUBREL: not handed on
	OpReleased    Kind = "released"     // a subscriber got PUBREL: the broker has its PUBREC
	OpProbe       Kind = "probe"        // a route probe reached a subscriber
	OpFault       Kind = "fault"        // a fault starts; Note describes it
	OpHeal        Kind = "heal"         // a fault ends
	OpNode        Kind = "node"         // a node started, stopped, exited or drained; Note says which
)

// Op is one recorded operation. Fields that do not apply stay zero.
type Op struct {
	T       time.Duration `json:"t"`                 // since the run started
	Kind    Kind          `json:"kind"`              //
	Client  string        `json:"client,omitempty"`  // client id
	Node    string        `json:"node,omitempty"`    // node the client is connected to, or the fault's target
	Conn    int           `json:"conn,omitempty"`    // the client's connection number (1, 2, ...)
	Pub     string        `json:"pub,omitempty"`     // publisher of the message
	Seq     int64         `json:"seq,omitempty"`     // the message's sequence number at its publisher
	Topic   string        `json:"topic,omitempty"`   //
	QoS     byte          `json:"qos,omitempty"`     //
	PID     uint16        `json:"pid,omitempty"`     // packet id
	Dup     bool          `json:"dup,omitempty"`     //
	Retain  bool          `json:"retain,omitempty"`  //
	Present bool          `json:"present,omitempty"` // CONNACK session present
	Code    byte          `json:"code,omitempty"`    // reason code
	Note    string        `json:"note,omitempty"`    //
}

func (o Op) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%9.3fs %-12s", o.T.Seconds(), o.Kind)
	add := func(k string, v any, ok bool) {
		if ok {
			fmt.Fprintf(&b, " %s=%v", k, v)
		}
	}
	add("client", o.Client, o.Client != "")
	add("node", o.Node, o.Node != "")
	add("conn", o.Conn, o.Conn != 0)
	add("msg", fmt.Sprintf("%s:%d", o.Pub, o.Seq), o.Pub != "")
	add("topic", o.Topic, o.Topic != "")
	add("qos", o.QoS, o.QoS != 0)
	add("pid", o.PID, o.PID != 0)
	add("dup", o.Dup, o.Dup)
	add("retain", o.Retain, o.Retain)
	add("present", o.Present, o.Kind == OpConnect)
	add("code", fmt.Sprintf("0x%02x", o.Code), o.Code != 0)
	add("note", o.Note, o.Note != "")
	return b.String()
}

// History is the record of a run: every operation in the order it was
// recorded, which for one client is the order it happened in.
type History struct {
	start time.Time

	mu  sync.Mutex
	ops []Op
	out *bufio.Writer // optional JSON lines copy
}

// NewHistory starts a history now; when w is not nil every operation is
// also written to it as a JSON line, so that a run can be read again.
func NewHistory(w io.Writer) *History {
	h := &History{start: time.Now()}
	if w != nil {
		h.out = bufio.NewWriterSize(w, 64<<10)
	}
	return h
}

// Add records o, stamping its time. Safe for concurrent use.
func (h *History) Add(o Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	o.T = time.Since(h.start)
	h.ops = append(h.ops, o)
	if h.out != nil {
		b, _ := json.Marshal(o)
		_, _ = h.out.Write(append(b, '\n'))
	}
}

// Ops returns a copy of the operations recorded so far.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// Flush writes out what the JSON lines copy buffered.
func (h *History) Flush() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.out == nil {
		return nil
	}
	return h.out.Flush()
}

// ReadHistory reads operations written as JSON lines by a History.
func ReadHistory(r io.Reader) ([]Op, error) {
	var ops []Op
	dec := json.NewDecoder(r)
	for dec.More() {
		var o Op
		if err := dec.Decode(&o); err != nil {
			return ops, fmt.Errorf("cannot read the history: %w", err)
		}
		ops = append(ops, o)
	}
	return ops, nil
}
