package trie

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

// matches returns the keys whose filters match topic, sorted.
func matches(t *Trie[string, int], topic string) []string {
	var got []string
	t.Match([]byte(topic), func(k string, _ int) { got = append(got, k) }, func(g *Group[string, int]) {
		got = append(got, "$share/"+g.Name+"/"+g.Filter)
	})
	slices.Sort(got)
	return got
}

// The examples of MQTT 3.1.1 and 5.0 section 4.7.
func TestSpecExamples(t *testing.T) {
	cases := []struct {
		filter string
		topic  string
		match  bool
	}{
		// [MQTT-4.7.1-2] '#' matches the parent and any number of levels.
		{"sport/tennis/player1/#", "sport/tennis/player1", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
		{"sport/#", "sport", true},
		{"#", "sport/tennis", true},
		{"#", "/", true},
		// '+' matches exactly one level.
		{"sport/tennis/+", "sport/tennis/player1", true},
		{"sport/tennis/+", "sport/tennis/player2", true},
		{"sport/tennis/+", "sport/tennis/player1/ranking", false},
		{"sport/+", "sport", false},
		{"sport/+", "sport/", true},
		{"+/+", "/finance", true},
		{"/+", "/finance", true},
		{"+", "/finance", false},
		{"+/tennis/#", "sport/tennis/player1", true},
		{"+/+/+", "a/b/c", true},
		{"+/+/+", "a/b", false},
		// Levels are compared exactly, case and empty levels included.
		{"ACCOUNTS", "Accounts", false},
		{"a//b", "a//b", true},
		{"a/+/b", "a//b", true},
		{"a/b", "a/b/", false},
		// [MQTT-4.7.2-1] a leading wildcard does not match '$' topics.
		{"#", "$SYS/broker", false},
		{"+/monitor/Clients", "$SYS/monitor/Clients", false},
		{"$SYS/#", "$SYS/monitor/Clients", true},
		{"$SYS/monitor/+", "$SYS/monitor/Clients", true},
		{"$SYS/#", "$SYS", true},
	}
	for _, c := range cases {
		tr := New[string, int]()
		if _, _, err := tr.Subscribe(c.filter, "k", 1); err != nil {
			t.Fatalf("%q: %v", c.filter, err)
		}
		got := len(matches(tr, c.topic)) == 1
		if got != c.match {
			t.Errorf("filter %q topic %q: match %v, want %v", c.filter, c.topic, got, c.match)
		}
	}
}

func TestInvalidFilters(t *testing.T) {
	tr := New[string, int]()
	for _, f := range []string{"", "sport/tennis#", "sport/tennis/#/ranking", "sport+", "+a", "a/#b", "##",
		"$share/g", "$share/g/", "$share//a", "$share/g+/a", "$share/#/a", "$share/g/a#"} {
		if _, _, err := tr.Subscribe(f, "k", 1); err != ErrInvalidFilter {
			t.Errorf("Subscribe(%q) = %v, want ErrInvalidFilter", f, err)
		}
		if _, _, err := tr.Unsubscribe(f, "k"); err != ErrInvalidFilter {
			t.Errorf("Unsubscribe(%q) = %v, want ErrInvalidFilter", f, err)
		}
	}
	if tr.Count() != 0 {
		t.Fatal("invalid filters were stored")
	}
}

func TestSubscribeReplaceAndFlags(t *testing.T) {
	tr := New[string, int]()
	if added, first, _ := tr.Subscribe("a/b", "x", 1); !added || !first {
		t.Fatal("first subscribe")
	}
	if added, first, _ := tr.Subscribe("a/b", "y", 1); !added || first {
		t.Fatal("second key")
	}
	if added, first, _ := tr.Subscribe("a/b", "x", 2); added || first {
		t.Fatal("replace")
	}
	var val int
	tr.Match([]byte("a/b"), func(k string, v int) {
		if k == "x" {
			val = v
		}
	}, nil)
	if val != 2 {
		t.Fatalf("replaced value %d", val)
	}
	if tr.Count() != 2 {
		t.Fatalf("count %d", tr.Count())
	}
	if removed, last, _ := tr.Unsubscribe("a/b", "x"); !removed || last {
		t.Fatal("unsubscribe x")
	}
	if removed, _, _ := tr.Unsubscribe("a/b", "x"); removed {
		t.Fatal("unsubscribe x twice")
	}
	if removed, last, _ := tr.Unsubscribe("a/b", "y"); !removed || !last {
		t.Fatal("unsubscribe y")
	}
	if removed, _, _ := tr.Unsubscribe("a/c", "y"); removed {
		t.Fatal("unsubscribe of an unknown filter")
	}
	// Empty nodes are pruned.
	if !tr.root.empty() || tr.Count() != 0 {
		t.Fatalf("trie not empty: %+v", tr.root)
	}
}

func TestSharedGroups(t *testing.T) {
	tr := New[string, int]()
	if _, first, _ := tr.Subscribe("$share/g/a/+", "m1", 1); !first {
		t.Fatal("first member")
	}
	if _, first, _ := tr.Subscribe("$share/g/a/+", "m2", 1); first {
		t.Fatal("second member reported first")
	}
	tr.Subscribe("$share/h/a/+", "m3", 1)
	tr.Subscribe("a/+", "plain", 1)
	var plain []string
	groups := map[string]int{}
	tr.Match([]byte("a/x"), func(k string, _ int) { plain = append(plain, k) }, func(g *Group[string, int]) {
		if g.Filter != "a/+" {
			t.Errorf("group filter %q", g.Filter)
		}
		groups[g.Name] = g.Len()
		for i := range g.Len() {
			if k, _ := g.At(i); !strings.HasPrefix(k, "m") {
				t.Errorf("member %q", k)
			}
		}
	})
	if fmt.Sprint(plain) != "[plain]" || groups["g"] != 2 || groups["h"] != 1 || len(groups) != 2 {
		t.Fatalf("plain %v groups %v", plain, groups)
	}
	var g0 *Group[string, int]
	tr.Match([]byte("a/x"), func(string, int) {}, func(g *Group[string, int]) {
		if g.Name == "g" {
			g0 = g
		}
	})
	if a, b := g0.Next(), g0.Next(); b != a+1 {
		t.Fatalf("Next %d then %d", a, b)
	}
	tr.Unsubscribe("$share/g/a/+", "m1")
	if _, last, _ := tr.Unsubscribe("$share/g/a/+", "m2"); !last {
		t.Fatal("last member not reported")
	}
	if got := matches(tr, "a/x"); fmt.Sprint(got) != "[$share/h/a/+ plain]" {
		t.Fatalf("after leaving: %v", got)
	}
	var walked []string
	tr.Walk(func(f, k string, _ int) bool { walked = append(walked, f+"="+k); return true })
	slices.Sort(walked)
	if fmt.Sprint(walked) != "[$share/h/a/+=m3 a/+=plain]" {
		t.Fatalf("walk %v", walked)
	}
}

// brute decides a match the slow, obvious way.
func brute(filter, topic string) bool {
	if strings.HasPrefix(filter, "$share/") {
		filter = strings.SplitN(filter, "/", 3)[2]
	}
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (fl[0] == "+" || fl[0] == "#") {
		return false
	}
	for i, l := range fl {
		if l == "#" {
			return true
		}
		if i >= len(tl) || (l != "+" && l != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

var alphabet = []string{"", "a", "b", "$SYS", "+", "#"}

func randomFilter(r *rand.Rand) string {
	n := 1 + r.IntN(4)
	var lv []string
	for i := range n {
		l := alphabet[r.IntN(len(alphabet))]
		if l == "#" && i != n-1 {
			l = "a"
		}
		lv = append(lv, l)
	}
	f := strings.Join(lv, "/")
	if f == "" {
		f = "a"
	}
	if r.IntN(8) == 0 {
		f = "$share/g" + fmt.Sprint(r.IntN(2)) + "/" + f
	}
	return f
}

func randomTopic(r *rand.Rand) string {
	n := 1 + r.IntN(4)
	var lv []string
	for range n {
		lv = append(lv, alphabet[r.IntN(4)])
	}
	return strings.Join(lv, "/")
}

func TestAgainstBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		tr := New[string, int]()
		var filters []string
		for i := range 30 {
			f := randomFilter(r)
			key := fmt.Sprintf("%d:%s", i, f)
			if _, _, err := tr.Subscribe(f, key, i); err != nil {
				t.Fatalf("%q: %v", f, err)
			}
			filters = append(filters, f)
		}
		// Remove a few, as the broker does.
		for i := 0; i < 30; i += 7 {
			tr.Unsubscribe(filters[i], fmt.Sprintf("%d:%s", i, filters[i]))
			filters[i] = ""
		}
		for range 20 {
			topic := randomTopic(r)
			var want []string
			groupsSeen := map[string]bool{}
			for i, f := range filters {
				if f == "" || !brute(f, topic) {
					continue
				}
				if strings.HasPrefix(f, "$share/") {
					if !groupsSeen[f] {
						groupsSeen[f] = true
						want = append(want, f)
					}
					continue
				}
				want = append(want, fmt.Sprintf("%d:%s", i, f))
			}
			slices.Sort(want)
			if got := matches(tr, topic); !slices.Equal(got, want) {
				t.Fatalf("round %d topic %q:\n got %v\nwant %v", round, topic, got, want)
			}
		}
	}
}

// Match runs while other goroutines subscribe and unsubscribe; a
// subscription present throughout is always matched.
func TestConcurrentMatch(t *testing.T) {
	tr := New[int, int]()
	tr.Subscribe("stable/+/x", -1, 0)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				f := fmt.Sprintf("stable/%d/x", i%50)
				if i%3 == 0 {
					f = "$share/g/stable/+/x"
				}
				tr.Subscribe(f, w*1_000_000+i, i)
				tr.Unsubscribe(f, w*1_000_000+i)
			}
		}()
	}
	for i := range 20000 {
		found := false
		tr.Match([]byte(fmt.Sprintf("stable/%d/x", i%50)), func(k, _ int) {
			if k == -1 {
				found = true
			}
		}, func(g *Group[int, int]) { _ = g.Len() })
		if !found {
			t.Fatal("stable subscription not matched")
		}
	}
	close(stop)
	wg.Wait()
	if tr.Count() != 1 {
		t.Fatalf("count %d", tr.Count())
	}
}

