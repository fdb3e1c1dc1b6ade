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
//   - Lazy (CommitLazy) with Sync: done(nil) runs after the write, and
//     the write is fsynced by the next commit that is, or LazySync after
//     it at the latest (with Batch it is a Batch commit). The broker uses it for a new persistent
//     session's record alone: every later acknowledgement that depends on
//     the session (SUBACK, a PUBACK for a message queued to it) waits for
//     a synced commit, and Pebble's fsync covers the log up to it, so what
//     a crash can lose is a session that nothing was promised to yet; its
//     client finds no session present when it comes back.
//   - none (the broker's --durability=none) opens no store at all: nothing
//     survives a restart.
//
// The broker writes only what a promise needs: a QoS 1/2 message that
// only clean sessions took is not written (their state ends with the
// process anyway), and one forwarded to a cluster peer is written here
// only when the peer does not acknowledge it in time (the README's
// Cluster section has the promise, server's peerack.go the mechanism).
//
// A group either applies whole or not at all: Pebble writes a batch as one
// WAL record. done(err) with a non-nil err means none of the group's ops
// were applied.
//
// # A full or failing disk
//
// The process never ends because of the disk. Two states refuse writes,
// and Healthy reports either until it is over:
//
//   - Disk full: while the volume has less free space than
//     Options.MinFreeBytes (looked at every 250ms or 4 MiB written) every
//     group fails with ErrDiskFull before Pebble sees it, and writes resume
//     by themselves once space returns.
//   - Store failed: a write of Pebble's log or manifest failed anyway (a
//     disk that filled faster than the check, a quota, EIO). Pebble gives
//     up on its database then (Logger.Fatalf, or a panic when it closes or
//     creates a log file) and its state in memory is unknown. The store
//     abandons that opening of the database (instance.go: the goroutine
//     Pebble stopped on stays parked, and every later file change of that
//     opening waits forever, so the directory stays as a crash would have
//     left it) and fails every group with ErrStoreFailed wrapping the
//     cause. It looks at the disk at most once a second (backing off to
//     once a minute while opening fails for other reasons), and once the
//     volume has MinFreeBytes free and a small file can be written and
//     fsynced in the directory, it opens the directory anew, reading what
//     is durable as a restart would, and writes resume.
//
// While the store is failed, nothing is acknowledged: done(err) runs for
// every group. What that means for the group being written when Pebble
// gave up is weaker than above: its log record may have reached the disk
// before the failure, and it is then applied after the reopen although it
// was reported failed (as a write whose fsync fails may or may not be
// durable). Every other failed group is not applied. Everything
// acknowledged before the failure is durable with Sync; with Batch, what
// was acknowledged since the last fsync can be lost, as in a crash. The
// broker's memory stays what it believes, and the store does not tell it
// what the reopen found. Deletions in the refused groups (acknowledged
// deliveries, ended sessions, Load's purge) are held and written ahead of
// the first group once writes resume, so that what the broker dropped
// does not come back at the next start (up to 64 MiB of keys; beyond,
// they are counted in Stats.HeldDropped). A deletion is held even when a
// creation of its key in the same group made it moot, and a kept
// creation (CommitKept) written again counts as possibly on disk already
// (its first write may have reached the log): so that key is deleted,
// whichever of the two writes survived.
//
// An abandoned opening keeps its memory (memtables, caches) and goroutines
// until the process exits; after 8 of them the store stays failed until the
// broker restarts. A flush or compaction of Pebble's own that fails for
// want of space (ENOSPC, EDQUOT) fails the store the same way: Pebble
// would retry it at once and without end, burning a core. Its other
// background errors are logged, at most one line every 10s.
//
// Open on a volume that does not take writes, or where Pebble fails while
// opening for writing, opens an existing store read-only: Load reads it,
// every group fails with ErrDiskFull (or ErrStoreFailed), and the store
// opens for writing by itself once the disk takes writes, writing Load's
// purge of expired records then, ahead of anything else. A new store is
// not created on such a volume: Open fails, since there is nothing to
// serve from and the directory must take writes first. Open also fails
// when the store cannot be read at all (corrupt, foreign, newer format,
// unreadable): the broker does not start on data it cannot read.
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
//	| 'r' topic                | retained message (body inline) or its |
//	|                          | clearing, with its stamp              |
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
// layout as a whole. A retained value of version 2 holds a kind (message
// or clearing) and the stamp that orders it against cluster peers'
// versions; one of version 1, from before stamps were kept, is a bare
// message record with stamp 0 (records.go: appendRetained). A message
// record's flags say whether the message's cluster origin follows its id
// (flag 8), written only in a cluster; a binary from before origins were
// kept refuses such a record as corrupt, so a node is not downgraded past
// it with its data. A clearing
// (a tombstone) is kept so that a peer's older copy does not bring the
// message back after a restart; the broker deletes it when it expires.
// A store written by a newer format is refused (ErrNewerFormat), as is a
// directory that holds anything else (ErrForeign); a record that does not
// decode is ErrCorrupt naming its key. Nothing is ever overwritten to make
// a directory fit.
package persist
