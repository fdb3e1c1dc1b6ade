package trie

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// matches returns what Match reports for topic, sorted: plain keys as
// they are, groups as "$share/<name>/<filter>".
func matches(t *Trie[string, int], topic string) []string {
	var got []string
	t.Match([]byte(topic), func(k string, _ int) { got = append(got, k) }, func(g *Group[string, int]) {
		got = append(got, sharePrefix+g.Name+"/"+g.Filter)
	})
	slices.Sort(got)
	return got
}

// The matching examples of MQTT 3.1.1 and 5.0 section 4.7 (non-normative
// text, so without statement ids) and the rules they illustrate, with the
// MQTT 5.0 statement id where there is one. Every filter is also tried as
// a shared subscription "$share/g/<filter>".
func TestSpecExamples(t *testing.T) {
	cases := []struct {
		filter, topic string
		match         bool
	}{
		// '#' matches the parent level and any number of child levels.
		{"sport/tennis/player1/#", "sport/tennis/player1", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
		{"sport/tennis/player1/#", "sport/tennis/player2", false},
		{"sport/tennis/player1/#", "sport/tennis", false},
		{"sport/#", "sport", true},
		{"sport/#", "sport/", true},
		{"sport/#", "sports", false},
		{"#", "sport/tennis", true},
		{"#", "/", true},
		{"#", "a", true},
		// '+' matches exactly one level, an empty one too.
		{"sport/tennis/+", "sport/tennis/player1", true},
		{"sport/tennis/+", "sport/tennis/player2", true},
		{"sport/tennis/+", "sport/tennis/player1/ranking", false},
		{"sport/+", "sport", false},
		{"sport/+", "sport/", true},
		{"+/+", "/finance", true},
		{"/+", "/finance", true},
		{"+", "/finance", false},
		{"+", "finance", true},
		{"+/tennis/#", "sport/tennis/player1/ranking", true},
		{"+/+/+", "a/b/c", true},
		{"+/+/+", "a/b", false},
		{"+/#", "a", true},
		{"a/+/#", "a", false},
		// Empty levels are levels.
		{"a//b", "a//b", true},
		{"a//b", "a/b", false},
		{"a/+/b", "a//b", true},
		{"/a", "/a", true},
		{"/a", "a", false},
		{"a/", "a/", true},
		{"a/", "a", false},
		{"a/b", "a/b/", false},
		{"/", "/", true},
		{"//", "/", false},
		// No normalization: case, spaces and bytes compare as they are
		// [MQTT-4.7.3-4].
		{"ACCOUNTS", "Accounts", false},
		{"a b/c", "a b/c", true},
		{"a/b", "a /b", false},
		// A leading wildcard does not match a topic starting with '$'
		// [MQTT-4.7.2-1].
		{"#", "$SYS/monitor/Clients", false},
		{"#", "$SYS", false},
		{"+/monitor/Clients", "$SYS/monitor/Clients", false},
		{"+/#", "$SYS/x", false},
		{"+", "$", false},
		{"$SYS/#", "$SYS/monitor/Clients", true},
		{"$SYS/#", "$SYS", true},
		{"$SYS/monitor/+", "$SYS/monitor/Clients", true},
		{"$/x", "$/x", true},
		{"+/x", "$/x", false},
		// '$' only matters in the first level.
		{"a/#", "a/$SYS", true},
		{"a/+", "a/$x", true},
	}
	for _, c := range cases {
		tr := New[string, int]()
		if _, _, err := tr.Subscribe(c.filter, "k", 1); err != nil {
			t.Fatalf("Subscribe(%q): %v", c.filter, err)
		}
		if got := len(matches(tr, c.topic)) == 1; got != c.match {
			t.Errorf("filter %q topic %q: match %v, want %v", c.filter, c.topic, got, c.match)
		}
		if _, _, err := tr.Subscribe("$share/g/"+c.filter, "k", 1); err != nil {
			t.Fatalf("Subscribe($share/g/%q): %v", c.filter, err)
		}
		want := 0
		if c.match {
			want = 2
		}
		if got := len(matches(tr, c.topic)); got != want {
			t.Errorf("filter %q with a group, topic %q: %d matches", c.filter, c.topic, got)
		}
	}
}

func TestFilterValidity(t *testing.T) {
	invalid := []string{
		"",                       // [MQTT-4.7.3-1]
		"sport/tennis#",          // [MQTT-4.7.1-1]
		"sport/tennis/#/ranking", // [MQTT-4.7.1-1]
		"#/",                     // [MQTT-4.7.1-1]
		"##",                     // [MQTT-4.7.1-1]
		"a/#b",                   // [MQTT-4.7.1-1]
		"sport+",                 // [MQTT-4.7.1-2]
		"+a",                     // [MQTT-4.7.1-2]
		"a/++/b",                 // [MQTT-4.7.1-2]
		"a/b+",                   // [MQTT-4.7.1-2]
		"+#",                     // [MQTT-4.7.1-1] [MQTT-4.7.1-2]
		"$share/g",               // [MQTT-4.8.2-2]: no '/' and filter after the name
		"$share/g/",              // [MQTT-4.8.2-2]: no filter
		"$share/",                // [MQTT-4.8.2-1]: no share name
		"$share//a",              // [MQTT-4.8.2-1]: empty share name
		"$share/g+/a",            // [MQTT-4.8.2-2]
		"$share/+/a",             // [MQTT-4.8.2-2]
		"$share/#/a",             // [MQTT-4.8.2-2]
		"$share/g/a#",            // [MQTT-4.7.1-1] in the filter part
		"$share/g/a/+b",          // [MQTT-4.7.1-2] in the filter part
	}
	tr := New[string, int]()
	for _, f := range invalid {
		if _, _, err := tr.Subscribe(f, "k", 1); err != ErrInvalidFilter {
			t.Errorf("Subscribe(%q) = %v, want ErrInvalidFilter", f, err)
		}
		if _, _, err := tr.Unsubscribe(f, "k"); err != ErrInvalidFilter {
			t.Errorf("Unsubscribe(%q) = %v, want ErrInvalidFilter", f, err)
		}
	}
	if tr.Count() != 0 || !tr.mu.root.empty() {
		t.Fatal("an invalid filter was stored")
	}
	valid := []string{
		"#", "+", "/", "//", "+/+", "/+", "+/", "a/+/#", "$SYS/#", "$", "$share", "$shared/g/a",
		"$SHARE/g/a", "a/$share/g/#", "sport/tennis/player1", strings.Repeat("x/", 500) + "#",
		"$share/g/#", "$share/g/+", "$share/g//", "$share/g/$share/h/a", "$share/g.h-1/a",
	}
	for _, f := range valid {
		if _, _, err := tr.Subscribe(f, "k", 1); err != nil {
			t.Errorf("Subscribe(%q) = %v", f, err)
		}
	}
	check(t, tr)
}

func TestSubscribeFlags(t *testing.T) {
	tr := New[string, int]()
	step := func(what string, gotA, gotB bool, err error, wantA, wantB bool) {
		t.Helper()
		if err != nil || gotA != wantA || gotB != wantB {
			t.Fatalf("%s: %v %v %v, want %v %v", what, gotA, gotB, err, wantA, wantB)
		}
	}
	a, f, err := tr.Subscribe("a/b", "x", 1)
	step("first key", a, f, err, true, true)
	a, f, err = tr.Subscribe("a/b", "y", 1)
	step("second key", a, f, err, true, false)
	a, f, err = tr.Subscribe("a/b", "x", 2)
	step("replace", a, f, err, false, false)
	a, f, err = tr.Subscribe("a/+", "x", 1)
	step("same key, other filter", a, f, err, true, true)
	a, f, err = tr.Subscribe("$share/g/a/b", "x", 3)
	step("same key and filter, shared", a, f, err, true, true)
	if n := tr.Count(); n != 4 {
		t.Fatalf("Count %d, want 4", n)
	}
	vals := map[string]int{}
	tr.Match([]byte("a/b"), func(k string, v int) { vals[k] += v }, func(g *Group[string, int]) {
		k, v := g.At(0)
		vals["g:"+k] = v
	})
	if fmt.Sprint(vals) != "map[g:x:3 x:3 y:1]" { // x: 2 under a/b, 1 under a/+
		t.Fatalf("values %v", vals)
	}

	r, l, err := tr.Unsubscribe("a/b", "x")
	step("unsubscribe x", r, l, err, true, false)
	r, l, err = tr.Unsubscribe("a/b", "x")
	step("unsubscribe x again", r, l, err, false, false)
	r, l, err = tr.Unsubscribe("a/b", "y")
	step("unsubscribe the last key", r, l, err, true, true)
	for _, f := range []string{"a", "a/b/c", "a/c", "b", "a/#", "+/b", "$share/h/a/b", "$share/g/a/+"} {
		r, l, err = tr.Unsubscribe(f, "x")
		step("unsubscribe "+f, r, l, err, false, false)
	}
	r, l, err = tr.Unsubscribe("$share/g/a/b", "x")
	step("unsubscribe the group's last member", r, l, err, true, true)
	r, l, err = tr.Unsubscribe("a/+", "x")
	step("unsubscribe a/+", r, l, err, true, true)
	if tr.Count() != 0 || !tr.mu.root.empty() {
		t.Fatalf("trie not empty after every entry left: count %d", tr.Count())
	}
}

func TestSharedGroups(t *testing.T) {
	tr := New[string, int]()
	must := func(f, k string, wantFirst bool) {
		t.Helper()
		added, first, err := tr.Subscribe(f, k, 1)
		if err != nil || !added || first != wantFirst {
			t.Fatalf("Subscribe(%q, %q): %v %v %v", f, k, added, first, err)
		}
	}
	must("$share/g/a/+", "m1", true)
	must("$share/g/a/+", "m2", false)
	must("$share/g/a/+", "m3", false)
	must("$share/h/a/+", "n1", true)
	must("$share/g/a/#", "o1", true) // same name, other filter: another group
	must("a/+", "plain", true)       // the same filter, plain: kept apart
	must("a/+", "m1", false)         // a member may also subscribe plainly

	var plain []string
	groups := map[string][]string{}
	var g0 *Group[string, int]
	tr.Match([]byte("a/x"), func(k string, _ int) { plain = append(plain, k) }, func(g *Group[string, int]) {
		name := g.Name + " " + g.Filter
		if _, dup := groups[name]; dup {
			t.Errorf("group %s visited twice", name)
		}
		for i := range g.Len() {
			k, _ := g.At(i)
			groups[name] = append(groups[name], k)
		}
		slices.Sort(groups[name])
		if g.Name == "g" && g.Filter == "a/+" {
			g0 = g
		}
	})
	slices.Sort(plain)
	if fmt.Sprint(plain) != "[m1 plain]" {
		t.Fatalf("plain %v: groups delivered through visit?", plain)
	}
	if fmt.Sprint(groups) != "map[g a/#:[o1] g a/+:[m1 m2 m3] h a/+:[n1]]" {
		t.Fatalf("groups %v", groups)
	}

	// Next counts up by one per call, for round robin over the members.
	seen := map[string]int{}
	start := g0.Next()
	for range 30 {
		n := g0.Next()
		k, _ := g0.At(int(n % uint64(g0.Len())))
		seen[k]++
		if n != start+1 {
			t.Fatalf("Next %d after %d", n, start)
		}
		start = n
	}
	if fmt.Sprint(seen) != "map[m1:10 m2:10 m3:10]" {
		t.Fatalf("round robin picks %v", seen)
	}

	// A group disappears with its last member; the others stay.
	for _, k := range []string{"m1", "m2"} {
		if removed, last, _ := tr.Unsubscribe("$share/g/a/+", k); !removed || last {
			t.Fatalf("leaving %s: %v %v", k, removed, last)
		}
	}
	if removed, last, _ := tr.Unsubscribe("$share/g/a/+", "m3"); !removed || !last {
		t.Fatal("the last member's leaving is not reported as last")
	}
	if got := fmt.Sprint(matches(tr, "a/x")); got != "[$share/g/a/# $share/h/a/+ m1 plain]" {
		t.Fatalf("after group g a/+ left: %v", got)
	}
	if got := fmt.Sprint(matches(tr, "a")); got != "[$share/g/a/#]" {
		t.Fatalf("'#' group on the parent level: %v", got)
	}
	if got := fmt.Sprint(matches(tr, "$SYS/x")); got != "[]" {
		t.Fatalf("$-topic: %v", got)
	}
	check(t, tr)
}

func TestWalk(t *testing.T) {
	tr := New[string, int]()
	filters := []string{
		"a", "a/b", "a/b/c/d", "a/b/x", "a//b", "/a", "/", "//", "+", "/+", "+/", "#", "a/+/#", "$SYS/#",
		"$share/g/a/b", "$share/g/#", "$share/h/a/b", "$share/g//+",
	}
	for i := range 20 { // enough exact children for the map
		filters = append(filters, fmt.Sprintf("a/%d/z", i))
	}
	var want []string
	for i, f := range filters {
		for _, k := range []string{"k1", "k2"}[:1+i%2] {
			tr.Subscribe(f, k, i)
			want = append(want, fmt.Sprintf("%s %s %d", f, k, i))
		}
	}
	var got []string
	tr.Walk(func(f, k string, v int) bool {
		got = append(got, fmt.Sprintf("%s %s %d", f, k, v))
		return true
	})
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("Walk:\n got %q\nwant %q", got, want)
	}
	if tr.Count() != len(want) {
		t.Fatalf("Count %d, want %d", tr.Count(), len(want))
	}
	n := 0
	tr.Walk(func(string, string, int) bool { n++; return n < 5 })
	if n != 5 {
		t.Fatalf("Walk went on after false: %d calls", n)
	}
}

