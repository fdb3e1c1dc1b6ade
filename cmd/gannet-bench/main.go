// Command gannet-bench drives an MQTT broker with a load scenario and
// reports throughput, latency, losses and the broker's CPU and memory.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gannetmq/gannet/bench"
	"github.com/gannetmq/gannet/bench/chaos"
	"github.com/gannetmq/gannet/bench/torture"
	"github.com/gannetmq/gannet/codec"
)

func main() {
	if code, ok := torture.AbuserProcess(); ok {
		os.Exit(code) // the hostile scenario's abusers (bench/torture)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "report" {
		return report(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "torture" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		return torture.Command(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "chaos" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		return chaos.Command(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("gannet-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: gannet-bench [flags]

gannet-bench drives an MQTT broker with one scenario and reports throughput,
latency percentiles, lost and duplicated messages (by sequence numbers in
the payloads) and, given --broker-pid, the broker's CPU time per message
and memory. It exits 1 when messages were lost beyond what the QoS allows,
or when the broker refused a CONNECT (conn; other scenarios stop with exit
code 2 at the first refusal, naming the codes).

       gannet-bench report --dir DIR [--plots OUT] [RUN...]

The second form reads the JSON results of a comparison (files named
<broker>-<run>.json, as bench/compare.sh writes them), prints Markdown
tables of the given runs with Gannet's ratio to every other broker, and
draws throughput, latency and memory plots as PNG files into OUT.

       gannet-bench torture [-broker gannet|mosquitto] [-full] [-bin PATH] SCENARIO...|all

The third form starts the broker itself and abuses it: reconnect storm
after kill -9, offline flood, slow consumers, retained storm, hostile
clients; each prints its figures and pass/fail conditions (see
gannet-bench torture -h).

       gannet-bench chaos [-scenario faults|rolling] [-seed N] [-duration D] [-bin PATH]

The fourth form starts a 3-node cluster of the broker itself, runs
persistent publishers and subscribers over it, injects faults from the
seed (kill -9, SIGSTOP, interlink links cut and delayed, a full disk) or
drains and restarts every node in turn, and checks the recorded history:
no acknowledged message lost, QoS 2 exactly once, order, retained messages
and routes converged, no client on two nodes (see gannet-bench chaos -h).

Scenarios:
  conn      --clients idle connections at --connect-rate or --connect-window: connect rate,
            CONNECT-to-CONNACK latency, refusals (any makes the run fail), broker CPU and RSS per connection
  fanin     --publishers clients publish, one subscriber receives everything
  fanout    --publishers publish to one topic, --subscribers receive every message
  p2p       --clients pairs: publisher i to subscriber i
  stresser  --clients clients each publish to their own topic and subscribe to it
  retained  --publishers send retained messages to --retained-topics topics each
  shared    --publishers to a $share group of --subscribers members
  cluster   p2p with publishers on --addr and subscribers on --sub-addr

Transports: plain TCP by default; --tls for MQTT over TLS, --ws for MQTT
over WebSocket, both for WebSocket over TLS (wss). Every scenario runs over
each. Over TLS, every connection makes a full handshake unless
--tls-resume: the client keeps no session cache and offers no resumption,
so the broker issues no tickets either. Over TLS or WebSocket, conn's
CONNACK latency counts from the start of the TLS handshake or upgrade.

Flags:
`)
		fs.PrintDefaults()
	}
	var cfg bench.Config
	var qos, version uint
	var asJSON bool
	var groups string
	tr := &cfg.Transport
	fs.StringVar(&cfg.Scenario, "scenario", "p2p", "scenario to run (see above)")
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:1883", "broker `address`")
	fs.StringVar(&cfg.SubAddr, "sub-addr", "", "`address` subscribers connect to (default --addr); comma-separated: spread over them (cluster, or any scenario across nodes)")
	fs.BoolVar(&cfg.JSON, "payload-json", false, "fill payloads with JSON telemetry readings (changing every message) instead of zeros")
	fs.IntVar(&cfg.Clients, "clients", 100, "connections (conn), pairs (p2p, cluster) or clients (stresser)")
	fs.IntVar(&cfg.Publishers, "publishers", 1, "publishing clients (fanin, fanout, shared, retained)")
	fs.IntVar(&cfg.Subscribers, "subscribers", 1, "subscribing clients (fanout, shared, retained)")
	fs.IntVar(&cfg.Payload, "payload", 64, "payload size in `bytes` (at least 20: sequence number and timestamp)")
	fs.UintVar(&qos, "qos", 0, "QoS of publishes and subscriptions: 0, 1 or 2")
	fs.UintVar(&version, "mqtt", 4, "MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5")
	fs.DurationVar(&cfg.SessionExpiry, "session-expiry", 0, "give clients sessions the broker keeps this long (MQTT 5), or clean session 0 (3.x); 0: clean sessions")
	fs.IntVar(&cfg.Rate, "rate", 0, "total publishes per second; 0: as fast as the broker acknowledges")
	fs.DurationVar(&cfg.Tick, "tick", 100*time.Microsecond, "with --rate: send the messages due every `interval` from one goroutine, spread over the publishers, each publisher's share in one write; 0: each message on its own timer and goroutine wake-up (exactly spaced, at about 1.5 times the generator CPU)")
	fs.DurationVar(&cfg.Duration, "duration", 0, "measurement window (default 10s unless --count)")
	fs.Int64Var(&cfg.Count, "count", 0, "messages per publisher; 0: publish until --duration ends")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "traffic before the measurement window starts")
	fs.IntVar(&cfg.Window, "inflight", 0, "unacknowledged messages per publisher (default 100, or 1000 at QoS 0)")
	fs.IntVar(&cfg.ConnectRate, "connect-rate", 0, "conn: connections per second; 0: as fast as possible")
	fs.IntVar(&cfg.ConnectWindow, "connect-window", 0, "conn: at most this many CONNECTs awaiting their CONNACK at a time (the next client dials when one is answered); 0: no bound")
	fs.StringVar(&cfg.IDPrefix, "id-prefix", "", "`prefix` of the publishers' and subscribers' client ids instead of bench- (several generators on one broker)")
	fs.StringVar(&cfg.Username, "username", "", "username every client sends; %d becomes the client's index (i of bench-conn-i, bench-pub-i, bench-sub-i), modulo --users; empty: none")
	fs.StringVar(&cfg.Password, "password", "", "password every client sends; empty: none")
	fs.IntVar(&cfg.Users, "users", 0, "with %d in --username: this many distinct users, client i being user i mod N; 0: one user per client")
	fs.DurationVar(&cfg.KeepAlive, "keepalive", 300*time.Second, "keepalive every CONNECT asks for (whole seconds); 0: none")
	fs.StringVar(&cfg.ConnSubscribe, "subscribe", "", "conn: every client subscribes to this filter `template` at --qos once connected, %d its index (e.g. bench/conn/%d); empty: none")
	fs.BoolVar(&cfg.Disconnect, "disconnect", false, "conn: once all are connected and measured, every client sends DISCONNECT and closes, and the broker's RSS is measured again: per offline session with --session-expiry (plain TCP only)")
	fs.StringVar(&cfg.ClientID, "client-id", "", "conn: client id `template`, %d the client's index (default bench-conn-%d)")
	fs.StringVar(&cfg.Topic, "topic", "", "p2p, cluster, stresser: topic `template` of pair (client) i, %d the index, %u the username (default bench/p2p/%d, bench/stress/%d)")
	fs.IntVar(&cfg.BrokerPID, "broker-pid", 0, "broker process `pid`, to read its CPU time and memory from /proc")
	fs.DurationVar(&cfg.Drain, "drain", 0, "how long to wait for outstanding messages after publishing stops (default 10s)")
	fs.IntVar(&cfg.RetainedTopics, "retained-topics", 1000, "retained: distinct topics per publisher")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fs.BoolVar(&tr.TLS, "tls", false, "dial with TLS (MQTT over TLS; with --ws, WebSocket over TLS); needs --ca or --insecure-skip-verify")
	fs.StringVar(&tr.CAFile, "ca", "", "with --tls: CA certificates `file` (PEM) the broker's certificate must chain to")
	fs.BoolVar(&tr.InsecureSkipVerify, "insecure-skip-verify", false, "with --tls: accept whatever certificate the broker presents (the handshake is otherwise the same)")
	fs.StringVar(&tr.CertFile, "cert", "", "with --tls: client certificate `file` (PEM) every client presents, with --key")
	fs.StringVar(&tr.KeyFile, "key", "", "with --tls: private key `file` (PEM) of --cert")
	fs.StringVar(&tr.ServerName, "tls-server-name", "", "with --tls: `name` the broker's certificate must hold, also sent as SNI (default: the host of the address dialled)")
	fs.StringVar(&groups, "tls-groups", "", "with --tls: key exchange `groups` offered, comma-separated, preferred first: X25519, P256, P384, P521, X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024 (default: Go's, X25519MLKEM768 first)")
	fs.BoolVar(&tr.Resume, "tls-resume", false, "with --tls: keep a session cache, so that connections resume earlier connections' sessions from their tickets; by default (false) there is no session cache and every connection makes a full handshake")
	fs.BoolVar(&tr.WS, "ws", false, "MQTT over WebSocket: an HTTP upgrade to --ws-path asking for subprotocol mqtt, then masked binary frames; with --tls, over TLS (wss)")
	wsPath := fs.String("ws-path", "/mqtt", "with --ws: the upgrade's `path`")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if qos > 2 {
		fmt.Fprintf(stderr, "gannet-bench: --qos must be 0, 1 or 2, got %d\n", qos)
		return 2
	}
	if version < 3 || version > 5 {
		fmt.Fprintf(stderr, "gannet-bench: --mqtt must be 3, 4 or 5, got %d\n", version)
		return 2
	}
	if groups != "" {
		tr.Groups = strings.Split(groups, ",")
	}
	// --ws-path without --ws is refused by bench.Run, with a message.
	if tr.WS {
		tr.WSPath = *wsPath
	} else {
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "ws-path" {
				tr.WSPath = *wsPath
			}
		})
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = -1 // --keepalive 0: none (0 in Config is the default)
	}
	cfg.QoS, cfg.Version = byte(qos), codec.Version(version)
	cfg.Progress = stderr
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "gannet-bench: %v\n", err)
		return 2
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		res.Print(stdout)
	}
	if res.Refused > 0 || res.Unanswered > 0 {
		fmt.Fprintf(stderr, "gannet-bench: FAILED: %d of %d CONNECTs refused (%s), %d closed or unanswered without a CONNACK\n",
			res.Refused, res.Clients, res.Refusals(), res.Unanswered)
		return 1
	}
	if res.Failed() {
		fmt.Fprintf(stderr, "gannet-bench: %d messages lost, %d duplicated at QoS %d\n", res.Lost, res.Duplicates, res.QoS)
		return 1
	}
	return 0
}

func report(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gannet-bench report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "`directory` holding <broker>-<run>.json results")
	plots := fs.String("plots", "", "`directory` to write PNG plots into; empty: no plots")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "gannet-bench report: --dir is required")
		return 2
	}
	rs, err := bench.LoadResults(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "gannet-bench report: %v\n", err)
		return 1
	}
	rs.Table(stdout, fs.Args())
	if *plots != "" {
		if err := rs.Plot(*plots); err != nil {
			fmt.Fprintf(stderr, "gannet-bench report: %v\n", err)
			return 1
		}
	}
	return 0
}
