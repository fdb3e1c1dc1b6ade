package server

import (
	"fmt"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// connectAs connects rc as id, with a clean session or a persistent one
// (MQTT 5: Clean Start and session expiry 0, or Clean Start 0 and an
// expiry of a minute; MQTT 3: the CleanSession flag).
func connectAs(rc *rawConn, id string, clean bool) *codec.Connack {
	rc.t.Helper()
	return rc.connect(id, func(p *codec.Connect) {
		p.CleanStart = clean
		if rc.v == codec.V5 && !clean {
			p.Props.SessionExpiry = 60
			p.Props.Set(codec.PropSessionExpiry)
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