// Many subscribers to one filter: changes stay cheap (the entries index
// by key) and Match still sees each once.
func TestManyKeysOneFilter(t *testing.T) {
	const n = 20000
	tr := New[int, int]()
	for i := range n {
		tr.Subscribe("all/cmd", i, i)
		tr.Subscribe("$share/g/all/cmd", i, i)
	}
	for i := 0; i < n; i += 2 {
		if removed, _, _ := tr.Unsubscribe("all/cmd", i); !removed {
			t.Fatalf("key %d not removed", i)
		}
		if removed, _, _ := tr.Unsubscribe("$share/g/all/cmd", i); !removed {
			t.Fatalf("member %d not removed", i)
		}
	}
	check(t, tr)
	seen := make([]bool, n)
	members := 0
	tr.Match([]byte("all/cmd"), func(k, v int) {
		if k%2 == 0 || k != v || seen[k] {
			t.Fatalf("key %d value %d seen %v", k, v, seen[k])
		}
		seen[k] = true
	}, func(g *Group[int, int]) { members = g.Len() })
	for i := 1; i < n; i += 2 {
		if !seen[i] {
			t.Fatalf("key %d not matched", i)
		}
	}
	if members != n/2 {
		t.Fatalf("group of %d members, want %d", members, n/2)
	}
	for i := 1; i < n; i += 2 {
		tr.Unsubscribe("all/cmd", i)
		tr.Unsubscribe("$share/g/all/cmd", i)
	}
	if tr.Count() != 0 || !tr.mu.root.empty() {
		t.Fatal("trie not empty")
	}
}

