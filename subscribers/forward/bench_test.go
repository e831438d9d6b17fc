package forward_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/forward"
)

// BenchmarkForward measures what forwarding costs and adds at real time:
// AUDIOFAN_BENCH_STREAMS participant streams (200; calls of two) sent at
// 50 frames a second for AUDIOFAN_BENCH_DURATION (10s) into a receiver on
// a test server, first with no forwarder (the baseline), then with a
// forwarder sending every frame to a target, in the same run, all in this
// process. In both, a plain live reader (an ordered consumer of every
// frame, doing nothing with them) notes when each frame was stored and
// read: the bus's own delivery at that load. Reported: the process's CPU
// per frame with the forwarder against the baseline (their difference is
// the forwarder's cost, its Group's reading and the target's reading
// included), and the p99 from a frame's storing to the target's reading of
// it, against the plain reader's in the same run: their difference is what
// the forwarder adds.
func BenchmarkForward(b *testing.B) {
	streams, dur := 200, 10*time.Second
	if v, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_STREAMS")); err == nil && v >= 2 {
		streams = v
	}
	if v, err := time.ParseDuration(os.Getenv("AUDIOFAN_BENCH_DURATION")); err == nil && v > 0 {
		dur = v
	}
	for b.Loop() {
		base := realtimeLoad(b, streams, dur, false)
		with := realtimeLoad(b, streams, dur, true)
		b.ReportMetric(base.cpuPerFrame*1e6, "baseline-µs/frame")
		b.ReportMetric(with.cpuPerFrame*1e6, "forwarding-µs/frame")
		b.ReportMetric((with.cpuPerFrame-base.cpuPerFrame)*1e6, "forwarder-µs/frame")
		b.ReportMetric(with.cpuPerFrame/base.cpuPerFrame, "x-baseline")
		b.ReportMetric(ms(base.plain.p99), "baseline-plain-p99-ms")
		b.ReportMetric(ms(with.plain.p99), "plain-p99-ms")
		b.ReportMetric(ms(with.target.p99), "target-p99-ms")
		b.ReportMetric(ms(with.target.p99-with.plain.p99), "added-p99-ms")
	}
}

func ms(d time.Duration) float64 { return d.Seconds() * 1e3 }

type loadResult struct {
	cpuPerFrame   float64
	plain, target spread // from storing to the plain reader's and the target's reading
}

// realtimeLoad runs one real-time load on a fresh rig, with a forwarder
// and its target or without.
func realtimeLoad(b *testing.B, streams int, dur time.Duration, forwarding bool) loadResult {
	r := newRig(b)
	var reg *prometheus.Registry
	var tg *target
	if forwarding {
		tg = newTarget(b)
		reg = r.forwarder(tg.url("#name=bench"), func(c *forward.Config) { c.Buffer = 1000 }).reg
		// Measured from when every partition is pulled, not from the
		// replica's start.
		conformance.WaitPulling(b, r.rcv.JS, r.rcv.Stream.StreamRef, forward.RoleName)
	}
	live := readLive(b, r.rcv.JS, r.rcv.Stream.StreamRef)
	calls := make([]*acsCall, streams/2)
	for i := range calls {
		calls[i] = r.dialACS("8:acs:bench-" + strconv.Itoa(i))
	}
	frames := int(dur / (20 * time.Millisecond))
	cpu0, start := cpuTime(b), time.Now()
	var wg sync.WaitGroup
	for k, c := range calls {
		wg.Go(func() {
			time.Sleep(time.Duration(k) * 20 * time.Millisecond / time.Duration(len(calls))) // spread over the 20 ms
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			var buf []byte
			for i := range frames {
				for p, part := range []string{"8:acs:alice", "4:+14255550199"} {
					buf = acs.AppendAudioData(buf[:0], t0.Add(time.Duration(i)*20*time.Millisecond), part, pcm(p, i), false)
					c.send(buf)
				}
				<-tick.C
			}
			c.hangUp()
		})
	}
	wg.Wait()
	want := float64(len(calls) * 2 * frames)
	done := func() bool {
		if !forwarding {
			return conformance.Metric(b, r.rcv.Reg, "audiofan_receiver_stored_total", "audio") >= want
		}
		return conformance.Metric(b, reg, "audiofan_forward_messages_sent_total", "bench") >= want+float64(len(calls))
	}
	for deadline := time.Now().Add(time.Minute); !done(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("forwarding %v: not every frame through within a minute of the load's end", forwarding)
		}
	}
	res := loadResult{cpuPerFrame: (cpuTime(b) - cpu0).Seconds() / want}
	b.Logf("forwarding %v: %d streams for %v in %v", forwarding, streams, dur, time.Since(start).Round(time.Millisecond))
	res.plain = live.spread(b, int(want))
	b.Logf("forwarding %v: stored → plain reader %v", forwarding, res.plain)
	if forwarding {
		res.target = live.atTarget(b, tg, int(want))
		b.Logf("stored → target %v", res.target)
	}
	return res
}

