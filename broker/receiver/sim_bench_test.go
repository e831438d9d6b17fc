package receiver_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
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
// It steps up by AUDIOFAN_BENCH_STEP streams until a step fails.
func BenchmarkRealtimeStreams(b *testing.B) {
	step := 250
	if n, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_STEP")); err == nil && n > 0 {
		step = n
	}
	from := step
	if n, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_FROM")); err == nil && n > 0 {
		from = n
	}
	ns := natstest.Start(b)
	httpAddr, pid := startReceiverProcess(b, ns)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	sc := defaults[broker.StreamConfig](b)

	var best, firstFail float64
	var bestP99, bestCores float64
	for b.Loop() {
		best, firstFail = 0, 0
		for streams := from; streams <= 8000; streams += step {
			cfg := sim.Defaults()
			cfg.URL, cfg.Participants, cfg.Calls = "ws://"+httpAddr+"/ws", 4, streams/4
			streams = cfg.Calls * cfg.Participants
			cfg.Duration, cfg.Ramp, cfg.Verify, cfg.Settle = 8*time.Second, 2*time.Second, true, 20*time.Second
			if dir := os.Getenv("AUDIOFAN_BENCH_PROFILE_DIR"); dir != "" {
				go func() {
					time.Sleep(4 * time.Second)
					saveProfile(b, "http://"+httpAddr+"/debug/pprof/profile?seconds=4", dir+"/cpu-receiver.prof")
				}()
			}
			cpu0, t0 := cpuSeconds(b, pid), time.Now()
			sum, err := sim.Run(context.Background(), cfg, js, sc.StreamRef, nil)
			if err != nil {
				b.Fatal(err)
			}
			cores := (cpuSeconds(b, pid) - cpu0) / time.Since(t0).Seconds()
			v := sum.Verify
			b.Logf("%d streams: sent %d, missing %d, duplicated %d, out of order %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms, errors %d; receiver %.2f cores",
				streams, v.Sent, v.Missing, v.Duplicates, v.OutOfOrder, v.LatencyP50ms, v.LatencyP99ms, v.LatencyMaxMS, sum.Errors, cores)
			if !sum.OK || v.LatencyP99ms >= 50 {
				firstFail = float64(streams)
				break
			}
			best, bestP99, bestCores = float64(streams), v.LatencyP99ms, cores
		}
	}
	b.ReportMetric(best, "streams")
	b.ReportMetric(best*50, "frames/s")
	b.ReportMetric(bestP99, "p99-ms-at-best")
	b.ReportMetric(firstFail, "first-failing-streams")
	if best > 0 {
		// The receiver's own share of the machine, averaged over the step
		// (ramp and settle included, so an upper bound per stream).
		b.ReportMetric(bestCores*1000/best, "receiver-cores/1000-streams")
	}
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