// The table of exact children under adds and removals, with hashes
// forced to collide so that probe runs are long and wrap around.
func TestChildTable(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, spread := range []uint32{1, 3, 1 << 31} {
		n := new(node[int, int])
		in := map[string]uint32{} // label -> hash
		hashOf := func(l string) uint32 {
			var x uint32
			fmt.Sscan(l, &x)
			return x*2654435761%spread + 13 // ends in the last slots: probes wrap
		}
		for op := range 3000 {
			l := fmt.Sprint(r.IntN(120))
			h := hashOf(l)
			if i := n.childS(l, h); i >= 0 {
				if _, ok := in[l]; !ok || n.kids[i].label != l {
					t.Fatalf("op %d: %q found as %q", op, l, n.kids[i].label)
				}
				if r.IntN(2) == 0 {
					n.removeChild(i)
					delete(in, l)
				}
			} else {
				if _, ok := in[l]; ok {
					t.Fatalf("op %d: %q not found", op, l)
				}
				n.addChild(edge[int, int]{l, new(node[int, int]), h})
				in[l] = h
			}
			if n.numKids() != len(in) {
				t.Fatalf("op %d: %d children, want %d", op, n.numKids(), len(in))
			}
			for l, h := range in {
				if i := n.child([]byte(l), h); i < 0 || n.kids[i].label != l {
					t.Fatalf("op %d: %q lost among %d", op, l, len(in))
				}
			}
		}
		if !isTable(n.kids) && len(in) > smallKids {
			t.Fatal("no table")
		}
		for l, h := range in {
			n.removeChild(n.childS(l, h))
		}
		if !n.empty() {
			t.Fatalf("node not empty after its children left: %d slots, ext %v", len(n.kids), n.ext)
		}
	}
}

