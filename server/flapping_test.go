package server

import (
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// A client id that connects more than --flapping-max-count times within
// the window is banned: its next CONNECT gets 0x8A (MQTT 3: 5), the ban is
// an ordinary one the API lists, and other client ids connect as before.
func TestFlappingClientIsBanned(t *testing.T) {
	s := startBroker(t, func(c *Config) {
		c.FlappingMaxCount = 3
		c.FlappingWindow = time.Hour
		c.FlappingBan = time.Hour
	})
	for i := range 3 {
		rc := dialRaw(t, s, codec.V5)
		if ca := rc.connect("flappy", nil); ca.Code != codec.Success {
			t.Fatalf("connection %d: CONNACK %v", i+1, ca.Code)
		}
		rc.send(&codec.Disconnect{})
		rc.expectClosed()
	}
	rc := dialRaw(t, s, codec.V5)
	if ca := rc.connect("flappy", nil); ca.Code != codec.Banned {
		t.Fatalf("fourth connection within the window: CONNACK %v, want Banned", ca.Code)
	}
	rc.expectClosed()
	v3 := dialRaw(t, s, codec.V311)
	if ca := v3.connect("flappy", nil); ca.Code != codec.V3NotAuthorized {
		t.Fatalf("MQTT 3 while banned: CONNACK %v, want 5", ca.Code)
	}
	if n := s.stats.flappingBans.Get(); n != 1 {
		t.Fatalf("%d flapping bans counted, want 1", n)
	}
	other := dialRaw(t, s, codec.V5)
	if ca := other.connect("steady", nil); ca.Code != codec.Success {
		t.Fatalf("another client id: CONNACK %v", ca.Code)
	}
	// The ban reaches the list that the API serves and the cluster shares.
	for deadline := time.Now().Add(10 * time.Second); ; {
		listed := false
		for _, b := range s.bans.list() {
			listed = listed || b.ClientID == "flappy" && b.Expires != nil
		}
		if listed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flapping ban is not listed: %+v", s.bans.list())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The count starts again with each window.
func TestFlappingCountsWithinTheWindow(t *testing.T) {
	s := startBroker(t, func(c *Config) {
		c.FlappingMaxCount = 1
		c.FlappingWindow = time.Hour
		c.FlappingBan = time.Hour
	})
	rc := dialRaw(t, s, codec.V5)
	rc.connect("slow", nil)
	rc.send(&codec.Disconnect{})
	rc.expectClosed()
	// The window has passed: shift the entry's start back an hour.
	s.flaps.mu.Lock()
	s.flaps.m["slow"].start = s.flaps.m["slow"].start.Add(-time.Hour)
	s.flaps.mu.Unlock()
	rc = dialRaw(t, s, codec.V5)
	if ca := rc.connect("slow", nil); ca.Code != codec.Success {
		t.Fatalf("first connection of a new window: CONNACK %v", ca.Code)
	}
	rc.send(&codec.Disconnect{})
	rc.expectClosed()
	rc = dialRaw(t, s, codec.V5)
	if ca := rc.connect("slow", nil); ca.Code != codec.Banned {
		t.Fatalf("second connection within the window: CONNACK %v, want Banned", ca.Code)
	}
}
