package persist

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

// BenchmarkCommit measures group commit on the real disk: producers commit
// one 256-byte message (body and entry) each and wait, as publishers wait
// for their PUBACK.
func BenchmarkCommit(b *testing.B) {
	for _, d := range []Durability{DurabilitySync, DurabilityBatch} {
		for _, producers := range []int{1, 100} {
			b.Run(fmt.Sprintf("durability=%s/producers=%d", d, producers), func(b *testing.B) {
				s := openT(b, Options{Durability: d})
				defer s.Close()
				payload := make([]byte, 256)
				b.SetBytes(256)
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				per := b.N / producers
				for p := range producers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						var bt Batch
						done := make(chan error, 1)
						client := fmt.Sprint("c", p)
						for i := range per {
							id := s.NextID()
							bt.PutBody(&Message{ID: id, Topic: []byte("bench/t"), Payload: payload, QoS: 1})
							bt.PutEntry(client, &Entry{Seq: uint64(i + 1), MsgID: id, QoS: 1})
							s.Commit(&bt, func(err error) { done <- err })
							bt.Reset()
							if err := <-done; err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				st := s.Stats()
				if st.Syncs > 0 {
					b.ReportMetric(float64(per*producers)/float64(st.Syncs), "msgs/fsync")
				}
				b.ReportMetric(float64(st.BytesWritten)/float64(max(per*producers, 1)), "wal-B/msg")
			})
		}
	}
}

// BenchmarkLoad measures start-up: 100,000 sessions with one subscription
// and one queued message each.
func BenchmarkLoad(b *testing.B) {
	const sessions = 100_000
	dir := b.TempDir()
	s := openT(b, Options{Dir: dir})
	var bt Batch
	for i := range sessions {
		c := fmt.Sprintf("client-%06d", i)
		id := s.NextID()
		bt.PutSession(&Session{ClientID: c, Expiry: time.Hour, Subs: []Subscription{{Filter: "devices/" + c + "/cmd", QoS: 1}}})
		bt.PutBody(&Message{ID: id, Topic: []byte("devices/" + c + "/cmd"), Payload: make([]byte, 64), QoS: 1})
		bt.PutEntry(c, &Entry{Seq: 1, MsgID: id, QoS: 1})
		if bt.Len() > 3000 {
			commitWait(b, s, &bt)
			bt.Reset()
		}
	}
	commitWait(b, s, &bt)
	_ = s.Close()
	b.ResetTimer()
	for range b.N {
		s := openT(b, Options{Dir: dir})
		var keep []any
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		st, err := s.Load(time.Now(), Loader{
			Body:    func(m *Message) { keep = append(keep, m) },
			Session: func(ss *Session) { keep = append(keep, ss) },
			Entry:   func(c string, e *Entry) { keep = append(keep, e) },
		})
		if err != nil || st.Sessions != sessions {
			b.Fatalf("load: %v, %d sessions", err, st.Sessions)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/sessions, "heap-B/session")
		b.ReportMetric(st.Took.Seconds(), "load-s")
		runtime.KeepAlive(keep)
		_ = s.Close()
	}
}
