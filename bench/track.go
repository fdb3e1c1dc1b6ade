package bench

import "sync"

// seqTrack counts the messages one receiver got from one publisher, by
// sequence number, to find losses and duplicates.
type seqTrack struct {
	seen   []uint64 // bit per sequence number
	unique int64
	dups   int64
}

// maxSeq bounds the sequence numbers tracked, so that a corrupted payload
// cannot make the bitmap huge. No run publishes this many per publisher.
const maxSeq = 1 << 32

// add records seq and reports whether it was new. A sequence number beyond
// maxSeq is not a message the generator sent and counts as a duplicate.
func (t *seqTrack) add(seq uint64) bool {
	if seq >= maxSeq {
		t.dups++
		return false
	}
	w := int(seq / 64)
	for w >= len(t.seen) {
		t.seen = append(t.seen, 0)
	}
	bit := uint64(1) << (seq % 64)
	if t.seen[w]&bit != 0 {
		t.dups++
		return false
	}
	t.seen[w] |= bit
	t.unique++
	return true
}

// sharedTrack is a seqTrack for receivers that split one stream (a shared
// subscription group): any member may get any message, once.
type sharedTrack struct {
	mu sync.Mutex
	t  map[uint32]*seqTrack
}

func (s *sharedTrack) add(pub uint32, seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.t[pub]
	if t == nil {
		t = &seqTrack{}
		s.t[pub] = t
	}
	return t.add(seq)
}
