package forward_test

import (
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/forward"
)

// BenchmarkForward measures what forwarding costs and adds at real time:
// AUDIOFAN_BENCH_STREAMS participant streams (200; calls of two) sent at
// 50 frames a second for AUDIOFAN_BENCH_DURATION (10s) into a receiver on
// a test server, first with no forwarder (the baseline), then with a
// forwarder sending every frame to a target, in the same run, all in this
// process. Reported: the share of frames written to the target within 5 ms
// of their storing on the bus (≥ 0.99 is a p99 within 5 ms), the p99 as
// the forwarder's histogram bounds it, and the process's CPU per frame with
// the forwarder against the baseline (their difference is the forwarder's
// cost, its Group's reading and the target's reading included).
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
		b.ReportMetric(with.within5ms, "share-within-5ms")
		b.ReportMetric(with.p99*1e3, "p99-ms-bound")
	}
}

type loadResult struct {
	cpuPerFrame, within5ms, p99 float64
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
	}
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
	if forwarding {
		res.within5ms, res.p99 = latency(b, reg, 0.005)
	}
	return res
}

// latency reads the forwarder's send latency: the share of sends within
// bound, and the smallest bucket bound that holds 99% of them.
func latency(b *testing.B, g prometheus.Gatherer, bound float64) (within, p99 float64) {
	mfs, err := g.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "audiofan_forward_send_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		n := float64(h.GetSampleCount())
		var dist []string
		for _, bk := range h.GetBucket() {
			dist = append(dist, strconv.FormatFloat(bk.GetUpperBound()*1e3, 'g', 3, 64)+"ms:"+strconv.FormatFloat(float64(bk.GetCumulativeCount())/n, 'f', 3, 64))
		}
		b.Logf("send latency, share at or under each bound: %v", dist)
		p99 = -1
		for _, bk := range h.GetBucket() {
			c := float64(bk.GetCumulativeCount())
			if bk.GetUpperBound() == bound {
				within = c / n
			}
			if p99 < 0 && c >= 0.99*n {
				p99 = bk.GetUpperBound()
			}
		}
	}
	return within, p99
}

// cpuTime is this process's user and system CPU so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
