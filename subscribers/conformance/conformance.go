// Package conformance is the test every subscriber role's handler must pass:
// run on the Group framework against an embedded NATS server, a role must
// give the same output, events and files alike, however its calls are
// delivered: retried after errors and panics, with undecodable messages in
// between, stopped and handed to another replica, or taken over after a
// replica dies mid-call. Roles call Run from their tests; only tests import
// it.
package conformance

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"sync"
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
)

// Spec is the role under test.
type Spec struct {
	// NewRole builds one replica of the role. Replicas of one test share
	// shared, a folder standing for the volume (or bucket) they write to.
	NewRole func(t *testing.T, shared string, nc *nats.Conn, js jetstream.JetStream) subscribers.Role
	// Result reads the role's output for a finished call, other than its
	// events (files, say), in a form compared with reflect.DeepEqual.
	Result func(t *testing.T, shared string, js jetstream.JetStream, call subscribers.CallInfo) any
	// Call, when set, replaces the default call (Default) with the role's
	// own script.
	Call func(id string) []Msg
}

// Msg is one message of a scripted call.
type Msg struct {
	Subject string // relative to the prefix: "<call token>.audio.<participant token>"
	Payload any    // a codec payload, or []byte sent as it is
}

// Default is a call of three participants on an audio socket (16 kHz, 3 s,
// each talking in turn, with frames skipped and silent frames) and a
// transcription socket with a few lines.
func Default(id string) []Msg {
	tok := codec.EncodeToken(id)
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	parts := []string{"8:acs:alice", "8:acs:bob", "4:+14255550123"}
	audioConn, textConn := id+"-a", id+"-t"
	life := func(typ, conn, stream string, at time.Time) Msg {
		return Msg{string(tok) + ".lifecycle", &codec.Lifecycle{V: 1, Call: id, Type: typ, Stream: stream, Connection: conn,
			Receiver: "test", SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, At: at, Frames: map[string]uint64{}}}
	}
	msgs := []Msg{life(codec.LifecycleStarted, audioConn, "audio", t0), life(codec.LifecycleStarted, textConn, "transcription", t0)}
	seq := map[string]uint64{}
	for i := range 150 {
		for p, part := range parts {
			if (i+p)%37 == 5 { // a frame lost on the way
				continue
			}
			seq[part]++
			talking := (i/25)%len(parts) == p
			data := make([]byte, 640)
			if talking {
				for s := range 320 {
					v := int16(8000 * math.Sin(float64(i*320+s)*2*math.Pi*float64(200+100*p)/16000))
					binary.LittleEndian.PutUint16(data[2*s:], uint16(v))
				}
			}
			ts := t0.Add(time.Duration(i) * 20 * time.Millisecond)
			msgs = append(msgs, Msg{string(tok) + ".audio." + string(codec.EncodeToken(part)), &codec.Frame{V: 1, Call: id, Participant: part,
				Seq: seq[part], Timestamp: ts, ReceivedAt: ts.Add(time.Millisecond), SampleRate: 16000, Channels: 1,
				Encoding: codec.EncodingPCM16, Silent: !talking, Data: data}})
		}
		if i%50 == 49 {
			part := parts[(i/50)%len(parts)]
			msgs = append(msgs, Msg{string(tok) + ".transcript." + string(codec.EncodeToken(part)), &codec.Transcript{V: 1, Call: id,
				Participant: part, Text: fmt.Sprintf("line %d from %s", i/50, part), Format: "display", Confidence: 0.9,
				Offset: int64(i) * 200_000, Duration: 10_000_000, Words: []codec.Word{}, Final: true, ReceivedAt: t0}})
		}
	}
	end := t0.Add(3 * time.Second)
	return append(msgs, life(codec.LifecycleEnded, audioConn, "audio", end), life(codec.LifecycleEnded, textConn, "transcription", end))
}

