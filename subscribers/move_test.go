package subscribers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// A move of the bus from the single stream to shards, with calls in flight,
// loses nothing: a role running through the move, and a role down across
// it (its backlog left in the retired stream), both finish every call
// exactly as on a bus that never moved (each call's digest counts and
// hashes every message in order). Each role then removes its consumers
// from the retired stream; a move is refused while one is left, and the
// next move removes the stream every role has read.
func TestMoveLosesNothing(t *testing.T) {
	// ACS-shaped ids (':' and '+'), enough of them that calls land in most
	// partitions of both shards, and a few partitions have none.
	var ids []string
	for i := range 24 {
		if i%2 == 0 {
			ids = append(ids, fmt.Sprintf("4:+1425555%04d", 100+i))
		} else {
			ids = append(ids, fmt.Sprintf("8:acs:7f3e2a91-%04d_0000001a-b2c3+%d", i, i))
		}
	}
	want := undisturbed(t, ids)

	r := newGroupRig(t)
	r.replica() // "digest": runs through the move
	late := r.startRole("late")
	scripts := map[string][]conformance.Msg{}
	for _, id := range ids {
		scripts[id] = conformance.Default(id)
	}
	part := func(from, to float64) {
		for _, id := range ids {
			m := scripts[id]
			r.publish(m[int(from*float64(len(m))):int(to*float64(len(m)))])
		}
	}
	part(0, 0.4)
	conformance.WaitFor(t, "every call in progress for both roles", func() bool {
		return conformance.Metric(t, late.reg, "audiofan_subscriber_calls_owned", "") == float64(len(ids))
	})
	time.Sleep(300 * time.Millisecond) // checkpointed with its calls in progress
	late.stop()
	part(0.4, 0.6) // the late role's backlog, in the stream to be retired

	sc := natstest.Defaults[broker.StreamConfig](t)
	sc.Shards = 2
	if _, err := broker.Reshard(t.Context(), r.js, sc, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	r.ns.Map(sc)
	part(0.6, 1) // their ends, in the shards

	// The late role's consumer is still on the retired stream: another
	// move would leave it two retired streams to read, and is refused.
	four := sc
	four.Shards = 4
	if _, err := broker.Reshard(t.Context(), r.js, four, natstest.Logger()); !errors.Is(err, broker.ErrNotDrained) {
		t.Fatalf("a move with a retired stream still read: %v, want ErrNotDrained", err)
	}
	if b, err := broker.FindBus(t.Context(), r.js, r.ref); err != nil || b.Layout != sc.Layout() {
		t.Fatalf("after a refused move: %v, %v", b, err)
	}

	r.startRole("late")
	for _, role := range []string{"digest", "late"} {
		for _, id := range ids {
			conformance.WaitFor(t, role+"'s summary of "+id, func() bool { return roleSummary(t, r, role, id) != "" })
			if got := roleSummary(t, r, role, id); got != want[id] {
				t.Errorf("%s, call %s: %s, want %s as without a move", role, id, got, want[id])
			}
		}
	}
	conformance.WaitFor(t, "every role's consumers gone from the retired stream", func() bool {
		return conformance.DurableConsumers(t, r.js, "CALLS") == 0
	})
	bus, err := broker.Reshard(t.Context(), r.js, four, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	r.ns.Map(four)
	if _, err := r.js.Stream(t.Context(), "CALLS"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("the retired stream read by every role: %v, want it removed", err)
	}
	if !slices.Equal(bus.Retired, []string{"CALLS-0of2", "CALLS-1of2"}) {
		t.Errorf("retired %v", bus.Retired)
	}
}

// startRole runs a digest replica of another role's name.
func (r *groupRig) startRole(name string) running {
	nc, err := nats.Connect(r.ns.URL())
	if err != nil {
		r.t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	reg := prometheus.NewRegistry()
	role := digestRole()
	role.Name = name
	g, err := subscribers.NewGroup(conformance.Config(r.t), role, r.ref, nc, js, reg, natstest.Logger())
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			nc.Close()
		}
	}
	r.t.Cleanup(stop)
	conformance.WaitFor(r.t, "the replica ready", func() bool { return g.Ready() == nil })
	return running{reg: reg, stop: stop}
}

// roleSummary is role's summary of the call: its count and digest; "" for
// none yet.
func roleSummary(t *testing.T, r *groupRig, role, id string) string {
	for _, ev := range conformance.Events(t, r.js, r.ref, id, role) {
		if ev.Type == "summary" {
			return fmt.Sprint(ev.Data["n"], " ", ev.Data["sum"])
		}
	}
	return ""
}
