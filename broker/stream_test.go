package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
)

func streamClient(t *testing.T, ns *natstest.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(ns.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// updates counts the stream update requests the server is sent: replicas that
// find the stream as they want it must not propose an update each.
func updates(t *testing.T, nc *nats.Conn) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	sub, err := nc.Subscribe("$JS.API.STREAM.UPDATE.>", func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &n
}

// Replicas starting together all end up with the one stream, and none
// writes settings that are already right.
func TestEnsureStreamConcurrent(t *testing.T) {
	ns := natstest.Start(t)
	nc, js := streamClient(t, ns)
	n := updates(t, nc)
	sc := natstest.Defaults[broker.StreamConfig](t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := broker.EnsureStream(t.Context(), js, sc, natstest.Logger())
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := broker.EnsureStream(t.Context(), js, sc, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := n.Load(); got != 0 {
		t.Fatalf("%d stream updates for a stream that was already as configured", got)
	}
}

// A changed setting of ours is applied; a setting an operator added is kept.
func TestEnsureStreamKeepsOperatorSettings(t *testing.T) {
	ns := natstest.Start(t)
	nc, js := streamClient(t, ns)
	sc := natstest.Defaults[broker.StreamConfig](t)
	s, err := broker.EnsureStream(t.Context(), js, sc, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgsPerSubject = 5000
	if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	n := updates(t, nc)
	sc.MaxAge = 2 * time.Hour
	s, err = broker.EnsureStream(t.Context(), js, sc, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	got := s.CachedInfo().Config
	if got.MaxAge != 2*time.Hour || got.MaxMsgsPerSubject != 5000 {
		t.Fatalf("max age %v (want 2h), max msgs per subject %d (want the operator's 5000)", got.MaxAge, got.MaxMsgsPerSubject)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 1 {
		t.Fatalf("%d updates, want 1", n.Load())
	}
}

// NATS away when the receiver starts: provisioning waits for it and succeeds
// once it is back.
func TestEnsureStreamWaitsForNATS(t *testing.T) {
	ns := natstest.Start(t)
	_, js := streamClient(t, ns)
	ns.Stop()
	back := make(chan struct{})
	go func() {
		defer close(back)
		time.Sleep(1500 * time.Millisecond)
		ns.Restart()
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	_, err := broker.EnsureStream(ctx, js, natstest.Defaults[broker.StreamConfig](t), natstest.Logger())
	<-back
	if err != nil {
		t.Fatal(err)
	}
}

// Provision tries again on the answers that mean "not now", and only on
// those.
func TestProvisionRetriesOnlyTransientErrors(t *testing.T) {
	defer broker.SetProvisionBackoff(time.Millisecond)()
	transient := []error{context.DeadlineExceeded, nats.ErrNoResponders, jetstream.ErrJetStreamNotEnabled,
		&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"},
		fmt.Errorf("wrapped: %w", nats.ErrTimeout), fmt.Errorf("%w: %w", broker.ErrNotReady, jetstream.ErrStreamNotFound)}
	var logs bytes.Buffer // Provision logs from the caller's goroutine
	calls := 0
	err := broker.Provision(t.Context(), slog.New(slog.NewTextHandler(&logs, nil)), "thing", func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("an attempt without a deadline of its own")
		}
		calls++
		if calls <= len(transient) {
			return transient[calls-1]
		}
		return nil
	})
	if err != nil || calls != len(transient)+1 {
		t.Fatalf("err %v after %d calls, want success after %d", err, calls, len(transient)+1)
	}
	if !strings.Contains(logs.String(), "JetStream not ready, trying again") || !strings.Contains(logs.String(), "what=thing") {
		t.Fatalf("the wait is not logged:\n%s", logs.String())
	}

	final := &jetstream.APIError{Code: 400, ErrorCode: 10065, Description: "subjects overlap with an existing stream"}
	calls = 0
	err = broker.Provision(t.Context(), natstest.Logger(), "thing", func(context.Context) error { calls++; return final })
	if !errors.Is(err, final) || calls != 1 {
		t.Fatalf("err %v after %d calls, want the refusal after 1", err, calls)
	}

	ctx, cancel := context.WithCancel(t.Context())
	calls = 0
	err = broker.Provision(ctx, natstest.Logger(), "thing", func(context.Context) error {
		calls++
		if calls == 3 {
			cancel()
		}
		return nats.ErrNoResponders
	})
	if !errors.Is(err, nats.ErrNoResponders) || calls != 3 {
		t.Fatalf("err %v after %d calls, want to give up when the context ends", err, calls)
	}
}

// A refusal that waiting cannot cure fails at the first attempt: here the
// subjects are another stream's.
func TestEnsureStreamRefusalIsFinal(t *testing.T) {
	ns := natstest.Start(t)
	_, js := streamClient(t, ns)
	sc := natstest.Defaults[broker.StreamConfig](t)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "OTHER", Subjects: []string{sc.Prefix + ".>"}}); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer // Provision logs from the caller's goroutine
	_, err := broker.EnsureStream(t.Context(), js, sc, slog.New(slog.NewTextHandler(&logs, nil)))
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != 400 {
		t.Fatalf("err = %v, want the server's 400 refusal", err)
	}
	if logs.Len() != 0 {
		t.Fatalf("retried a final refusal:\n%s", logs.String())
	}

	sc.Name, sc.Provision = "MISSING", false
	if _, err := broker.EnsureStream(t.Context(), js, sc, natstest.Logger()); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("err = %v, want stream not found", err)
	}
}
