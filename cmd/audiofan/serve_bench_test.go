package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkServeRealtime is `audiofan serve` at real time, all in: the
// process (its embedded NATS server, the receiver and the three roles; the
// console off) fed AUDIOFAN_BENCH_STREAMS participant streams (100; calls
// of two) by `audiofan sim` for AUDIOFAN_BENCH_DURATION (2m). Beside it, in
// the same run, the ingest alone: a nats-server process and `audiofan
// receiver`, fed the same. Reported: CPU per frame of serve and of the
// ingest, their ratio, and serve's RSS at its peak, at the end and how fast
// it grew over the second half (MB a minute: 0 is flat).
func BenchmarkServeRealtime(b *testing.B) {
	streams, dur := 100, 2*time.Minute
	if v, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_STREAMS")); err == nil && v > 1 {
		streams = v
	}
	if v, err := time.ParseDuration(os.Getenv("AUDIOFAN_BENCH_DURATION")); err == nil && v >= 30*time.Second {
		dur = v
	}
	shards := []int{1}
	if v := os.Getenv("AUDIOFAN_BENCH_SERVE_SHARDS"); v != "" {
		shards = nil
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(f); err == nil && n > 0 {
				shards = append(shards, n)
			}
		}
	}
	audiofanBin, natsBin := buildBinaries(b)
	for b.Loop() {
		ingest := runRealtime(b, audiofanBin, natsBin, 0, streams, dur)
		b.ReportMetric(ingest.usPerFrame, "ingest-µs/frame")
		for _, s := range shards {
			serve := runRealtime(b, audiofanBin, natsBin, s, streams, dur)
			tag := ""
			if len(shards) > 1 || s != 1 {
				tag = fmt.Sprintf("-S%d", s)
			}
			b.ReportMetric(serve.usPerFrame, "serve-µs/frame"+tag)
			b.ReportMetric(serve.usPerFrame/ingest.usPerFrame, "x-ingest"+tag)
			b.ReportMetric(float64(serve.peakRSS)/(1<<20), "serve-peak-MB"+tag)
			b.ReportMetric(float64(serve.endRSS)/(1<<20), "serve-end-MB"+tag)
			b.ReportMetric(serve.growthMBPerMin, "serve-MB/min"+tag)
		}
	}
}

type realtimeRun struct {
	usPerFrame      float64
	peakRSS, endRSS int64
	growthMBPerMin  float64
}

// runRealtime feeds streams real-time participant streams for dur into
// serve (whole) on a bus of serveShards shards, or (serveShards 0) into
// the ingest alone (a nats-server process and a receiver), and measures
// the processes under test from the end of the calls' ramp to their end.
func runRealtime(b *testing.B, audiofanBin, natsBin string, serveShards int, streams int, dur time.Duration) realtimeRun {
	whole := serveShards > 0
	add := startProcs(b)
	httpAddr := freePort(b)
	var measured []*proc
	env := []string{"AUDIOFAN_HTTP_ADDR=" + httpAddr, "AUDIOFAN_CONSOLE=off", "AUDIOFAN_LOG_LEVEL=warn", "AUDIOFAN_DATA_DIR=" + b.TempDir()}
	if whole {
		serve := add(&proc{name: "serve", bin: audiofanBin, args: []string{"serve"}, env: append(env, "AUDIOFAN_NATS_LISTEN="+freePort(b),
			"AUDIOFAN_STREAM_SHARDS="+strconv.Itoa(serveShards))})
		serve.ready("http://" + httpAddr + "/readyz")
		measured = []*proc{serve}
	} else {
		client, monitor := freePort(b), freePort(b)
		node := add(&proc{name: "nats", bin: natsBin, args: []string{"-a", "127.0.0.1", "-p", port(client), "-js", "-sd", b.TempDir(), "-m", port(monitor)}})
		node.ready("http://" + monitor + "/healthz")
		rcv := add(&proc{name: "receiver", bin: audiofanBin, args: []string{"receiver"}, env: append(env, "NATS_URL=nats://"+client)})
		rcv.ready("http://" + httpAddr + "/readyz")
		measured = []*proc{node, rcv}
	}
	const ramp = 5 * time.Second
	sim := add(&proc{name: "sim", bin: audiofanBin, args: []string{"sim", "--url", "ws://" + httpAddr + "/ws", "--calls", strconv.Itoa(streams / 2),
		"--participants", "2", "--duration", dur.String(), "--ramp", ramp.String(), "--call-prefix", "8:acs:rt+"}})
	cpu := func() time.Duration {
		var t time.Duration
		for _, p := range measured {
			t += procCPU(b, p.cmd.Process.Pid)
		}
		return t
	}
	rss := func() int64 {
		var r int64
		for _, p := range measured {
			r += procRSS(b, p.cmd.Process.Pid)
		}
		return r
	}
	time.Sleep(ramp + 5*time.Second) // every call started and settled
	c0, t0 := cpu(), time.Now()
	var res realtimeRun
	var half int64
	window := dur - ramp - 10*time.Second
	for time.Since(t0) < window {
		time.Sleep(time.Second)
		r := rss()
		res.peakRSS = max(res.peakRSS, r)
		if half == 0 && time.Since(t0) >= window/2 {
			half = r
		}
	}
	used, el := cpu()-c0, time.Since(t0)
	res.endRSS = rss()
	res.usPerFrame = float64(used.Microseconds()) / (float64(streams) * 50 * el.Seconds())
	res.growthMBPerMin = float64(res.endRSS-half) / (1 << 20) / (el / 2).Minutes()
	if code, err := sim.wait(dur); err != nil || code != 0 {
		b.Fatalf("sim: exit %d, %v\n%s", code, err, sim.out.String())
	}
	return res
}
