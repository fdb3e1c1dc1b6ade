# brokers.sh holds what the comparison scripts share: starting Gannet or
# Mosquitto on a loopback port, waiting for the port, stopping the broker.
# Source it with $work set to a scratch directory that holds the gannet
# binary; the start functions set $pid and $port.

mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# start_gannet PORT [FLAG...]: Gannet at its defaults but for the flags,
# on an empty data directory.
start_gannet() {
	port=$1
	shift
	rm -rf "$work/data"
	"$work/gannet" --listen "127.0.0.1:$port" --http-listen 127.0.0.1:0 --sys-interval 0 \
		--data-dir "$work/data" "$@" >"$work/gannet.log" 2>&1 &
	pid=$!
}

# start_mosquitto PORT: Mosquitto without persistence, anonymous clients
# allowed, queues of 10,000 messages.
start_mosquitto() {
	port=$1
	cat >"$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000
log_dest none
CONF
	"$mosq" -c "$work/mosquitto.conf" &
	pid=$!
}

wait_port() {
	for _ in $(seq 100); do
		(echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "broker on port $port did not start" >&2
	return 1
}

stop_broker() {
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	pid=
}
