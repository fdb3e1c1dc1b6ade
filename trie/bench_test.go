package trie

import (
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// benchVal is the size of the broker's subscription options.
type benchVal struct {
	QoS   byte
	Flags byte
	ID    uint32
}

const (
	benchSites = 100
	benchDevs  = 1000
	benchSubs  = benchSites * benchDevs * 10
)

// benchFilter returns the filter of subscription i of benchSubs: each
// device of each site has ten, one per filter, all five levels long:
// eight exact ("site/<s>/dev/<d>/m0".."m7"), one with '+'
// ("site/<s>/+/<d>/m<d%8>") and one with '#' ("site/<s>/dev/<d>/#").
func benchFilter(i int) string {
	dev := i / 10
	s, d := strconv.Itoa(dev%benchSites), strconv.Itoa(dev/benchSites)
	switch k := i % 10; k {
	case 8:
		return "site/" + s + "/+/" + d + "/m" + strconv.Itoa(dev/benchSites%8)
	case 9:
		return "site/" + s + "/dev/" + d + "/#"
	default:
		return "site/" + s + "/dev/" + d + "/m" + strconv.Itoa(k)
	}
}

// benchTopic returns a topic of device d of site s that matches three
// subscriptions: an exact one, the device's '+' and its '#'.
func benchTopic(s, d int) []byte {
	return []byte("site/" + strconv.Itoa(s) + "/dev/" + strconv.Itoa(d) + "/m" + strconv.Itoa(d%8))
}

var bigBench struct {
	once   sync.Once
	tr     *Trie[uint32, benchVal]
	perSub float64 // heap bytes per subscription
}

// bigTrie returns the trie of benchSubs subscriptions, built on first use,
// and the heap it takes per subscription, filter strings included.
func bigTrie(b *testing.B) (*Trie[uint32, benchVal], float64) {
	bigBench.once.Do(func() {
		before := heapInUse()
		tr := New[uint32, benchVal]()
		for i := range benchSubs {
			if _, _, err := tr.Subscribe(benchFilter(i), uint32(i), benchVal{QoS: 1, ID: uint32(i)}); err != nil {
				b.Fatal(err)
			}
		}
		bigBench.tr = tr
		bigBench.perSub = float64(heapInUse()-before) / benchSubs
	})
	if bigBench.tr == nil || bigBench.tr.Count() != benchSubs {
		b.Fatal("the big trie is not built")
	}
	return bigBench.tr, bigBench.perSub
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkMatch matches 5-level topics against the big trie. Each topic
// matches three subscriptions. topics=1K cycles through a thousand
// topics, whose paths stay in the CPU caches like those of a broker's
// busy topics; topics=100K goes through every device of the trie, so
// nearly every node it reads comes from main memory.
func BenchmarkMatch(b *testing.B) {
	tr, perSub := bigTrie(b)
	r := rand.New(rand.NewPCG(1, 1))
	all := make([][]byte, benchSites*benchDevs)
	for i := range all {
		all[i] = benchTopic(i%benchSites, i/benchSites)
	}
	r.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	for _, bc := range []struct {
		name   string
		topics [][]byte
	}{
		{"subs=1M/topics=1K", all[:1000]},
		{"subs=1M/topics=100K", all},
	} {
		b.Run(bc.name, func(b *testing.B) {
			n := 0
			visit := func(uint32, benchVal) { n++ }
			visitGroup := func(*Group[uint32, benchVal]) { n++ }
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				tr.Match(bc.topics[i%len(bc.topics)], visit, visitGroup)
				i++
			}
			if n != 3*i {
				b.Fatalf("%d matches in %d calls, want 3 per call", n, i)
			}
			b.ReportMetric(perSub, "B/sub")
		})
	}
	b.Run("subs=1M/topics=1K/parallel", func(b *testing.B) {
		topics := all[:1000]
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			n := 0
			visit := func(uint32, benchVal) { n++ }
			for i := rand.IntN(len(topics)); pb.Next(); i++ {
				tr.Match(topics[i%len(topics)], visit, nil)
			}
		})
	})
}

// benchPool is the filters that Subscribe and Unsubscribe benchmarks add
// to and remove from the big trie: new filters ("site/<s>/new/<d>/m"),
// or existing ones, where a new key joins the filter's one entry.
func benchPool(fresh bool) []string {
	pool := make([]string, 1<<16)
	for j := range pool {
		if fresh {
			pool[j] = "site/" + strconv.Itoa(j%benchSites) + "/new/" + strconv.Itoa(j/benchSites) + "/m"
		} else {
			pool[j] = benchFilter(j * 15 % benchSubs)
		}
	}
	return pool
}

var benchPools = []struct {
	name  string
	fresh bool
}{{"filter=new", true}, {"filter=existing", false}}

const benchKey = benchSubs // keys of pool entries; the big trie's are smaller

func BenchmarkSubscribe(b *testing.B) {
	tr, _ := bigTrie(b)
	for _, bc := range benchPools {
		pool := benchPool(bc.fresh)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.ResetTimer()
			j := 0
			for b.Loop() {
				if j == len(pool) {
					b.StopTimer()
					for _, f := range pool {
						tr.Unsubscribe(f, benchKey)
					}
					j = 0
					b.StartTimer()
				}
				tr.Subscribe(pool[j], benchKey, benchVal{QoS: 1})
				j++
			}
			b.StopTimer()
			for _, f := range pool[:j] {
				tr.Unsubscribe(f, benchKey)
			}
			if tr.Count() != benchSubs {
				b.Fatalf("%d subscriptions left", tr.Count())
			}
		})
	}
}

func BenchmarkUnsubscribe(b *testing.B) {
	tr, _ := bigTrie(b)
	for _, bc := range benchPools {
		pool := benchPool(bc.fresh)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.ResetTimer()
			j := len(pool)
			for b.Loop() {
				if j == len(pool) {
					b.StopTimer()
					for _, f := range pool {
						tr.Subscribe(f, benchKey, benchVal{})
					}
					j = 0
					b.StartTimer()
				}
				tr.Unsubscribe(pool[j], benchKey)
				j++
			}
			b.StopTimer()
			for _, f := range pool[j:] {
				tr.Unsubscribe(f, benchKey)
			}
			if tr.Count() != benchSubs {
				b.Fatalf("%d subscriptions left", tr.Count())
			}
		})
	}
}

// BenchmarkCrowdedFilter subscribes and unsubscribes one key of a filter
// that a hundred thousand others share: the entries' index keeps both
// steps independent of the crowd.
func BenchmarkCrowdedFilter(b *testing.B) {
	const crowd = 100_000
	tr := New[uint32, benchVal]()
	for i := range crowd {
		tr.Subscribe("all/cmd", uint32(i), benchVal{})
	}
	b.ReportAllocs()
	b.ResetTimer()
	k := uint32(crowd)
	for b.Loop() {
		tr.Subscribe("all/cmd", k, benchVal{})
		tr.Unsubscribe("all/cmd", k)
		k++
	}
	if tr.Count() != crowd {
		b.Fatalf("%d subscriptions left", tr.Count())
	}
}
