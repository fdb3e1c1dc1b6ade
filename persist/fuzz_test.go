package persist

import (
	"reflect"
	"testing"
	"time"
)

// FuzzRecords feeds every record decoder arbitrary bytes: none may panic,
// and what decodes must encode back to a record that decodes the same.
func FuzzRecords(f *testing.F) {
	m := sampleMessage(42)
	f.Add(appendMessage(nil, m))
	f.Add(appendMessage(nil, &Message{Topic: []byte("t"), QoS: 1})) // no origin
	f.Add(appendSession(nil, &Session{Expiry: time.Hour, DisconnectedAt: 5,
		Subs: []Subscription{{Filter: "a/+", QoS: 2, NoLocal: true, RetainAsPublished: true, SubID: 3, ReadCheck: true}}, Owner: "bob"}))
	f.Add(appendEntry(nil, &Entry{MsgID: 9, QoS: 2, Retain: true, PacketID: 7, Released: true, SubIDs: []uint32{1, 2}}))
	f.Add(appendWill(nil, &Will{Msg: *m, FireAt: 99}))
	f.Add([]byte{})
	f.Add([]byte{1, 0xFF, 0xFF, 0xFF})
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := DecodeMessage(b); err == nil {
			again, err := DecodeMessage(appendMessage(nil, m))
			if err != nil || !reflect.DeepEqual(again, m) {
				t.Fatalf("message does not round-trip: %v\n%+v\n%+v", err, m, again)
			}
		}
		if s, err := DecodeSession(b); err == nil {
			again, err := DecodeSession(appendSession(nil, s))
			if err != nil || !reflect.DeepEqual(again, s) {
				t.Fatalf("session does not round-trip: %v\n%+v\n%+v", err, s, again)
			}
		}
		if e, err := DecodeEntry(b); err == nil {
			again, err := DecodeEntry(appendEntry(nil, e))
			if err != nil || !reflect.DeepEqual(again, e) {
				t.Fatalf("entry does not round-trip: %v\n%+v\n%+v", err, e, again)
			}
		}
		if w, err := DecodeWill(b); err == nil {
			again, err := DecodeWill(appendWill(nil, w))
			if err != nil || !reflect.DeepEqual(again, w) {
				t.Fatalf("will does not round-trip: %v\n%+v\n%+v", err, w, again)
			}
		}
	})
}
