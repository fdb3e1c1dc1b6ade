package trie

import (
	"fmt"
	"runtime"
	"strconv"
	"testing"
)

type benchVal struct {
	QoS   byte
	Flags byte
	ID    uint32
}

// benchFilter is the i-th of a mix of 5-level filters sharing prefixes:
// 80% exact, 10% with '+', 10% ending in '#'.
func benchFilter(i int) string {
	site, dev := strconv.Itoa(i%100), strconv.Itoa(i/100%10000)
	switch i % 10 {
	case 0:
		return "site/" + site + "/+/" + dev + "/temp"
	case 1:
		return "site/" + site + "/dev/" + dev + "/#"
	}
	return "site/" + site + "/dev/" + dev + "/m" + strconv.Itoa(i%7)
}

func build(b *testing.B, n int) *Trie[uint32, benchVal] {
	tr := New[uint32, benchVal]()
	for i := range n {
		if _, _, err := tr.Subscribe(benchFilter(i), uint32(i), benchVal{QoS: 1, ID: uint32(i)}); err != nil {
			b.Fatal(err)
		}
	}
	return tr
}

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func BenchmarkMatch1M(b *testing.B) {
	before := heap()
	tr := build(b, 1_000_000)
	perSub := float64(heap()-before) / 1e6
	topics := make([][]byte, 1024)
	for i := range topics {
		topics[i] = []byte(fmt.Sprintf("site/%d/dev/%d/m%d", i%100, i*7%10000, i%7))
	}
	n := 0
	visit := func(uint32, benchVal) { n++ }
	vg := func(*Group[uint32, benchVal]) {}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		tr.Match(topics[i&1023], visit, vg)
		i++
	}
	b.StopTimer()
	if n == 0 {
		b.Fatal("nothing matched")
	}
	runtime.KeepAlive(tr)
	b.ReportMetric(perSub, "B/sub")
}

func BenchmarkSubscribe(b *testing.B) {
	tr := New[uint32, benchVal]()
	filters := make([]string, 1<<16)
	for i := range filters {
		filters[i] = benchFilter(i * 13)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tr.Subscribe(filters[i&(1<<16-1)], uint32(i), benchVal{})
		i++
	}
}

func BenchmarkUnsubscribe(b *testing.B) {
	const n = 1 << 16
	tr := New[uint32, benchVal]()
	filters := make([]string, n)
	for i := range filters {
		filters[i] = benchFilter(i * 13)
		tr.Subscribe(filters[i], uint32(i), benchVal{})
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		j := i & (n - 1)
		tr.Unsubscribe(filters[j], uint32(j))
		tr.Subscribe(filters[j], uint32(j), benchVal{}) // keep the size steady
		i++
	}
}
