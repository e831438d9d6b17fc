package analytics_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/analytics"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func config(t testing.TB) analytics.Config {
	c := natstest.Defaults[analytics.Config](t)
	c.Interval = time.Second // live events in a 3 s call
	return c
}

func TestConformance(t *testing.T) {
	conformance.Run(t, conformance.Spec{
		NewRole: func(t *testing.T, _ string, _ *nats.Conn, js jetstream.JetStream) subscribers.Role {
			a, err := analytics.New(context.Background(), config(t), js, prometheus.NewRegistry(), natstest.Logger())
			if err != nil {
				t.Fatal(err)
			}
			return a.Role()
		},
		// The bucket's latest summary is part of the output.
		Result: func(t *testing.T, _ string, js jetstream.JetStream, call subscribers.CallInfo) any {
			kv, err := js.KeyValue(context.Background(), "call-analytics")
			if err != nil {
				t.Fatal(err)
			}
			e, err := kv.Get(context.Background(), string(call.Token))
			if err != nil {
				t.Fatal(err)
			}
			var ev codec.Event
			if err := codec.Unmarshal(e.Value(), &ev); err != nil {
				t.Fatal(err)
			}
			return ev
		},
	})
}

// The scripted call end to end: live events while it runs, a final summary,
// the same in the bucket, and the aggregate metrics.
func TestEventsAndBucket(t *testing.T) {
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	rcv := natstest.StartReceiver(t, ns, nil) // provisions the stream
	ref := rcv.Stream.StreamRef
	reg := prometheus.NewRegistry()
	a, err := analytics.New(context.Background(), config(t), js, reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	g, err := subscribers.NewGroup(conformance.Config(t), a.Role(), ref, nc, js, reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	defer func() { cancel(); <-done }()

	id := "analytics-e2e"
	for _, m := range conformance.Default(id) {
		data, _ := codec.Marshal(m.Payload)
		if _, err := js.Publish(context.Background(), ref.Prefix+"."+m.Subject, data); err != nil {
			t.Fatal(err)
		}
	}
	kv, _ := js.KeyValue(context.Background(), "call-analytics")
	var ev codec.Event
	deadline := time.Now().Add(30 * time.Second)
	for {
		if e, err := kv.Get(context.Background(), string(codec.EncodeToken(id))); err == nil {
			if codec.Unmarshal(e.Value(), &ev) == nil && ev.Type == "summary" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no final summary in the bucket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ev.Call != id || ev.Source != "analytics" || ev.Data["reason"] != "ended" || ev.Data["final"] != true ||
		len(ev.Data["participants"].([]any)) != 3 {
		t.Errorf("summary %+v", ev)
	}
	// The script's three speakers take turns of 500 ms, 3 s in all: each
	// talks about a third of the time.
	for _, p := range ev.Data["participants"].([]any) {
		m := p.(map[string]any)
		if share := m["talkShare"].(float64); share < 0.28 || share > 0.39 {
			t.Errorf("participant %v: share %.2f", m["participant"], share)
		}
	}
	var types []string
	for _, e := range conformance.Events(t, js, ref, id, "analytics") {
		types = append(types, e.Type)
	}
	if strings.Join(types, ",") != "progress,progress,progress,summary" {
		t.Errorf("events %v, want progress at 1, 2 and 3 s of call time, then the summary", types)
	}
	if v := conformance.Metric(t, reg, "audiofan_analytics_seconds_total", "call"); v < 2.9 {
		t.Errorf("call seconds %v", v)
	}
}