// brute reports whether filter (valid, maybe shared) matches topic, the
// slow and obvious way.
func brute(filter, topic string) bool {
	if strings.HasPrefix(filter, sharePrefix) {
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

// validFilter applies the rules of section 4.7.1 and 4.8.2 level by level.
func validFilter(filter string) bool {
	if rest, ok := strings.CutPrefix(filter, sharePrefix); ok {
		name, f, ok := strings.Cut(rest, "/")
		if !ok || name == "" || strings.ContainsAny(name, "+#") {
			return false
		}
		filter = f
	}
	if filter == "" {
		return false
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return false
		}
		if strings.Contains(l, "+") && l != "+" {
			return false
		}
	}
	return true
}

// want returns what Match should report for topic given the entries
// (filter -> keys), in the form of matches.
func want(subs map[string]map[string]bool, topic string) []string {
	var w []string
	for f, keys := range subs {
		if len(keys) == 0 || !brute(f, topic) {
			continue
		}
		if strings.HasPrefix(f, sharePrefix) {
			w = append(w, f)
			continue
		}
		for k := range keys {
			w = append(w, k)
		}
	}
	slices.Sort(w)
	return w
}

// levels is the alphabet of random filters and topics: few levels, so
// that filters overlap and wildcards meet '$' and empty levels often.
var levels = []string{"", "+", "#", "$SYS", "a", "b"}

// wideLevels adds enough exact levels for nodes with tables of children.
var wideLevels = func() []string {
	l := slices.Clone(levels)
	for i := range 40 {
		l = append(l, fmt.Sprint(i))
	}
	return l
}()

func randomFilter(r *rand.Rand, levels []string) string {
	lv := make([]string, 1+r.IntN(5))
	for i := range lv {
		lv[i] = levels[r.IntN(len(levels))]
	}
	f := strings.Join(lv, "/")
	switch r.IntN(10) {
	case 0:
		f = "$share/g/" + f
	case 1:
		f = "$share/h/" + f
	}
	return f
}

func randomTopic(r *rand.Rand, levels []string) string {
	lv := make([]string, 1+r.IntN(5))
	for i := range lv {
		for lv[i] = "+"; lv[i] == "+" || lv[i] == "#"; {
			lv[i] = levels[r.IntN(len(levels))]
		}
	}
	return strings.Join(lv, "/")
}

// Random filters and topics against brute force, with subscriptions
// coming and going so that edges split and merge.
func TestAgainstBruteForce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		levels []string
		ops    int
	}{
		{"levels=6", levels, 200},
		{"levels=46", wideLevels, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			cases := 0
			for round := range 50 {
				tr := New[string, int]()
				subs := map[string]map[string]bool{} // filter -> keys
				var known []string                   // the filters of subs, in order
				count := 0
				for op := range tc.ops {
					f := randomFilter(r, tc.levels)
					if len(known) > 0 && r.IntN(2) == 0 {
						f = known[r.IntN(len(known))] // hit what is there more often
					}
					key := fmt.Sprint("k", r.IntN(3))
					if !strings.HasPrefix(f, sharePrefix) {
						key = f + " " + key // plain keys name their filter in the results
					}
					if r.IntN(3) == 0 {
						removed, last, err := tr.Unsubscribe(f, key)
						if (err == nil) != validFilter(f) {
							t.Fatalf("Unsubscribe(%q): %v", f, err)
						}
						if removed != subs[f][key] {
							t.Fatalf("Unsubscribe(%q, %q) removed %v", f, key, removed)
						}
						if removed {
							delete(subs[f], key)
							count--
							if last != (len(subs[f]) == 0) {
								t.Fatalf("Unsubscribe(%q, %q) last %v", f, key, last)
							}
						}
					} else {
						added, first, err := tr.Subscribe(f, key, op)
						if (err == nil) != validFilter(f) {
							t.Fatalf("Subscribe(%q): %v", f, err)
						}
						if err != nil {
							continue
						}
						if added == subs[f][key] || first != (len(subs[f]) == 0) {
							t.Fatalf("Subscribe(%q, %q): added %v first %v", f, key, added, first)
						}
						if subs[f] == nil {
							subs[f] = map[string]bool{}
							known = append(known, f)
						}
						if added {
							subs[f][key] = true
							count++
						}
					}
					if op%(tc.ops/10) != 0 {
						continue
					}
					for range 8 {
						topic := randomTopic(r, tc.levels)
						if got, w := matches(tr, topic), want(subs, topic); !slices.Equal(got, w) {
							t.Fatalf("round %d topic %q:\n got %q\nwant %q", round, topic, got, w)
						}
						cases++
					}
				}
				if tr.Count() != count {
					t.Fatalf("Count %d, want %d", tr.Count(), count)
				}
				check(t, tr)
			}
			t.Logf("%d topics checked", cases)
		})
	}
}

