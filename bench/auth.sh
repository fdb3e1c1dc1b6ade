#!/usr/bin/env bash
# auth.sh measures what authentication and authorization cost Gannet, with
# Debian's Mosquitto side by side in the same run wherever Mosquitto can do
# the same thing:
#
#   acl      p2p, QoS 0, 64 B payloads, 100 pairs: broker CPU per message
#            with a 100-rule ACL file and the password file, against
#            neither; configurations interleaved, ROUNDS rounds
#   connect  CLIENTS clients CONNECT with a username and password (USERS
#            users, $7$ hashes): Gannet's password file, Redis and
#            PostgreSQL sources, Mosquitto's password_file, and both
#            brokers without authentication; interleaved, ROUNDS rounds
#   storm    reconnect storms against the PostgreSQL source, whose queries
#            go through counting wrapper functions: lookups per user and
#            the most queries that ran at once, from the database's side
#
# Usage: bench/auth.sh [ROUNDS] [OUTPUT DIRECTORY]   (from the repository root)
#        ROUNDS default 3; the JSON results, the database's counts and
#        summary.md (also printed) go to OUTPUT DIRECTORY, default
#        /tmp/gannet-bench-auth
#
# Environment: CLIENTS (10000), USERS (10000), SECS (5: measured seconds of
# each p2p run), WINDOW (100: CONNECTs awaiting their CONNACK at a time),
# LIMIT (2400: seconds the whole script may take), GANNET and GBENCH
# (binaries to use instead of building the tree), PARTS (the parts to run,
# of "acl connect storm"; all by default), CONN_RUNS (the connect part's
# runs, broker:configuration, in the order of each round; by default
# "gannet:none mosquitto:none gannet:passwd mosquitto:passwd gannet:redis
# gannet:postgres gannet:redis-acl gannet:postgres-acl"). Redis and
# PostgreSQL are started only when a run asks for them. For example, the
# password file's connection rate against Mosquitto's alone:
#
#   PARTS=connect CONN_RUNS='gannet:none mosquitto:none gannet:passwd mosquitto:passwd' bench/auth.sh 5
#
# Every server (brokers, redis-server, PostgreSQL) listens on a free
# loopback port and keeps its files in one temporary directory; all are
# stopped, and the directory removed, when the script ends, however it
# ends. Every run has a time limit, and so has the whole script. A CONNECT
# that a broker refuses makes the run fail: the script says so and exits 1
# at the end.
set -euo pipefail
rounds=${1:-3}
out=${2:-/tmp/gannet-bench-auth}
clients=${CLIENTS:-10000}
users=${USERS:-10000}
secs=${SECS:-5}
window=${WINDOW:-100}
limit=${LIMIT:-2400}
pass=bench-secret
pairs=100 # p2p pairs: users dev-0 to dev-99
parts=${PARTS:-acl connect storm}
conn_runs=${CONN_RUNS:-gannet:none mosquitto:none gannet:passwd mosquitto:passwd gannet:redis gannet:postgres gannet:redis-acl gannet:postgres-acl}

case $rounds in '' | *[!0-9]* | 0) echo "auth.sh: ROUNDS must be a positive whole number, not \"$rounds\"" >&2; exit 2 ;; esac
for p in $parts; do
	case $p in acl | connect | storm) ;; *) echo "auth.sh: PARTS: unknown part \"$p\" (want acl, connect, storm)" >&2; exit 2 ;; esac
done
[ -n "${parts// /}" ] || { echo "auth.sh: PARTS names no part (want acl, connect, storm)" >&2; exit 2; }
for run in $conn_runs; do
	case $run in
	gannet:none | gannet:passwd | gannet:redis | gannet:postgres | gannet:redis-acl | gannet:postgres-acl | mosquitto:none | mosquitto:passwd) ;;
	*) echo "auth.sh: CONN_RUNS: unknown run \"$run\" (want gannet: none, passwd, redis, postgres, redis-acl or postgres-acl; mosquitto: none or passwd)" >&2; exit 2 ;;
	esac
