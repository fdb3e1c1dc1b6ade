package server

import (
	"encoding/binary"
	"strconv"
	"strings"

	"github.com/gannetmq/gannet/interlink"
	"github.com/gannetmq/gannet/persist"
)

// markKey names the stored position of one run of a peer's lane (a
// restarted peer replays what it kept under its earlier run's identity).
func markKey(peer string, pos interlink.Position) string {
	return markPrefix + string(rune('0'+pos.Lane%10)) + string(rune('0'+pos.Lane/10)) + "/" +
		strconv.FormatUint(pos.Epoch|1<<63, 16) + "/" + peer
}

const markPrefix = "interlink/"

func markValue(pos interlink.Position) []byte {
	b := binary.BigEndian.AppendUint64(nil, pos.Epoch)
	return binary.BigEndian.AppendUint64(b, pos.Seq)
}

// restoreMark reads a stored position back; ok is false for another meta
// value.
func restoreMark(key string, val []byte) (peer string, pos interlink.Position, ok bool) {
	rest, found := strings.CutPrefix(key, markPrefix)
	if !found || len(rest) < 21 || rest[2] != '/' || rest[19] != '/' || len(val) != 16 {
		return "", pos, false
	}
	pos.Lane = (rest[0] - '0') + (rest[1]-'0')*10
	pos.Epoch = binary.BigEndian.Uint64(val)
	pos.Seq = binary.BigEndian.Uint64(val[8:])
	return rest[20:], pos, true
}

// Settled deletes the stored copies of records a peer acknowledged, and
// releases what waited for the others (peerack.go).
func (cl *cluster) Settled(peer string, tokens []uint64) {
	g := cl.s.store
	if g == nil {
		return
	}
	if tokens = cl.settle(tokens); len(tokens) == 0 {
		return
	}
	var b persist.Batch
	for _, t := range tokens {
		b.DeleteMeta(spoolKey(peer, t))
	}
	g.commit(&b, func(error) {}, true)
}

const spoolPrefix = "spool/"

// spoolKey orders a peer's kept records by token, which grows with every
// record and across restarts (persist.Store.NextID).
func spoolKey(peer string, token uint64) string {
	return spoolPrefix + peer + "/" + strconv.FormatUint(token|1<<63, 16)
}

// spoolValue is a kept record: its identity on the link (so that a peer
// that had it drops the copy sent after a restart), its kind and body.
func spoolValue(pos interlink.Position, kind byte, body []byte) []byte {
	b := make([]byte, 0, 18+len(body))
	b = binary.BigEndian.AppendUint64(b, pos.Epoch)
	b = binary.BigEndian.AppendUint64(b, pos.Seq)
	b = append(b, pos.Lane, kind)
	return append(b, body...)
}

// restoreSpool reads a kept record back; ok is false for another meta
// value.
func restoreSpool(key string, val []byte) (sp spooled, ok bool) {
	rest, found := strings.CutPrefix(key, spoolPrefix)
	i := strings.LastIndexByte(rest, '/')
	if !found || i <= 0 || len(val) < 18 {
		return sp, false
	}
	t, err := strconv.ParseUint(rest[i+1:], 16, 64)
	if err != nil || t>>63 == 0 {
		return sp, false
	}
	pos := interlink.Position{Epoch: binary.BigEndian.Uint64(val), Seq: binary.BigEndian.Uint64(val[8:]), Lane: val[16]}
	return spooled{peer: rest[:i], token: t &^ (1 << 63), pos: pos, kind: val[17], body: val[18:]}, true
}

// spooled is a record kept for a peer, read back at start.
type spooled struct {
	peer  string
	token uint64
	pos   interlink.Position
	kind  byte
	body  []byte
}
