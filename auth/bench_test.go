package auth

import (
	"strconv"
	"testing"
)

// benchRules returns n rules of one client, a mix like an ACL file's user
// block plus substituted patterns: for rule i, by i%10,
//
//	0-3  building/<i>/floor/<i%7>/temp     write   (literal)
//	4-5  building/<i>/+/status             readwrite ('+')
//	6    tenant/<i>/#                      read    ('#')
//	7    users/user7/<i>/#                 readwrite (%u substituted)
//	8    building/<i>/floor/<i%7>/secret   deny
//	9    devices/+/cmd/<i>                 write   ('+' in the middle)
//
// With n == 1 the one rule is building/+/floor/+/temp, write.
func benchRules(n int) []Rule {
	if n == 1 {
		return []Rule{{Filter: "building/+/floor/+/temp", Access: Write}}
	}
	rules := make([]Rule, 0, n)
	for i := range n {
		s, f := strconv.Itoa(i), strconv.Itoa(i%7)
		var r Rule
		switch i % 10 {
		case 0, 1, 2, 3:
			r = Rule{Filter: "building/" + s + "/floor/" + f + "/temp", Access: Write}
		case 4, 5:
			r = Rule{Filter: "building/" + s + "/+/status", Access: ReadWrite}
		case 6:
			r = Rule{Filter: "tenant/" + s + "/#", Access: Read}
		case 7:
			r = Rule{Filter: "users/user7/" + s + "/#", Access: ReadWrite}
		case 8:
			r = Rule{Filter: "building/" + s + "/floor/" + f + "/secret", Access: ReadWrite, Deny: true}
		case 9:
			r = Rule{Filter: "devices/+/cmd/" + s, Access: Write}
		}
		rules = append(rules, r)
	}
	return rules
}

// benchTopics are topic names of five levels or fewer for benchRules(100):
// allowed through each kind of rule, denied by a rule, and matching none.
var benchTopics = [][]byte{
	[]byte("building/3/floor/3/temp"),
	[]byte("building/14/x/status"),
	[]byte("users/user7/17/inbox/x"),
	[]byte("devices/d42/cmd/19"),
	[]byte("building/18/floor/4/secret"),
	[]byte("nothing/matches/this/topic/here"),
}

var benchFilters = [][]byte{
	[]byte("building/14/+/status"),
	[]byte("tenant/16/#"),
	[]byte("users/user7/17/+/x"),
	[]byte("building/18/#"),
	[]byte("#"),
	[]byte("$SYS/#"),
}

func BenchmarkCanPublish(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run("rules="+strconv.Itoa(n), func(b *testing.B) {
			m := Compile(benchRules(n))
			topics := benchTopics
			if n == 1 {
				topics = [][]byte{[]byte("building/3/floor/2/temp"), []byte("building/3/floor/2/hum")}
			}
			b.ReportAllocs()
			allowed, i := 0, 0
			for b.Loop() {
				if m.CanPublish(topics[i]) {
					allowed++
				}
				if i++; i == len(topics) {
					i = 0
				}
			}
			if allowed == 0 {
				b.Fatal("nothing allowed")
			}
		})
	}
}

func BenchmarkCanRead(b *testing.B) {
	b.Run("rules=100", func(b *testing.B) {
		m := Compile(benchRules(100))
		b.ReportAllocs()
		allowed, i := 0, 0
		for b.Loop() {
			if m.CanRead(benchTopics[i]) {
				allowed++
			}
			if i++; i == len(benchTopics) {
				i = 0
			}
		}
		if allowed == 0 {
			b.Fatal("nothing allowed")
		}
	})
}

func BenchmarkCanSubscribe(b *testing.B) {
	b.Run("rules=100", func(b *testing.B) {
		m := Compile(benchRules(100))
		b.ReportAllocs()
		allowed, i := 0, 0
		for b.Loop() {
			if m.CanSubscribe(benchFilters[i]) != SubDenied {
				allowed++
			}
			if i++; i == len(benchFilters) {
				i = 0
			}
		}
		if allowed == 0 {
			b.Fatal("nothing allowed")
		}
	})
}

// BenchmarkCompileShared measures CONNECT's cost of getting a matcher for
// 100 rules that are already interned.
func BenchmarkCompileShared(b *testing.B) {
	rules := benchRules(100)
	want := CompileShared(rules)
	b.ReportAllocs()
	for b.Loop() {
		if CompileShared(rules) != want {
			b.Fatal("not interned")
		}
	}
}

func BenchmarkCompile(b *testing.B) {
	rules := benchRules(100)
	b.ReportAllocs()
	for b.Loop() {
		if Compile(rules).Len() != 100 {
			b.Fatal("rules lost")
		}
	}
}