// spread is a latency's distribution.
type spread struct{ p50, p99, max time.Duration }

func spreadOf(ds []time.Duration) spread {
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return spread{p50: at(0.50), p99: at(0.99), max: ds[len(ds)-1]}
}

func (s spread) String() string {
	return fmt.Sprintf("p50 %v, p99 %v, max %v", s.p50.Round(10*time.Microsecond), s.p99.Round(10*time.Microsecond), s.max.Round(10*time.Microsecond))
}

// liveReader reads every audio frame as it is stored, as the plainest
// consumer would, and notes when each was stored and read.
type liveReader struct {
	mu     sync.Mutex
	stored map[frameKey]time.Time
	read   []time.Duration
	stop   func()
}

// frameKey names a frame as both the bus and the target see it.
type frameKey struct {
	call, participant string
	ts                int64
}

func readLive(b *testing.B, js jetstream.JetStream, ref broker.StreamRef) *liveReader {
	oc, err := js.OrderedConsumer(context.Background(), ref.Name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{conformance.StreamSubjects(b, js, ref).AllKind(broker.KindAudio)},
		DeliverPolicy:  jetstream.DeliverNewPolicy})
	if err != nil {
		b.Fatal(err)
	}
	lr := &liveReader{stored: map[frameKey]time.Time{}}
	var f codec.Frame
	cc, err := oc.Consume(func(m jetstream.Msg) {
		now := time.Now()
		md, err := m.Metadata()
		if err != nil || codec.UnmarshalFrame(m.Data(), &f) != nil {
			return
		}
		lr.mu.Lock()
		lr.stored[frameKey{f.Call, f.Participant, f.Timestamp.UnixNano()}] = md.Timestamp
		lr.read = append(lr.read, now.Sub(md.Timestamp))
		lr.mu.Unlock()
	})
	if err != nil {
		b.Fatal(err)
	}
	lr.stop = cc.Stop
	b.Cleanup(cc.Stop)
	return lr
}

// spread waits until the reader has read want frames, and gives their
// latency.
func (lr *liveReader) spread(b *testing.B, want int) spread {
	conformance.WaitFor(b, "the plain reader's frames", func() bool {
		lr.mu.Lock()
		defer lr.mu.Unlock()
		return len(lr.read) >= want
	})
	lr.stop()
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return spreadOf(lr.read)
}

// atTarget gives the latency from each frame's storing to the target's
// reading of it; every frame stored must have reached it.
func (lr *liveReader) atTarget(b *testing.B, tg *target, want int) spread {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	var ds []time.Duration
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for _, s := range tg.sockets {
		call := s.header.Get("x-ms-call-connection-id")
		s.mu.Lock()
		for i, m := range s.msgs {
			var msg struct {
				Kind      string `json:"kind"`
				AudioData struct {
					Timestamp   string `json:"timestamp"`
					Participant string `json:"participantRawID"`
				} `json:"audioData"`
			}
			if err := json.Unmarshal(m, &msg); err != nil {
				b.Fatal(err)
			}
			if msg.Kind != "AudioData" {
				continue
			}
			ts, err := time.Parse(acs.ACSTimestampLayout, msg.AudioData.Timestamp)
			if err != nil {
				b.Fatal(err)
			}
			stored, ok := lr.stored[frameKey{call, msg.AudioData.Participant, ts.UnixNano()}]
			if !ok {
				b.Fatalf("the target read a frame the bus never stored: %s", m)
			}
			ds = append(ds, s.at[i].Sub(stored))
		}
		s.mu.Unlock()
	}
	if len(ds) != want {
		b.Fatalf("the target read %d frames, want %d", len(ds), want)
	}
	return spreadOf(ds)
}

// cpuTime is this process's user and system CPU so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
