package bench

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Direct writes. At a fixed rate the pacer sends, every tick, one write
// per publisher with messages due. Handing each write to the publisher's
// event loop (AsyncWrite) costs a wake-up of that loop and a task per
// write; a publisher whose socket no one else writes gets its bytes
// written by the pacer itself, on a descriptor of its own (a dup, so that
// the event loop closing the connection cannot hand the number to another
// socket under it).

// openDirect lets the pacer write c's socket when nothing else does: a
// publisher that subscribes to nothing, at QoS 0 or 1, whose event loop
// only reads (PINGRESP, PUBACK). (A stream client is written directly
// anyway, through its TLS or WebSocket framing.)
func (c *client) openDirect() {
	if c.direct || c.stream != nil || len(c.subscribe) > 0 || c.run.cfg.QoS > 1 || c.closed.Load() {
		return
	}
	fd, err := unix.Dup(c.conn.Fd())
	if err != nil {
		return
	}
	c.wfd, c.direct = fd, true
}

// writeDirect writes buf after any backlog; what the socket does not take
// now stays in the backlog for the next tick. It reports false once the
// connection is gone.
func (c *client) writeDirect(buf []byte) bool {
	if len(c.backlog) > 0 {
		c.backlog = append(c.backlog, buf...)
		buf = c.backlog
	}
	for len(buf) > 0 {
		n, err := rawWrite(c.wfd, buf)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err != 0 {
			c.backlog = c.backlog[:0]
			return false
		}
		buf = buf[n:]
	}
	c.backlog = append(c.backlog[:0], buf...)
	return true
}

// closeDirect writes what is left in the backlog, waiting for the socket
// for up to the drain time, and closes the descriptor.
func (c *client) closeDirect() {
	if !c.direct {
		return
	}
	deadline := time.Now().Add(c.run.cfg.Drain)
	for len(c.backlog) > 0 && time.Now().Before(deadline) && !c.closed.Load() {
		_, _ = unix.Poll([]unix.PollFd{{Fd: int32(c.wfd), Events: unix.POLLOUT}}, 100)
		if !c.writeDirect(nil) {
			break
		}
	}
	_ = unix.Close(c.wfd)
	c.direct = false
}

// rawWrite is write(2) without the scheduler's system-call bookkeeping:
// the socket is non-blocking, so the call never waits, and the runtime
// need not hand the pacer's processor to another thread meanwhile (with
// unix.Write, Go's monitor thread woke every 20 µs to do just that and
// took an eighth of the generator's CPU).
func rawWrite(fd int, b []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), e
}