done
has_part() { [[ " $parts " == *" $1 "* ]]; }
# Redis and PostgreSQL are needed only by the runs that use them.
need_redis=false need_pg=false
if has_part connect; then
	[[ " $conn_runs " == *":redis"* ]] && need_redis=true
	[[ " $conn_runs " == *":postgres"* ]] && need_pg=true
fi
has_part storm && need_pg=true

cmds=(mosquitto mosquitto_passwd python3 curl timeout)
$need_redis && cmds+=(redis-server redis-cli)
$need_pg && cmds+=(psql)
for cmd in "${cmds[@]}"; do
	command -v "$cmd" >/dev/null || { echo "auth.sh: $cmd not found (apt-get install mosquitto mosquitto-clients redis-server postgresql python3)" >&2; exit 2; }
done
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if $need_pg && ! [ -x "$pgbin/initdb" ]; then
	echo "auth.sh: PostgreSQL's initdb not found in /usr/lib/postgresql/*/bin" >&2
	exit 2
fi
if [ "$users" -lt "$pairs" ]; then
	echo "auth.sh: USERS must be at least $pairs (the p2p pairs' users)" >&2
	exit 2
fi

mkdir -p "$out"
rm -f "$out"/acl-*.json "$out"/conn-*.json "$out"/conn-*.backend_us "$out"/storm-*.json "$out"/storm-*.txt \
	"$out/setup.txt" "$out/acl.txt" "$out/summary.md"
work=$(mktemp -d /tmp/gannet-auth.XXXXXX)
chmod 755 "$work" # the postgres user must reach its directory inside
bpid='' redis_pid='' pg_data='' watchdog='' failures=()

