// Package server is the Gannet broker: the gnet event handler, the
// per-connection protocol state machine, sessions, retained messages, wills,
// keepalive, limits, $SYS statistics and the HTTP endpoints.
//
// # Threads of control
//
// gnet runs one event loop per core. A connection (client) belongs to one
// loop for its whole life, and every field of client is touched only there
// unless its comment says otherwise. There is no goroutine per connection,
// except for a TLS connection's handshake and a TLS 1.2 one's bridge
// (below).
// OnTraffic decodes every whole packet in the read buffer without copying;
// packet fields die when it returns, so a PUBLISH is copied once into an
// immutable message before it is routed.
//
// MQTT over WebSocket (ws.go) runs on the same loops: its listener is one
// more of the engine's, OnOpen tells its connections by their local port,
// the loop answers the HTTP upgrade, unmasks frames into a per-connection
// buffer that exists only while it holds bytes, and writes each flush as
// one binary frame.
//
// Bytes for other clients are gathered in an outbox (deliver.go) for the
// whole read batch: a client on the same loop gets its bytes appended and is
// written once, with one writev, at the end; clients on other loops get
// theirs through that loop's inbox, one hand-off per loop. Timers and other
// goroutines (wills, session expiry, $SYS) use an outbox with no home loop.
// A receiver written less than --write-delay ago that is not waiting for an
// answer gets its next bytes when the delay has passed, all in one writev
// (coalesce.go): a subscriber fed by many publishers is written about once
// per delay instead of once per message.
//
// Durable state (durable.go) is written behind: every unit of work adds its
// store writes to its outbox's batch, flush hands the batch to the store's
// group committer, and acknowledgements that promise durability wait in a
// slot of the client's pending bytes until the commit completes. No event
// loop waits on disk.
//
// A session outlives its connections and is reached from every loop that
// delivers to it, so its mutable state sits under session.mu. Deliveries
// take it briefly; nothing under it blocks, writes to a socket or takes
// another session's lock.
//
// # TLS
//
// crypto/tls reads and writes by blocking, which an event loop must never
// do; but only the handshake needs it. A Go listener accepts and a
// goroutine runs the handshake (tls.go; under --tls-handshake-timeout, at
// most --tls-max-handshakes at once) reading no byte past the client's
// Finished, with a key log of its own that yields the application traffic
// secrets. A TLS 1.3 connection is then handed to an event loop
// (EventLoop.Enroll; the listener picks the loops in turn, having learnt
// them at Start) and served there like a plain one behind a record layer
// of its own (tlsrec.go): records are opened in place in the read buffer,
// each flush is sealed into records in a pooled buffer, KeyUpdate and
// alerts are handled, close_notify goes out before the FIN. Such a
// connection holds one descriptor and no goroutine; its keys cost under
// 2 KiB more than a plain connection. A TLS 1.2 connection (or one the
// loop cannot take over safely) is bridged instead: its decrypted stream
// reaches a loop through a unix socket that the engine listens on beside
// the plain listener, where a token names the TLS connection and gives the
// client its peer's address and certificate names, and two goroutines
// per connection copy between the unix socket and the tls.Conn: about 30
// KiB and three descriptors per idle connection, and goroutine wake-ups
// for each message. MQTT over WebSocket over TLS takes the same two
// paths, the WebSocket layer running over the record layer on the loop.
//
// # Lock order
//
//	Server.sessions (never held while taking another lock)
//	trie read lock (during Match)  >  session.mu
//	Server.loops     (leaf; never held while calling into gnet)
//	retainStore.mu   > storeGate's read side: expired clearings are
//	                  handed to the store under it (forgetTombs)
//	storeGate        (leaf; its read side is held only around Store.Commit,
//	                  which never waits on disk)
//	cluster.ann      > interlink send (a lane's lock, a leaf that never
//	                  waits on the network); session.mu > interlink send
//	                  too, for a moved session's redirects
//	cluster.peerRoutes > route trie lock
//	held.mu          (leaf; connections waiting for the lanes, pace.go)
//	inbox.mu         (leaf; bytes for a loop's clients, coalesce.go)
//	tlsListener.reload (leaf; serialises ReloadTLS)
//	drainer.mu       (leaf; drain.go)
//	banList.write > banList.mu (leaf); write is held while the store
//	                  commits a ban, and taken by nothing under another lock
//	adminPeers.mu    (leaf; admincluster.go)
//	awaySet.mu       (leaf; taken under session.mu, away.go)
//	cluster.reqs     > interlink send (a takeover's requests, takeover.go);
//	                  never taken under session.mu
//
// # Cluster
//
// cluster.go is the broker's side of the interlink (what a peer sends is
// dispatched in Receive), and one file holds each concern: routes and
// forwarding (clusterroutes.go), retained replication
// (clusterretained.go), the session takeover (takeover.go), restored
// sessions whose client moved while this node was down (stale.go) and
// what is kept in the store for peers (clusterspool.go). Local filters are
// announced to peers when their first subscription appears and withdrawn
// with the last; each link (re)connect sends the whole set, which replaces
// what the peer had. The announcements are numbered and a digest of the
// set follows them every few seconds, so a peer that lost one (they
// travel unreliably) sees it and asks for the whole set again
// (clusterroutes.go). A peer's routes outlive its failure for
// --cluster-forget-after, so that QoS 1/2 messages for its persistent
// sessions are queued for its return rather than dropped; what was queued
// stays after the routes go, for --max-session-expiry more (interlink's
// KeepQueued), since a session there may still be waiting for it. route
// matches the route table before the local index, so that one member of a shared
// group is picked across the cluster; a peer gets each message once and
// delivers it locally only. A CONNECT asks every peer for the client's
// session and is parked until they answer (takeover.go). While a lane to a
// peer is behind, connected clients' input is left in their read buffers
// and read once it catches up (pace.go): overload slows publishers instead
// of dropping their QoS 0 messages at the lane.
//
// The trie's read lock is held while Match visits subscribers, and a shared
// group pick checks a member's session.mu under it, so no code may call
// Subscribe or Unsubscribe while holding a session.mu.
//
// session.mu is never held while calling gnet's Write, Writev or Close:
// those may run OnClose synchronously, which takes session.mu.
package server
