package chaos

import (
	"strings"
	"testing"
	"time"
)

// hist builds a history by hand, one operation a millisecond.
type hist struct{ ops []Op }

func (h *hist) add(o Op) *hist {
	o.T = time.Duration(len(h.ops)+1) * time.Millisecond
	h.ops = append(h.ops, o)
	return h
}

func (h *hist) send(pub string, conn int, seq int64, qos byte) *hist {
	t := dataTopic(pub, 0)
	h.add(Op{Kind: OpSend, Client: pub, Node: "n1", Conn: conn, Pub: pub, Seq: seq, Topic: t, QoS: qos})
	return h.add(Op{Kind: OpAck, Client: pub, Node: "n1", Conn: conn, Pub: pub, Seq: seq, Topic: t, QoS: qos})
}

func (h *hist) deliver(sub string, conn int, pub string, seq int64, qos byte) *hist {
	return h.add(Op{Kind: OpDeliver, Client: sub, Node: "n2", Conn: conn, Pub: pub, Seq: seq, Topic: dataTopic(pub, 0), QoS: qos})
}

func (h *hist) probes(subs ...string) *hist {
	for _, s := range subs {
		for _, n := range []string{"n1", "n2"} {
			h.add(Op{Kind: OpProbe, Client: s, Node: "n2", Note: "probe " + n + " end"})
		}
	}
	return h
}

// goodSpec is a two-node run whose snapshot agrees with itself: s1 on
// n2 with its subscriptions there, and the same retained message on both.
func goodSpec(subQoS byte) Spec {
	ret := []apiRetained{{Topic: retainTopic("p1"), Payload: "p1 25"}}
	return Spec{
		Pubs: map[string]byte{"p1": 2}, Subs: map[string]byte{"s1": subQoS}, Nodes: []string{"n1", "n2"},
		Snapshot: Snapshot{
			Clients:       map[string][]apiClient{"n1": nil, "n2": {{ClientID: "s1", Node: "n2"}}},
			Subscriptions: map[string][]apiSubscription{"n1": nil, "n2": {{ClientID: "s1", Filter: dataFilter, Node: "n2"}}},
			Retained:      map[string][]apiRetained{"n1": ret, "n2": ret},
		},
	}
}

// withRetained adds p1's acknowledged retained message 25.
func (h *hist) withRetained() *hist {
	h.add(Op{Kind: OpSend, Client: "p1", Conn: 1, Pub: "p1", Seq: 25, Topic: retainTopic("p1"), QoS: 2, Retain: true})
	return h.add(Op{Kind: OpAck, Client: "p1", Conn: 1, Pub: "p1", Seq: 25, Topic: retainTopic("p1"), QoS: 2, Retain: true})
}

// guarantees lists the guarantees r found broken.
func guarantees(r *Report) string {
	var g []string
	for _, v := range r.Violations {
		g = append(g, v.Guarantee)
	}
	return strings.Join(g, ",")
}

