package receiver_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/broker/receiver"
	"github.com/audiofan/audiofan/codec"
)

// appendWSFrame appends a client-to-server text frame. The mask key is zero,
// which makes masking the identity: a benchmark client then costs nothing but
// the write, and the receiver still runs its unmasking.
func appendWSFrame(dst, payload []byte) []byte {
	dst = append(dst, 0x81)
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	dst = append(dst, 0, 0, 0, 0)
	return append(dst, payload...)
}

var closeFrame = []byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8}

// rawDial opens a WebSocket without a client library.
func rawDial(addr, path string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 512)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, fmt.Errorf("upgrade: %v (%v)", err, resp)
	}
	return c, nil
}

func metadataMsg(rate int) []byte {
	return []byte(fmt.Sprintf(`{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"bench","encoding":"PCM","sampleRate":%d,"channels":1,"length":%d}}`, rate, rate/50*2))
}

func audioMsg(i int, participant string) []byte {
	ts := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC).Add(time.Duration(i) * 20 * time.Millisecond).Format("2006-01-02T15:04:05.000Z")
	return []byte(`{"kind":"AudioData","audioData":{"timestamp":"` + ts + `","participantRawID":"` + participant +
		`","data":"` + base64.StdEncoding.EncodeToString(frameOf(1, i, 640)) + `","silent":false}}`)
}

const (
	benchClients = 40
	benchFrames  = 2500 // per client: 100,000 frames in all
	benchPart    = "8:acs:6a1f0c2e-1111-2222-3333-444455556666_0000001a-2b3c"
)

// BenchmarkReceiverVsPlainPublisher measures frames per second into an
// embedded JetStream (file storage, every ack awaited) two ways in one run:
// a plain async JetStream publisher of ready-made msgpack frames (the
// baseline: no WebSocket, no parsing, no encoding), and the receiver fed by
// concurrent WebSocket clients, publishing async and in fast batches
// (AUDIOFAN_PUBLISH_MODE). All publish the same subjects with the same
// Nats-Msg-Id headers. The ratios are the figures to watch.
func BenchmarkReceiverVsPlainPublisher(b *testing.B) {
	var plain, recv, batch float64
	for b.Loop() {
		plain = benchPlainPublisher(b)
		recv = benchReceiver(b, receiver.ModeAsync)
		batch = benchReceiver(b, receiver.ModeBatch)
	}
	b.ReportMetric(plain, "plain-frames/s")
	b.ReportMetric(recv, "receiver-frames/s")
	b.ReportMetric(recv/plain, "receiver/plain")
	b.ReportMetric(batch, "receiver-batch-frames/s")
	b.ReportMetric(batch/plain, "receiver-batch/plain")
}

