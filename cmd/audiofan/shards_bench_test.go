package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// BenchmarkShardsFlood measures what sharding the bus buys: the receiver
// and the bus alone (no role reading), a nats-server process (file store,
// every publish acknowledged) flooded by 40 WebSocket clients of 40
// distinct calls, as fast as the receiver takes them, with
// AUDIOFAN_STREAM_SHARDS = 1, 2 and 4 in turn, AUDIOFAN_BENCH_ROUNDS rounds
// (5) interleaved so the machine's noise falls on every setting alike. It
// reports each setting's median stored frames/s and server CPU (cores, and
// µs a frame), and the ratios against S = 1 from the same run.
func BenchmarkShardsFlood(b *testing.B) {
	bin := buildNATSServer(b)
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	shards := []int{1, 2, 4}
	if v := os.Getenv("AUDIOFAN_BENCH_SHARDS"); v != "" {
		n, _ := strconv.Atoi(v)
		shards = []int{n}
	}
	rate := map[int][]float64{}
	cores := map[int][]float64{}
	perFrame := map[int][]float64{}
	for b.Loop() {
		for range rounds {
			for _, s := range shards {
				fps, c, us := floodOnce(b, bin, s)
				rate[s], cores[s], perFrame[s] = append(rate[s], fps), append(cores[s], c), append(perFrame[s], us)
			}
		}
	}
	for _, s := range shards {
		b.ReportMetric(median(rate[s]), fmt.Sprintf("frames/s-S%d", s))
		b.ReportMetric(median(cores[s]), fmt.Sprintf("server-cores-S%d", s))
		b.ReportMetric(median(perFrame[s]), fmt.Sprintf("server-µs/frame-S%d", s))
		b.ReportMetric(median(drops[s]), fmt.Sprintf("dropped-S%d", s))
		if s != 1 {
			b.ReportMetric(median(rate[s])/median(rate[1]), fmt.Sprintf("S%d/S1", s))
		}
	}
	b.Logf("frames/s by round: %v", rate)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// drops are the frames each setting's runs dropped (publish window full).
var drops = map[int][]float64{}

const (
	floodClients = 40
	floodFrames  = 1500 // per client: 60,000 frames a run
)

// floodOnce runs one flood on a fresh server with s shards: frames stored
// a second, the server's CPU in cores, and its µs a stored frame.
func floodOnce(b *testing.B, bin string, shards int) (float64, float64, float64) {
	sc := natstest.Defaults[broker.StreamConfig](b)
	sc.Shards = shards
	proc, prof := startNATSConfig(b, bin, natstest.MappingsFor(sc))
	defer func() { _ = proc.cmd.Process.Kill(); _ = proc.cmd.Wait() }()
	r := natstest.StartReceiverStream(b, &natstest.Server{Addr: strings.TrimPrefix(proc.url, "nats://")}, sc, nil)
	defer r.Stop()
	nc, err := nats.Connect(proc.url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	if dir := os.Getenv("AUDIOFAN_BENCH_PROFILE"); dir != "" {
		// The server's CPU profile over the flood's middle, to see what
		// bounds it (go tool pprof -top).
		go func() {
			time.Sleep(300 * time.Millisecond)
			resp, err := http.Get("http://" + prof + "/debug/pprof/profile?seconds=1")
			if err != nil {
				return
			}
			defer resp.Body.Close()
			f, err := os.Create(filepath.Join(dir, fmt.Sprintf("nats-S%d.pprof", shards)))
			if err == nil {
				_, _ = io.Copy(f, resp.Body)
				_ = f.Close()
			}
		}()
	}
	res := flood(b, []*natstest.Receiver{r}, js, sc, strconv.Itoa(shards), floodClients, []*natsProcess{proc})
	drops[shards] = append(drops[shards], res.dropped)
	return res.stored / res.elapsed.Seconds(), res.cpu[0].Seconds() / res.elapsed.Seconds(), float64(res.cpu[0].Microseconds()) / res.stored
}

// floodResult is one flood's outcome: the frames stored and dropped, how
// long it took, and each server process's CPU over it.
type floodResult struct {
	stored, dropped float64
	elapsed         time.Duration
	cpu             []time.Duration
}

// flood sends floodFrames frames from each of clients WebSocket clients of
// distinct calls (tagged with tag, spread over rcvs) as fast as the
// receivers take them, until every frame is stored or dropped (under a
// flood a receiver's publish window fills and it drops what does not fit,
// counted).
func flood(b *testing.B, rcvs []*natstest.Receiver, js jetstream.JetStream, sc broker.StreamConfig, tag string, clients int, procs []*natsProcess) floodResult {
	payload := base64.StdEncoding.EncodeToString(make([]byte, 640))
	msgs := make([][]byte, floodFrames)
	t0 := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	for i := range msgs {
		msgs[i] = fmt.Appendf(nil, `{"kind":"AudioData","audioData":{"timestamp":"%s","participantRawID":"4:+14255550123","data":"%s","silent":false}}`,
			t0.Add(time.Duration(i)*20*time.Millisecond).Format(time.RFC3339Nano), payload)
	}
	conns := make([]*websocket.Conn, clients)
	for c := range conns {
		r := rcvs[c%len(rcvs)]
		conn, _, err := websocket.DefaultDialer.Dial(r.URL("?callId="+url.QueryEscape(fmt.Sprintf("8:acs:flood-%s+%d", tag, c))), nil)
		if err != nil {
			b.Fatal(err)
		}
		conns[c] = conn
	}
	want := uint64(clients * floodFrames)
	cpu0 := make([]time.Duration, len(procs))
	for i, p := range procs {
		cpu0[i] = p.cpu(b)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, conn := range conns {
		wg.Go(func() {
			_ = conn.WriteMessage(websocket.TextMessage, []byte(`{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"flood","encoding":"PCM","sampleRate":16000,"channels":1,"length":640}}`))
			for _, m := range msgs {
				if err := conn.WriteMessage(websocket.TextMessage, m); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	var dropped uint64
	for {
		bus, err := broker.FindBus(context.Background(), js, sc.StreamRef)
		if err != nil {
			b.Fatal(err)
		}
		stored := uint64(0)
		for _, s := range bus.Shards() {
			info, err := s.Info(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			stored += info.State.Msgs
		}
		dropped = 0
		for _, r := range rcvs {
			dropped += uint64(conformance.Metric(b, r.Reg, "audiofan_receiver_dropped_total", ""))
		}
		if stored+dropped >= want+uint64(clients) { // the frames, and a started message a call
			break
		}
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("%s: %d of %d stored, %d dropped", tag, stored, want, dropped)
		}
		time.Sleep(5 * time.Millisecond)
	}
	res := floodResult{elapsed: time.Since(start), dropped: float64(dropped), stored: float64(want - dropped)}
	for i, p := range procs {
		res.cpu = append(res.cpu, p.cpu(b)-cpu0[i])
	}
	wg.Wait()
	for _, c := range conns {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		_ = c.Close()
	}
	return res
}

// startNATSConfig starts a nats-server process with JetStream and the
// account mappings given, from a configuration file, as a deployment does.
// It returns the process and its profiling listener's address.
func startNATSConfig(b *testing.B, bin string, mappings []broker.Mapping) (*natsProcess, string) {
	addr, prof := freePort(b), freePort(b)
	dir := b.TempDir()
	file := writeNATSConfig(b, bin, dir, fmt.Sprintf("listen: %q\nprof_port: %s\njetstream { store_dir: %q }\n", addr, port(prof), filepath.Join(dir, "js")), mappings)
	cmd := exec.Command(bin, "-c", file)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p := &natsProcess{cmd: cmd, url: "nats://" + addr}
	waitNATS(b, p.url)
	return p, prof
}

// writeNATSConfig writes a nats-server configuration into dir, base and the
// mappings given (none: no mappings block), and checks it with the
// server's own `-t`. It returns the file's path.
func writeNATSConfig(t testing.TB, bin, dir, base string, mappings []broker.Mapping) string {
	t.Helper()
	var conf strings.Builder
	conf.WriteString(base)
	if len(mappings) > 0 {
		conf.WriteString("mappings {\n")
		for _, m := range mappings {
			fmt.Fprintf(&conf, "  %q: %q\n", m.Source, m.Destination)
		}
		conf.WriteString("}\n")
	}
	file := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(file, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-c", file).CombinedOutput(); err != nil {
		t.Fatalf("nats-server -t: %v\n%s\n%s", err, out, conf.String())
	}
	return file
}