// The checker passes a history that keeps every guarantee, and names the
// one broken in each history that breaks one.
func TestCheckerVerdicts(t *testing.T) {
	for _, c := range []struct {
		name   string
		subQoS byte
		ops    func(h *hist)
		spec   func(s *Spec)
		want   string // the guarantees broken, in order; "" passes
	}{
		{"all delivered in order", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).send("p1", 1, 2, 2).deliver("s1", 1, "p1", 1, 2).deliver("s1", 1, "p1", 2, 2)
		}, nil, ""},
		{"an acknowledged message lost", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).send("p1", 1, 2, 2).deliver("s1", 1, "p1", 1, 2)
		}, nil, GuaranteeNoLoss},
		{"an unacknowledged message may be lost", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).deliver("s1", 1, "p1", 1, 2)
			h.add(Op{Kind: OpSend, Client: "p1", Conn: 1, Pub: "p1", Seq: 2, Topic: dataTopic("p1", 0), QoS: 2})
			h.add(Op{Kind: OpInDoubt, Client: "p1", Conn: 2, Pub: "p1", Seq: 2, QoS: 2})
		}, nil, ""},
		{"QoS 2 delivered twice", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).deliver("s1", 1, "p1", 1, 2).deliver("s1", 1, "p1", 1, 2)
		}, nil, GuaranteeExactlyOne},
		{"QoS 2 may come again after a lost session when the broker never had its PUBREC", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).deliver("s1", 1, "p1", 1, 2)
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 2})
			h.deliver("s1", 2, "p1", 1, 2)
		}, nil, ""},
		{"QoS 2 released is not delivered again, even after a lost session", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).deliver("s1", 1, "p1", 1, 2)
			h.add(Op{Kind: OpReleased, Client: "s1", Conn: 1}) // the delivery's packet id (0 here)
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 2})
			h.deliver("s1", 2, "p1", 1, 2)
		}, nil, GuaranteeExactlyOne},
		{"QoS 1 subscription may get a QoS 2 message twice", 1, func(h *hist) {
			h.send("p1", 1, 1, 2).deliver("s1", 1, "p1", 1, 1).deliver("s1", 2, "p1", 1, 1)
		}, nil, ""},
		{"order broken within one connection each", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).send("p1", 1, 2, 2).deliver("s1", 1, "p1", 2, 2).deliver("s1", 1, "p1", 1, 2)
		}, nil, GuaranteeOrder},
		{"order kept across a takeover that found the session", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).send("p1", 1, 2, 2).deliver("s1", 1, "p1", 2, 2)
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 2, Present: true})
			h.deliver("s1", 2, "p1", 1, 2)
		}, nil, GuaranteeOrder},
		{"a message resent on a new connection may come from its first send", 2, func(h *hist) {
			// 1 sent on conn 1 to a paused node, then again with 2 on
			// conn 2; the paused node, resumed, routed its copy of 1
			// after the new node routed 2.
			t := dataTopic("p1", 0)
			h.add(Op{Kind: OpSend, Client: "p1", Node: "n1", Conn: 1, Pub: "p1", Seq: 1, Topic: t, QoS: 2})
			h.send("p1", 2, 1, 2).send("p1", 2, 2, 2).deliver("s1", 1, "p1", 2, 2).deliver("s1", 1, "p1", 1, 2)
		}, nil, ""},
		{"order may break across a lost session", 2, func(h *hist) {
			h.send("p1", 1, 1, 2).send("p1", 1, 2, 2).deliver("s1", 1, "p1", 2, 2)
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 2})
			h.deliver("s1", 2, "p1", 1, 2)
		}, nil, ""},
		{"what a lost session held may come after newer messages", 2, func(h *hist) {
			// 1 was held by the session lost with its node; 2 reached the
			// connection that found no session; 1 came with the merge.
			h.send("p1", 1, 1, 2)
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 2})
			h.send("p1", 1, 2, 2).deliver("s1", 2, "p1", 2, 2).deliver("s1", 2, "p1", 1, 2)
		}, nil, ""},
		{"what was sent before a lost session's end may come late, even if acknowledged after", 2, func(h *hist) {
			t := dataTopic("p1", 0)
			h.add(Op{Kind: OpSend, Client: "p1", Node: "n1", Conn: 1, Pub: "p1", Seq: 1, Topic: t, QoS: 2})
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 2})
			h.add(Op{Kind: OpAck, Client: "p1", Node: "n1", Conn: 1, Pub: "p1", Seq: 1, Topic: t, QoS: 2})
			h.send("p1", 1, 2, 2).deliver("s1", 2, "p1", 2, 2).deliver("s1", 2, "p1", 1, 2)
		}, nil, ""},
		{"order kept for what was published well after the session was lost", 2, func(h *hist) {
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 2})
			h.ops[len(h.ops)-1].T = -2 * routeGrace // long before the sends
			h.send("p1", 1, 1, 2).send("p1", 1, 2, 2).deliver("s1", 2, "p1", 2, 2).deliver("s1", 2, "p1", 1, 2)
		}, nil, GuaranteeOrder},
		{"what was on its way to a failed node may come after newer messages", 2, func(h *hist) {
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 1})
			h.add(Op{Kind: OpFault, Node: "n1", Note: "kill -9, down 1s"})
			h.send("p1", 1, 1, 2)
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n2", Conn: 2, Present: true})
			h.send("p1", 1, 2, 2).deliver("s1", 2, "p1", 2, 2).deliver("s1", 2, "p1", 1, 2)
		}, nil, ""},
		{"order kept across a move off a drained node", 2, func(h *hist) {
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n1", Conn: 1})
			h.add(Op{Kind: OpFault, Node: "n1", Note: "drain (1 clients connected: s1)"})
			h.send("p1", 1, 1, 2)
			h.add(Op{Kind: OpConnect, Client: "s1", Node: "n2", Conn: 2, Present: true})
			h.send("p1", 1, 2, 2).deliver("s1", 2, "p1", 2, 2).deliver("s1", 2, "p1", 1, 2)
		}, nil, GuaranteeOrder},
		{"order may break across a publisher's reconnect", 2, func(h *hist) {
			h.send("p1", 2, 1, 2).send("p1", 1, 2, 2).deliver("s1", 1, "p1", 2, 2).deliver("s1", 1, "p1", 1, 2)
		}, nil, ""},
		{"a redelivery is not a reordering", 1, func(h *hist) {
			h.send("p1", 1, 1, 2).send("p1", 1, 2, 2).deliver("s1", 1, "p1", 1, 1).deliver("s1", 1, "p1", 2, 1).deliver("s1", 2, "p1", 1, 1)
		}, nil, ""},
		{"retained messages differ", 2, func(*hist) {}, func(s *Spec) {
			s.Snapshot.Retained["n2"] = []apiRetained{{Topic: retainTopic("p1"), Payload: "p1 0"}}
		}, GuaranteeRetained + "," + GuaranteeRetained},
		{"a probe did not arrive", 2, nil, nil, GuaranteeRoutes},
		{"subscriptions on two nodes", 2, func(*hist) {}, func(s *Spec) {
			s.Snapshot.Subscriptions["n1"] = s.Snapshot.Subscriptions["n2"]
		}, GuaranteeRoutes},
		{"a client on two nodes", 2, func(*hist) {}, func(s *Spec) {
			s.Snapshot.Clients["n1"] = s.Snapshot.Clients["n2"]
		}, GuaranteeOneNode},
		{"two disconnects in one restart", 2, func(h *hist) {
			h.add(Op{Kind: OpDisconnect, Client: "s1", Conn: 1, Note: "DISCONNECT 0x8b"})
			h.add(Op{Kind: OpDisconnect, Client: "s1", Conn: 2, Note: "closed by the broker"})
		}, func(s *Spec) { s.Restarts = []Restart{{Node: "n2", From: 0, To: time.Hour}} }, GuaranteeDisconnect},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := (&hist{}).withRetained()
			if c.ops != nil {
				c.ops(h)
			}
			h.probes("s1")
			if c.ops == nil { // the last probe never came
				h.ops = h.ops[:len(h.ops)-1]
			}
			spec := goodSpec(c.subQoS)
			if c.spec != nil {
				c.spec(&spec)
			}
			r := Check(h.ops, spec)
			if got := guarantees(r); got != c.want {
				var b strings.Builder
				for _, v := range r.Violations {
					b.WriteString("\n  " + v.What)
				}
				t.Fatalf("broken %q, want %q%s", got, c.want, b.String())
			}
		})
	}
}

