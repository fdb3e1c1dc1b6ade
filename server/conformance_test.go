package server

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// connectAs connects rc as id, with a clean session or a persistent one
// (MQTT 5: Clean Start and session expiry 0, or Clean Start 0 and an
// expiry of a minute; MQTT 3: the CleanSession flag).
func connectAs(rc *rawConn, id string, clean bool) *codec.Connack {
	rc.t.Helper()
	return connectWith(rc, id, clean, nil)
}

// connectWith is connectAs with more changes to the CONNECT.
func connectWith(rc *rawConn, id string, clean bool, mutate func(*codec.Connect)) *codec.Connack {
	rc.t.Helper()
	return rc.connect(id, func(p *codec.Connect) {
		p.CleanStart = clean
		if rc.v == codec.V5 && !clean {
			p.Props.SessionExpiry = 60
			p.Props.Set(codec.PropSessionExpiry)
		}
		if mutate != nil {
			mutate(p)
		}
	})
}

// A second connection with a client id in use disconnects the first
// [MQTT-3.1.4-2], whatever either asks for its session, in every protocol
// version; only a persistent session is resumed [MQTT-3.1.2-6], and an MQTT
// 3.1 CONNACK never carries a session present flag.
func TestClientIDTakeoverMatrix(t *testing.T) {
	s := startBroker(t, nil)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("matrix-pub", nil)
	versions := []codec.Version{codec.V31, codec.V311, codec.V5}
	n := 0
	for _, ov := range versions {
		for _, oclean := range []bool{true, false} {
			for _, nv := range versions {
				for _, nclean := range []bool{true, false} {
					n++
					name := fmt.Sprintf("old=%s,clean=%v/new=%s,clean=%v", ov, oclean, nv, nclean)
					id := fmt.Sprintf("matrix-%d", n)
					topic := "matrix/" + id
					old := dialRaw(t, s, ov)
					connectAs(old, id, oclean)
					old.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte(topic), QoS: 1}}})
					if _, ok := old.expect().(*codec.Suback); !ok {
						t.Fatalf("%s: no SUBACK", name)
					}

					nu := dialRaw(t, s, nv)
					ca := connectAs(nu, id, nclean)
					resumed := !oclean && !nclean
					if want := resumed && nv != codec.V31; ca.SessionPresent != want {
						t.Errorf("%s: session present %v, want %v", name, ca.SessionPresent, want)
					}
					got := old.expectClosed()
					if ov == codec.V5 {
						if len(got) != 1 || got[0].(*codec.Disconnect).Code != codec.SessionTakenOver {
							t.Errorf("%s: old connection got %v, want DISCONNECT 0x8E", name, got)
						}
					} else if len(got) != 0 {
						t.Errorf("%s: old MQTT 3 connection got %v, want a close", name, got)
					}

					// The subscription lives on only in a resumed session.
					pub.send(&codec.Publish{QoS: 1, PacketID: pub.nextID(), Topic: []byte(topic), Payload: []byte("m")})
					pub.expect()
					got = nu.ping()
					if resumed && (len(got) != 1 || string(got[0].(*codec.Publish).Payload) != "m") {
						t.Errorf("%s: resumed session delivered %v, want the message", name, got)
					}
					if !resumed && len(got) != 0 {
						t.Errorf("%s: a new session delivered %v from the old one's subscription", name, got)
					}
					nu.send(&codec.Disconnect{})
					nu.expectClosed()
				}
			}
		}
	}
}

// A clean session ends with its connection: a CleanSession=0 CONNECT sent
// right after the DISCONNECT, before the broker may have closed the old
// socket, never finds it [MQTT-3.1.2-6].
func TestCleanSessionNotResumedAfterDisconnect(t *testing.T) {
	s := startBroker(t, nil)
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		for i := range 200 {
			id := fmt.Sprintf("gone-%s-%d", v, i)
			rc := dialRaw(t, s, v)
			connectAs(rc, id, true)
			rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("gone/" + id), QoS: 1}}})
			rc.expect()
			rc.send(&codec.Disconnect{})
			nu := dialRaw(t, s, v)
			if ca := connectAs(nu, id, false); ca.SessionPresent {
				t.Fatalf("%s round %d: CleanSession=0 after a clean session got session present", v, i)
			}
			rc.expectClosed()
			_ = nu.c.Close()
		}
	}
}

// flooded reads rc until the broker ends the connection while another
// goroutine writes QoS 2 publishes on it without pause: a client still
// sending when it is refused. It returns what was read and the error that
// ended the reading.
func flooded(rc *rawConn) ([]codec.Packet, error) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		payload := make([]byte, 1<<10)
		var buf []byte
		for id := uint16(1); ; id++ {
			select {
			case <-stop:
				return
			default:
			}
			buf = (&codec.Publish{QoS: 2, PacketID: id, Topic: []byte("flood"), Payload: payload}).Append(buf[:0], rc.v)
			_ = rc.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			if _, err := rc.c.Write(buf); err != nil {
				return
			}
		}
	}()
	got, err := readUntilClosed(rc)
	close(stop)
	wg.Wait()
	return got, err
}

// burst writes n QoS 2 publishes in one write and then nothing.
func burst(rc *rawConn, n int) {
	payload := make([]byte, 1<<10)
	var buf []byte
	for id := 1; id <= n; id++ {
		buf = (&codec.Publish{QoS: 2, PacketID: uint16(id), Topic: []byte("burst"), Payload: payload}).Append(buf, rc.v)
	}
	_ = rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = rc.c.Write(buf)
}

// readUntilClosed returns the packets read before the connection ended
// and the error that ended it (io.EOF for a graceful close).
func readUntilClosed(rc *rawConn) ([]codec.Packet, error) {
	var got []codec.Packet
	for {
		p, err := rc.read()
		if err != nil {
			return got, err
		}
		got = append(got, p)
	}
}

