// Package torture abuses a broker and says whether it held: each scenario
// starts the broker itself (Gannet, or Mosquitto configured with the
// nearest equivalents of Gannet's limits), on random loopback ports with
// a temporary data directory, applies one kind of abuse, and reports
// figures (RSS from /proc, latency percentiles, counts, the broker's own
// counters) and pass/fail conditions.
//
//	reconnect  persistent QoS 1 subscribers; kill -9; all reconnect at once
//	offline    sessions offline while messages pile up past the queue budget
//	slow       a fan-out with subscribers that read slowly or not at all
//	retained   many retained messages, many wildcard subscribers at once
//	hostile    huge SUBSCRIBEs, maximum-size packets, silent and half
//	           CONNECTs, a flooder, beside well-behaved clients
//
// Each runs in a short form (hundreds of clients, seconds: the package's
// tests, against Gannet) and a full form (the sizes of a 2-core machine
// with 20,000 descriptors per process: up to 10,000 clients, a few
// minutes), through `gannet-bench torture`. Conditions on latency, and
// memory ratios that mean something only at full size, are enforced in
// the full form only; the short form reports them.
//
// The scenarios reuse bench's load generator where a standard load is
// what they need (fan-out and p2p latency, measured alone and under
// abuse), and otherwise drive the broker with the client here: a
// goroutine per connection built on codec, which can resume a session
// and keep a ledger across a broker kill, read at a set pace or not at
// all, stop half-way through a packet, or send what no well-behaved
// client sends. The hostile scenario's abusers run in a second process
// (this executable again, abusers.go), so that their goroutines and
// buffers do not share a scheduler and a garbage collector with the
// well-behaved clients whose latency it measures; -abusers-nice lowers
// that process's CPU priority.
//
// Mosquitto's equivalents: max_queued_messages, max_queued_bytes,
// memory_limit, max_connections, max_packet_size and
// max_inflight_messages take Gannet's values; its persistence saves every
// second (autosave_interval 1), the nearest it comes to Gannet's
// synchronous store; its counters are read from $SYS, published every
// second. It has no node-wide queue budget, publish rate limit,
// slow-receiver cut-off, CONNECT timeout or session limit, so those
// flags have no counterpart there.
package torture
