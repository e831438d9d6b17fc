package conformance

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"strconv"
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
)

// Throughput benchmarks a role end to end on the bus: calls of parts
// participant streams, seconds long each, are stored first (16 kHz tones
// taking turns); each run is a fresh replica of the role consuming them all
// until every call is finished. Beside it, in the same run, the baseline: a
// plain ordered consumer that only reads and decodes the same frames.
// Beside it too, the same role applied straight from one ordered consumer
// in one goroutine (subscribers.Direct: no partitions, checkpoints or
// acknowledgements): what the role's own work costs. Reported: frames/s,
// frames per CPU-second (the NATS server, in this process, included), how
// many times faster than the streams are produced live (x-realtime), the
// ratio to the plain consumer, and the ratio to the direct run (x-direct:
// what the Group keeps of the role's own speed).
//
// AUDIOFAN_BENCH_SHARDS=S spreads the bus's partitions over S streams (S
// dividing the partitions): a partition consumer filters its shard, whose
// stored messages the server walks to find the partition's. Fewer
// partitions a shard shorten that walk, but on one server 4 and 32 shards
// measured no faster than 1 (docs/benchmarks.md).
func Throughput(b *testing.B, calls, parts, seconds int, newRole func(b *testing.B, dir string, js jetstream.JetStream, reg prometheus.Registerer) subscribers.Role) {
	shards := 1
	if v := os.Getenv("AUDIOFAN_BENCH_SHARDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("AUDIOFAN_BENCH_SHARDS=%q: want a count of streams", v)
		}
		shards = n
	}
	bus := natstest.StartBusWith(b, func(sc *broker.StreamConfig) { sc.Shards = shards })
	ns, js, sc := bus.NS, bus.JS, bus.Stream
	frames := StoreCalls(b, js, sc.Subjects(), calls, parts, seconds)
	var plain, direct, run, cpu, startup time.Duration
	name := ""
	for b.Loop() {
		b.StopTimer()
		start := time.Now()
		plainRead(b, js, sc.StreamRef, frames)
		plain += time.Since(start)
		start = time.Now()
		directRun(b, js, sc.StreamRef, calls, func(js jetstream.JetStream, reg prometheus.Registerer) subscribers.Role {
			return newRole(b, b.TempDir(), js, reg)
		})
		direct += time.Since(start)
		if name != "" {
			ForgetRole(js, sc, name)
		}
		dir := b.TempDir()
		b.StartTimer()

		cpu0 := cpuTime()
		start = time.Now()
		var up time.Duration
		name, up = runTimed(b, ns, sc.StreamRef, calls, func(js jetstream.JetStream, reg prometheus.Registerer) subscribers.Role {
			return newRole(b, dir, js, reg)
		})
		run += time.Since(start)
		startup += up
		cpu += cpuTime() - cpu0
	}
	n := float64(b.N)
	perRun := run.Seconds() / n
	b.ReportMetric(float64(frames)/perRun, "frames/s")
	b.ReportMetric(float64(frames)*n/cpu.Seconds(), "frames/cpu-s")
	b.ReportMetric(float64(frames)/perRun/float64(calls*parts*50), "x-realtime")
	b.ReportMetric(plain.Seconds()/run.Seconds(), "x-plain-consumer")
	// The same once the replica reads: its start-up left out (the
	// takeover benchmark measures that on its own).
	b.ReportMetric(startup.Seconds()/n, "startup-s")
	b.ReportMetric(plain.Seconds()/(run-startup).Seconds(), "x-plain-reading")
	b.ReportMetric(direct.Seconds()/run.Seconds(), "x-direct")
	b.ReportMetric(float64(sc.Partitions/shards), "partitions/shard")
}

// ForgetRole removes a role's partition consumers and state bucket from
// the bus, so that its next replica starts over: new consumers, nothing
// remembered.
func ForgetRole(js jetstream.JetStream, sc broker.StreamConfig, role string) {
	for _, stream := range sc.Layout().Streams() {
		for p := range sc.Partitions {
			_ = js.DeleteConsumer(context.Background(), stream, subscribers.PartitionConsumer(role, p))
		}
	}
	_ = js.DeleteKeyValue(context.Background(), subscribers.StateBucket(sc.Name, role))
}

// directRun applies the role to every call straight from one ordered
// consumer (subscribers.Direct): the role's own cost, without the Group.
func directRun(b *testing.B, js jetstream.JetStream, ref broker.StreamRef, calls int, build func(jetstream.JetStream, prometheus.Registerer) subscribers.Role) {
	n, err := subscribers.Direct(context.Background(), js, ref, build(js, prometheus.NewRegistry()))
	if err != nil {
		b.Fatal(err)
	}
	if n != calls {
		b.Fatalf("the direct run finished %d calls of %d", n, calls)
	}
}

