package persist

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Retained messages keep their stamps and clearings (tombstones) theirs
// across a reopen; a clearing and a message replace each other; a record
// written before stamps were kept loads with stamp 0.
func TestRetainedStampsAndClearingsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, Options{Dir: dir})
	var b Batch
	kept := sampleMessage(0)
	kept.Topic, kept.Stamp = []byte("r/kept"), 1_700_000_000_123_456_789
	b.PutRetained(kept)
	b.PutRetained(&Message{Topic: []byte("r/cleared"), Payload: []byte("x"), Stamp: 5})
	b.ClearRetained([]byte("r/cleared"), 7)
	b.ClearRetained([]byte("r/back"), 8)
	back := &Message{Topic: []byte("r/back"), Payload: []byte("again"), Stamp: 9}
	b.PutRetained(back)
	// As the store wrote retained messages before it kept stamps.
	old := &Message{Topic: []byte("r/old"), Payload: []byte("v1"), QoS: 1, Retain: true}
	b.set(opSet, func(d []byte) []byte { return append(append(d, prefixRetained), old.Topic...) },
		func(d []byte) []byte { return appendMessage(d, old) })
	commitWait(t, s, &b)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openT(t, Options{Dir: dir})
	defer s.Close()
	retained := map[string]*Message{}
	cleared := map[string]int64{}
	st, err := s.Load(time.Now(), Loader{
		Retained: func(m *Message) { retained[string(m.Topic)] = m },
		Cleared:  func(topic []byte, stamp int64) { cleared[string(topic)] = stamp },
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := map[string]*Message{"r/kept": kept, "r/back": back, "r/old": old}
	if !reflect.DeepEqual(retained, want) {
		t.Fatalf("retained:\n got %+v\nwant %+v", retained, want)
	}
	if want := map[string]int64{"r/cleared": 7}; !reflect.DeepEqual(cleared, want) {
		t.Fatalf("clearings %v, want %v", cleared, want)
	}
	if st.Retained != 3 || st.Cleared != 1 {
		t.Fatalf("load counted %d retained and %d clearings, want 3 and 1", st.Retained, st.Cleared)
	}
}

// A retained record that does not decode is refused as corrupt, naming
// its key, rather than taken for a message or a clearing.
func TestRetainedCorruptRecord(t *testing.T) {
	for name, val := range map[string][]byte{
		"version":  {3, 0, 1},
		"kind":     {retainedVersion, 2, 1},
		"stamp":    {retainedVersion, retainedCleared},
		"trailing": {retainedVersion, retainedCleared, 1, 0},
		"message":  {retainedVersion, retainedMessage, 1, recordVersion},
	} {
		t.Run(name, func(t *testing.T) {
			s := openT(t, Options{})
			defer s.Close()
			if err := s.db.Set([]byte("rbad"), val, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			_, err := s.Load(time.Now(), Loader{})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load: %v, want ErrCorrupt", err)
			}
		})
	}
}

// FuzzRetained feeds the retained record decoder arbitrary bytes: it may
// not panic, and what decodes encodes back to a record that decodes the
// same.
func FuzzRetained(f *testing.F) {
	m := sampleMessage(0)
	m.Stamp = 42
	f.Add(appendRetained(nil, m, 0))
	f.Add(appendRetained(nil, nil, 42))
	f.Add(appendMessage(nil, m))
	f.Add([]byte{retainedVersion, retainedCleared, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, stamp, err := DecodeRetained(b)
		if err != nil {
			return
		}
		m2, stamp2, err := DecodeRetained(appendRetained(nil, m, stamp))
		if err != nil || !reflect.DeepEqual(m2, m) || stamp2 != stamp {
			t.Fatalf("retained record does not round-trip: %v\n%+v %d\n%+v %d", err, m, stamp, m2, stamp2)
		}
	})
}