// The trie's shape depends only on the filters in it: after filters come
// and go it has as many nodes as a trie built from the survivors alone.
func TestShapeIndependentOfHistory(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		tr := New[string, int]()
		var all []string
		for range 40 {
			f := randomFilter(r, wideLevels)
			if _, _, err := tr.Subscribe(f, "k", 1); err == nil {
				all = append(all, f)
			}
			if r.IntN(8) == 0 {
				f := fmt.Sprintf("x/%d/y/%d", r.IntN(3), r.IntN(12))
				tr.Subscribe(f, "k", 1)
				all = append(all, f)
			}
		}
		for _, f := range all {
			if r.IntN(2) == 0 {
				tr.Unsubscribe(f, "k")
			}
		}
		fresh := New[string, int]()
		tr.Walk(func(f, k string, v int) bool { fresh.Subscribe(f, k, v); return true })
		check(t, tr)
		if a, b := nodes(&tr.mu.root), nodes(&fresh.mu.root); a != b {
			t.Fatalf("%d nodes after churn, %d built fresh", a, b)
		}
	}
}

func nodes[K comparable, V any](n *node[K, V]) int {
	c := 1
	for _, e := range n.kids {
		if e.n != nil {
			c += nodes(e.n)
		}
	}
	if x := n.ext; x != nil {
		if x.plus != nil {
			c += nodes(x.plus)
		}
		if x.hash != nil {
			c += nodes(x.hash)
		}
	}
	return c
}

