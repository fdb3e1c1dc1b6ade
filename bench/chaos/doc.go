// Package chaos checks what a Gannet cluster promises while it is being
// broken. A run starts a cluster of real gannet processes (3 by default,
// random loopback ports, a data volume each), every node's interlink
// listener behind a TCP proxy of the harness (the node advertises the
// proxy with --cluster-advertise), and persistent clients spread over the
// nodes: publishers at QoS 1 and 2 with numbered payloads ("p3 1742"),
// and subscribers at QoS 1 and 2 to every publisher's topics. Every
// operation is recorded in a History: CONNACKs with their session-present
// flag, each PUBLISH sent (and resent), each PUBACK/PUBREC/PUBCOMP, each
// delivery, each fault. The clients speak MQTT themselves (on codec), so
// that the history is exactly what crossed the wire.
//
// Faults are drawn from a seed, one at a time with pauses between them:
//
//	kill   kill -9, down 0.5-3 s, restarted on its data
//	pause  SIGSTOP for 1.5-4 times the failure timeout (1 s), then SIGCONT
//	cut    interlink links cut both ways, one node from all or one pair,
//	       1-5 s (gossip is not proxied: the peers stay members)
//	delay  every link to and from one node delayed 20-300 ms for 2-6 s
//	disk   one node's data volume (a tmpfs) filled with a ballast file
//	       until writes fail (ENOSPC), 1-4 s, then freed
//
// The same seed replays the same schedule; the broker's timing still
// varies a little from run to run. Clients behave as behind a load
// balancer: a client whose connection ends (or goes silent for 3 s)
// connects to a node picked at random, asking for its session (clean
// start 0, expiry a day). Publishers finish what the broker did not:
// with the session present they resend with DUP and the same packet id
// (or PUBREL after a PUBREC); with the session lost they resend QoS 1 as
// new and give QoS 2 messages never PUBRECed up as in doubt (their
// publisher cannot know whether the broker kept them, and a second copy
// would be its own doing, not the broker's). Subscribers hand a QoS 2
// message on at its PUBLISH and treat a PUBLISH whose packet id still
// awaits its PUBREL as a resend; with the session lost they forget those
// ids, as MQTT says.
//
// When the faults stop, the harness heals everything, waits for the full
// mesh, lets the publishers finish, waits for deliveries to stop, makes
// every subscriber reconnect once (a takeover gathers whatever waits for
// it anywhere: deliveries that come only then are counted as stranded),
// publishes a probe on every node, and reads every node's clients,
// subscriptions and retained messages through the admin API. Check then
// asserts:
//
//   - no loss: every QoS 1/2 message acknowledged to its publisher
//     (PUBACK, or PUBREC with a success code) reaches every subscriber;
//   - QoS 2 exactly once: a message published and subscribed at QoS 2
//     reaches each subscriber once, but a delivery whose PUBREC the broker
//     never had may come again after the subscriber found no session;
//   - order: for one subscriber, the first deliveries of the messages one
//     publisher sent to one topic and that were acknowledged on one of its
//     connections come in the order they were sent, within a subscriber's
//     connection and across connections whose CONNACK found the session
//     (a takeover that moved the session to another node included). Not
//     promised: order between messages acknowledged on different
//     connections of the publisher, or one first sent on another
//     connection than the one that acknowledged it (its resends and the
//     old node's forwards, or the old node's copy read when it resumed,
//     may pass each other), order across a subscriber connection that
//     found no session, for messages sent before the new subscriptions
//     reached every node (the session was lost with its node, and what
//     the old one held arrives later), order across a move off a node that
//     a fault hit (what was on its way to that node while it was away is
//     sent on after the move, behind newer messages), and order of
//     deliveries that came only with the final reconnect;
//   - retained converge: every node holds, on each publisher's retained
//     topic, the same message, which is its last acknowledged retained
//     message or one it sent later without an answer;
//   - routes converge: a probe published on any node reaches every
//     subscriber, and each subscriber's subscriptions are held by one node
//     only, the one it is connected to;
//   - one node: no client is listed as connected by two nodes, after the
//     run or in two samples 2 s apart during it.
//
// The rolling scenario drains (POST /api/v1/node/drain), stops (SIGTERM)
// and restarts every node in turn under the same load, checks the same
// guarantees and that no client is disconnected more than once while one
// node is drained and restarted.
//
// A failed check prints the seed and, for each violation, the operations
// of the message concerned and of the client nearby and the faults
// around it; each node's log and the history (history.jsonl, read with
// ReadHistory) stay in the run's directory. The short form runs in the
// package's tests; `gannet-bench chaos` (make chaos) runs the long one.
package chaos
