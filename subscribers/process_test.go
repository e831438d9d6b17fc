package subscribers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
)

// policyRig is a stream, a durable consumer on it and a processor whose
// handler the test scripts.
type policyRig struct {
	t    *testing.T
	js   jetstream.JetStream
	cons jetstream.Consumer
	p    *Processor
	subj broker.Subjects
	// calls counts handler invocations; behave decides each one.
	calls  atomic.Int32
	behave func(n int32, ctx context.Context) error
}

func newPolicyRig(t *testing.T) *policyRig {
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	sc := natstest.Defaults[broker.StreamConfig](t)
	ctx := context.Background()
	if _, err := broker.EnsureStream(ctx, js, sc); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, sc.Name, jetstream.ConsumerConfig{Durable: "policy", AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: 5 * time.Second, MaxDeliver: 3})
	if err != nil {
		t.Fatal(err)
	}
	r := &policyRig{t: t, js: js, cons: cons, subj: sc.Subjects()}
	r.p, err = NewProcessor(ProcessorConfig{Role: "test", Backoff: []time.Duration{20 * time.Millisecond}, MaxDeliver: 3}, r.subj,
		func(ctx context.Context, m Message) error { return r.behave(r.calls.Add(1), ctx) },
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *policyRig) publish(data []byte) {
	if _, err := r.js.Publish(context.Background(), r.subj.Lifecycle("c1"), data); err != nil {
		r.t.Fatal(err)
	}
}

func (r *policyRig) lifecycle() []byte {
	b, err := codec.Marshal(&codec.Lifecycle{V: 1, Call: "c1", Type: codec.LifecycleStarted})
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

// run processes deliveries until none comes for quiet, returning the outcomes.
func (r *policyRig) run(ctx context.Context, quiet time.Duration) []string {
	var outcomes []string
	for {
		batch, err := r.cons.Fetch(1, jetstream.FetchMaxWait(quiet))
		if err != nil {
			r.t.Fatal(err)
		}
		got := false
		for msg := range batch.Messages() {
			got = true
			o, _ := r.p.Process(ctx, msg)
			outcomes = append(outcomes, o)
		}
		if !got {
			return outcomes
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAckPolicy(t *testing.T) {
	transient := errors.New("store busy")
	for _, tc := range []struct {
		name   string
		behave func(n int32, ctx context.Context) error
		data   func(*policyRig) []byte
		want   []string
		calls  int32
	}{
		{"success", func(int32, context.Context) error { return nil }, nil, []string{OutcomeAcked}, 1},
		{"transient then success", func(n int32, _ context.Context) error {
			if n == 1 {
				return transient
			}
			return nil
		}, nil, []string{OutcomeRetried, OutcomeAcked}, 2},
		{"panic then success", func(n int32, _ context.Context) error {
			if n == 1 {
				panic("bad state")
			}
			return nil
		}, nil, []string{OutcomeRetried, OutcomeAcked}, 2},
		{"permanent", func(int32, context.Context) error { return Permanent(errors.New("cannot write that")) }, nil, []string{OutcomeTerminated}, 1},
		{"always failing", func(int32, context.Context) error { return transient }, nil, []string{OutcomeRetried, OutcomeRetried, OutcomeGaveUp}, 3},
		{"undecodable", func(int32, context.Context) error { return nil }, func(*policyRig) []byte { return []byte{0xc1} }, []string{OutcomeTerminated}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newPolicyRig(t)
			r.behave = tc.behave
			data := r.lifecycle()
			if tc.data != nil {
				data = tc.data(r)
			}
			r.publish(data)
			got := r.run(context.Background(), 500*time.Millisecond)
			if !equal(got, tc.want) || r.calls.Load() != tc.calls {
				t.Errorf("outcomes %v with %d handler calls; want %v with %d", got, r.calls.Load(), tc.want, tc.calls)
			}
			info, err := r.cons.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if info.NumAckPending != 0 || info.NumPending != 0 {
				t.Errorf("consumer left with %d pending acks, %d pending", info.NumAckPending, info.NumPending)
			}
		})
	}
}

// A stopping replica gives the message back at once: the handler sees its
// context end, and the next delivery comes without waiting for AckWait.
func TestCancelHandsBack(t *testing.T) {
	r := newPolicyRig(t)
	r.behave = func(n int32, ctx context.Context) error {
		if n == 1 {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	r.publish(r.lifecycle())
	ctx, cancel := context.WithCancel(context.Background())
	batch, err := r.cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	msg := <-batch.Messages()
	done := make(chan string)
	go func() { o, _ := r.p.Process(ctx, msg); done <- o }()
	cancel()
	if o := <-done; o != OutcomeCanceled {
		t.Fatalf("outcome %q", o)
	}
	// Fetching waits 2 s: far less than AckWait (5 s), so only a message
	// handed back at once can come again in time.
	if got := r.run(context.Background(), 2*time.Second); !equal(got, []string{OutcomeAcked}) {
		t.Errorf("after cancel: %v", got)
	}
}
