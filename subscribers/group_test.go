package subscribers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// digest is the simplest stateful role: a running hash of a call's messages
// in order, reported every 100 messages and at the end. Any message lost,
// applied twice or out of order changes its events.
type digest struct {
	n   int
	sum []byte
}

func (d *digest) Handle(ctx context.Context, m subscribers.Delivery, out *subscribers.Output) error {
	h := sha256.New()
	h.Write(d.sum)
	h.Write([]byte(m.Subject))
	if f, ok := m.Payload.(*codec.Frame); ok {
		h.Write(f.Data)
	}
	d.sum = h.Sum(nil)
	if d.n++; d.n%100 == 0 {
		return out.Emit(ctx, codec.Event{Type: "progress", Data: map[string]any{"n": d.n, "sum": hex.EncodeToString(d.sum)}})
	}
	return nil
}

func (d *digest) End(ctx context.Context, reason string, out *subscribers.Output) error {
	return out.Emit(ctx, codec.Event{Type: "summary", Data: map[string]any{"n": d.n, "sum": hex.EncodeToString(d.sum), "reason": reason}})
}

func (d *digest) Close() error { return nil }

func digestRole() subscribers.Role {
	return subscribers.Role{Name: "digest", Kinds: []string{broker.KindAudio, broker.KindTranscript},
		NewCall: func(context.Context, subscribers.CallInfo) (subscribers.CallHandler, error) { return &digest{}, nil }}
}

func TestConformanceDigest(t *testing.T) {
	conformance.Run(t, conformance.Spec{
		NewRole: func(*testing.T, string, *nats.Conn, jetstream.JetStream) subscribers.Role { return digestRole() },
		Result:  func(*testing.T, string, jetstream.JetStream, subscribers.CallInfo) any { return nil },
	})
}

// groupRig runs digest replicas against a test server.
type groupRig struct {
	t   *testing.T
	ns  *natstest.Server
	js  jetstream.JetStream
	ref broker.StreamRef
}

func newGroupRig(t *testing.T) *groupRig {
	b := natstest.StartBus(t)
	return &groupRig{t: t, ns: b.NS, js: b.JS, ref: b.Stream.StreamRef}
}

func (r *groupRig) replica() *prometheus.Registry {
	nc, err := nats.Connect(r.ns.URL())
	if err != nil {
		r.t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	reg := prometheus.NewRegistry()
	g, err := subscribers.NewGroup(conformance.Config(r.t), digestRole(), r.ref, nc, js, reg, natstest.Logger())
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	r.t.Cleanup(func() { cancel(); <-done; nc.Close() })
	for g.Ready() != nil {
		time.Sleep(10 * time.Millisecond)
	}
	return reg
}

func (r *groupRig) publish(msgs []conformance.Msg) {
	for _, m := range msgs {
		data, err := codec.Marshal(m.Payload)
		if err != nil {
			r.t.Fatal(err)
		}
		if _, err := r.js.Publish(context.Background(), r.ref.Prefix+"."+m.Subject, data); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *groupRig) summaries(id string) int {
	n := 0
	for _, ev := range conformance.Events(r.t, r.js, r.ref, id, "digest") {
		if ev.Type == "summary" {
			n++
		}
	}
	return n
}

// A lifecycle message that comes after its call was finished (a socket
// reconnecting late, a redelivery) does not start the call again.
func TestFinishedCallNotDoneTwice(t *testing.T) {
	r := newGroupRig(t)
	reg := r.replica()
	msgs := conformance.Default("late")
	r.publish(msgs)
	// Every lease settled: no lifecycle message waiting or held.
	settled := func() bool {
		c, err := r.js.Consumer(context.Background(), r.ref.Name, subscribers.DispatchConsumer("digest"))
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}
	elsewhere := func() float64 {
		return conformance.Metric(t, reg, "audiofan_subscriber_calls_total", subscribers.ResultElsewhere)
	}
	conformance.WaitFor(t, "the call finished", func() bool {
		return r.summaries("late") == 1 && conformance.Metric(t, reg, "audiofan_subscriber_calls_total", subscribers.ResultEnded) == 1 && settled()
	})
	before := elsewhere()
	r.publish(msgs[len(msgs)-1:]) // the ended message once more
	r.publish(msgs[:1])           // and a started one
	conformance.WaitFor(t, "the late messages settled", func() bool { return elsewhere() > before && settled() })
	if n := r.summaries("late"); n != 1 {
		t.Errorf("%d summaries, want 1", n)
	}
	if _, err := r.js.Consumer(context.Background(), r.ref.Name, subscribers.CallConsumer("digest", codec.EncodeToken("late"))); err == nil {
		t.Error("the finished call's consumer is still there")
	}
}

// A replica added later takes a share of the new calls. (Each call's first
// lifecycle message goes out before the rest, as calls start minutes before
// they end: were a call's started and ended messages published together,
// the two replicas taking turns on the dispatch consumer could give every
// call's start to one replica and every end to the other.)
func TestNewReplicaTakesShare(t *testing.T) {
	r := newGroupRig(t)
	first := r.replica()
	for i := range 2 {
		id := fmt.Sprintf("share-%d", i)
		r.publish(conformance.Default(id))
		conformance.WaitFor(t, "summary of "+id, func() bool { return r.summaries(id) == 1 })
	}
	second := r.replica()
	var calls [][]conformance.Msg
	for i := 2; i < 8; i++ {
		msgs := conformance.Default(fmt.Sprintf("share-%d", i))
		r.publish(msgs[:1])
		calls = append(calls, msgs[1:])
	}
	for _, msgs := range calls {
		r.publish(msgs)
	}
	ended := func(reg *prometheus.Registry) float64 {
		return conformance.Metric(t, reg, "audiofan_subscriber_calls_total", subscribers.ResultEnded)
	}
	conformance.WaitFor(t, "every call ended", func() bool { return ended(first)+ended(second) == 8 })
	if a, b := ended(first), ended(second); b == 0 || a < 3 {
		t.Errorf("calls ended by the replicas: %v and %v", a, b)
	}
}