as_pg() { # PostgreSQL refuses to run as root
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
	set +e
	[ -n "$bpid" ] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null
	[ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
	[ -n "$pg_data" ] && as_pg "$pgbin/pg_ctl" -D "$pg_data" -m immediate -w stop >/dev/null 2>&1
	[ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "auth.sh: interrupted" >&2; exit 130' INT
trap 'echo "auth.sh: stopped: over the ${limit}s limit" >&2; exit 124' TERM
# The watchdog: TERM to this script after LIMIT seconds. Its sleep dies
# with it when cleanup stops it early.
(
	trap 'kill $s 2>/dev/null; exit 0' TERM
	sleep "$limit" &
	s=$!
	wait $s && kill -TERM $$
) &
watchdog=$!

# free_port prints a loopback TCP port nobody listened on a moment ago,
# below the ephemeral range so that no client socket takes it meanwhile.
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 12000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	echo "auth.sh: no free port found" >&2
	return 1
}
wait_port() { # port, log
	for _ in $(seq 300); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "auth.sh: nothing listens on port $1 after 30s; log:" >&2
	tail -20 "$2" >&2
	return 1
}

# --- binaries ---

tree="the tree at $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -n "$(git status --porcelain 2>/dev/null)" ] && tree="$tree with uncommitted changes"
if [ -n "${GANNET:-}" ]; then gannet=$GANNET built_broker=$GANNET; else
	gannet=$work/gannet built_broker=$tree
	go build -o "$gannet" ./cmd/gannet
fi
if [ -n "${GBENCH:-}" ]; then gbench=$GBENCH built_bench=$GBENCH; else
	gbench=$work/gannet-bench built_bench=$tree
	go build -o "$gbench" ./cmd/gannet-bench
fi

# --- users ---

# The password file: USERS users dev-0 ... with one password, hashed by
# mosquitto_passwd -U ($7$: PBKDF2-SHA512, 101 iterations, a salt each).
t0=$(date +%s%N)
for ((i = 0; i < users; i++)); do echo "dev-$i:$pass"; done >"$work/passwd"
mosquitto_passwd -U "$work/passwd"
t1=$(date +%s%N)
{
	echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(go version 2>/dev/null); $(mosquitto -h 2>/dev/null | head -1)"
	echo "broker: $built_broker; generator: $built_bench"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/setup.txt"
echo "password file: $users users, \$7\$ hashes (mosquitto_passwd -U), made in $(((t1 - t0) / 1000000)) ms" | tee -a "$out/setup.txt"
head -1 "$work/passwd" | grep -q ':\$7\$' || { echo "auth.sh: mosquitto_passwd did not write \$7\$ hashes" >&2; exit 1; }

# The ACL file: 100 rules in Mosquitto's format. Service users' blocks
# with literal, + and # filters and deny lines; patterns every client
# gets, by username (%u) and client id (%c). Device dev-N publishes and
# reads devices/dev-N/telemetry.
cat >"$work/acl" <<'ACL'
# Anonymous clients (refused here by both brokers) read announcements.
topic read public/#
topic read public/time
topic deny public/internal/#
topic read status/+/online

user dashboard
topic read devices/+/telemetry
topic read devices/+/status
topic read site/#
topic read public/#
topic read $SYS/broker/clients/connected
topic read $SYS/broker/uptime
topic write dashboard/notify
topic readwrite dashboard/state/#
topic deny devices/+/telemetry/credentials
topic deny site/+/secrets/#
topic read alarms/+/+
topic read alarms/critical/#

user fleet
topic write devices/+/cmd
topic write devices/+/cmd/+
topic read devices/+/telemetry/#
topic read devices/+/status
topic deny devices/+/telemetry/credentials
topic write firmware/+/latest
topic write firmware/+/manifest
topic readwrite fleet/jobs/#
topic read fleet/config
topic write fleet/broadcast/all
topic write fleet/broadcast/+
topic deny fleet/jobs/archive/#

user ops
topic readwrite ops/#
topic read $SYS/#
topic read site/+/alarms
topic read devices/+/status
topic write devices/+/reboot
topic deny ops/audit/#
topic read public/#
topic read alarms/#
topic write alarms/ack/+
topic read site/+/+/temperature

user billing
topic read devices/+/usage
topic read devices/+/usage/#
topic write billing/invoices/+
topic readwrite billing/state/#
topic deny billing/state/keys
topic read public/#

user gateway-7
topic readwrite site/7/#
topic write devices/+/telemetry
topic deny site/7/secrets/#
topic read fleet/broadcast/#

# Every client: its own topics by username and client id, and shared ones.
pattern readwrite devices/%u/telemetry
pattern write devices/%u/telemetry/+
pattern deny devices/%u/telemetry/credentials
pattern write devices/%u/status
pattern read devices/%u/cmd
pattern read devices/%u/cmd/+
pattern write devices/%u/usage
pattern write devices/%u/usage/#
pattern read devices/%u/reboot
pattern write devices/%c/heartbeat
pattern read devices/%c/config
pattern read devices/%c/config/#
pattern write devices/%c/logs/+
pattern deny devices/%c/logs/debug
pattern read firmware/%u/latest
pattern read firmware/%u/manifest
pattern write ota/%u/progress
pattern write ota/%u/result
pattern read ota/%u/job
pattern deny ota/%u/job/secrets
pattern readwrite sessions/%c/#
pattern deny sessions/%c/admin
pattern write alarms/%u/+
pattern write alarms/critical/%u
pattern write site/+/devices/%u
pattern read site/+/broadcast
pattern read fleet/broadcast/all
pattern read fleet/broadcast/+
pattern read fleet/config
pattern read public/#
pattern deny public/internal/#
pattern read time/+
pattern read time/zone/#
pattern write presence/%u
pattern read presence/+/ack
pattern write metrics/%u/cpu
pattern write metrics/%u/mem
pattern write metrics/%u/disk/+
pattern write metrics/%u/net/#
pattern read config/global
pattern read config/global/+
pattern deny config/global/secrets
pattern write devices/%u/events/+
pattern write devices/%u/events/alarm/#
pattern read devices/%u/shadow/get
pattern write devices/%u/shadow/update
pattern read devices/%u/shadow/delta
pattern deny devices/%u/shadow/admin/#
pattern write devices/%c/trace
pattern read rules/+/devices
pattern write geo/%u/position
pattern read geo/+/fence
ACL
nrules=$(grep -cE '^(topic|pattern) ' "$work/acl")
echo "ACL file: $nrules rules ($(grep -cE '^(topic|pattern) deny ' "$work/acl") deny, $(grep -c '^pattern ' "$work/acl") patterns)" | tee -a "$out/setup.txt"
cp "$work/acl" "$out/acl.txt"

# --- Redis and PostgreSQL, loaded with the same users ---

if $need_redis; then
redis_port=$(free_port)
mkdir "$work/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
	--dir "$work/redis" --logfile "$work/redis/redis.log" &
redis_pid=$!
wait_port "$redis_port" "$work/redis/redis.log"
# HSET mqtt_user:<u> password_hash <hash> is_superuser 0, and the user's
# own topics in mqtt_acl:<u>, as RESP for redis-cli --pipe.
awk -F: 'function b(s) { return "$" length(s) "\r\n" s "\r\n" }
{
	u = $1; h = substr($0, length(u) + 2)
	printf "*6\r\n%s%s%s%s%s%s", b("HSET"), b("mqtt_user:" u), b("password_hash"), b(h), b("is_superuser"), b("0")
	printf "*4\r\n%s%s%s%s", b("HSET"), b("mqtt_acl:" u), b("devices/" u "/#"), b("all")
}' "$work/passwd" | redis-cli -h 127.0.0.1 -p "$redis_port" --pipe >"$work/redis/load.log"
grep -q 'errors: 0' "$work/redis/load.log" || { cat "$work/redis/load.log" >&2; exit 1; }
redis_url=redis://127.0.0.1:$redis_port/0
fi

if $need_pg; then
pg_port=$(free_port)
mkdir "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$work/pg"
pg_data=$work/pg/data
as_pg "$pgbin/initdb" -D "$pg_data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$work/pg/initdb.log" 2>&1
as_pg "$pgbin/pg_ctl" -D "$pg_data" -l "$work/pg/postgres.log" -w -t 60 \
	-o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
	start >/dev/null
pg_url="postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable"
psql_() { psql "$pg_url" -X -q -v ON_ERROR_STOP=1 "$@"; }
awk -F: '{ print $1 "\t" substr($0, length($1) + 2) }' "$work/passwd" >"$work/pg/users.tsv"
psql_ <<SQL
CREATE EXTENSION pg_stat_statements;
CREATE TABLE mqtt_user (username text PRIMARY KEY, password_hash text, is_superuser boolean NOT NULL DEFAULT false);
CREATE TABLE mqtt_acl (username text NOT NULL, permission text NOT NULL, action text NOT NULL, topic text NOT NULL);
\copy mqtt_user (username, password_hash) FROM '$work/pg/users.tsv'
INSERT INTO mqtt_acl SELECT username, 'allow', 'all', 'devices/' || username || '/#' FROM mqtt_user;
CREATE INDEX ON mqtt_acl (username);
ANALYZE;

-- The storm's queries go through these: each call is logged with the
-- backend that ran it and when it started and ended, so that the log
-- counts the lookups per user and shows how many ran at once. A call
-- lasts at least 1 ms (pg_sleep), as on a database across a network,
-- so that calls under way together overlap in the log too. Besides
-- the user's row, counted_acl returns a rule naming \${clientid}, which
-- the broker fills in for each client.
CREATE UNLOGGED TABLE lookup_log (kind text, username text, pid int, t0 timestamptz, t1 timestamptz);
CREATE FUNCTION counted_user(u text) RETURNS TABLE (password_hash text, is_superuser boolean)
LANGUAGE plpgsql AS \$\$
DECLARE started timestamptz := clock_timestamp();
BEGIN
	PERFORM pg_sleep(0.001);
	RETURN QUERY SELECT m.password_hash, m.is_superuser FROM mqtt_user m WHERE m.username = u;
	INSERT INTO lookup_log VALUES ('auth', u, pg_backend_pid(), started, clock_timestamp());
END \$\$;
CREATE FUNCTION counted_acl(u text) RETURNS TABLE (permission text, action text, topic text)
LANGUAGE plpgsql AS \$\$
DECLARE started timestamptz := clock_timestamp();
BEGIN
	PERFORM pg_sleep(0.001);
	RETURN QUERY SELECT a.permission, a.action, a.topic FROM mqtt_acl a WHERE a.username = u
		UNION ALL SELECT 'allow', 'all', 'clients/\${clientid}/#';
	INSERT INTO lookup_log VALUES ('acl', u, pg_backend_pid(), started, clock_timestamp());
END \$\$;
SQL
[ "$(psql_ -Atc 'SELECT count(*) FROM mqtt_user')" = "$users" ] || { echo "auth.sh: PostgreSQL holds the wrong number of users" >&2; exit 1; }
fi

# --- brokers ---

n=0
start_gannet() { # flags...
	n=$((n + 1))
	bport=$(free_port)
	"$gannet" --listen "127.0.0.1:$bport" --http-listen "${http_listen:-}" --sys-interval 0 \
		--data-dir "$work/data-$n" --log-level error "$@" >"$work/gannet-$n.log" 2>&1 &
	bpid=$!
	wait_port "$bport" "$work/gannet-$n.log"
}
start_mosquitto() { # extra configuration lines...
	n=$((n + 1))
	bport=$(free_port)
	{
		echo "listener $bport 127.0.0.1"
		echo "persistence false"
		echo "log_dest none"
		printf '%s\n' "$@"
	} >"$work/mosquitto-$n.conf"
	mosquitto -c "$work/mosquitto-$n.conf" >"$work/mosquitto-$n.log" 2>&1 &
	bpid=$!
	wait_port "$bport" "$work/mosquitto-$n.log"
}
stop_broker() {
	kill "$bpid" 2>/dev/null || true
	wait "$bpid" 2>/dev/null || true
	bpid=''
}
bench() { # result name, flags...
	local name=$1 rc=0
	shift
	timeout 300 "$gbench" --addr "127.0.0.1:$bport" --broker-pid "$bpid" --json "$@" \
		>"$out/$name.json" 2>"$work/$name.err" || rc=$?
	if [ "$rc" != 0 ]; then
		echo "auth.sh: FAILED: $name (exit $rc):" >&2
		grep -v '^connected\|^sent' "$work/$name.err" | tr '\r' '\n' | grep -v '^$' | tail -5 >&2
		failures+=("$name")
	fi
}

gannet_cfg() { # configuration name: sets flags, the broker's authentication flags
	case $1 in
	none) flags=() ;;
	acl) flags=(--password-file "$work/passwd" --acl-file "$work/acl") ;;
	passwd) flags=(--password-file "$work/passwd") ;;
	redis) flags=(--auth-redis-url "$redis_url" --auth-redis-acl-command=) ;;
	redis-acl) flags=(--auth-redis-url "$redis_url") ;;
	postgres) flags=(--auth-postgres-url "$pg_url" --auth-postgres-acl-query=) ;;
	postgres-acl) flags=(--auth-postgres-url "$pg_url") ;;
	esac
}
# backend_ticks prints the CPU time, in clock ticks, that the backend of
# configuration cfg has used: redis-server's own; PostgreSQL's postmaster
# with its children that have exited (the connections of a broker's pool
# end when the broker does).
backend_ticks() { # cfg
	case $1 in
	redis*) awk '{print $14 + $15}' "/proc/$redis_pid/stat" ;;
	postgres*) awk '{print $14 + $15 + $16 + $17}' "/proc/$(head -1 "$pg_data/postmaster.pid")/stat" ;;
	*) echo 0 ;;
	esac
}
run_on() { # broker, configuration, result name, bench flags...
	local broker=$1 cfg=$2 name=$3 ticks
	shift 3
	ticks=$(backend_ticks "$cfg")
	if [ "$broker" = gannet ]; then
		gannet_cfg "$cfg"
		start_gannet "${flags[@]}"
	elif [ "$cfg" = none ]; then
		start_mosquitto "allow_anonymous true"
	elif [ "$cfg" = acl ]; then
		start_mosquitto "allow_anonymous false" "password_file $work/passwd" "acl_file $work/acl"
	else
		start_mosquitto "allow_anonymous false" "password_file $work/passwd"
	fi
	bench "$name" "$@"
	stop_broker
	if [ "$ticks" != 0 ]; then
		sleep 0.5 # the postmaster reaps the broker's connections
		echo $((($(backend_ticks "$cfg") - ticks) * 1000000 / $(getconf CLK_TCK))) >"$out/$name.backend_us"
	fi
}

