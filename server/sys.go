package server

import (
	"strconv"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// sysLoop publishes broker statistics under $SYS/broker/ every SysInterval,
// retained so that a new subscriber sees them at once. A filter starting
// with a wildcard does not match them [MQTT-4.7.2-1].
func (s *Server) sysLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.SysInterval)
	defer t.Stop()
	for {
		s.publishSys()
		select {
		case <-s.done:
			return
		case <-t.C:
		}
	}
}

func (s *Server) publishSys() {
	st := s.stats
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	s.sessions.Lock()
	nsess := len(s.sessions.m)
	s.sessions.Unlock()
	values := [...][2]string{
		{"$SYS/broker/version", "gannet"},
		{"$SYS/broker/uptime", i(int64(time.Since(s.started) / time.Second))},
		{"$SYS/broker/clients/connected", i(st.clients.Load())},
		{"$SYS/broker/clients/total", i(int64(nsess))},
		{"$SYS/broker/messages/received", u(st.msgsIn.Get())},
		{"$SYS/broker/messages/sent", u(st.msgsOut.Get())},
		{"$SYS/broker/messages/dropped", u(st.dropped())},
		{"$SYS/broker/bytes/received", u(st.bytesIn.Get())},
		{"$SYS/broker/bytes/sent", u(st.bytesOut.Get())},
		{"$SYS/broker/subscriptions/count", i(int64(s.subs.Count()))},
		{"$SYS/broker/retained messages/count", i(int64(s.retained.len()))},
	}
	now := s.now()
	for _, kv := range values {
		p := codec.Publish{Topic: []byte(kv[0]), Payload: []byte(kv[1]), Retain: true}
		s.publishInternal(newMessage(&p, "", now))
	}
}