// StoreCalls publishes calls of parts participant streams, seconds long
// each (16 kHz tones taking turns, ACS-shaped ids), and returns their frame
// count.
func StoreCalls(b *testing.B, js jetstream.JetStream, subj broker.Subjects, calls, parts, seconds int) int {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	frames := 0
	pub := func(subject string, v any) {
		data, err := codec.Marshal(v)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := js.PublishAsync(subject, data); err != nil {
			b.Fatal(err)
		}
	}
	voices := make([][]byte, parts)
	for p := range voices {
		voices[p] = toneFrame(p)
	}
	for c := range calls {
		id := fmt.Sprintf("8:acs:6a1f0c2e-5b7d+bench_%02d", c) // as ACS names a user: ':' and '+' in its token
		tok := codec.EncodeToken(id)
		pub(subj.Lifecycle(tok), &codec.Lifecycle{V: 1, Call: id, Type: codec.LifecycleStarted, Connection: id, SampleRate: 16000, Channels: 1})
		for i := range seconds * 50 {
			for p := range parts {
				part := fmt.Sprintf("8:acs:p%d", p)
				data := make([]byte, 640)
				if (i/100)%parts == p { // two-second turns
					data = voices[p]
				}
				pub(subj.Audio(tok, codec.EncodeToken(part)), &codec.Frame{V: 1, Call: id, Participant: part, Seq: uint64(i + 1),
					Timestamp: t0.Add(time.Duration(i) * 20 * time.Millisecond), SampleRate: 16000, Channels: 1,
					Encoding: codec.EncodingPCM16, Data: data})
				frames++
			}
		}
		pub(subj.Lifecycle(tok), &codec.Lifecycle{V: 1, Call: id, Type: codec.LifecycleEnded, Connection: id})
		<-js.PublishAsyncComplete()
	}
	return frames
}

// RunToEnd runs one replica of the role build makes until it has ended
// calls calls; it returns the role's name.
func RunToEnd(b *testing.B, ns *natstest.Server, ref broker.StreamRef, calls int, build func(jetstream.JetStream, prometheus.Registerer) subscribers.Role) string {
	name, _ := runTimed(b, ns, ref, calls, build)
	return name
}

// runTimed is RunToEnd, also saying how long the replica took to apply its
// first message: its start-up (the state bucket, 32 consumers made and
// pinned), which a stored backlog of a few seconds' reading does not
// amortise.
func runTimed(b *testing.B, ns *natstest.Server, ref broker.StreamRef, calls int, build func(jetstream.JetStream, prometheus.Registerer) subscribers.Role) (string, time.Duration) {
	start := time.Now()
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	reg := prometheus.NewRegistry()
	role := build(js, reg)
	g, err := subscribers.NewGroup(Config(b), role, ref, nc, js, reg, natstest.Logger())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var startup time.Duration
	for {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			switch mf.GetName() {
			case "audiofan_subscriber_messages_total":
				for _, m := range mf.GetMetric() {
					if startup == 0 && m.GetCounter().GetValue() > 0 {
						startup = time.Since(start)
					}
				}
			case "audiofan_subscriber_calls_total":
				for _, m := range mf.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetName() == "result" && l.GetValue() == string(subscribers.ResultEnded) && m.GetCounter().GetValue() == float64(calls) {
							return role.Name, startup
						}
					}
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// plainRead reads and decodes every frame with one ordered consumer per
// shard, one shard after another.
func plainRead(b *testing.B, js jetstream.JetStream, ref broker.StreamRef, frames int) {
	bus, err := broker.FindBus(context.Background(), js, ref)
	if err != nil {
		b.Fatal(err)
	}
	read := 0
	for _, s := range bus.Shards() {
		info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(bus.Subjects().AllKind(broker.KindAudio)))
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for _, c := range info.State.Subjects {
			n += int(c)
		}
		if n == 0 {
			continue
		}
		oc, err := s.OrderedConsumer(context.Background(), jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{bus.Subjects().AllKind(broker.KindAudio)}})
		if err != nil {
			b.Fatal(err)
		}
		it, err := oc.Messages()
		if err != nil {
			b.Fatal(err)
		}
		var f codec.Frame
		for range n {
			m, err := it.Next()
			if err != nil {
				b.Fatal(err)
			}
			if err := codec.UnmarshalFrame(m.Data(), &f); err != nil {
				b.Fatal(err)
			}
		}
		it.Stop()
		read += n
	}
	if read != frames {
		b.Fatalf("the plain reader read %d frames of %d", read, frames)
	}
}

// toneFrame is 20 ms of a participant's voice: a tone of its own pitch.
func toneFrame(p int) []byte {
	b := make([]byte, 640)
	for s := range 320 {
		v := int16(6000 * math.Sin(2*math.Pi*float64((200+100*p)*s)/16000))
		binary.LittleEndian.PutUint16(b[2*s:], uint16(v))
	}
	return b
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