// check verifies the trie's invariants.
func check[K comparable, V any](t *testing.T, tr *Trie[K, V]) {
	t.Helper()
	tr.mu.RLock()
	defer tr.mu.RUnlock()
	count := 0
	var visit func(n *node[K, V], root, exact bool)
	visit = func(n *node[K, V], root, exact bool) {
		if !root && n.empty() {
			t.Fatal("an empty node is kept")
		}
		if exact && n.ext == nil && n.subs.len() == 0 && len(n.kids) < 2 {
			t.Fatalf("a node that only passes through to %q is kept", n.kids[0].label)
		}
		checkEntries(t, &n.subs)
		count += n.subs.len()
		var edges []edge[K, V]
		if isTable(n.kids) {
			if n.ext == nil || n.ext.nkids <= smallKids/2 || n.ext.nkids*4 > len(n.kids)*3 ||
				len(n.kids)&(len(n.kids)-1) != 0 || len(n.kids) > 2*smallKids && n.ext.nkids*8 < len(n.kids) {
				t.Fatalf("table of %d slots for %v children", len(n.kids), n.ext)
			}
			mask := uint32(len(n.kids) - 1)
			for i, e := range n.kids {
				if e.n == nil {
					continue
				}
				edges = append(edges, e)
				// No empty slot between an edge's home and its slot.
				for j := e.h & mask; j != uint32(i); j = (j + 1) & mask {
					if n.kids[j].n == nil {
						t.Fatalf("edge %q at %d, home %d, hole at %d", e.label, i, e.h&mask, j)
					}
				}
			}
			if len(edges) != n.ext.nkids {
				t.Fatalf("%d edges in the table, nkids %d", len(edges), n.ext.nkids)
			}
		} else {
			edges = n.kids
			if n.ext != nil && n.ext.nkids != 0 {
				t.Fatalf("a list of children with nkids %d", n.ext.nkids)
			}
		}
		if x := n.ext; x != nil {
			if x.plus == nil && x.hash == nil && len(x.groups) == 0 && x.nkids == 0 {
				t.Fatal("an unused ext is kept")
			}
			names := map[string]bool{}
			for _, g := range x.groups {
				if g.Len() == 0 || names[g.Name] {
					t.Fatalf("group %q: %d members, duplicate %v", g.Name, g.Len(), names[g.Name])
				}
				names[g.Name] = true
				checkEntries(t, &g.subs)
				count += g.Len()
			}
			if x.plus != nil {
				visit(x.plus, false, false)
			}
			if x.hash != nil {
				if hx := x.hash.ext; len(x.hash.kids) != 0 || hx != nil && (hx.plus != nil || hx.hash != nil) {
					t.Fatal("'#' node has children")
				}
				visit(x.hash, false, false)
			}
		}
		firsts := map[string]bool{}
		for _, e := range edges {
			for _, l := range strings.Split(e.label, "/") {
				if l == "+" || l == "#" {
					t.Fatalf("wildcard in edge label %q", e.label)
				}
			}
			first := firstLevel(e.label)
			if firsts[first] {
				t.Fatalf("two edges start with %q", first)
			}
			firsts[first] = true
			if e.h != levelHash(tr.seed, first) || e.h != levelHash(tr.seed, []byte(first)) {
				t.Fatalf("edge %q: wrong hash", e.label)
			}
			visit(e.n, false, true)
		}
	}
	visit(&tr.mu.root, true, false)
	if count != tr.mu.count {
		t.Fatalf("%d entries, count says %d", count, tr.mu.count)
	}
}

