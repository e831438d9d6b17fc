package subscribers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
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
	h.Write([]byte(m.Info.Call + "\x00" + string(m.Info.Kind) + "\x00" + m.Info.Participant)) // not the subject: its stored form changed with partitions
	if f, ok := m.Payload.(*codec.Frame); ok {
		h.Write(f.Data)
	}
	d.sum = h.Sum(nil)
	if d.n++; d.n%100 == 0 {
		return out.Emit(ctx, codec.Event{Type: "progress", Data: map[string]any{"n": d.n, "sum": hex.EncodeToString(d.sum)}})
	}
	return nil
}

func (d *digest) End(ctx context.Context, reason subscribers.EndReason, out *subscribers.Output) error {
	return out.Emit(ctx, codec.Event{Type: "summary", Data: map[string]any{"n": d.n, "sum": hex.EncodeToString(d.sum), "reason": reason}})
}

func (d *digest) Close() error { return nil }

func digestRole() subscribers.Role {
	return subscribers.Role{Name: "digest", Kinds: []broker.Kind{broker.KindAudio, broker.KindTranscript},
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

func (r *groupRig) replica() *prometheus.Registry { return r.start(nil, nil).reg }

// running is a digest replica a test runs.
type running struct {
	reg   *prometheus.Registry
	stop  func() // a clean stop; idempotent
	crash func() // a kill -9, as the bus sees it: the connection cut first
}

// start runs a digest replica with cfg (the tests' Config when nil), prep
// called on its Group before it runs, and waits until it is ready.
func (r *groupRig) start(cfg *subscribers.GroupConfig, prep func(*subscribers.Group)) running {
	nc, err := nats.Connect(r.ns.URL())
	if err != nil {
		r.t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	reg := prometheus.NewRegistry()
	c := conformance.Config(r.t)
	if cfg != nil {
		c = *cfg
	}
	g, err := subscribers.NewGroup(c, digestRole(), r.ref, nc, js, reg, natstest.Logger())
	if err != nil {
		r.t.Fatal(err)
	}
	if prep != nil {
		prep(g)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	stop := func() { cancel(); <-done; nc.Close() }
	r.t.Cleanup(stop)
	conformance.WaitFor(r.t, "the replica ready", func() bool { return g.Ready() == nil })
	return running{reg: reg, stop: stop, crash: func() { nc.Close(); cancel(); <-done }}
}

// undisturbed is what each call's default script gives on a bus of its own
// with one replica: its summary (count and running hash), by id.
func undisturbed(t *testing.T, ids []string) map[string]string {
	base := newGroupRig(t)
	base.replica()
	want := map[string]string{}
	for _, id := range ids {
		base.publish(conformance.Default(id))
		conformance.WaitFor(t, "baseline "+id, func() bool { return base.summaries(id) == 1 })
		want[id] = summary(t, base, id)
	}
	return want
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
// reconnecting late, a redelivery) does not start the call again, and no
// JetStream object is made for the call.
func TestFinishedCallNotDoneTwice(t *testing.T) {
	r := newGroupRig(t)
	reg := r.replica()
	consumers := r.consumers()
	msgs := conformance.Default("late")
	r.publish(msgs)
	late := func() float64 {
		return conformance.Metric(t, reg, "audiofan_subscriber_messages_total", subscribers.OutcomeLate)
	}
	conformance.WaitFor(t, "the call finished", func() bool {
		done, err := subscribers.Finished(context.Background(), r.js, r.ref, "digest", "late")
		return r.summaries("late") == 1 && err == nil && done
	})
	r.publish(msgs[len(msgs)-1:]) // the ended message once more
	r.publish(msgs[:1])           // and a started one
	conformance.WaitFor(t, "the late messages dropped", func() bool { return late() == 2 })
	time.Sleep(300 * time.Millisecond)
	if n := r.summaries("late"); n != 1 {
		t.Errorf("%d summaries, want 1", n)
	}
	if n := r.consumers(); n != consumers {
		t.Errorf("%d consumers on the stream after a call, want %d as before", n, consumers)
	}
}

func (r *groupRig) consumers() int { return conformance.DurableConsumers(r.t, r.js, r.ref.Name) }

// A replica added later takes half the partitions, and with them a share of
// the calls; the calls in progress are not disturbed.
func TestNewReplicaTakesShare(t *testing.T) {
	r := newGroupRig(t)
	first := r.replica()
	for i := range 2 {
		id := fmt.Sprintf("share-%d", i)
		r.publish(conformance.Default(id))
		conformance.WaitFor(t, "summary of "+id, func() bool { return r.summaries(id) == 1 })
	}
	second := r.replica()
	owned := func(reg *prometheus.Registry) float64 {
		return conformance.Metric(t, reg, "audiofan_subscriber_partitions_assigned", "")
	}
	p := float64(natstest.Defaults[broker.StreamConfig](t).Partitions)
	conformance.WaitFor(t, "the partitions shared", func() bool { return owned(first) == p/2 && owned(second) == p/2 })
	const calls = 24 // every one on the first replica: a chance of 2^-24
	for i := 2; i < calls; i++ {
		r.publish(conformance.Default(fmt.Sprintf("share-%d", i)))
	}
	ended := func(reg *prometheus.Registry) float64 {
		return conformance.Metric(t, reg, "audiofan_subscriber_calls_total", subscribers.ResultEnded)
	}
	conformance.WaitFor(t, "every call ended", func() bool { return ended(first)+ended(second) == calls })
	if a, b := ended(first), ended(second); b == 0 || a < 3 {
		t.Errorf("calls ended by the replicas: %v and %v", a, b)
	}
	for i := range calls {
		if n := r.summaries(fmt.Sprintf("share-%d", i)); n != 1 {
			t.Errorf("share-%d: %d summaries, want 1", i, n)
		}
	}
}

// A deployment upgraded from the per-call design: a call in flight across
// the upgrade (half of it stored before the stream was partitioned, half
// after) is read whole by the new role, and the old design's consumers are
// removed once no call can still need them.
func TestUpgradeFromPerCallConsumers(t *testing.T) {
	// What the call gives on a bus that was always partitioned.
	base := newGroupRig(t)
	base.replica()
	msgs := conformance.Default("upgraded")
	base.publish(msgs)
	conformance.WaitFor(t, "the baseline summary", func() bool { return base.summaries("upgraded") == 1 })
	want := conformance.Events(t, base.js, base.ref, "upgraded", "digest")

	// The old stream, its dispatch consumer and a per-call consumer.
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	sc := natstest.Defaults[broker.StreamConfig](t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: sc.Name, Subjects: []string{sc.Prefix + ".>"}}); err != nil {
		t.Fatal(err)
	}
	for _, cc := range []jetstream.ConsumerConfig{
		{Durable: "digest", FilterSubject: sc.Prefix + ".*.lifecycle", AckPolicy: jetstream.AckExplicitPolicy},
		{Durable: "digest-upgraded", Description: "audiofan digest of call upgraded", FilterSubjects: []string{sc.Prefix + ".upgraded.>"}, AckPolicy: jetstream.AckAllPolicy},
	} {
		if _, err := js.CreateConsumer(ctx, sc.Name, cc); err != nil {
			t.Fatal(err)
		}
	}
	r := &groupRig{t: t, ns: ns, js: js, ref: sc.StreamRef}
	half := len(msgs) / 2
	r.publish(msgs[:half])
	// The receivers are upgraded first: the stream is partitioned from now on.
	if _, err := broker.EnsureStream(ctx, js, sc, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	// Then the role.
	gc := conformance.Config(t)
	gc.IdleTimeout = 2 * time.Second // the upgrade window: an idle timeout and a lease
	rnc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	rjs, _ := jetstream.New(rnc)
	g, err := subscribers.NewGroup(gc, digestRole(), sc.StreamRef, rnc, rjs, prometheus.NewRegistry(), natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(gctx) }()
	t.Cleanup(func() { cancel(); <-done; rnc.Close() })
	conformance.WaitFor(t, "the role ready", func() bool { return g.Ready() == nil })
	r.publish(msgs[half:])
	conformance.WaitFor(t, "the call's summary", func() bool { return r.summaries("upgraded") == 1 })
	if got := conformance.Events(t, js, sc.StreamRef, "upgraded", "digest"); !reflect.DeepEqual(got, want) {
		t.Errorf("the call across the upgrade gave\n %v\nwhere a partitioned bus gives\n %v", got, want)
	}
	conformance.WaitFor(t, "the old consumers removed", func() bool {
		_, err1 := js.Consumer(ctx, sc.Name, "digest")
		_, err2 := js.Consumer(ctx, sc.Name, "digest-upgraded")
		return errors.Is(err1, jetstream.ErrConsumerNotFound) && errors.Is(err2, jetstream.ErrConsumerNotFound)
	})
	if n := r.consumers(); n != sc.Partitions {
		t.Errorf("%d durable consumers after the upgrade, want %d", n, sc.Partitions)
	}
}

// Calls streaming live while replicas come, go and crash: every call is
// finished once, having seen every one of its messages in order (the
// digest's count and running hash equal an undisturbed run's).
func TestChurnUnderLoad(t *testing.T) {
	r := newGroupRig(t)
	const calls = 12
	// ACS-shaped ids: phone numbers and ACS users, ':' and '+' in them.
	churnID := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("4:+1425555%04d", i)
		}
		return fmt.Sprintf("8:acs:6a1f0c2e-5b7d-4c39-9e1f-2a8b7c6d5e4f_%08x", i)
	}
	scripts := make([][]conformance.Msg, calls)
	ids := make([]string, calls)
	for i := range scripts {
		ids[i], scripts[i] = churnID(i), conformance.Default(churnID(i))
	}
	want := undisturbed(t, ids) // the digest of each call's messages
	start := func() running { return r.start(nil, nil) }
	reps := []running{start(), start()}
	// The calls, interleaved message by message, at a live-like pace, while
	// the replicas change every quarter of the way.
	longest := 0
	for _, s := range scripts {
		longest = max(longest, len(s))
	}
	for i := range longest {
		for _, s := range scripts {
			if i < len(s) {
				r.publish(s[i : i+1])
			}
		}
		switch i {
		case longest / 4:
			reps = append(reps, start()) // one joins
		case longest / 2:
			reps[0].crash() // one dies without a word
			reps = reps[1:]
		case 3 * longest / 4:
			reps[0].stop() // one stops cleanly
			reps = append(reps[1:], start())
		}
		if i%20 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	for i := range calls {
		id := churnID(i)
		conformance.WaitFor(t, "summary of "+id, func() bool { return r.summaries(id) >= 1 })
		if got := summary(t, r, id); got != want[id] {
			t.Errorf("%s: %s, undisturbed %s", id, got, want[id])
		}
	}
}

// summary is a call's summary event as text (its count and running hash).
func summary(t *testing.T, r *groupRig, id string) string {
	for _, ev := range conformance.Events(t, r.js, r.ref, id, "digest") {
		if ev.Type == "summary" {
			return fmt.Sprint(ev.Data["n"], " ", ev.Data["sum"])
		}
	}
	return ""
}

// A pin that lapses (a replica starved of CPU pulls late; the server pins
// its next pull anew) and comes back to the same replica is not a takeover:
// the replica carries on with its calls, nothing is replayed or done twice.
func TestPinLapseIsNotATakeover(t *testing.T) {
	r := newGroupRig(t)
	reg := r.replica()
	msgs := conformance.Default("8:acs:lapse")
	half := len(msgs) / 2
	r.publish(msgs[:half])
	handled := func() float64 {
		return conformance.Metric(t, reg, "audiofan_subscriber_messages_total", subscribers.OutcomeHandled)
	}
	conformance.WaitFor(t, "the first half handled", func() bool { return handled() > 0 })
	stream, err := r.js.Stream(context.Background(), r.ref.Name)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	subj, err := broker.ReadSubjects(ctx, r.js, r.ref)
	if err != nil {
		t.Fatal(err)
	}
	for n := range subj.Partitions() {
		name := fmt.Sprintf("digest-p%d", n)
		if err := stream.UnpinConsumer(ctx, name, "owner"); err != nil {
			t.Fatal(err)
		}
	}
	r.publish(msgs[half:])
	conformance.WaitFor(t, "the call finished", func() bool { return r.summaries("8:acs:lapse") == 1 })
	for name, label := range map[string]string{
		"audiofan_subscriber_takeovers_total": "",
		"audiofan_subscriber_calls_total":     string(subscribers.ResultElsewhere),
	} {
		if got := conformance.Metric(t, reg, name, label); got != 0 {
			t.Errorf("%s{%s} = %v after a lapsed pin", name, label, got)
		}
	}
	if got := conformance.Metric(t, reg, "audiofan_subscriber_messages_total", subscribers.OutcomeReplayed); got != 0 {
		t.Errorf("%v messages replayed after a lapsed pin", got)
	}
}

// Deliveries lost on the way (a client too slow to take them) while the
// replica is behind past the acknowledgement wait, with a window small
// enough that the lost tail comes back only as redeliveries: every call is
// applied whole and in order, and the partitions' consumers end with
// nothing pending, so the replica keeps up afterwards. (Before the ledger,
// a redelivery past what was queued read the stream to its end, the
// redeliveries after it were dropped without acknowledging, and the window
// stayed full for good.)
func TestCatchUpAfterLostDeliveries(t *testing.T) {
	const calls = 8
	id := func(i int) string { return fmt.Sprintf("8:acs:catchup+%d", i) }
	scripts := make([][]conformance.Msg, calls)
	ids := make([]string, calls)
	for i := range scripts {
		ids[i], scripts[i] = id(i), conformance.Default(id(i))
	}
	want := undisturbed(t, ids)
	r := newGroupRig(t)
	cfg := conformance.Config(t)
	cfg.MaxAckPending = 64
	var n atomic.Int64
	reg := r.start(&cfg, func(g *subscribers.Group) {
		subscribers.SetDropDeliveries(g, func() bool {
			i := n.Add(1)
			return i < 3000 && i%5 == 2 // one delivery in five, for a while
		})
	}).reg
	ctx := context.Background()
	// The calls interleaved, as fast as they go.
	for i := range len(scripts[0]) {
		for _, s := range scripts {
			if i < len(s) {
				r.publish(s[i : i+1])
			}
		}
	}
	for i := range calls {
		conformance.WaitFor(t, "summary of "+id(i), func() bool { return r.summaries(id(i)) >= 1 })
		if got := summary(t, r, id(i)); got != want[id(i)] {
			t.Errorf("%s: %s, undisturbed %s", id(i), got, want[id(i)])
		}
	}
	if n.Load() < 100 {
		t.Fatalf("only %d deliveries: nothing was lost", n.Load())
	}
	stream, err := r.js.Stream(ctx, r.ref.Name)
	if err != nil {
		t.Fatal(err)
	}
	conformance.WaitFor(t, "every partition consumer acknowledged", func() bool {
		pending := uint64(0)
		for ci := range stream.ListConsumers(ctx).Info() {
			if ci.Config.Durable != "" {
				pending += ci.NumPending + uint64(ci.NumAckPending)
			}
		}
		return pending == 0
	})
	if v := conformance.Metric(t, reg, "audiofan_subscriber_gap_reads_total", ""); v == 0 {
		t.Error("no gap was read: the test lost nothing that mattered")
	}
}

// A takeover whose call's start the stream's retention has removed is
// never silent: the call is rebuilt from what is left and finished, a
// partial event names the span missing, and the metric counts it.
func TestLostStartIsNotSilent(t *testing.T) {
	r := newGroupRig(t)
	const id = "4:+14255550188"
	msgs := conformance.Default(id)
	ra := r.start(nil, nil)
	a := ra.reg
	r.publish(msgs[:len(msgs)/2])
	conformance.WaitFor(t, "half the call applied", func() bool {
		return conformance.Metric(t, a, "audiofan_subscriber_messages_total", subscribers.OutcomeHandled) >= float64(len(msgs)/2)
	})
	time.Sleep(300 * time.Millisecond) // checkpointed, the call in progress
	ra.crash()
	ctx := context.Background()
	stream, err := r.js.Stream(ctx, r.ref.Name)
	if err != nil {
		t.Fatal(err)
	}
	first := stream.CachedInfo().State.FirstSeq
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(first+50)); err != nil { // retention, removing the call's start
		t.Fatal(err)
	}
	b := r.start(nil, nil).reg
	r.publish(msgs[len(msgs)/2:])
	conformance.WaitFor(t, "the call finished", func() bool { return r.summaries(id) == 1 })
	var partial []codec.Event
	for _, ev := range conformance.Events(t, r.js, r.ref, id, "digest") {
		if ev.Type == codec.EventPartial {
			partial = append(partial, ev)
		}
	}
	if len(partial) != 1 {
		t.Fatalf("%d partial events, want 1", len(partial))
	}
	d := partial[0].Data
	if fmt.Sprint(d["firstSeq"]) != fmt.Sprint(first) || fmt.Sprint(d["resumedSeq"]) != fmt.Sprint(first+50) || d["missingFrom"] == nil || d["missingTo"] == nil {
		t.Errorf("partial event %v: want the span from %d to %d", d, first, first+50)
	}
	if v := conformance.Metric(t, b, "audiofan_subscriber_history_lost_total", ""); v != 1 {
		t.Errorf("history_lost_total = %v, want 1", v)
	}
}