func benchPlainPublisher(b *testing.B) float64 {
	ns := natstest.Start(b)
	defer ns.Stop()
	pc := defaults[receiver.PublishConfig](b)
	sc := defaults[broker.StreamConfig](b)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := receiver.NewJetStream(nc, pc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := broker.EnsureStream(context.Background(), js, sc, natstest.Logger()); err != nil {
		b.Fatal(err)
	}
	type prepared struct {
		subject, id string
		data        []byte
	}
	msgs := make([]prepared, 0, benchClients*benchFrames)
	now := time.Now()
	for i := 0; i < benchFrames; i++ {
		for c := 0; c < benchClients; c++ {
			call := fmt.Sprintf("call-%d", c)
			f := codec.Frame{V: 1, Call: call, Participant: benchPart, Seq: uint64(i + 1), Timestamp: now, ReceivedAt: now,
				SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: frameOf(1, i, 640)}
			msgs = append(msgs, prepared{sc.Subjects().Audio(codec.EncodeToken(call), codec.EncodeToken(benchPart)),
				fmt.Sprintf("plain%d/%d", c, i+1), codec.AppendFrame(nil, &f)})
		}
	}
	start := time.Now()
	for _, m := range msgs {
		msg := &nats.Msg{Subject: m.subject, Data: m.data, Header: nats.Header{jetstream.MsgIDHeader: []string{m.id}}}
		for {
			_, err := js.PublishMsgAsync(msg)
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				continue // the window stayed full past the stall wait: a publisher waits on, as the receiver does
			}
			if err != nil {
				b.Fatal(err)
			}
			break
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		b.Fatal("plain publisher: acks did not complete")
	}
	return float64(len(msgs)) / time.Since(start).Seconds()
}

func benchReceiver(b *testing.B, mode string) float64 {
	h := newHarness(b, func(c *receiver.Config) { c.Publish.Mode = mode })
	defer h.stop()
	streams := make([][]byte, benchClients)
	for c := range streams {
		buf := appendWSFrame(nil, metadataMsg(16000))
		for i := 0; i < benchFrames; i++ {
			buf = appendWSFrame(buf, audioMsg(i, benchPart))
		}
		streams[c] = append(buf, closeFrame...)
	}
	conns := make([]net.Conn, benchClients)
	for c := range conns {
		var err error
		if conns[c], err = rawDial(h.addr, fmt.Sprintf("/ws?callId=call-%d", c)); err != nil {
			b.Fatal(err)
		}
	}
	want := uint64(benchClients * (benchFrames + 2))
	start := time.Now()
	var wg sync.WaitGroup
	for c, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := conn.Write(streams[c]); err != nil {
				b.Error(err)
			}
			_, _ = io.Copy(io.Discard, conn) // until the receiver closes
			conn.Close()
		}()
	}
	s, err := h.js.Stream(context.Background(), h.sc.Name)
	if err != nil {
		b.Fatal(err)
	}
	for {
		info, err := s.Info(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if info.State.Msgs >= want {
			break
		}
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("receiver: %d of %d messages stored", info.State.Msgs, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	wg.Wait()
	if d := h.counter("audiofan_receiver_dropped_total", "reason", "backpressure"); d != 0 {
		b.Fatalf("receiver dropped %v frames", d)
	}
	return float64(benchClients*benchFrames) / elapsed.Seconds()
}

// BenchmarkConnectionMemory measures the resident memory a receiver process
// (`audiofan receiver`, built for the purpose, with only the receiver in it)
// spends per WebSocket connection, at 1,000 connections: idle after their
// metadata, then each streaming a 16 kHz participant in real time.
func BenchmarkConnectionMemory(b *testing.B) {
	conns := 1000
	if n, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_CONNS")); err == nil && n > 0 {
		conns = n // for exploring how the figures scale
	}
	ns := natstest.Start(b)
	httpAddr, pid := startReceiverProcess(b, ns)
	var idle, streaming, idleLive, streamingLive, ackMS float64
	for b.Loop() {
		time.Sleep(time.Second)
		base := rss(b, pid)
		baseLive := liveAfterGC(b, httpAddr)
		cs := make([]net.Conn, conns)
		for i := range cs {
			c, err := rawDial(httpAddr, fmt.Sprintf("/ws?callId=mem-%d", i))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(appendWSFrame(nil, metadataMsg(16000))); err != nil {
				b.Fatal(err)
			}
			cs[i] = c
		}
		time.Sleep(2 * time.Second)
		idle = (meanRSS(b, pid, 10, 100*time.Millisecond) - float64(base)) / float64(conns)
		idleLive = (liveAfterGC(b, httpAddr) - baseLive) / float64(conns)
		// Each connection sends every 20 ms, at its own phase in the period
		// (ACS sockets are not in step): ten phases 2 ms apart.
		frame := appendWSFrame(nil, audioMsg(0, benchPart))
		stop := make(chan struct{})
		var wg sync.WaitGroup
		const writers, phases = 4, 10
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(20 * time.Millisecond / phases)
				defer tick.Stop()
				for phase := 0; ; phase = (phase + 1) % phases {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					for i := w; i < conns; i += writers {
						if i%phases == phase {
							_, _ = cs[i].Write(frame)
						}
					}
				}
			}()
		}
		time.Sleep(2 * time.Second)
		streaming = (meanRSS(b, pid, 10, 300*time.Millisecond) - float64(base)) / float64(conns)
		if dir := os.Getenv("AUDIOFAN_BENCH_PROFILE_DIR"); dir != "" {
			saveProfile(b, "http://"+httpAddr+"/debug/pprof/heap", filepath.Join(dir, "heap-streaming.prof"))
			saveProfile(b, "http://"+httpAddr+"/debug/pprof/profile?seconds=3", filepath.Join(dir, "cpu-streaming.prof"))
		}
		streamingLive = (liveAfterGC(b, httpAddr) - baseLive) / float64(conns)
		sum0, n0 := metricValue(b, httpAddr, "audiofan_receiver_publish_ack_seconds_sum"), metricValue(b, httpAddr, "audiofan_receiver_publish_ack_seconds_count")
		time.Sleep(time.Second)
		sum1, n1 := metricValue(b, httpAddr, "audiofan_receiver_publish_ack_seconds_sum"), metricValue(b, httpAddr, "audiofan_receiver_publish_ack_seconds_count")
		ackMS = (sum1 - sum0) / (n1 - n0) * 1000
		close(stop)
		wg.Wait()
		for _, c := range cs {
			_, _ = c.Write(closeFrame)
			c.Close()
		}
	}
	b.ReportMetric(idle, "idle-rss/conn")
	b.ReportMetric(streaming, "streaming-rss/conn")
	b.ReportMetric(idleLive, "idle-live/conn")
	b.ReportMetric(streamingLive, "streaming-live/conn")
	b.ReportMetric(ackMS, "streaming-mean-ack-ms")
}