func checkEntries[K comparable, V any](t *testing.T, es *entries[K, V]) {
	t.Helper()
	n := es.len()
	m := es.more
	if (n > 1) != (m != nil) {
		t.Fatalf("%d entries, more %v", n, m != nil)
	}
	if m == nil {
		return
	}
	if n > indexAt && m.idx == nil || n < unindexAt && m.idx != nil {
		t.Fatalf("%d entries, index %v", n, m.idx != nil)
	}
	if m.idx != nil && len(m.idx) != n {
		t.Fatalf("%d entries, %d indexed", n, len(m.idx))
	}
	if len(m.rest) != n-1 {
		t.Fatalf("%d entries, %d in rest", n, len(m.rest))
	}
	for i := range n {
		k := es.at(i).key
		if m.idx != nil && m.idx[k] != int32(i) {
			t.Fatalf("entry %d indexed at %d", i, m.idx[k])
		}
		if es.find(k) != i {
			t.Fatalf("key of entry %d found at %d", i, es.find(k))
		}
	}
}

// Match runs while other goroutines subscribe and unsubscribe around the
// same paths, splitting and merging edges; a subscription present
// throughout is always matched.
func TestConcurrentMatch(t *testing.T) {
	tr := New[int, int]()
	stable := []string{"s/+/x/y", "s/5/x/y", "$share/g/s/5/#"}
	for i, f := range stable {
		tr.Subscribe(f, -1-i, 0)
	}
	var wg sync.WaitGroup
	var stop atomic.Bool
	var changes atomic.Int64
	for w := range 3 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; !stop.Load(); i++ {
				var f string
				switch r.IntN(5) {
				case 0:
					f = fmt.Sprintf("s/%d/x", r.IntN(8))
				case 1:
					f = fmt.Sprintf("s/%d/x/y/%d", r.IntN(8), r.IntN(4))
				case 2:
					f = fmt.Sprintf("$share/g/s/%d/#", r.IntN(8))
				case 3:
					f = fmt.Sprintf("s/%d/+/y", r.IntN(8))
				default:
					f = fmt.Sprintf("s/%d/x/%d", r.IntN(8), r.IntN(40))
				}
				key := w*1_000_000 + i
				tr.Subscribe(f, key, i)
				if r.IntN(4) != 0 {
					tr.Unsubscribe(f, key)
				}
				changes.Add(1)
			}
		})
	}
	for i := 0; i < 20000 || changes.Load() < 20000; i++ {
		var plain, shared int
		tr.Match([]byte("s/5/x/y"), func(k, _ int) {
			if k < 0 {
				plain++
			}
		}, func(g *Group[int, int]) {
			for j := range g.Len() {
				if k, _ := g.At(j); k == -3 {
					shared++
				}
			}
			g.Next()
		})
		if plain != 2 || shared != 1 {
			t.Fatalf("match %d: stable subscriptions seen %d and %d times", i, plain, shared)
		}
	}
	stop.Store(true)
	wg.Wait()
	check(t, tr)
}

