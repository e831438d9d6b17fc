package receiver_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/cmd/audiofan/sim"
)

// BenchmarkRealtimeStreams finds the largest number of real-time participant
// streams (4 per call, 16 kHz) that one `audiofan receiver` process sustains
// on this machine, NATS on the same machine, with nothing lost and p99
// send→stored latency under 50 ms, as `audiofan sim --verify` measures it.
// It steps up by AUDIOFAN_BENCH_STEP streams until a step fails, once for
// each bus of AUDIOFAN_BENCH_SHARDS (comma-separated shard counts; 1,4),
// each on a fresh server, in AUDIOFAN_BENCH_ROUNDS rounds (1), so the
// shard counts compare in one run.
func BenchmarkRealtimeStreams(b *testing.B) {
	step := 250
	if n, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_STEP")); err == nil && n > 0 {
		step = n
	}
	from := step
	if n, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_FROM")); err == nil && n > 0 {
		from = n
	}
	shards := []int{1, 4}
	if v := os.Getenv("AUDIOFAN_BENCH_SHARDS"); v != "" {
		shards = nil
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(f); err == nil && n > 0 {
				shards = append(shards, n)
			}
		}
	}
	rounds := 1
	if n, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	// Rounds interleave the shard counts, so the machine's noise falls on
	// each alike; medians are reported.
	runs := map[int][]realtimeResult{}
	for b.Loop() {
		for range rounds {
			for _, s := range shards {
				runs[s] = append(runs[s], realtimeSteps(b, s, from, step))
			}
		}
	}
	med := func(rs []realtimeResult, f func(realtimeResult) float64) float64 {
		var xs []float64
		for _, r := range rs {
			xs = append(xs, f(r))
		}
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	for _, s := range shards {
		tag := fmt.Sprintf("-S%d", s)
		best := med(runs[s], func(r realtimeResult) float64 { return r.best })
		b.ReportMetric(best, "streams"+tag)
		b.ReportMetric(best*50, "frames/s"+tag)
		b.ReportMetric(med(runs[s], func(r realtimeResult) float64 { return r.p99 }), "p99-ms-at-best"+tag)
		b.ReportMetric(med(runs[s], func(r realtimeResult) float64 { return r.firstFail }), "first-failing-streams"+tag)
		if best > 0 {
			// The receiver's own share of the machine, averaged over the
			// step (ramp and settle included, so an upper bound per stream).
			b.ReportMetric(med(runs[s], func(r realtimeResult) float64 { return r.cores * 1000 / max(r.best, 1) }), "receiver-cores/1000-streams"+tag)
		}
	}
	if base := med(runs[shards[0]], func(r realtimeResult) float64 { return r.best }); len(shards) > 1 && base > 0 {
		for _, s := range shards[1:] {
			b.ReportMetric(med(runs[s], func(r realtimeResult) float64 { return r.best })/base, fmt.Sprintf("S%d/S%d", s, shards[0]))
		}
	}
}

// realtimeSteps is one search of BenchmarkRealtimeStreams on a fresh
// server whose bus has s shards.
type realtimeResult struct{ best, firstFail, p99, cores float64 }

func realtimeSteps(b *testing.B, shards, from, step int) realtimeResult {
	sc := defaults[broker.StreamConfig](b)
	sc.Shards = shards
	ns := natstest.Start(b)
	defer ns.Stop()
	ns.Map(sc)
	httpAddr, pid := startReceiverProcess(b, ns, "AUDIOFAN_STREAM_SHARDS="+strconv.Itoa(shards))
	defer func() { _ = syscall.Kill(pid, syscall.SIGTERM) }() // not left reconnecting through the next search
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	var r realtimeResult
	for streams := from; streams <= 8000; streams += step {
		cfg := sim.Defaults()
		cfg.URL, cfg.Participants, cfg.Calls = "ws://"+httpAddr+"/ws", 4, streams/4
		cfg.CallPrefix = fmt.Sprintf("rt-s%d-%d", shards, streams)
		streams = cfg.Calls * cfg.Participants
		cfg.Duration, cfg.Ramp, cfg.Verify, cfg.Settle = 8*time.Second, 2*time.Second, true, 20*time.Second
		if dir := os.Getenv("AUDIOFAN_BENCH_PROFILE_DIR"); dir != "" {
			go func() {
				time.Sleep(4 * time.Second)
				saveProfile(b, "http://"+httpAddr+"/debug/pprof/profile?seconds=4", fmt.Sprintf("%s/cpu-receiver-S%d.prof", dir, shards))
			}()
		}
		cpu0, t0 := cpuSeconds(b, pid), time.Now()
		sum, err := sim.Run(context.Background(), cfg, js, sc.StreamRef, nil)
		if err != nil {
			b.Fatal(err)
		}
		cores := (cpuSeconds(b, pid) - cpu0) / time.Since(t0).Seconds()
		v := sum.Verify
		b.Logf("S=%d, %d streams: sent %d, missing %d, duplicated %d, out of order %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms, errors %d; receiver %.2f cores",
			shards, streams, v.Sent, v.Missing, v.Duplicates, v.OutOfOrder, v.LatencyP50ms, v.LatencyP99ms, v.LatencyMaxMS, sum.Errors, cores)
		if !sum.OK || v.LatencyP99ms >= 50 {
			r.firstFail = float64(streams)
			break
		}
		r.best, r.p99, r.cores = float64(streams), v.LatencyP99ms, cores
	}
	return r
}

// cpuSeconds is the user+system CPU time a process has used.
func cpuSeconds(b testing.TB, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}
