package natstest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/receiver"
)

// Defaults returns a settings struct as the environment-free defaults fill it.
func Defaults[T any](t testing.TB) T {
	t.Helper()
	var v T
	Fill(t, &v)
	return v
}

// Fill sets the settings struct ptr points to to its defaults, whatever the
// environment holds: for settings known only as an interface.
func Fill(t testing.TB, ptr any) {
	t.Helper()
	if err := env.ParseWithOptions(ptr, env.Options{Environment: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
}

// Logger discards logs unless AUDIOFAN_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("AUDIOFAN_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Receiver is a receiver serving on a random loopback port against a test
// server, with its own NATS connection and metrics registry.
type Receiver struct {
	t      testing.TB
	Addr   string // host:port of the HTTP listener
	NC     *nats.Conn
	JS     jetstream.JetStream
	Stream broker.StreamConfig
	Config receiver.Config
	R      *receiver.Receiver
	Reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// StartReceiver starts a receiver with default settings, changed by modify
// (may be nil). It is drained when the test ends, if Stop was not called.
func StartReceiver(t testing.TB, ns *Server, modify func(*receiver.Config)) *Receiver {
	t.Helper()
	return StartReceiverStream(t, ns, Defaults[broker.StreamConfig](t), modify)
}

// StartReceiverStream is StartReceiver with stream settings of the test's own.
func StartReceiverStream(t testing.TB, ns *Server, sc broker.StreamConfig, modify func(*receiver.Config)) *Receiver {
	t.Helper()
	r := &Receiver{t: t, Stream: sc, Config: Defaults[receiver.Config](t)}
	r.Config.HTTPAddr, r.Config.Instance = "127.0.0.1:0", "test-receiver"
	if modify != nil {
		modify(&r.Config)
	}
	if err := r.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	r.NC = nc
	if r.JS, err = receiver.NewJetStream(nc, r.Config.Publish); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sc.Batched = r.Config.Publish.Mode != receiver.ModeAsync
	r.Stream = sc
	bus, err := broker.EnsureBus(ctx, r.JS, r.Stream, Logger())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Config.Publish.Resolve(bus.Config()); err != nil {
		t.Fatal(err)
	}
	r.Reg = prometheus.NewRegistry()
	r.R = receiver.New(r.Config, r.Stream, nc, r.JS, r.Reg, Logger())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.Addr = ln.Addr().String()
	sctx, scancel := context.WithCancel(context.Background())
	r.cancel, r.done = scancel, make(chan error, 1)
	go func() { r.done <- r.R.Serve(sctx, ln, promhttp.HandlerFor(r.Reg, promhttp.HandlerOpts{})) }()
	t.Cleanup(func() {
		r.Stop()
		nc.Close()
	})
	return r
}

// URL is the WebSocket endpoint, with query (may be empty) appended.
func (r *Receiver) URL(query string) string { return "ws://" + r.Addr + "/ws" + query }

// Stop drains the receiver and waits for Serve to return.
func (r *Receiver) Stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("Serve: %v", err)
		}
	case <-time.After(60 * time.Second):
		r.t.Error("Serve did not return after drain")
	}
}

// StopAsync starts the drain and returns a channel closed when Serve returns.
func (r *Receiver) StopAsync() <-chan struct{} {
	stopped := make(chan struct{})
	cancel := r.cancel
	r.cancel = nil
	go func() {
		cancel()
		<-r.done
		close(stopped)
	}()
	return stopped
}