// Run runs the conformance tests for a role.
func Run(t *testing.T, spec Spec) {
	if spec.Call == nil {
		spec.Call = Default
	}
	var want struct {
		once   sync.Once
		events []codec.Event
		result any
	}
	baseline := func(t *testing.T) ([]codec.Event, any) {
		want.once.Do(func() {
			b := newBus(t, spec)
			r := b.replica(t, nil)
			call := b.publish(t, nil)
			b.waitDone(t, call)
			want.events, want.result = b.events(t, call), spec.Result(t, b.shared, b.js, call)
			r.stop()
			if len(want.events) == 0 && want.result == nil {
				t.Fatal("the role produced nothing for the baseline call: nothing to compare")
			}
		})
		return want.events, want.result
	}
	check := func(t *testing.T, b *bus, call subscribers.CallInfo) {
		t.Helper()
		events, result := baseline(t)
		b.waitDone(t, call)
		if got := roleEvents(b.events(t, call)); !reflect.DeepEqual(got, events) {
			t.Errorf("events differ from an undisturbed run:\n got  %d: %v\n want %d: %v", len(got), got, len(events), events)
		}
		if got := spec.Result(t, b.shared, b.js, call); !reflect.DeepEqual(got, result) {
			t.Errorf("result differs from an undisturbed run:\n got  %v\n want %v", got, result)
		}
	}

	t.Run("redelivery", func(t *testing.T) {
		// Every message fails once, some panic, End fails once: retried in
		// place, the output is unchanged.
		b := newBus(t, spec)
		var n atomic.Int64
		b.replica(t, func(h subscribers.CallHandler) subscribers.CallHandler {
			return &flaky{CallHandler: h, n: &n}
		})
		call := b.publish(t, nil)
		check(t, b, call)
		if n.Load() == 0 {
			t.Fatal("the flaky wrapper never ran")
		}
	})
	t.Run("permanent", func(t *testing.T) {
		// Undecodable messages in the call are skipped for good; the rest
		// is applied as if they were not there.
		b := newBus(t, spec)
		b.replica(t, nil)
		call := b.publish(t, func(i int, tok string) []Msg {
			if i%40 == 7 {
				return []Msg{{tok + ".audio.8_3Aacs_3Aalice", []byte{0xc1, 0x00}}}
			}
			return nil
		})
		check(t, b, call)
	})
	t.Run("cancel and hand over", func(t *testing.T) {
		// A replica stopped mid-call (its handler's context canceled) hands
		// the call to another, which finishes it as if nothing happened.
		b := newBus(t, spec)
		gate := make(chan struct{})
		var once sync.Once
		a := b.replica(t, func(h subscribers.CallHandler) subscribers.CallHandler {
			return &blocking{CallHandler: h, after: 200, reached: func() { once.Do(func() { close(gate) }) }}
		})
		call := b.publish(t, nil)
		waitChan(t, gate, "replica A to apply part of the call")
		b.replica(t, nil)
		a.stop()
		check(t, b, call)
	})
	t.Run("stopped while finishing", func(t *testing.T) {
		// A replica stopped after its handler's End, before the call is
		// marked finished: every message is applied and acknowledged, so the
		// server has nothing to deliver; another replica must still finish
		// the call, and its output is stored once.
		b := newBus(t, spec)
		ending := make(chan struct{})
		var once sync.Once
		a := b.replica(t, func(h subscribers.CallHandler) subscribers.CallHandler {
			return &stopInEnd{CallHandler: h, ending: func() { once.Do(func() { close(ending) }) }}
		})
		call := b.publish(t, nil)
		waitChan(t, ending, "replica A to end the call")
		a.stop()
		b.replica(t, nil)
		check(t, b, call)
	})
	t.Run("partition moves mid-call", func(t *testing.T) {
		partitionMoves(t, newBus(t, spec), check)
	})
	t.Run("replicas added and removed under load", func(t *testing.T) {
		// The call under test among others, all at once, while a second
		// replica joins (partitions move to it) and the first then stops
		// (the rest move too): every call is finished once, and the one
		// under test gives the output of an undisturbed run.
		b := newBus(t, spec)
		a := b.replica(t, nil)
		msgs := spec.Call(CallID)
		const others = 6
		publishAll := func(from, to int) {
			for i := range others {
				id := fmt.Sprintf("load-%d", i)
				b.publishCall(t, id, nil, from*len(spec.Call(id))/len(msgs), to*len(spec.Call(id))/len(msgs))
			}
			b.publishRange(t, nil, from, to)
		}
		third := len(msgs) / 3
		publishAll(0, third)
		b.replica(t, nil)
		publishAll(third, 2*third)
		a.stop()
		publishAll(2*third, len(msgs))
		check(t, b, subscribers.CallInfo{ID: CallID, Token: codec.EncodeToken(CallID)})
		for i := range others {
			id := fmt.Sprintf("load-%d", i)
			b.waitDone(t, subscribers.CallInfo{ID: id, Token: codec.EncodeToken(id)})
		}
	})
	t.Run("a stuck call does not hold up its partition", func(t *testing.T) {
		// Another call of the same partition whose handler hangs (a
		// resource that never answers): the call under test is applied and
		// finished all the same.
		b := newBus(t, spec)
		stuck := neighbourOf(t, b, "stuck-%d")
		b.replicaCalled(t, "", func(c subscribers.CallInfo, h subscribers.CallHandler) subscribers.CallHandler {
			if c.ID == stuck {
				return &hung{CallHandler: h}
			}
			return h
		})
		sm := spec.Call(stuck)
		b.publishCall(t, stuck, nil, 0, len(sm)/2)
		call := b.publish(t, nil)
		b.publishCall(t, stuck, nil, len(sm)/2, len(sm))
		check(t, b, call)
	})
	for _, mode := range []failure{failHandleOutage, failHandleError, failEndOutage} {
		t.Run("a failing call is parked and re-driven whole: "+mode.String(), func(t *testing.T) {
			parkAndRedrive(t, newBus(t, spec), mode, check)
		})
	}
	t.Run("event publishes refused once", func(t *testing.T) {
		// The stream refuses the first publish of every event: each is
		// published again, alone, and the output is unchanged (the handler
		// is not run twice for it, nor an event skipped).
		b := newBus(t, spec)
		var refused atomic.Int64
		b.start(t, replicaOpts{js: func(js jetstream.JetStream) jetstream.JetStream {
			return &refuseOnce{JetStream: js, seen: map[string]bool{}, refused: &refused}
		}})
		call := b.publish(t, nil)
		check(t, b, call)
		if refused.Load() == 0 {
			t.Fatal("no publish was refused: the role emitted nothing to test with")
		}
	})
	t.Run("takeover after a crash", func(t *testing.T) {
		// A replica dies mid-call without a word (its connection cut), holding
		// messages delivered but not applied; after the lease another replica
		// takes the call over while the call goes on (so the server's
		// redeliveries come between new messages), replays what the first
		// applied, and the output is unchanged: nothing lost, nothing
		// emitted twice.
		b := newBus(t, spec)
		gate := make(chan struct{})
		var once sync.Once
		a := b.replica(t, func(h subscribers.CallHandler) subscribers.CallHandler {
			return &blocking{CallHandler: h, after: 150, reached: func() { once.Do(func() { close(gate) }) }}
		})
		msgs := spec.Call(CallID)
		half := len(msgs) * 2 / 3
		call := b.publishRange(t, nil, 0, half)
		waitChan(t, gate, "replica A to apply part of the call")
		a.crash()
		r := b.replica(t, nil)
		b.publishRange(t, nil, half, len(msgs))
		check(t, b, call)
		if v := Metric(t, r.reg, "audiofan_subscriber_takeovers_total", ""); v != 1 {
			t.Errorf("takeovers on the new replica = %v, want 1", v)
		}
	})
}

