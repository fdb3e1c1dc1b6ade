package server

import (
	"fmt"
	"testing"

	"github.com/gannetmq/gannet/fanout"
)

// The table gives the least recently used alias to a new topic once full,
// and a forgotten alias is the next to be given out.
func TestAliasTableLRU(t *testing.T) {
	tb := newAliasTable(2)
	step := func(topic string, wantAlias uint16, wantMode fanout.AliasMode) {
		t.Helper()
		a, m := tb.lookup([]byte(topic))
		if a != wantAlias || m != wantMode {
			t.Fatalf("%s: alias %d mode %d, want %d mode %d", topic, a, m, wantAlias, wantMode)
		}
	}
	step("a", 1, fanout.AliasSet)
	step("b", 2, fanout.AliasSet)
	step("a", 1, fanout.AliasUse)
	step("c", 2, fanout.AliasSet) // b was least recently used
	step("a", 1, fanout.AliasUse)
	step("b", 2, fanout.AliasSet) // c was
	step("d", 1, fanout.AliasSet) // a was
	tb.forget(1)
	step("e", 1, fanout.AliasSet) // the forgotten one, though b is older
	step("b", 2, fanout.AliasUse)
}

// BenchmarkAliasLookup is the per-receiver cost of outbound aliases: a
// hit in a full table of 32 topics.
func BenchmarkAliasLookup(b *testing.B) {
	tb := newAliasTable(32)
	var topics [][]byte
	for i := range 32 {
		topics = append(topics, []byte(fmt.Sprintf("factory/line-3/machine-%03d/sensor/temperature", i)))
		tb.lookup(topics[i])
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tb.lookup(topics[i&31])
		i++
	}
}