func TestMatchAllocatesNothing(t *testing.T) {
	tr := New[int, int]()
	for i := range 100 {
		tr.Subscribe(fmt.Sprintf("a/%d/+/d", i), i, i)
		tr.Subscribe(fmt.Sprintf("$share/g/a/%d/#", i), i, i)
	}
	topic := []byte("a/42/c/d")
	n := 0
	visit := func(int, int) { n++ }
	vg := func(*Group[int, int]) { n++ }
	if a := testing.AllocsPerRun(100, func() { tr.Match(topic, visit, vg) }); a != 0 {
		t.Fatalf("Match allocated %v times", a)
	}
	n = 0
	tr.Match(topic, visit, vg)
	if n != 2 { // a/42/+/d and the group of a/42/#
		t.Fatalf("matched %d", n)
	}
}

func FuzzTrie(f *testing.F) {
	f.Add("sport/#", "sport")
	f.Add("+/+", "/finance")
	f.Add("$share/g/#", "$SYS/x")
	f.Add("a/#/b", "a/x/b")
	f.Fuzz(func(t *testing.T, filter, topic string) {
		tr := New[int, int]()
		_, _, err := tr.Subscribe(filter, 1, 1)
		if _, _, perr := parse(filter); (err == nil) != (perr == nil) {
			t.Fatalf("Subscribe %v, parse %v", err, perr)
		}
		if err != nil {
			if err != ErrInvalidFilter {
				t.Fatalf("error %v", err)
			}
			return
		}
		if strings.ContainsAny(topic, "+#") || topic == "" {
			return
		}
		got := false
		tr.Match([]byte(topic), func(int, int) { got = true }, func(*Group[int, int]) { got = true })
		if want := brute(filter, topic); got != want {
			t.Fatalf("filter %q topic %q: match %v, brute force %v", filter, topic, got, want)
		}
		if removed, last, _ := tr.Unsubscribe(filter, 1); !removed || !last || !tr.root.empty() {
			t.Fatal("unsubscribe did not empty the trie")
		}
	})
}