// partitionMoves: replica A holds every partition and is mid-call when B
// joins and the call's partition is B's by the shared assignment: A hands it
// over (checkpointed, unpinned) while the call goes on, B replays and
// finishes it, and the output is unchanged.
func partitionMoves(t *testing.T, b *bus, check func(*testing.T, *bus, subscribers.CallInfo)) {
	parts := StreamSubjects(t, b.js, b.ref)
	p := parts.Partition(codec.EncodeToken(CallID))
	other := ""
	for i := 0; other == ""; i++ {
		if id := fmt.Sprintf("b%d", i); subscribers.AssignPartitions(parts.Partitions(), []string{"a", id})[p] == id {
			other = id
		}
	}
	gate := make(chan struct{})
	var once sync.Once
	n := 0
	b.replicaCalled(t, "a", func(_ subscribers.CallInfo, h subscribers.CallHandler) subscribers.CallHandler {
		return &slowAfter{CallHandler: h, after: 100, n: &n, reached: func() { once.Do(func() { close(gate) }) }}
	})
	msgs := b.spec.Call(CallID)
	half := len(msgs) / 2
	call := b.publishRange(t, nil, 0, half)
	waitChan(t, gate, "replica A to apply part of the call")
	nb := b.replicaCalled(t, other, func(_ subscribers.CallInfo, h subscribers.CallHandler) subscribers.CallHandler { return h })
	b.publishRange(t, nil, half, len(msgs))
	check(t, b, call)
	if v := Metric(t, nb.reg, "audiofan_subscriber_takeovers_total", ""); v != 1 {
		t.Errorf("takeovers on the replica the partition moved to = %v, want 1", v)
	}
}

