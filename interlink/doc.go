// Package interlink is the node-to-node link of a Gannet cluster:
// membership (over hashicorp/memberlist), a full mesh of TCP links between
// the members, peer authentication, encryption, and batched, compressed,
// reliable delivery of opaque records that the broker defines.
//
// Gossip is encrypted by memberlist (AES-GCM) with a key derived from the
// same secret, SHA-256("gannet gossip key" | 0 | secret); a node without
// the secret cannot join. With --cluster-insecure gossip is plain too.
//
// # Links over TLS
//
// With --cluster-tls-* (Config.CertFile, KeyFile, CAFile) the links between
// nodes are TLS 1.3 with certificates from the cluster CA on both sides;
// the secret keys gossip. Every connection, dialled or accepted, on every
// lane, starts with the TLS handshake: the acceptor requires the dialer's
// certificate and verifies it against the CA, the dialer verifies the
// acceptor's chain against the CA (not its host name: nodes dial the
// addresses they gossip). The handshake below then runs inside TLS, the
// secret's proofs included (they cost little and keep a node with a
// certificate but without the secret out), and the frames after it are
// not sealed a second time: TLS encrypts and authenticates them. Every
// node of a cluster runs with TLS or none does; a node without it cannot
// link to one with it, either way round. With --cluster-insecure and the
// TLS flags the links are TLS and gossip is plain, which the node says in
// a warning at start. SIGHUP (Node.ReloadTLS) reads the files again for
// the links made after it. A dialer replaces its connection after 2^24
// TLS records, before one set of keys has protected more than TLS 1.3
// allows (crypto/tls does not update keys by itself). tls.go has the
// details.
//
// # Links and lanes
//
// Every node dials every other member: the connections a node dials carry
// what it sends (its "lanes" to that peer, --interlink-lanes of them), and
// the receiver answers on the same connection with acknowledgements only.
// So each direction between two nodes has its own connections, and no
// tie-break is needed. Lane 0 carries control records (routes, retained
// messages, session transfer); a forwarded message travels on the lane its
// publisher hashes to among the others (lane 0 too when there is only
// one), so one publisher's messages stay in order and control records
// never wait behind bulk traffic.
//
// # Frames
//
// Every frame is length-prefixed and typed:
//
//	+-----------+------+----------------------+
//	| length    | type | payload              |
//	| 4 bytes BE| 1    | length - 1 bytes     |
//	+-----------+------+----------------------+
//
// The dialer speaks first:
//
//	HELLO   (1): magic "GNTL" | version 2 | node str | epoch u64 | lane u8 |
//	             compression u8 | nonce [16]
//	WELCOME (2): version 2 | node str | nonce [16] |
//	             proof [32] = HMAC-SHA256(secret, "welcome" | acceptor nonce |
//	                          HELLO payload (uvarint length first) | acceptor name)
//	PROOF   (3): proof [32] = HMAC-SHA256(secret, "hello" | acceptor nonce |
//	                          HELLO payload (uvarint length first) | acceptor name)
//	REJECT  (4): reason str (then the acceptor closes)
//
// A peer that does not know the cluster secret cannot produce either
// proof; the acceptor checks PROOF and the dialer checks WELCOME, each
// logs and closes on a mismatch. The proofs cover the whole HELLO, so its
// lane, run and codec cannot be changed on the way either. The compression
// in HELLO is the dialer's choice for what it sends (none 0, s2 1, zstd
// 2); an acceptor that cannot decode it rejects the link. A HELLO or
// WELCOME of another version is refused with a log line naming both
// versions: every node of a cluster runs the same one.
//
// Until a dialer has sent a good PROOF it holds little of the acceptor's:
// a goroutine and a read buffer (and, over TLS, the TLS handshake's
// state), for at most Config.HandshakeTimeout, TLS handshake included,
// and at most Config.PendingHandshakes such connections exist at once;
// past that a new connection is closed as soon as it is accepted.
//
// # Sealed frames
//
// After the handshake, when the nodes have a secret (always, unless
// --cluster-insecure) and the links do not run over TLS, every frame in
// both directions is sealed with ChaCha20-Poly1305 (RFC 8439):
//
//	+-----------+------+--------------------------------+----------+
//	| length    | type | ciphertext of the payload      | tag      |
//	| 4 bytes BE| 1    | length - 17 bytes              | 16 bytes |
//	+-----------+------+--------------------------------+----------+
//	 \_____ associated data ______/
//
//	keys:  PRK = HKDF-Extract(SHA-256, salt = dialer nonce | acceptor nonce,
//	                          input = secret)
//	       key(dialer -> acceptor) = HKDF-Expand(SHA-256, PRK,
//	           "gannet interlink 2: dialer to acceptor" | dialer name str | acceptor name str, 32)
//	       key(acceptor -> dialer) = HKDF-Expand(SHA-256, PRK,
//	           "gannet interlink 2: acceptor to dialer" | dialer name str | acceptor name str, 32)
//	nonce: 4 zero bytes | frame number u64 BE
//
// Each direction of each connection has its own key (fresh nonces on
// every connection give fresh keys) and numbers its frames from 0; the
// number is not sent, each end counts. So a nonce never repeats under a
// key, and a frame that was changed, replayed, dropped or moved fails to
// open: the receiver counts it (gannet_interlink_unauthentic_frames_total),
// logs it and closes the link, which reconnects as after any failure and
// replays what was not acknowledged. The type byte travels in the clear
// but, with the length, is authenticated. A BATCH is compressed first and
// then sealed; its payload below is what the seal protects. Without a
// secret, or inside TLS, frames travel as drawn above, unsealed.
//
// Then the dialer sends batches and pings, the acceptor acks and pongs
// (payloads, before sealing):
//
//	BATCH (5): flags u8 | epoch uvarint | first seq uvarint | [raw length uvarint] | records
//	           flags bit 0: records are compressed with the link's codec, and
//	           the raw length bounds what the receiver will inflate.
//	ACK   (6): epoch uvarint | seq uvarint: every reliable record of that
//	           run up to seq on this lane is done (its effects durable on
//	           the receiver).
//	PING  (7): u64 send time; PONG (8) echoes it, for round-trip time.
//
// A record is
//
//	+---------------------------+----------------+------+
//	| kind u8 (bit 7: reliable) | length uvarint | body |
//	+---------------------------+----------------+------+
//
// Reliable records of a batch carry the consecutive sequence numbers from
// "first seq"; unreliable ones carry none. Numbers, lengths and flags are
// checked; a bad frame closes that link with a logged reason.
//
// # Reliability
//
// A reliable record (a QoS 1/2 message, a session transfer) stays in its
// lane's queue from Send until the receiver acknowledges it, and is
// written again on every new connection of the lane until then. Its
// identity is (sender, epoch: the sender's run, lane, seq); a batch holds
// consecutive records of one epoch. The receiver remembers, per sender,
// epoch and lane, the last sequence number it accepted and drops records
// at or below it (but those the broker could not store, below), so a
// replay delivers nothing twice. A broker that keeps
// records in its store (SendTracked) queues them again after a restart
// under their first identity (Preload), and a receiver that stores its
// positions (Receive's pos, Restore) recognises them across its own
// restart too. The broker sees each reliable record's sequence number
// (Record.Seq), and the sender can ask how far its stream to a peer has
// got (SentTo): records it queued before asking have numbers at or below
// the answer. A queue is bounded (Config.QueueLimit); Send refuses past
// it. Unreliable records (QoS 0, route deltas, retained updates) to a peer
// that is not connected are dropped and counted.
//
// An acknowledgement is therefore a promise the sender's broker can lean
// on: once a record is acknowledged its effects are as durable on the
// receiver as the receiver's broker makes them. The broker uses it in
// place of its own store for a forwarded QoS 1/2 message (server's
// peerack.go): it acknowledges the publisher when the peer acknowledges
// the message, and keeps the record in its store (SendTracked's token,
// Handler.Settled) only when the peer is slow to answer. What the broker
// promises in each case is in the README's Cluster section. Reliable
// records waiting while none is in flight go at once, not after the
// batch delay (lane.urgent), so that such an acknowledgement costs a
// round trip and no more.
//
// The receiver acknowledges a record only when the broker reports its
// effects done, which with persistence on is after they are on disk, and
// never past a record whose effects the broker could not store (a full
// disk, a failed write): the acknowledgements of that run stop before it,
// however many records after it were stored. The receiver then closes the
// lane's connections, so that the sender writes everything unacknowledged
// again on its next one, and takes the records that failed from that
// replay: it remembers them (stream.go) and drops the rest of the replay
// as usual, so records after them that were stored are not delivered
// twice. New records that arrive while a failed one waits for its replay
// are dropped too, not handed over: the replay brings them after it, so
// the broker stores a lane's records in the order they were sent (only
// records handed over before the failure was known, while the broker
// still took them, may be stored ahead of it). It asks at once the first
// time; while the broker keeps failing, after 50ms, then twice as long
// each time up to 2s, and at once again when the broker has stored a
// batch of the lane meanwhile. The broker sees the records that failed a
// second time: it applied them once already, unless it refused them
// without applying them (as the broker does while its store refuses
// writes). The position the broker stores with a batch never reaches past
// a record known to have failed, and one stored with a batch handed over
// before an earlier one failed is taken back (stored lower) before the
// replay is asked for, so that a restart takes the failed records again
// rather than acknowledging them. Only a crash between that batch's write
// and the lower position's loses them.
//
// # Backpressure
//
// Unreliable records wait in a lane's buffer, bounded at eight batches; a
// record that finds it full is dropped and counted. Before it comes to
// that, a lane with more than two batches waiting on a live connection is
// behind (pace.go), and Node.Behind tells the broker to read its
// publishers more slowly (it holds their input back without blocking) so
// that at overload the peer's pace sets the publishers' and nothing is
// dropped. A lane whose writer takes nothing for Config.Backpressure (the
// peer stopped reading) stops counting until it writes again: a stuck peer
// loses its QoS 0 messages rather than slowing everyone's publishers.
package interlink
