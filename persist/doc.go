// Package persist is Gannet's durable store, on Pebble. The broker keeps
// all live state in memory and uses the store as a write-behind log that it
// reads back at start: sessions and their subscriptions, the QoS 1/2
// messages queued or inflight for each session, inbound QoS 2 packet ids
// awaiting PUBREL, retained messages and delayed wills.
//
// # Writes and the durability promise
//
// Event loops never wait on disk. A unit of work collects its writes in a
// Batch and hands it to Store.Commit with a callback. One committer
// goroutine takes every batch handed in while the previous group was being
// written, applies them as one Pebble batch, and, with Sync durability,
// makes that batch durable with one fsync (group commit). Callbacks run in
// Commit order, after their group:
//
//   - Sync: done(nil) runs after the group's WAL record is fsynced
//     (pebble.Sync). An acknowledged write survives a process crash, an OS
//     crash and a power loss.
//   - Batch: done(nil) runs after the group is written to the WAL and the
//     memtable, before its fsync; the WAL is fsynced at least every
//     SyncInterval. A process crash (kill -9) can lose what Pebble had not
//     yet handed to the OS, and an OS crash or power loss up to
//     SyncInterval of acknowledged writes.
//   - none (the broker's --durability=none) opens no store at all: nothing
//     survives a restart.
//
// A group either applies whole or not at all: Pebble writes a batch as one
// WAL record. done(err) with a non-nil err means none of the group's ops
// were applied.
//
// Pebble stops the process when a WAL write fails (its Logger.Fatalf), so
// the store refuses writes before it gets there: while the volume has less
// free space than Options.MinFreeBytes every group fails with ErrDiskFull,
// Healthy reports it, and writes resume by themselves once space returns.
//
// # Key layout
//
//	+--------------------------+---------------------------------------+
//	| key                      | value                                 |
//	+--------------------------+---------------------------------------+
//	| 0x00 "format"            | "gannet-store" magic, u32 version     |
//	| 0x00 "idrun"             | u64 run counter (NextID's high bits)  |
//	| 'b' u64 id               | message body                          |
//	| 'm' name                 | meta value (other packages' marks)    |
//	| 'r' topic                | retained message (body inline)        |
//	| 's' cid 0x00             | session record                        |
//	| 's' cid 0x01 u64 seq     | entry: queued or inflight message     |
//	| 's' cid 0x02 u16 pid     | inbound QoS 2 id awaiting PUBREL      |
//	| 's' cid 0x03             | delayed will (message inline)         |
//	+--------------------------+---------------------------------------+
//
// cid is the client id as a u16 length and its bytes, so that no client's
// keys are a prefix of another's: everything of one client lies in
// ['s' cid, 's' cid 0xFF) and DeleteSession is one range deletion. Integers
// in keys are big-endian, so entries iterate in seq order. A message body
// is stored once and referred to by id from every entry that holds it; the
// broker counts the references and deletes the body with the last.
//
// Values start with a record version byte; the format key versions the
// layout as a whole. A store written by a newer format is refused
// (ErrNewerFormat), as is a directory that holds anything else
// (ErrForeign); a record that does not decode is ErrCorrupt naming its key.
// Nothing is ever overwritten to make a directory fit.
package persist