// failure is how the call under test fails in parkAndRedrive.
type failure int

const (
	failHandleOutage failure = iota // Handle: ErrUnavailable (a disk gone), waited out until the window fills
	failHandleError                 // Handle: a plain error, parked after its retries
	failEndOutage                   // End: ErrUnavailable (the folder cannot be made), its neighbours behind it
)

func (f failure) String() string {
	return [...]string{"a handler outage", "a handler error", "an outage at the end"}[f]
}

// parkAndRedrive: the call under test fails (as mode says) while broken,
// on a replica whose partition window is small; a neighbour call of the
// same partition is finished all the same, the failing call is parked
// (with an event), and once repaired it is re-driven from the bus and its
// output is that of an undisturbed run.
func parkAndRedrive(t *testing.T, b *bus, mode failure, check func(*testing.T, *bus, subscribers.CallInfo)) {
	neighbour := neighbourOf(t, b, "4:+1425555%04d")
	var broken atomic.Bool
	broken.Store(true)
	r := b.start(t, replicaOpts{
		cfg: func(c *subscribers.GroupConfig) {
			c.MaxAckPending = 64
			c.ParkAfter = time.Minute // an outage parks only because it holds the window
			c.RedriveBackoff = 50 * time.Millisecond
		},
		wrap: func(c subscribers.CallInfo, h subscribers.CallHandler) subscribers.CallHandler {
			if c.ID == CallID {
				return &failing{CallHandler: h, mode: mode, broken: &broken, after: 60}
			}
			return h
		},
	})
	call := b.publish(t, nil)
	nb := b.publishCall(t, neighbour, nil, 0, len(b.spec.Call(neighbour)))
	b.waitDone(t, nb)
	WaitFor(t, "the failing call parked", func() bool {
		return Metric(t, r.reg, "audiofan_subscriber_calls_total", subscribers.ResultParked) >= 1
	})
	if done, err := subscribers.Finished(context.Background(), b.js, b.ref, b.spec.NewRole(t, b.shared, b.nc, b.js).Name, call.Token); err != nil || done {
		t.Fatalf("the failing call finished while broken (%v)", err)
	}
	broken.Store(false)
	check(t, b, call)
	parked := 0
	for _, ev := range b.events(t, call) {
		if ev.Type == codec.EventParked {
			parked++
		}
	}
	if parked == 0 {
		t.Error("no parked event for the call")
	}
	if v := Metric(t, r.reg, "audiofan_subscriber_redrives_total", ""); v < 1 {
		t.Errorf("re-drives = %v", v)
	}
	if v := Metric(t, r.reg, "audiofan_subscriber_calls_parked", ""); v != 0 {
		t.Errorf("%v calls still parked after the repair", v)
	}
	// The floor moved past the parked call's messages: every partition
	// consumer ends with nothing pending.
	WaitFor(t, "every partition consumer acknowledged", func() bool {
		bus, err := broker.FindBus(context.Background(), b.js, b.ref)
		if err != nil {
			return false
		}
		pending := uint64(0)
		for _, s := range bus.Shards() {
			for ci := range s.ListConsumers(context.Background()).Info() {
				if ci.Config.Durable != "" {
					pending += ci.NumPending + uint64(ci.NumAckPending)
				}
			}
		}
		return pending == 0
	})
}