# --- a: publish authorization ---

if has_part acl; then
	echo "== acl: p2p QoS 0, $pairs pairs, ${secs}s after 1s warm-up, $rounds rounds" >&2
	p2p=(--scenario p2p --clients "$pairs" --qos 0 --payload 64 --username 'dev-%d' --password "$pass"
		--topic 'devices/%u/telemetry' --warmup 1s --duration "${secs}s" --drain 5s)
	# Gannet also with the password file alone: the ACL is then the only
	# difference from the "acl" runs. Each round starts the list one further.
	gannet_order=(none passwd acl) mosquitto_order=(none acl)
	for r in $(seq "$rounds"); do
		for broker in gannet mosquitto; do
			if [ "$broker" = gannet ]; then order=("${gannet_order[@]}"); else order=("${mosquitto_order[@]}"); fi
			for ((i = 0; i < ${#order[@]}; i++)); do
				cfg=${order[$(((i + r - 1) % ${#order[@]}))]}
				echo "   round $r: $broker $cfg" >&2
				run_on "$broker" "$cfg" "acl-$broker-$cfg-$r" "${p2p[@]}"
			done
		done
	done
fi

# --- b, c: connection rate ---

conn=(--scenario conn --clients "$clients" --username 'dev-%d' --users "$users" --password "$pass" --connect-window "$window")
if has_part connect; then
	echo "== connect: $clients clients, $users users, at most $window CONNECTs outstanding, $rounds rounds" >&2
	for r in $(seq "$rounds"); do
		for run in $conn_runs; do
			echo "   round $r: ${run/:/ }" >&2
			run_on "${run%%:*}" "${run#*:}" "conn-${run%%:*}-${run#*:}-$r" "${conn[@]}"
		done
	done
fi

# --- d: reconnect storms against PostgreSQL ---

if has_part storm; then
storm_ttl=60s storm_inflight=16 storm_pool=32
echo "== storm: PostgreSQL, --auth-cache-ttl $storm_ttl --auth-max-inflight $storm_inflight --auth-postgres-max-conns $storm_pool" >&2
storm_flags=(--auth-postgres-url "$pg_url"
	--auth-postgres-query 'SELECT password_hash, is_superuser FROM counted_user(${username})'
	--auth-postgres-acl-query 'SELECT permission, action, topic FROM counted_acl(${username})'
	--auth-cache-ttl "$storm_ttl" --auth-max-inflight "$storm_inflight" --auth-postgres-max-conns "$storm_pool")
storm_reset() {
	psql_ -c 'TRUNCATE lookup_log' -c 'SELECT pg_stat_statements_reset()' >/dev/null
}
storm_stats() { # name: what the database saw since storm_reset
	psql_ -At -F ' ' >"$out/$1.txt" <<'SQL'
SELECT 'calls', kind, count(*), count(DISTINCT username), max(n), count(DISTINCT pid)
FROM (SELECT kind, username, pid, count(*) OVER (PARTITION BY kind, username) AS n FROM lookup_log) l
GROUP BY kind ORDER BY kind;
WITH ev AS (SELECT t0 AS t, 1 AS d FROM lookup_log UNION ALL SELECT t1, -1 FROM lookup_log)
SELECT 'most_at_once', coalesce(max(running), 0)
FROM (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS running FROM ev) s;
SELECT 'statements', CASE WHEN query LIKE '%counted_user%' THEN 'auth' ELSE 'acl' END, calls
FROM pg_stat_statements WHERE query LIKE 'SELECT %FROM counted_%' ORDER BY 2;
SQL
	# And what the broker counted.
	curl -s "http://$http_listen/metrics" | grep -E '^gannet_auth_(lookups|cache_hits|cache_misses)_total' >>"$out/$1.txt" || true
}
http_listen=127.0.0.1:$(free_port)

# d1: CLIENTS clients of 100 users, all dialled at once (no window).
storm_reset
start_gannet "${storm_flags[@]}"
echo "   100 users, $clients clients at once" >&2
bench storm-100users --scenario conn --clients "$clients" --username 'dev-%d' --users 100 --password "$pass"
storm_stats storm-100users
stop_broker

# d2: CLIENTS clients of as many users, twice within the TTL (the same
# client ids), at most WINDOW CONNECTs outstanding.
storm_reset
start_gannet "${storm_flags[@]}"
echo "   $clients users, $clients clients, twice" >&2
bench storm-twice-1 "${conn[@]}"
storm_stats storm-twice-1
storm_reset # the second pass's queries alone
bench storm-twice-2 "${conn[@]}"
storm_stats storm-twice-2
stop_broker
http_listen=
fi

# --- report ---

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/setup.txt"
python3 - "$out" "$rounds" "$clients" "$users" "$window" "$secs" "$nrules" "$parts" "$conn_runs" <<'PY' | tee "$out/summary.md"
import json, os, statistics, sys
out, rounds, clients, users, window, secs, nrules, parts, conn_runs = sys.argv[1:]
rounds = int(rounds)
parts = parts.split()
conn_runs = [r.replace(":", "-") for r in conn_runs.split()]

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def cell(v, fmt):
    return "-" if v is None else format(v, fmt)

def ratio(a, b):
    return None if not a or not b else a / b

def acl_part():
    print(f"### Publish authorization: p2p, QoS 0, 64 B, 100 pairs, {secs} s measured\n")
    print(f"none: no authentication; passwd: the password file; ACL: the password file and the {nrules}-rule ACL file. "
          "Broker CPU µs per message (messages received per second); ratios of ACL to none and to passwd.\n")
    print("| round | Gannet none | Gannet passwd | Gannet ACL | ACL/none | ACL/passwd | Mosquitto none | Mosquitto ACL | ACL/none |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {"g/none": [], "g/passwd": [], "m/none": []}
    def us(b, c, r):
        res = load(f"acl-{b}-{c}-{r}")
        return (res["broker_cpu_us_per_msg"], res["received_per_sec"]) if res else (None, None)
    for r in range(1, rounds + 1):
        g = {c: us("gannet", c, r) for c in ("none", "passwd", "acl")}
        m = {c: us("mosquitto", c, r) for c in ("none", "acl")}
        fig = lambda v: "-" if v[0] is None else f"{v[0]:.2f} ({v[1]:,.0f}/s)"
        qs = {"g/none": ratio(g["acl"][0], g["none"][0]), "g/passwd": ratio(g["acl"][0], g["passwd"][0]),
              "m/none": ratio(m["acl"][0], m["none"][0])}
        for k, q in qs.items():
            if q:
                ratios[k].append(q)
        print(f"| {r} | {fig(g['none'])} | {fig(g['passwd'])} | {fig(g['acl'])} | {cell(qs['g/none'], '.3f')} | "
              f"{cell(qs['g/passwd'], '.3f')} | {fig(m['none'])} | {fig(m['acl'])} | {cell(qs['m/none'], '.3f')} |")
    med = {k: cell(statistics.median(v) if v else None, ".3f") for k, v in ratios.items()}
    print(f"| median | | | | {med['g/none']} | {med['g/passwd']} | | | {med['m/none']} |\n")

def connect_part():
    print(f"### Connection rate: {clients} clients, {users} users, at most {window} CONNECTs outstanding\n")
    print("Connections per second; CONNECT-to-CONNACK p50 / p99 ms; broker CPU µs per connection; the backend's (redis-server, PostgreSQL) CPU µs per connection. Median of the rounds, then each round's rate.\n")
    print("| broker, authentication | conn/s | p50 ms | p99 ms | broker CPU µs/conn | backend CPU µs/conn | refused | rates per round |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    def backend(name):
        try:
            with open(os.path.join(out, name + ".backend_us")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None
    medians = {}
    for k in conn_runs:
        rs = [load(f"conn-{k}-{r}") for r in range(1, rounds + 1)]
        ok = [x for x in rs if x]
        if not ok:
            print(f"| {k} | - | - | - | - | - | - | - |")
            continue
        bk = [backend(f"conn-{k}-{r}") for r in range(1, rounds + 1)]
        bk = [b / x["clients"] for b, x in zip(bk, rs) if b is not None and x]
        bcell = f"{statistics.median(bk):.0f}" if bk else "-"
        m = lambda f: statistics.median(f(x) for x in ok)
        medians[k] = m(lambda x: x.get("connects_per_sec", 0))
        refused = sum(x.get("refused", 0) + x.get("unanswered", 0) for x in ok)
        per = ", ".join(cell(x.get("connects_per_sec") if x else None, ",.0f") for x in rs)
        print(f"| {k} | {medians[k]:,.0f} | {m(lambda x: x['p50_ns']) / 1e6:.2f} | {m(lambda x: x['p99_ns']) / 1e6:.2f} | "
              f"{m(lambda x: x['broker_cpu_us_per_msg']):.0f} | {bcell} | {refused} | {per} |")
    for a, b in (("gannet-passwd", "mosquitto-passwd"), ("gannet-none", "mosquitto-none"),
                 ("gannet-redis", "gannet-passwd"), ("gannet-postgres", "gannet-passwd")):
        q = ratio(medians.get(a), medians.get(b))
        if q is None:
            continue
        # The same ratio within each round, where both ran minutes apart at
        # most, and the brokers' CPU per connection likewise.
        per, cpu = [], []
        for r in range(1, rounds + 1):
            x, y = load(f"conn-{a}-{r}"), load(f"conn-{b}-{r}")
            if x and y:
                per.append(ratio(x.get("connects_per_sec"), y.get("connects_per_sec")))
                cpu.append(ratio(x.get("broker_cpu_us_per_msg"), y.get("broker_cpu_us_per_msg")))
        fmt = lambda v: ", ".join(cell(q, ".2f") for q in v)
        print(f"\n{a} / {b}: {q:.2f} (rounds: {fmt(per)}; CPU per connection: {fmt(cpu)})", end="")
    print("\n")

def storm_part():
    print("### Reconnect storms against PostgreSQL\n")
    print("| storm | clients connected | refused | auth queries (users) | ACL queries (users) | most per user and kind | most at once | pg_stat_statements calls (auth, ACL) | broker lookups, cache hits |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    labels = {
        "storm-100users": f"{clients} clients of 100 users, all dialled at once",
        "storm-twice-1": f"{clients} clients of {clients} users",
        "storm-twice-2": "the same clients again, within the TTL (this pass alone)",
    }
    seen = {}  # the broker's counters after the previous storm on the same broker
    for name, label in labels.items():
        res = load(name) or {}
        calls, most, stmts, metrics = {}, "-", {}, {}
        try:
            for line in open(os.path.join(out, name + ".txt")):
                f = line.split()
                if f[0] == "calls":
                    calls[f[1]] = (int(f[2]), int(f[3]), int(f[4]))
                elif f[0] == "most_at_once":
                    most = f[1]
                elif f[0] == "statements":
                    stmts[f[1]] = f[2]
                elif f[0].startswith("gannet_auth_"):
                    metrics[f[0].split("{")[0]] = f[1]
        except OSError:
            pass
        c = lambda k: f"{calls[k][0]} ({calls[k][1]})" if k in calls else "0"
        per = max([v[2] for v in calls.values()] or [0])
        # The second pass runs on the first one's broker: its own
        # lookups and hits are the difference.
        before = seen if name == "storm-twice-2" else {}
        seen = metrics
        m = lambda k: f"{int(metrics[k]) - int(before.get(k, 0))}" if k in metrics else "-"
        print(f"| {label} | {res.get('connected', '-')} | {res.get('refused', 0) + res.get('unanswered', 0)} | {c('auth')} | {c('acl')} | {per} | {most} | "
              f"{stmts.get('auth', '0')}, {stmts.get('acl', '0')} | {m('gannet_auth_lookups_total')}, {m('gannet_auth_cache_hits_total')} |")

print(open(os.path.join(out, "setup.txt")).read())
for name, part in (("acl", acl_part), ("connect", connect_part), ("storm", storm_part)):
    if name in parts:
        part()
PY

if [ ${#failures[@]} -gt 0 ]; then
	echo "auth.sh: ${#failures[@]} runs FAILED: ${failures[*]}" >&2
	exit 1
fi
