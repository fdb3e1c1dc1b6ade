package server

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
)

// passwdBroker starts a broker with WebSocket and TLS listeners (the
// certificate from pki) whose chain has the password file of writePasswd
// (alice and bob, password "secret") and then the sources in more.
func passwdBroker(t *testing.T, pki *testPKI, more ...auth.Source) *Server {
	t.Helper()
	pf, err := auth.LoadPasswordFile(writePasswd(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := auth.NewChain(auth.ChainConfig{Sources: append([]auth.Source{pf}, more...), CacheTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close)
	return tlsBroker(t, pki, false, func(c *Config) {
		c.Auth = ch
		c.WSListen = "127.0.0.1:0"
	})
}

func loginBytes(id, user, pass string) []byte {
	return (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true, KeepAlive: 30,
		ClientID: []byte(id), UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass)}).Append(nil, codec.V311)
}

var (
	connackOK   = []byte{0x20, 0x02, 0x00, 0x00}
	pingreqRaw  = []byte{0xC0, 0x00}
	pingrespRaw = []byte{0xD0, 0x00}
)

// Packets that arrive behind a CONNECT, in the same write, wait while the
// chain decides and are read once the client is in: over TCP they wait in
// the read buffer, over WebSocket unmasked and over TLS decrypted in the
// connection's own.
func TestAuthPacketsBehindConnect(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	s := passwdBroker(t, pki)

	behind := func(t *testing.T, rc *rawConn, id string) {
		t.Helper()
		// One write: one segment, and over TLS one record.
		rc.write(append(loginBytes(id, "alice", "secret"), pingreqRaw...))
		if ca, ok := rc.expect().(*codec.Connack); !ok || ca.Code != codec.V3Accepted {
			t.Fatalf("got %v, want CONNACK accepted", ca)
		}
		if _, ok := rc.expect().(*codec.Pingresp); !ok {
			t.Fatal("the PINGREQ behind CONNECT got no PINGRESP")
		}
	}
	t.Run("tcp", func(t *testing.T) {
		behind(t, dialRaw(t, s, codec.V311), "tcp-behind")
	})
	t.Run("tls", func(t *testing.T) {
		behind(t, dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V311), "tls-behind")
	})

	t.Run("websocket", func(t *testing.T) {
		c, r := wsDial(t, s)
		out := append(maskedFrame(true, ws.OpBinary, loginBytes("ws-behind", "bob", "secret")),
			maskedFrame(true, ws.OpBinary, pingreqRaw)...)
		if _, err := c.Write(out); err != nil {
			t.Fatal(err)
		}
		want := append(bytes.Clone(connackOK), pingrespRaw...)
		var got []byte
		for len(got) < len(want) {
			op, p := wsRead(t, c, r)
			if op != ws.OpBinary {
				t.Fatalf("got a frame of opcode %v, want binary", op)
			}
			got = append(got, p...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("got % x, want CONNACK then PINGRESP (% x)", got, want)
		}
	})
}

// slowSource holds every question until the test lets it answer.
type slowSource struct {
	asked   chan struct{}
	release chan struct{}
}

func (s *slowSource) Name() string { return "slow" }

func (s *slowSource) Authenticate(ctx context.Context, _ *auth.Request) (auth.Answer, error) {
	s.asked <- struct{}{}
	select {
	case <-s.release:
		return auth.Answer{Verdict: auth.Allow}, nil
	case <-ctx.Done():
		return auth.Answer{}, ctx.Err()
	}
}

// A packet sent in a write of its own while the chain is still deciding
// (before the source is let answer) is read once the client is in, after
// its CONNACK.
func TestAuthPacketWhileDeciding(t *testing.T) {
	slow := &slowSource{asked: make(chan struct{}, 1), release: make(chan struct{})}
	s := passwdBroker(t, newTestPKI(t, "Gannet Test CA"), slow) // carol is not in the file: the slow source decides
	rc := dialRaw(t, s, codec.V311)
	rc.write(loginBytes("while-deciding", "carol", "pw"))
	select {
	case <-slow.asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow source was not asked")
	}
	rc.write(pingreqRaw)
	close(slow.release)
	if ca, ok := rc.expect().(*codec.Connack); !ok || ca.Code != codec.V3Accepted {
		t.Fatalf("got %v, want CONNACK accepted", ca)
	}
	if _, ok := rc.expect().(*codec.Pingresp); !ok {
		t.Fatal("the PINGREQ sent while the chain decided got no PINGRESP")
	}
}
