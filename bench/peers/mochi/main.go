// Command mochi runs mochi-mqtt (github.com/mochi-mqtt/server/v2) with a
// TCP listener and anonymous access, so that the comparison runs the same
// scenarios against it as against Gannet and Mosquitto. It lives in its own
// module: the broker's module does not depend on mochi.
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:1883", "MQTT TCP listen address")
	flag.Parse()
	server := mqtt.New(&mqtt.Options{InlineClient: false})
	if err := server.AddHook(new(auth.AllowHook), nil); err != nil {
		log.Fatal(err)
	}
	if err := server.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: *addr})); err != nil {
		log.Fatal(err)
	}
	if err := server.Serve(); err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	_ = server.Close()
}