// neighbourOf is the first call id of format (with one %d) whose call
// lands in the partition of the call under test.
func neighbourOf(t *testing.T, b *bus, format string) string {
	parts := StreamSubjects(t, b.js, b.ref)
	p := parts.Partition(codec.EncodeToken(CallID))
	for i := 0; ; i++ {
		if id := fmt.Sprintf(format, i); parts.Partition(codec.EncodeToken(id)) == p {
			return id
		}
	}
}

// failing fails the call while broken: Handle after the first after
// messages, or End.
type failing struct {
	subscribers.CallHandler
	mode   failure
	broken *atomic.Bool
	after  int
	n      int
}

var errDiskGone = fmt.Errorf("%w: conformance: the disk is gone", subscribers.ErrUnavailable)

func (f *failing) Handle(ctx context.Context, d subscribers.Delivery, out *subscribers.Output) error {
	if f.n >= f.after && f.broken.Load() {
		switch f.mode {
		case failHandleOutage:
			return errDiskGone
		case failHandleError:
			return fmt.Errorf("conformance: message %d fails while broken", d.Seq)
		}
	}
	f.n++
	return f.CallHandler.Handle(ctx, d, out)
}

func (f *failing) End(ctx context.Context, reason subscribers.EndReason, out *subscribers.Output) error {
	if f.mode == failEndOutage && f.broken.Load() {
		return errDiskGone
	}
	return f.CallHandler.End(ctx, reason, out)
}

// refuseOnce refuses the first publish of each message id.
type refuseOnce struct {
	jetstream.JetStream
	mu      sync.Mutex
	seen    map[string]bool
	refused *atomic.Int64
}

func (r *refuseOnce) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	id := m.Header.Get(jetstream.MsgIDHeader)
	r.mu.Lock()
	first := !r.seen[id]
	r.seen[id] = true
	r.mu.Unlock()
	if first {
		r.refused.Add(1)
		return nil, fmt.Errorf("conformance: the first publish of %s is refused", id)
	}
	return r.JetStream.PublishMsg(ctx, m, opts...)
}

// roleEvents leaves out of a call's events those of the engine (a call
// parking), which an undisturbed run does not have.
func roleEvents(evs []codec.Event) []codec.Event {
	out := evs[:0:0]
	for _, ev := range evs {
		if ev.Type != codec.EventParked {
			out = append(out, ev)
		}
	}
	return out
}

// slowAfter applies messages at a live-like pace after the first after of
// them (reached is called then), so a partition moves while the call is on.
type slowAfter struct {
	subscribers.CallHandler
	after   int
	n       *int
	reached func()
}

func (s *slowAfter) Handle(ctx context.Context, d subscribers.Delivery, out *subscribers.Output) error {
	if *s.n++; *s.n > s.after {
		s.reached()
		time.Sleep(time.Millisecond)
	}
	return s.CallHandler.Handle(ctx, d, out)
}

// flaky fails the first attempt at every third message (panicking on every
// seventh), and fails End once.
type flaky struct {
	subscribers.CallHandler
	n     *atomic.Int64
	seen  map[uint64]bool
	ended bool
}