func TestMatchAllocatesNothing(t *testing.T) {
	type session struct{ id string }
	type options struct {
		QoS     byte
		NoLocal bool
		SubID   uint32
	}
	sessions := make([]*session, 100)
	for i := range sessions {
		sessions[i] = &session{fmt.Sprint(i)}
	}
	t.Run("K=int", func(t *testing.T) {
		testMatchAllocs(t, func(i int) int { return i }, func(i int) int { return i })
	})
	t.Run("K=pointer", func(t *testing.T) {
		testMatchAllocs(t, func(i int) *session { return sessions[i] }, func(i int) options { return options{QoS: 1, SubID: uint32(i)} })
	})
}

func testMatchAllocs[K comparable, V any](t *testing.T, key func(int) K, val func(int) V) {
	tr := New[K, V]()
	for i := range 100 {
		tr.Subscribe(fmt.Sprintf("a/%d/+/d", i), key(i), val(i))
		tr.Subscribe(fmt.Sprintf("$share/g/a/%d/#", i), key(i), val(i))
		tr.Subscribe(fmt.Sprintf("a/%d/c/d", i), key(i), val(i))
		tr.Subscribe(fmt.Sprintf("a/%d/c/d", i), key((i+1)%100), val(i))
	}
	topic := []byte("a/42/c/d")
	n := 0
	visit := func(K, V) { n++ }
	visitGroup := func(g *Group[K, V]) { n += g.Len() }
	if a := testing.AllocsPerRun(100, func() { tr.Match(topic, visit, visitGroup) }); a != 0 {
		t.Fatalf("Match allocated %v times", a)
	}
	n = 0
	tr.Match(topic, visit, visitGroup)
	if n != 4 {
		t.Fatalf("matched %d, want 4", n)
	}
}

// FuzzTrie subscribes the filters in filters (separated by NUL, which MQTT
// forbids in filters [MQTT-4.7.3-2]), matches topic against brute force,
// then unsubscribes them all.
func FuzzTrie(f *testing.F) {
	for _, s := range [][2]string{
		{"sport/#", "sport"},
		{"+/+\x00/+\x00+", "/finance"},
		{"$share/g/#\x00#\x00$SYS/#", "$SYS/x"},
		{"a/#/b", "a/x/b"},
		{"a/b/c\x00a/b/d\x00a/+/c\x00$share/g/a/b/c", "a/b/c"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filters, topic string) {
		tr := New[int, int]()
		fs := strings.Split(filters, "\x00")
		if len(fs) > 16 {
			fs = fs[:16]
		}
		subs := map[string]map[string]bool{}
		for i, f := range fs {
			_, _, err := tr.Subscribe(f, i, i)
			if validFilter(f) != (err == nil) {
				t.Fatalf("Subscribe(%q): %v", f, err)
			}
			if err != nil {
				if err != ErrInvalidFilter {
					t.Fatalf("Subscribe(%q): %v", f, err)
				}
				continue
			}
			if subs[f] == nil {
				subs[f] = map[string]bool{}
			}
			subs[f][fmt.Sprint(i)] = true
		}
		check(t, tr)
		if topic != "" && !strings.ContainsAny(topic, "+#") {
			var got []string
			tr.Match([]byte(topic), func(k, _ int) { got = append(got, fmt.Sprint(k)) }, func(g *Group[int, int]) {
				got = append(got, sharePrefix+g.Name+"/"+g.Filter)
			})
			slices.Sort(got)
			if w := want(subs, topic); !slices.Equal(got, w) {
				t.Fatalf("topic %q: got %q, want %q", topic, got, w)
			}
		}
		for i, f := range fs {
			removed, _, _ := tr.Unsubscribe(f, i)
			if removed != subs[f][fmt.Sprint(i)] {
				t.Fatalf("Unsubscribe(%q, %d) removed %v", f, i, removed)
			}
		}
		if tr.Count() != 0 || !tr.mu.root.empty() {
			t.Fatal("trie not empty after every entry left")
		}
	})
}
