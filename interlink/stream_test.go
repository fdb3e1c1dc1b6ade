package interlink

import (
	"slices"
	"testing"
)

// offer hands st the consecutive reliable records lo..hi as a batch would,
// and returns the records kept and the spans taken for them.
func offer(st *stream, lo, hi uint64) (kept []uint64, taken []seqRange, mark uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	at := 0
	var ranges []seqRange
	for s := lo; s <= hi; s++ {
		if !st.wantLocked(s, &at) {
			continue
		}
		kept = append(kept, s)
		if k := len(ranges); k > 0 && ranges[k-1].hi == s-1 {
			ranges[k-1].hi = s
		} else {
			ranges = append(ranges, seqRange{s, s})
		}
	}
	if len(ranges) == 0 {
		return nil, nil, 0
	}
	taken = st.takeLocked(ranges)
	return kept, taken, st.markLocked()
}

func settleSpans(st *stream, taken []seqRange, stored bool) uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.settleLocked(taken, stored)
	return st.done
}

func seqs(lo, hi uint64) []uint64 {
	var out []uint64
	for s := lo; s <= hi; s++ {
		out = append(out, s)
	}
	return out
}

// Failed spans are taken again, in parts and across their boundaries,
// while what was stored or is pending is not; done never passes a failed
// span, and the mark stops before one.
func TestStreamSpans(t *testing.T) {
	st := &stream{}
	_, b1, _ := offer(st, 1, 10)
	_, b2, _ := offer(st, 11, 20)
	_, b3, _ := offer(st, 21, 30)
	_, b4, m4 := offer(st, 31, 40)
	if m4 != 40 {
		t.Fatalf("mark %d with nothing failed, want 40", m4)
	}
	if d := settleSpans(st, b1, true); d != 10 {
		t.Fatalf("done %d after the first batch was stored, want 10", d)
	}
	settleSpans(st, b2, false)
	settleSpans(st, b3, false)
	if d := settleSpans(st, b4, true); d != 10 {
		t.Fatalf("done %d after a stored batch behind failed ones, want 10", d)
	}
	// A replay from 1: only the failed 11..30 are kept; this batch ends
	// inside them, and the mark stops where the failed part goes on.
	kept, r1, m := offer(st, 1, 15)
	if !slices.Equal(kept, seqs(11, 15)) || m != 15 {
		t.Fatalf("replay 1..15 kept %v with mark %d, want 11..15 and 15", kept, m)
	}
	// The rest of the replay crosses from one failed span into the next,
	// then the stored one, then new records.
	kept, r2, m := offer(st, 16, 45)
	want := append(seqs(16, 30), seqs(41, 45)...)
	if !slices.Equal(kept, want) || m != 45 {
		t.Fatalf("replay 16..45 kept %v with mark %d, want %v and 45", kept, m, want)
	}
	if kept, _, _ := offer(st, 1, 45); kept != nil {
		t.Fatalf("a replay while everything is pending or stored kept %v", kept)
	}
	if d := settleSpans(st, r1, true); d != 15 {
		t.Fatalf("done %d, want 15", d)
	}
	// Part of the second refill fails again: 16..20 was one span of the
	// replay (cut by the old span's end), 21..30 another with 41..45.
	settleSpans(st, r2[:1], false)
	if d := settleSpans(st, r2[1:], true); d != 15 {
		t.Fatalf("done %d with 16..20 failed again, want 15", d)
	}
	kept, r3, m := offer(st, 16, 50)
	if !slices.Equal(kept, append(seqs(16, 20), seqs(46, 50)...)) || m != 50 {
		t.Fatalf("third replay kept %v with mark %d", kept, m)
	}
	if d := settleSpans(st, r3, true); d != 50 {
		t.Fatalf("done %d after everything was stored, want 50", d)
	}
	if len(st.spans) != 0 || st.last != 50 {
		t.Fatalf("spans %v, last %d after everything was stored", st.spans, st.last)
	}
}

// A failed first batch leaves nothing to mark; Restore takes a position
// as stored, past any span it covers.
func TestStreamMarkAndRestore(t *testing.T) {
	st := &stream{}
	_, b1, _ := offer(st, 1, 5)
	_, _, m := offer(st, 6, 9)
	settleSpans(st, b1, false)
	st.mu.Lock()
	m2 := st.markLocked()
	st.restoreLocked(7)
	st.mu.Unlock()
	if m != 9 || m2 != 0 {
		t.Fatalf("marks %d and %d, want 9 before the failure and 0 after", m, m2)
	}
	if st.done != 7 || st.last != 9 || len(st.spans) != 1 || st.spans[0].lo != 8 {
		t.Fatalf("after Restore(7): done %d, last %d, spans %v", st.done, st.last, st.spans)
	}
}