func (f *flaky) Handle(ctx context.Context, d subscribers.Delivery, out *subscribers.Output) error {
	if f.seen == nil {
		f.seen = map[uint64]bool{}
	}
	if !f.seen[d.Seq] && d.Seq%3 == 0 {
		f.seen[d.Seq] = true
		f.n.Add(1)
		if d.Seq%7 == 0 {
			panic("conformance: a panic on the first attempt")
		}
		return fmt.Errorf("conformance: first attempt at %d fails", d.Seq)
	}
	return f.CallHandler.Handle(ctx, d, out)
}

func (f *flaky) End(ctx context.Context, reason subscribers.EndReason, out *subscribers.Output) error {
	if !f.ended {
		f.ended = true
		return fmt.Errorf("conformance: End fails once")
	}
	return f.CallHandler.End(ctx, reason, out)
}

// blocking applies messages slowly (so acknowledgements land meanwhile)
// until after of them, then calls reached and waits for its context to end,
// as a replica busy when it is stopped.
type blocking struct {
	subscribers.CallHandler
	after   int
	n       int
	reached func()
}

func (b *blocking) Handle(ctx context.Context, d subscribers.Delivery, out *subscribers.Output) error {
	if b.n++; b.n > b.after {
		b.reached()
		<-ctx.Done()
		return ctx.Err()
	}
	time.Sleep(2 * time.Millisecond)
	return b.CallHandler.Handle(ctx, d, out)
}

// hung never returns from Handle until its context ends.
type hung struct{ subscribers.CallHandler }

func (h *hung) Handle(ctx context.Context, _ subscribers.Delivery, _ *subscribers.Output) error {
	<-ctx.Done()
	return ctx.Err()
}

// stopInEnd ends the call, then has its replica stopped before the call is
// marked finished.
type stopInEnd struct {
	subscribers.CallHandler
	ending func()
}

func (s *stopInEnd) End(ctx context.Context, reason subscribers.EndReason, out *subscribers.Output) error {
	if err := s.CallHandler.End(ctx, reason, out); err != nil {
		return err
	}
	s.ending()
	<-ctx.Done()
	return nil
}

// bus is a NATS server with the stream, and the role's replicas on it.
type bus struct {
	spec   Spec
	ns     *natstest.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	ref    broker.StreamRef
	shared string
}

// newBus lays the bus out in shards: every role is tested reading calls
// from several streams, each holding some of the partitions.
func newBus(t *testing.T, spec Spec) *bus {
	b := natstest.StartBusWith(t, func(sc *broker.StreamConfig) { sc.Shards = Shards })
	return &bus{spec: spec, ns: b.NS, nc: b.NC, js: b.JS, ref: b.Stream.StreamRef, shared: t.TempDir()}
}

// Shards is how many streams the conformance suite's bus has.
const Shards = 4

// Config is the Group configuration of the tests: a short lease, so a
// takeover is quick.
func Config(t testing.TB) subscribers.GroupConfig {
	c := natstest.Defaults[subscribers.GroupConfig](t)
	c.Lease = 2 * time.Second
	c.Retries = 3
	c.Backoff = 5 * time.Millisecond
	c.Checkpoint = 100 * time.Millisecond
	return c
}

