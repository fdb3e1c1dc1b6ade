package persist

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Loader receives the store's contents; nil callbacks are skipped. Every
// slice handed over belongs to the callee.
type Loader struct {
	Body     func(m *Message)
	Session  func(s *Session)
	Entry    func(clientID string, e *Entry)
	Inbound  func(clientID string, pid uint16)
	Retained func(m *Message)
	Cleared  func(topic []byte, stamp int64) // a retained message's clearing
	Will     func(clientID string, w *Will)
	Meta     func(key string, val []byte)
}

// LoadStats describe a Load.
type LoadStats struct {
	Sessions, Entries, Bodies, Retained, Wills int
	Cleared                                    int // retained messages' clearings (tombstones)
	Purged                                     int // records deleted as expired or orphaned
	Took                                       time.Duration
}

// loadedSession is one session with what lies under it.
type loadedSession struct {
	s       *Session
	entries []*Entry
	inbound []uint16
	will    *Will
}

// Load reads the whole store once, at start, before any Commit. It first
// purges what can no longer be delivered: sessions whose expiry passed
// while they were offline (with everything under them), entries whose body
// is missing or expired, bodies no entry refers to and expired retained
// messages; the purge is committed before the callbacks run. Then it calls
// Body for every body, Session for every session followed by its Entries in
// order and its Inbound ids, then Retained, Cleared, Will and Meta.
func (s *Store) Load(now time.Time, l Loader) (LoadStats, error) {
	start := time.Now()
	var st LoadStats
	nowNs := now.UnixNano()
	s.swap.Lock() // no reopen replaces s.db meanwhile
	defer s.swap.Unlock()
	it, err := s.db.NewIter(nil)
	if err != nil {
		return st, fmt.Errorf("persist: cannot read the store: %w", err)
	}
	defer it.Close()

	var purge Batch
	bodies := make(map[uint64]*Message)
	refs := make(map[uint64]int)
	var sessions []*loadedSession
	var retained []*Message
	type clearing struct {
		topic []byte
		stamp int64
	}
	var cleared []clearing
	type meta struct {
		k string
		v []byte
	}
	var metas []meta
	var cur *loadedSession
	var curClient []byte // key prefix 's' cid of cur

	corrupt := func(key []byte, err error) error {
		return fmt.Errorf("%w (key %q)", err, key)
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) == 0 {
			continue
		}
		switch k[0] {
		case prefixSys:
			continue
		case prefixBody:
			if len(k) != 9 {
				return st, corrupt(k, fmt.Errorf("%w: bad body key", ErrCorrupt))
			}
			m, err := DecodeMessage(it.Value())
			if err != nil {
				return st, corrupt(k, err)
			}
			m.ID = binary.BigEndian.Uint64(k[1:])
			bodies[m.ID] = m
		case prefixMeta:
			metas = append(metas, meta{string(k[1:]), append([]byte(nil), it.Value()...)})
		case prefixRetained:
			m, stamp, err := DecodeRetained(it.Value())
			if err != nil {
				return st, corrupt(k, err)
			}
			if m == nil {
				cleared = append(cleared, clearing{append([]byte(nil), k[1:]...), stamp})
				continue
			}
			if m.ExpiresAt != 0 && m.ExpiresAt <= nowNs {
				purge.DeleteRetained(k[1:])
				st.Purged++
				continue
			}
			retained = append(retained, m)
		case prefixSession:
			if len(k) < 4 {
				return st, corrupt(k, fmt.Errorf("%w: bad session key", ErrCorrupt))
			}
			n := int(binary.BigEndian.Uint16(k[1:]))
			if len(k) < 3+n+1 {
				return st, corrupt(k, fmt.Errorf("%w: bad session key", ErrCorrupt))
			}
			client, sub, rest := k[3:3+n], k[3+n], k[3+n+1:]
			if cur == nil || string(curClient) != string(k[:3+n]) {
				cur = nil
				curClient = append(curClient[:0], k[:3+n]...)
				if sub != subSession {
					// Data of a session whose record is gone: a deletion
					// raced a late write. Nothing can deliver it.
					purge.delRange(func(d []byte) []byte { return append(d, curClient...) },
						func(d []byte) []byte { return append(append(d, curClient...), subEnd) })
					st.Purged++
					skipPrefix(it, curClient)
					continue
				}
			}
			switch sub {
			case subSession:
				sess, err := DecodeSession(it.Value())
				if err != nil {
					return st, corrupt(k, err)
				}
				sess.ClientID = string(client)
				off := sess.DisconnectedAt
				if off == 0 {
					off = nowNs
				}
				if off+int64(sess.Expiry) <= nowNs {
					purge.DeleteSession(sess.ClientID)
					st.Purged++
					skipPrefix(it, curClient)
					continue
				}
				cur = &loadedSession{s: sess}
				sessions = append(sessions, cur)
			case subEntry:
				if len(rest) != 8 {
					return st, corrupt(k, fmt.Errorf("%w: bad entry key", ErrCorrupt))
				}
				e, err := DecodeEntry(it.Value())
				if err != nil {
					return st, corrupt(k, err)
				}
				e.Seq = binary.BigEndian.Uint64(rest)
				cur.entries = append(cur.entries, e)
			case subInbound:
				if len(rest) != 2 {
					return st, corrupt(k, fmt.Errorf("%w: bad inbound key", ErrCorrupt))
				}
				cur.inbound = append(cur.inbound, binary.BigEndian.Uint16(rest))
			case subWill:
				w, err := DecodeWill(it.Value())
				if err != nil {
					return st, corrupt(k, err)
				}
				cur.will = w
			default:
				return st, corrupt(k, fmt.Errorf("%w: unknown session key", ErrCorrupt))
			}
		default:
			return st, corrupt(k, fmt.Errorf("%w: unknown key", ErrCorrupt))
		}
	}
	if err := it.Error(); err != nil {
		return st, fmt.Errorf("persist: cannot read the store: %w", err)
	}

	// Entries need a live body; bodies need an entry.
	for _, ls := range sessions {
		kept := ls.entries[:0]
		for _, e := range ls.entries {
			m := bodies[e.MsgID]
			if m == nil || m.ExpiresAt != 0 && m.ExpiresAt <= nowNs && e.PacketID == 0 {
				// An inflight message is delivered even past its expiry:
				// onward delivery had started.
				purge.DeleteEntry(ls.s.ClientID, e.Seq)
				st.Purged++
				continue
			}
			refs[e.MsgID]++
			kept = append(kept, e)
		}
		ls.entries = kept
	}
	for id := range bodies {
		if refs[id] == 0 {
			purge.DeleteBody(id)
			delete(bodies, id)
			st.Purged++
		}
	}
	if purge.Len() > 0 {
		if err := s.commitPurge(&purge); err != nil {
			return st, fmt.Errorf("persist: cannot purge: %w", err)
		}
	}

	for _, m := range bodies {
		st.Bodies++
		if l.Body != nil {
			l.Body(m)
		}
	}
	for _, ls := range sessions {
		st.Sessions++
		if l.Session != nil {
			l.Session(ls.s)
		}
		for _, e := range ls.entries {
			st.Entries++
			if l.Entry != nil {
				l.Entry(ls.s.ClientID, e)
			}
		}
		for _, pid := range ls.inbound {
			if l.Inbound != nil {
				l.Inbound(ls.s.ClientID, pid)
			}
		}
	}
	for _, m := range retained {
		st.Retained++
		if l.Retained != nil {
			l.Retained(m)
		}
	}
	for _, c := range cleared {
		st.Cleared++
		if l.Cleared != nil {
			l.Cleared(c.topic, c.stamp)
		}
	}
	for _, ls := range sessions {
		if ls.will != nil {
			st.Wills++
			if l.Will != nil {
				l.Will(ls.s.ClientID, ls.will)
			}
		}
	}
	for _, m := range metas {
		if l.Meta != nil {
			l.Meta(m.k, m.v)
		}
	}
	st.Took = time.Since(start)
	return st, nil
}

// skipPrefix moves the iterator to the last key with prefix p, so that the
// loop's Next leaves it.
func skipPrefix(it *pebble.Iterator, p []byte) {
	end := append(append([]byte(nil), p...), subEnd)
	if !it.SeekLT(end) {
		it.First()
	}
}