// liveAfterGC forces a collection in the receiver (through its profiler)
// and returns its Go heap and stacks in use: what it really holds, without
// the garbage a snapshot of a running heap includes.
func liveAfterGC(b testing.TB, addr string) float64 {
	saveProfile(b, "http://"+addr+"/debug/pprof/heap?gc=1", os.DevNull)
	return metricValue(b, addr, "go_memstats_heap_inuse_bytes") + metricValue(b, addr, "go_memstats_stack_inuse_bytes")
}

// metricValue reads one unlabelled sample from the receiver's /metrics.
func metricValue(b testing.TB, addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	b.Fatalf("no metric %s", name)
	return 0
}

// startReceiverProcess builds the audiofan binary and runs `audiofan
// receiver` against ns, alone in its process, until the benchmark ends.
func startReceiverProcess(b testing.TB, ns *natstest.Server, env ...string) (httpAddr string, pid int) {
	bin := filepath.Join(b.TempDir(), "audiofan")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/audiofan").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	httpAddr = freeTCPAddr(b)
	cmd := exec.Command(bin, "receiver")
	cmd.Env = append(os.Environ(), "NATS_URL="+ns.URL(), "AUDIOFAN_HTTP_ADDR="+httpAddr, "AUDIOFAN_LOG_LEVEL=error",
		"AUDIOFAN_DRAIN_TIMEOUT=1s", "AUDIOFAN_PPROF=true",
		"AUDIOFAN_UPGRADE_RATE=0") // one load-generating host opens every socket
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	waitReady(b, httpAddr)
	return httpAddr, cmd.Process.Pid
}

func freeTCPAddr(b testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitReady(b testing.TB, addr string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatal("receiver not ready")
}

// meanRSS samples a process's resident set n times, every, and averages.
func meanRSS(b testing.TB, pid, n int, every time.Duration) float64 {
	var sum int64
	for i := 0; i < n; i++ {
		sum += rss(b, pid)
		time.Sleep(every)
	}
	return float64(sum) / float64(n)
}

// rss is a process's resident set in bytes.
func rss(b testing.TB, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func saveProfile(b testing.TB, url, path string) {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}
