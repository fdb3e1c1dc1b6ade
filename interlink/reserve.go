package interlink

// Reservation is room for one reliable record in a lane's queue, taken by
// Reserve. It is used by SendReserved or given back by Release, once.
type Reservation struct {
	l *lane
}

// laneLimit is how many reliable records one lane holds, its share of
// Config.QueueLimit.
func laneLimit(cfg *Config) int {
	return (cfg.QueueLimit + cfg.Lanes - 1) / cfg.Lanes
}

// Reserve takes room for one reliable record of at most size bytes for
// peer on lane, so that the SendReserved that follows cannot be refused:
// a caller that must queue a record for several peers or for none checks
// every queue before it queues anything. It fails as Send would
// (ErrUnknownPeer, ErrTooLarge, ErrQueueFull). It never blocks on the
// network, and costs no allocation.
func (n *Node) Reserve(peerName string, lane, size int) (Reservation, error) {
	if size > n.cfg.MaxFrame/2 {
		return Reservation{}, ErrTooLarge
	}
	n.mu.Lock()
	p := n.peers[peerName]
	n.mu.Unlock()
	if p == nil {
		return Reservation{}, ErrUnknownPeer
	}
	l := p.lanes[lane]
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.mu.rel)-l.mu.head+l.mu.reserved >= laneLimit(&n.cfg) {
		p.st.droppedFull.Inc()
		return Reservation{}, ErrQueueFull
	}
	l.mu.reserved++
	return Reservation{l: l}, nil
}

// SendReserved is SendTracked into room taken by Reserve, on the lane
// and for the peer it was taken for. It fails only for a body larger than
// the reservation allowed (ErrTooLarge), giving the room back.
func (n *Node) SendReserved(r Reservation, kind byte, body []byte, token uint64) (Position, error) {
	if len(body) > n.cfg.MaxFrame/2 {
		n.Release(r)
		return Position{}, ErrTooLarge
	}
	seq, err := r.l.enqueue(kind, body, true, true, token, 0, 0)
	return Position{Epoch: n.epoch, Lane: uint8(r.l.idx), Seq: seq}, err
}

// Release gives back room taken by Reserve and not used.
func (n *Node) Release(r Reservation) {
	r.l.mu.Lock()
	r.l.mu.reserved--
	r.l.mu.Unlock()
}