type replica struct {
	nc     *nats.Conn
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// replica starts a replica of the role; wrap, when set, wraps each of its
// call handlers.
func (b *bus) replica(t *testing.T, wrap func(subscribers.CallHandler) subscribers.CallHandler) *replica {
	t.Helper()
	return b.replicaCalled(t, "", func(_ subscribers.CallInfo, h subscribers.CallHandler) subscribers.CallHandler {
		if wrap == nil {
			return h
		}
		return wrap(h)
	})
}

// replicaCalled starts a replica named id (random when empty), whose call
// handlers wrap wraps.
func (b *bus) replicaCalled(t *testing.T, id string, wrap func(subscribers.CallInfo, subscribers.CallHandler) subscribers.CallHandler) *replica {
	t.Helper()
	return b.start(t, replicaOpts{id: id, wrap: wrap})
}

// replicaOpts are how a test's replica differs from the others.
type replicaOpts struct {
	id   string                                                                      // its name; random when empty
	wrap func(subscribers.CallInfo, subscribers.CallHandler) subscribers.CallHandler // wraps each call handler
	cfg  func(*subscribers.GroupConfig)                                              // changes its settings
	js   func(jetstream.JetStream) jetstream.JetStream                               // what its Group publishes through
}

func (b *bus) start(t *testing.T, o replicaOpts) *replica {
	t.Helper()
	wrap := o.wrap
	if wrap == nil {
		wrap = func(_ subscribers.CallInfo, h subscribers.CallHandler) subscribers.CallHandler { return h }
	}
	id := o.id
	nc, err := nats.Connect(b.ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	role := b.spec.NewRole(t, b.shared, nc, js)
	inner := role.NewCall
	role.NewCall = func(ctx context.Context, c subscribers.CallInfo) (subscribers.CallHandler, error) {
		h, err := inner(ctx, c)
		if err != nil {
			return nil, err
		}
		return wrap(c, h), nil
	}
	r := &replica{nc: nc, reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	cfg := Config(t)
	cfg.ReplicaID = id
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	gjs := js
	if o.js != nil {
		gjs = o.js(js)
	}
	g, err := subscribers.NewGroup(cfg, role, b.ref, nc, gjs, r.reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- g.Run(ctx) }()
	t.Cleanup(r.stop)
	deadline := time.Now().Add(10 * time.Second)
	for g.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("replica not ready: %v", g.Ready())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

// stop stops the replica gracefully (idempotent).
func (r *replica) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
	r.nc.Close()
}

// crash cuts the replica's connection first, so nothing it does on the way
// out reaches the server: what a kill -9 looks like from the bus.
func (r *replica) crash() {
	r.nc.Close()
	r.stop()
}

// CallID is the id of the scripted call. Each test has a server and a shared
// folder of its own, so every run records the same call and outputs compare
// byte for byte.
const CallID = "6f1e2d3c-aaaa-4bbb-8ccc-0123456789ab"

// publish stores the scripted call; extra may add messages
// after the i-th.
func (b *bus) publish(t *testing.T, extra func(i int, tok string) []Msg) subscribers.CallInfo {
	return b.publishRange(t, extra, 0, len(b.spec.Call(CallID)))
}

// publishRange stores messages from to to of the scripted call.
func (b *bus) publishRange(t *testing.T, extra func(i int, tok string) []Msg, from, to int) subscribers.CallInfo {
	return b.publishCall(t, CallID, extra, from, to)
}

// publishCall stores messages from to to of the script for call id.
func (b *bus) publishCall(t *testing.T, id string, extra func(i int, tok string) []Msg, from, to int) subscribers.CallInfo {
	t.Helper()
	msgs := b.spec.Call(id)
	tok := codec.EncodeToken(id)
	ctx := context.Background()
	for i := from; i < to; i++ {
		m := msgs[i]
		for _, m := range append([]Msg{m}, extraOf(extra, i, string(tok))...) {
			data, ok := m.Payload.([]byte)
			if !ok {
				var err error
				if data, err = codec.Marshal(m.Payload); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := b.js.Publish(ctx, b.ref.Prefix+"."+m.Subject, data); err != nil {
				t.Fatal(err)
			}
		}
	}
	return subscribers.CallInfo{ID: id, Token: tok}
}

func extraOf(extra func(int, string) []Msg, i int, tok string) []Msg {
	if extra == nil {
		return nil
	}
	return extra(i, tok)
}

// waitDone waits until a replica has finished the call.
func (b *bus) waitDone(t *testing.T, call subscribers.CallInfo) {
	t.Helper()
	roleName := b.spec.NewRole(t, b.shared, b.nc, b.js).Name
	WaitFor(t, "call "+call.ID+" finished", func() bool {
		done, err := subscribers.Finished(context.Background(), b.js, b.ref, roleName, call.Token)
		return err == nil && done
	})
}

func (b *bus) events(t *testing.T, call subscribers.CallInfo) []codec.Event {
	return Events(t, b.js, b.ref, call.ID, "")
}

// Events returns a call's events as stored, in order: those of source, or
// all when source is empty.
func Events(t testing.TB, js jetstream.JetStream, ref broker.StreamRef, callID, source string) []codec.Event {
	t.Helper()
	subj := StreamSubjects(t, js, ref)
	tok := codec.EncodeToken(callID)
	filter := subj.StoredKind(tok, broker.KindEvents)
	if source != "" {
		filter = subj.Stored(tok) + "." + string(broker.KindEvents) + "." + source
	}
	b, err := broker.FindBus(context.Background(), js, ref)
	if err != nil {
		t.Fatal(err)
	}
	oc, err := b.Stream(subj.Partition(tok)).OrderedConsumer(context.Background(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter},
		InactiveThreshold: time.Second}) // tests poll: let the server forget each soon
	if err != nil {
		t.Fatal(err)
	}
	var out []codec.Event
	for {
		batch, err := oc.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			var ev codec.Event
			if err := codec.Unmarshal(msg.Data(), &ev); err != nil {
				t.Fatal(err)
			}
			out = append(out, ev)
		}
		if n == 0 {
			return out
		}
	}
}

func waitChan(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// Metric sums the counters and gauges called name that g gathers, over the
// series with a label of value label (every series when label is empty):
// a plain string, or one of the typed label values (subscribers.Outcome,
// subscribers.Result).
func Metric[L ~string](t testing.TB, g prometheus.Gatherer, name string, label L) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetValue() == string(label)
			}
			if match {
				v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return v
}

// WaitFor polls ok until it holds, failing the test after 30 s.
func WaitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitPulling waits until every partition consumer of the role has a pull
// waiting at the server: a replica counts as ready before it takes its
// partitions (it first hears the others, a quarter of a lease), so a load
// started at ready is measured with its start-up in it.
func WaitPulling(t testing.TB, js jetstream.JetStream, ref broker.StreamRef, role string) {
	t.Helper()
	bus, err := broker.FindBus(context.Background(), js, ref)
	if err != nil {
		t.Fatal(err)
	}
	for n := range bus.Subjects().Partitions() {
		WaitFor(t, "partition "+strconv.Itoa(n)+" pulled", func() bool {
			c, err := bus.Stream(n).Consumer(context.Background(), subscribers.PartitionConsumer(role, n))
			if err != nil {
				return false
			}
			ci, err := c.Info(context.Background())
			return err == nil && ci.NumWaiting > 0
		})
	}
}

// StreamSubjects reads the bus's subject scheme, partitions included.
func StreamSubjects(t testing.TB, js jetstream.JetStream, ref broker.StreamRef) broker.Subjects {
	t.Helper()
	subj, err := broker.ReadSubjects(context.Background(), js, ref)
	if err != nil {
		t.Fatal(err)
	}
	return subj
}

// DurableConsumers counts the durable consumers on the stream: a role's
// fixed set, however many calls come and go (ordered readers come and go
// too, and are not counted).
func DurableConsumers(t testing.TB, js jetstream.JetStream, stream string) int {
	t.Helper()
	return len(DurableConsumerNames(t, js, stream))
}

// DurableConsumerNames names the durable consumers on the stream, so that a
// test finding too many can say which. The server lists consumers a page
// (256) at a time, by offset into their names: ordered readers made or
// removed between two pages shift the rest, so one name can come twice and
// is counted once.
func DurableConsumerNames(t testing.TB, js jetstream.JetStream, stream string) []string {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	list := s.ListConsumers(context.Background())
	for ci := range list.Info() {
		if ci.Config.Durable != "" {
			names = append(names, ci.Name)
		}
	}
	if err := list.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return slices.Compact(names)
}
