package persist

import (
	"errors"
	"slices"
	"time"
)

// What the committer does while the store refuses writes because its
// instance died or it opened read-only: every group fails at once with
// down.err, and at most every second (recheck) it hands a reopen to a
// goroutine of its own, which probes the disk and, if it takes writes,
// opens the directory anew. Groups keep failing meanwhile; the committer
// installs what the reopen brings back.

// reopened is the outcome of a reopen.
type reopened struct {
	in     *instance // the instance to use: the new one, the read-only one kept, or nil
	err    error
	busy   bool // Load is reading: not tried
	probed bool // the disk does not take writes yet
	died   bool // the new instance died too
}

// instanceDied runs on the goroutine where an instance died: it refuses
// writes at once and wakes the committer.
func (s *Store) instanceDied(in *instance) {
	err := in.failure()
	if !in.opening.Load() {
		s.log.Error("persist: the store failed; writes are refused until it reopens the database",
			"dir", s.opts.Dir, "err", in.cause)
	}
	s.unhealthy.Store(&err)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// noticeDeath puts the store down when its instance died.
//
// REQUIRES: the committer (or Open before it starts).
func (s *Store) noticeDeath() {
	in := s.inst
	if in == nil || !in.isDead() {
		return
	}
	s.inst = nil
	s.down.corpse = in
	s.down.dead++
	s.down.next, s.down.wait = time.Time{}, 0
	s.setDown(in.failure())
}

// setDown makes every group fail with err until an instance reopens.
func (s *Store) setDown(err error) {
	s.down.err = err
	s.unhealthy.Store(&err)
}

// maybeReopen starts a reopen when one is due.
//
// REQUIRES: the committer.
func (s *Store) maybeReopen() {
	s.noticeDeath()
	d := &s.down
	if d.err == nil || d.busy || time.Now().Before(d.next) {
		return
	}
	if d.dead >= maxDeadInstances {
		if !d.gaveUp {
			d.gaveUp = true
			s.log.Error("persist: the database failed too often; writes stay refused until the broker restarts",
				"dir", s.opts.Dir, "failures", d.dead, "err", d.err)
		}
		return
	}
	old := s.inst
	if old == nil {
		old = d.corpse
	}
	d.busy = true
	go func() { s.reopened <- s.reopen(old) }()
}

// reopen opens the directory for writing in place of old (dead, or
// read-only) once the disk takes writes, and writes the id counter before
// anything else. It runs on a goroutine of its own and does not touch the
// committer's state.
func (s *Store) reopen(old *instance) reopened {
	if !s.swap.TryLock() {
		return reopened{in: live(old), busy: true}
	}
	defer s.swap.Unlock()
	if err := s.probe(); err != nil {
		return reopened{in: live(old), err: err, probed: true}
	}
	if old != nil {
		if old.isDead() {
			s.bury(old)
		} else {
			s.closeInstance(old)
		}
	}
	in, err := s.openInstance(false)
	if err == nil {
		err = runErr(in, func() error { return s.writeFormat(in.db) })
		if err != nil && !in.isDead() {
			s.closeInstance(in)
		}
	}
	if err != nil {
		return reopened{err: err, died: errors.Is(err, ErrStoreFailed)}
	}
	s.db = in.db
	return reopened{in: in}
}

// live is in unless it died.
func live(in *instance) *instance {
	if in == nil || in.isDead() {
		return nil
	}
	return in
}

// install takes a reopen's outcome.
//
// REQUIRES: the committer.
func (s *Store) install(r reopened) {
	d := &s.down
	d.busy = false
	s.inst = r.in
	switch {
	case r.busy:
		return
	case r.err != nil:
		if r.died {
			d.dead++
		}
		if r.probed {
			d.next = time.Now().Add(time.Second)
			return
		}
		d.wait = min(max(2*d.wait, time.Second), time.Minute)
		d.next = time.Now().Add(d.wait)
		s.log.Warn("persist: cannot reopen the database", "dir", s.opts.Dir, "err", r.err, "retry_in", d.wait)
		return
	}
	d.err, d.corpse, d.wait = nil, nil, 0
	s.disk.full, s.disk.lastCheck = false, time.Time{}
	s.unhealthy.Store(nil)
	s.log.Warn("persist: the database reopened; writes resume", "dir", s.opts.Dir)
}

// commitPurge commits Load's purge. While the store refuses writes, the
// purge is held (as every refused deletion is: hold) and nil returned:
// the records it deletes are reported to nobody either way.
func (s *Store) commitPurge(b *Batch) error {
	done := make(chan error, 1)
	s.Commit(b, func(err error) { done <- err })
	err := <-done
	if err == nil || !errors.Is(err, ErrDiskFull) && !errors.Is(err, ErrStoreFailed) {
		return err
	}
	s.log.Warn("persist: expired records stay on disk until the store takes writes", "dir", s.opts.Dir, "err", err)
	return nil
}

// maxHeld bounds what the store keeps to write again (hold).
const maxHeld = 64 << 20

// hold keeps what a refused group must still write, to be written ahead
// of the first group written once the store takes writes again, in order:
//   - the deletions of each part: the broker's memory went on without what
//     they delete (an acknowledged delivery, an ended session, a completed
//     QoS 2 exchange), and left on disk it would come back at the next
//     start;
//   - the whole of each kept part (CommitKept), whose done waits for it.
//
// Nothing written after the refusal precedes them (every group fails
// until the store takes writes), so they cannot undo a newer record.
// Beyond maxHeld, deletions are dropped and counted, and kept parts fail.
// It returns group with the done of the kept parts taken out (they run
// later), for write to call the others' with err.
func (s *Store) hold(group []pendingCommit, err error) []pendingCommit {
	s.mu.Lock()
	defer s.mu.Unlock()
	dropped := 0
	for i := range group {
		pc := &group[i]
		if pc.keep && s.mu.redoBytes+len(pc.buf) <= maxHeld {
			// The refused write may have reached the log all the same
			// and be applied at the reopen: its creations are sets now,
			// so that a deletion after them is written, not elided.
			ops := slices.Clone(pc.ops)
			for i := range ops {
				if ops[i].kind == opCreate {
					ops[i].kind = opSet
				}
			}
			s.mu.redo = append(s.mu.redo, pendingCommit{buf: pc.buf, ops: ops, done: pc.done, keep: true})
			s.mu.redoBytes += len(pc.buf)
			s.mu.redoKept++
			pc.done = nil
			continue
		}
		var d pendingCommit
		for _, o := range pc.ops {
			if o.kind != opDelete && o.kind != opDeleteRange {
				continue
			}
			if s.mu.redoBytes >= maxHeld {
				dropped++
				continue
			}
			k0 := len(d.buf)
			d.buf = append(d.buf, pc.buf[o.k0:o.k1]...)
			held := op{kind: o.kind, k0: k0, k1: len(d.buf)}
			if o.kind == opDeleteRange {
				d.buf = append(d.buf, pc.buf[o.v0:o.v1]...)
				held.v0, held.v1 = held.k1, len(d.buf)
			}
			d.ops = append(d.ops, held)
			s.mu.redoBytes += o.k1 - o.k0 + o.v1 - o.v0
		}
		if len(d.ops) > 0 {
			s.mu.redo = append(s.mu.redo, d)
		}
	}
	if dropped > 0 {
		s.stats.heldDropped.Add(uint64(dropped))
		s.log.Error("persist: too many refused deletions held; records deleted while the disk refused writes may come back after a restart",
			"dir", s.opts.Dir, "dropped", dropped, "held_bytes", s.mu.redoBytes, "err", err)
	}
	return group
}