// A refusal reaches a client that is still writing: the broker closes
// gracefully (the reason code, then FIN, then it reads and discards what
// the client still sends) instead of resetting the connection with the
// client's bytes unread, which can destroy the reason code in flight.
func TestRefusalReachesBusyClient(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.ReceiveMaximum = 4 })
	// Many publishes past the receive maximum in one burst, read only
	// afterwards (as a client library that writes before it reads).
	for i := range 20 {
		rc := dialRaw(t, s, codec.V5)
		rc.connect(fmt.Sprintf("burst-%d", i), nil)
		burst(rc, 500)
		got, err := readUntilClosed(rc)
		if len(got) == 0 {
			t.Fatalf("burst round %d: nothing read before %v", i, err)
		}
		if last, ok := got[len(got)-1].(*codec.Disconnect); !ok || last.Code != codec.ReceiveMaximumExceeded {
			t.Fatalf("burst round %d: last packet %v (then %v), want DISCONNECT 0x93", i, got[len(got)-1], err)
		}
		if err != io.EOF {
			t.Fatalf("burst round %d: the connection ended with %v, want a graceful close (EOF)", i, err)
		}
	}
	// A client still writing while it reads.
	for i := range 5 {
		rc := dialRaw(t, s, codec.V5)
		rc.connect(fmt.Sprintf("busy-%d", i), nil)
		got, err := flooded(rc)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("round %d: connection still open after 5s", i)
		}
		if len(got) == 0 {
			t.Fatalf("round %d: nothing read before %v", i, err)
		}
		last, ok := got[len(got)-1].(*codec.Disconnect)
		if !ok || last.Code != codec.ReceiveMaximumExceeded {
			t.Fatalf("round %d: last packet %T %v (then %v), want DISCONNECT 0x93", i, got[len(got)-1], got[len(got)-1], err)
		}
	}
	// A CONNACK refusal too: the client sends on after its CONNECT.
	for i := range 5 {
		rc := dialRaw(t, s, codec.V5)
		rc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, CleanStart: true,
			ClientID: []byte(fmt.Sprintf("refused-%d", i)),
			Props:    codec.Properties{Present: 1 << codec.PropAuthMethod, AuthMethod: []byte("SCRAM")}})
		got, err := flooded(rc)
		if len(got) != 1 {
			t.Fatalf("round %d: got %v (then %v), want one CONNACK", i, got, err)
		}
		if ca, ok := got[0].(*codec.Connack); !ok || ca.Code != codec.BadAuthenticationMethod {
			t.Fatalf("round %d: got %v, want CONNACK 0x8C", i, got[0])
		}
	}
}

// A publisher subscribed to its own topic gets its PUBACK or PUBREC before
// the copy of its message, with and without a store.
func TestPublisherAckedBeforeItsCopy(t *testing.T) {
	for _, d := range []Durability{DurabilityNone, DurabilitySync} {
		t.Run(string(d), func(t *testing.T) {
			s := startBroker(t, func(c *Config) { c.Durability = d })
			for _, v := range []codec.Version{codec.V311, codec.V5} {
				rc := dialRaw(t, s, v)
				connectAs(rc, "self-"+v.String(), false)
				rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("self/t"), QoS: 2}}})
				rc.expect()
				for qos := byte(1); qos <= 2; qos++ {
					rc.send(&codec.Publish{QoS: qos, PacketID: 10 + uint16(qos), Topic: []byte("self/t"), Payload: []byte("x")})
					first, second := rc.expect(), rc.expect()
					ack, ok := first.(*codec.Ack)
					if !ok || ack.PacketID != 10+uint16(qos) {
						t.Fatalf("%s QoS %d: first %v, then %v; want the acknowledgement first", v, qos, first, second)
					}
					if _, ok := second.(*codec.Publish); !ok {
						t.Fatalf("%s QoS %d: second %v, want the copy", v, qos, second)
					}
					if qos == 2 {
						rc.send(&codec.Ack{Kind: codec.PUBREL, PacketID: 12})
						if p := rc.expect(); p.(*codec.Ack).Kind != codec.PUBCOMP {
							t.Fatalf("%s: want PUBCOMP, got %v", v, p)
						}
					}
					rc.ping() // the copy's flow is not finished; that is fine here
				}
			}
		})
	}
}

// A filter listed several times in one SUBSCRIBE is answered once per
// listing, but its retained messages come once.
func TestDuplicateFiltersRetainedOnce(t *testing.T) {
	s := startBroker(t, nil)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("dup-pub", nil)
	pub.send(&codec.Publish{QoS: 1, PacketID: 1, Retain: true, Topic: []byte("dupf/a"), Payload: []byte("r")})
	pub.expect()
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		rc := dialRaw(t, s, v)
		rc.connect("dup-sub-"+v.String(), nil)
		f := []byte("dupf/#")
		rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: f, QoS: 1}, {Filter: f, QoS: 1}, {Filter: f, QoS: 0}}})
		sa, ok := rc.expect().(*codec.Suback)
		if !ok || len(sa.Codes) != 3 || sa.Codes[2] != codec.GrantedQoS0 {
			t.Fatalf("%s: SUBACK %v, want three codes, the last granting QoS 0", v, sa)
		}
		got := rc.ping()
		if len(got) != 1 {
			t.Fatalf("%s: got %d packets for one retained message, want 1: %v", v, len(got), got)
		}
		if p := got[0].(*codec.Publish); p.QoS != 0 || string(p.Payload) != "r" {
			t.Fatalf("%s: got %v, want the retained message at the last listing's QoS 0", v, p)
		}
	}
}
