package server

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

func newTestBanList() *banList {
	bl := &banList{}
	bl.init(metrics.NewSet())
	return bl
}

func testBan(t testing.TB, id string, stamp int64, r banRecord) *ban {
	t.Helper()
	r.ID, r.Stamp = id, stamp
	b, err := parseBan(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The index check uses follows every change: a new version of a ban, a
// lifted one, two bans on one client id, an expired one, and a purge.
func TestBanIndexFollowsChanges(t *testing.T) {
	bl := newTestBanList()
	ip := netip.MustParseAddr("10.1.2.3")
	if bl.check("c", "u", ip) != nil {
		t.Fatal("banned by an empty list")
	}
	bl.apply(testBan(t, "b1", 1, banRecord{ClientID: "c"}))
	bl.apply(testBan(t, "b2", 2, banRecord{ClientID: "c"}))
	bl.apply(testBan(t, "b3", 3, banRecord{Username: "u"}))
	bl.apply(testBan(t, "b4", 4, banRecord{CIDR: "10.1.0.0/16"}))
	if b := bl.check("c", "", netip.Addr{}); b == nil || b.ClientID != "c" {
		t.Fatalf("client id ban: %+v", b)
	}
	if b := bl.check("other", "u", netip.Addr{}); b == nil || b.Username != "u" {
		t.Fatalf("username ban: %+v", b)
	}
	if b := bl.check("other", "", ip); b == nil || b.CIDR != "10.1.0.0/16" {
		t.Fatalf("address ban: %+v", b)
	}
	if bl.check("other", "v", netip.MustParseAddr("10.2.0.1")) != nil {
		t.Fatal("banned by bans that do not match")
	}
	// Lifting one of the client id's two bans leaves the other.
	bl.apply(testBan(t, "b1", 5, banRecord{ClientID: "c", Lifted: true}))
	if bl.check("c", "", netip.Addr{}) == nil {
		t.Fatal("the second ban on the client id went with the first")
	}
	bl.apply(testBan(t, "b2", 6, banRecord{ClientID: "c", Lifted: true}))
	if b := bl.check("c", "", netip.Addr{}); b != nil {
		t.Fatalf("lifted bans still in force: %+v", b)
	}
	// An older version of a lifted ban does not bring it back.
	bl.apply(testBan(t, "b2", 2, banRecord{ClientID: "c"}))
	if bl.check("c", "", netip.Addr{}) != nil {
		t.Fatal("an older version brought a lifted ban back")
	}
	// An expired ban no longer matches, and a purge takes it out.
	past := time.Now().Add(-time.Minute)
	bl.apply(testBan(t, "b5", 7, banRecord{ClientID: "gone", Expires: &past}))
	if bl.check("gone", "", netip.Addr{}) != nil {
		t.Fatal("an expired ban matched")
	}
	bl.purge(time.Now())
	bl.mu.RLock()
	_, left := bl.mu.byClient["gone"]
	bl.mu.RUnlock()
	if left {
		t.Fatal("a purged ban is still indexed")
	}
	if b := bl.check("x", "u", netip.Addr{}); b == nil {
		t.Fatal("the purge took a ban in force")
	}
}

// A CONNECT's ban check with many bans in force, as flapping detection
// can make: it looks up its own client id and username.
func BenchmarkBanCheck(b *testing.B) {
	bl := newTestBanList()
	for i := range 100_000 {
		bl.apply(testBan(b, fmt.Sprint("b", i), int64(i+1), banRecord{ClientID: fmt.Sprint("flapper-", i)}))
	}
	ip := netip.MustParseAddr("10.1.2.3")
	b.ReportAllocs()
	for b.Loop() {
		if bl.check("steady", "user", ip) != nil {
			b.Fatal("banned")
		}
	}
}