// A violation quotes the operations of its message and the faults near
// it, so that a failure can be read without the history file.
func TestViolationContext(t *testing.T) {
	h := (&hist{}).withRetained()
	h.add(Op{Kind: OpFault, Node: "n2", Note: "kill -9"})
	h.send("p1", 1, 1, 2)
	h.probes("s1")
	r := Check(h.ops, goodSpec(2))
	if len(r.Violations) != 1 {
		t.Fatalf("violations %+v, want the one loss", r.Violations)
	}
	var kinds []string
	for _, o := range r.Violations[0].Around {
		kinds = append(kinds, string(o.Kind))
	}
	if got := strings.Join(kinds, ","); got != "fault,send,ack" {
		t.Fatalf("quoted %s, want the fault, the send and the ack", got)
	}
	var b strings.Builder
	(&Result{Scenario: ScenarioFaults, Seed: 7, Kinds: AllFaults, Duration: time.Minute, Report: r}).Print(&b)
	for _, want := range []string{"FAIL", "VIOLATION [no loss] p1:1 never reached s1", "kill -9", "replay: gannet-bench chaos -seed 7 -duration 1m0s -faults kill,pause,cut,delay,disk"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the printed result lacks %q:\n%s", want, b.String())
		}
	}
}

// The proxy reads the dialer's name from the HELLO that opens an
// interlink connection, and passes the frame on whole.
func TestReadHello(t *testing.T) {
	frame := []byte{0, 0, 0, 9, 1, 'G', 'N', 'T', 'L', 2, 2, 'n', '7'}
	got, name := readHello(strings.NewReader(string(frame) + "rest"))
	if name != "n7" || string(got) != string(frame) {
		t.Fatalf("readHello: %q %q, want n7 and the frame", name, got)
	}
	if _, name := readHello(strings.NewReader("\x00\x00\x00\x02\x05x")); name != "" {
		t.Fatalf("a frame that is not a HELLO named %q", name)
	}
}

// Bad arguments stop the command with exit code 2 and a message naming
// the cause, before any node starts.
func TestCommandErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-bin", gannetBin, "-scenario", "storm"}, `unknown scenario "storm"`},
		{[]string{"-bin", gannetBin, "-faults", "kill,flood"}, `unknown fault "flood"`},
		{[]string{"-bin", gannetBin, "-nodes", "1"}, "at least 2 nodes"},
		{[]string{"-bin", t.TempDir() + "/nothing"}, "no gannet binary at"},
		{[]string{"-bin", gannetBin, "extra"}, `unexpected argument "extra"`},
		{[]string{"-no-such-flag"}, "flag provided but not defined"},
	} {
		var stdout, stderr strings.Builder
		if code := Command(t.Context(), c.args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit code %d, want 2", c.args, code)
		}
		if !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%q: stderr %q does not say %q", c.args, stderr.String(), c.want)
		}
	}
}
