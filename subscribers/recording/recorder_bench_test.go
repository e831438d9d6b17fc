package recording_test

import (
	"context"
	"fmt"
	"syscall"
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
	"github.com/audiofan/audiofan/subscribers/recording"
)

// BenchmarkRecorder is the recorder end to end on the bus: 100 participant
// streams (25 calls of 4) of 30 s each are stored first; each run is a fresh
// recorder replica consuming them all (dispatch, per-call consumers,
// decoding, spooling), rendering every file and publishing the events.
// Beside it, in the same run, the baseline: a plain ordered consumer that
// only reads and decodes the same frames. Reported: frames/s, frames per
// CPU-second (server included: it runs in this process), how many times
// faster than the 100 streams are produced live (x-realtime, target 100),
// and the ratio to the plain consumer.
func BenchmarkRecorder(b *testing.B) {
	const calls, parts, seconds = 25, 4, 30
	ns := natstest.Start(b)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	sc := natstest.Defaults[broker.StreamConfig](b)
	ctx := context.Background()
	if _, err := broker.EnsureStream(ctx, js, sc); err != nil {
		b.Fatal(err)
	}
	subj := sc.Subjects()
	frames := 0
	for c := range calls {
		id := fmt.Sprintf("bench-%02d", c)
		tok := codec.EncodeToken(id)
		pub := func(subject string, v any) {
			data, err := codec.Marshal(v)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := js.PublishAsync(subject, data); err != nil {
				b.Fatal(err)
			}
		}
		pub(subj.Lifecycle(tok), &codec.Lifecycle{V: 1, Call: id, Type: codec.LifecycleStarted, Connection: id, SampleRate: 16000, Channels: 1})
		for i := range seconds * 50 {
			for p := range parts {
				part := fmt.Sprintf("8:acs:p%d", p)
				pub(subj.Audio(tok, codec.EncodeToken(part)), &codec.Frame{V: 1, Call: id, Participant: part, Seq: uint64(i + 1),
					Timestamp: t0.Add(time.Duration(i) * 20 * time.Millisecond), SampleRate: 16000, Channels: 1,
					Encoding: codec.EncodingPCM16, Data: pcmOf(p, i)})
				frames++
			}
		}
		pub(subj.Lifecycle(tok), &codec.Lifecycle{V: 1, Call: id, Type: codec.LifecycleEnded, Connection: id})
		<-js.PublishAsyncComplete()
	}

	var plain, rec time.Duration
	var cpu time.Duration
	for b.Loop() {
		b.StopTimer()
		start := time.Now()
		plainRead(b, js, sc.StreamRef, frames)
		plain += time.Since(start)
		_ = js.DeleteConsumer(ctx, sc.Name, subscribers.DispatchConsumer(recording.RoleName))
		_ = js.DeleteKeyValue(ctx, sc.Name+"-"+recording.RoleName+"-done")
		dir := b.TempDir()
		b.StartTimer()

		cpu0 := cpuTime()
		start = time.Now()
		runRecorder(b, ns, sc.StreamRef, dir, calls)
		rec += time.Since(start)
		cpu += cpuTime() - cpu0
	}
	n := float64(b.N)
	perRun := rec.Seconds() / n
	b.ReportMetric(float64(frames)/perRun, "frames/s")
	b.ReportMetric(float64(frames)*n/cpu.Seconds(), "frames/cpu-s")
	b.ReportMetric(float64(frames)/perRun/float64(calls*parts*50), "x-realtime")
	b.ReportMetric(plain.Seconds()/rec.Seconds(), "x-plain-consumer")
}

// runRecorder runs one recorder replica until every call is recorded.
func runRecorder(b *testing.B, ns *natstest.Server, ref broker.StreamRef, dir string, calls int) {
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	reg := prometheus.NewRegistry()
	rec, err := recording.New(context.Background(), natstest.Defaults[recording.Config](b), dir, js, reg, natstest.Logger())
	if err != nil {
		b.Fatal(err)
	}
	defer rec.Close()
	g, err := subscribers.NewGroup(conformance.Config(b), rec.Role(), ref, nc, js, reg, natstest.Logger())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "audiofan_subscriber_calls_total" {
				for _, m := range mf.GetMetric() {
					if m.GetLabel()[0].GetValue() == subscribers.ResultEnded && m.GetCounter().GetValue() == float64(calls) {
						return
					}
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// plainRead reads and decodes every frame with one ordered consumer.
func plainRead(b *testing.B, js jetstream.JetStream, ref broker.StreamRef, frames int) {
	oc, err := js.OrderedConsumer(context.Background(), ref.Name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{ref.Prefix + ".*.audio.>"}})
	if err != nil {
		b.Fatal(err)
	}
	it, err := oc.Messages()
	if err != nil {
		b.Fatal(err)
	}
	defer it.Stop()
	var f codec.Frame
	for range frames {
		m, err := it.Next()
		if err != nil {
			b.Fatal(err)
		}
		if err := codec.Unmarshal(m.Data(), &f); err != nil {
			b.Fatal(err)
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
