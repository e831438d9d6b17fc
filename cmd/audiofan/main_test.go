package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestHelpListsEverySetting(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, v := range []string{"NATS_URL", "AUDIOFAN_HTTP_ADDR", "AUDIOFAN_AUTH", "AUDIOFAN_DATA_DIR", "AUDIOFAN_NATS_LISTEN", "AUDIOFAN_SUBJECT_PREFIX", "AUDIOFAN_STREAM ", "AUDIOFAN_PUBLISH_WINDOW"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("serve --help lacks %s", strings.TrimSpace(v))
		}
	}
	if code := run([]string{"nonsense"}, &out, &errb); code != 2 {
		t.Errorf("unknown command exit %d", code)
	}
}

func TestBadSettingsExit(t *testing.T) {
	for env, want := range map[string]string{
		"AUDIOFAN_HTTP_ADDR=0.0.0.0:0":        "AUDIOFAN_AUTH must be set",
		"AUDIOFAN_STREAM_STORAGE=tape":        "file or memory",
		"AUDIOFAN_STREAM_MAX_BYTES=lots":      "AUDIOFAN_STREAM_MAX_BYTES",
		"AUDIOFAN_AUTH=secret":                "AUDIOFAN_AUTH_SECRET",
		"AUDIOFAN_SUBJECT_PREFIX=calls.audio": "one subject token",
		"AUDIOFAN_MODERATION_RELOAD=0s":       "AUDIOFAN_MODERATION_RELOAD", // serve checked every role's settings but the moderator's
	} {
		k, v, _ := strings.Cut(env, "=")
		t.Run(k, func(t *testing.T) {
			t.Setenv(k, v)
			var out, errb bytes.Buffer
			if code := run([]string{"serve"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, errb.String(), want)
			}
		})
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"sim", "--rate", "8000"}, 2, "--rate 8000"},
		{[]string{"sim", "--calls", "0"}, 2, "--calls 0"},
		{[]string{"sim", "--wav", "/nonexistent.wav"}, 1, "nonexistent.wav"},
		{[]string{"sim", "--url", "ws://127.0.0.1:1/ws", "--duration", "1s"}, 1, "no socket was accepted"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if lines := strings.Count(strings.TrimSpace(errb.String()), "\n") + 1; code != tc.code || !strings.Contains(errb.String(), tc.want) || lines != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and one line with %q", tc.args, code, errb.String(), tc.code, tc.want)
		}
	}
	t.Run("receiver without NATS_URL", func(t *testing.T) {
		var out, errb bytes.Buffer
		if code := run([]string{"receiver"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "NATS_URL is empty") {
			t.Errorf("exit %d, stderr %q", code, errb.String())
		}
	})
}

// TestServeAndTap runs the binary's serve role, streams a call into it, reads
// it back with tap, then stops serve with a real SIGTERM.
func TestServeAndTap(t *testing.T) {
	httpAddr, natsAddr := freePort(t), freePort(t)
	dataDir := t.TempDir()
	t.Setenv("AUDIOFAN_HTTP_ADDR", httpAddr)
	t.Setenv("AUDIOFAN_NATS_LISTEN", natsAddr)
	t.Setenv("AUDIOFAN_DATA_DIR", dataDir)
	t.Setenv("AUDIOFAN_DRAIN_TIMEOUT", "5s")
	var serveOut, serveErr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"serve"}, &serveOut, &serveErr) }()

	waitHTTP(t, "serve", "http://"+httpAddr+"/readyz", 30*time.Second, func() bool { return len(done) > 0 })

	pcm := bytes.Repeat([]byte{1, 2}, 320)
	streamCall(t, "ws://"+httpAddr+"/ws", "4:+1 call", pcm, 5)

	t.Setenv("NATS_URL", "nats://"+natsAddr)

	// sim against the same serve, verified on its bus, summary as JSON.
	var simOut, simErr bytes.Buffer
	if code := run([]string{"sim", "--url", "ws://" + httpAddr + "/ws", "--calls", "3", "--participants", "2", "--duration", "1s",
		"--realtime=false", "--verify", "--json"}, &simOut, &simErr); code != 0 {
		t.Fatalf("sim exit %d: %s\n%s", code, simErr.String(), simOut.String())
	}
	var sum struct {
		OK     bool
		Verify struct {
			Sent, Stored, Missing uint64
		}
	}
	if err := json.Unmarshal(simOut.Bytes(), &sum); err != nil || !sum.OK || sum.Verify.Sent != 300 || sum.Verify.Stored != 300 {
		t.Errorf("sim --json: %v %+v\n%s", err, sum, simOut.String())
	}

	var tapOut, tapErr bytes.Buffer
	if code := run([]string{"tap", "--all", "--call", "4:+1 call", "-n", "7"}, &tapOut, &tapErr); code != 0 {
		t.Fatalf("tap exit %d: %s", code, tapErr.String())
	}
	var kinds []string
	sc := bufio.NewScanner(&tapOut)
	for sc.Scan() {
		var line struct {
			Subject string
			Kind    string
			Payload map[string]any
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("tap line %q: %v", sc.Text(), err)
		}
		kinds = append(kinds, line.Kind)
		if line.Kind == "audio" && (line.Subject != natstest.Defaults[broker.StreamConfig](t).Subjects().Stored("4_3A_2B1_20call")+".audio.8_3Aacs_3Ax" || line.Payload["participant"] != "8:acs:x" || line.Payload["dataLen"] != 640.0) {
			t.Errorf("tap audio line: %s", sc.Text())
		}
	}
	if strings.Join(kinds, ",") != "lifecycle,audio,audio,audio,audio,audio,lifecycle" {
		t.Errorf("tap printed kinds %v", kinds)
	}

	// `audiofan health` (the image's health check) agrees.
	var hOut, hErr bytes.Buffer
	if code := run([]string{"health"}, &hOut, &hErr); code != 0 {
		t.Errorf("health: exit %d: %s %s", code, hOut.String(), hErr.String())
	}

	// serve records: the call's files, read back as WAV, 100 ms long.
	rec := filepath.Join(dataDir, "recordings", "4_3A_2B1_20call")
	waitForFile(t, filepath.Join(rec, "mix.wav"))
	for _, name := range []string{"8_3Aacs_3Ax.wav", "mix.wav"} {
		b, err := os.ReadFile(filepath.Join(rec, name))
		if err != nil || len(b) != 44+5*640 || string(b[:4]) != "RIFF" || !bytes.Equal(b[44:44+640], pcm) {
			t.Errorf("%s: %d bytes, %v", name, len(b), err)
		}
	}
	// and analyses: the call's summary in the bucket.
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), "call-analytics")
	if err != nil {
		t.Fatal(err)
	}
	conformance.WaitFor(t, "the analytics summary", func() bool {
		e, err := kv.Get(context.Background(), "4_3A_2B1_20call")
		var ev codec.Event
		return err == nil && codec.Unmarshal(e.Value(), &ev) == nil && ev.Type == "summary" && ev.Data["durationMs"] == int64(100)
	})

	stopServe(t, done, &serveErr)
	if !strings.Contains(serveErr.String(), "embedded NATS stopped") {
		t.Errorf("serve log lacks a clean stop:\n%s", serveErr.String())
	}
}

// stopServe sends this process SIGTERM and waits for `serve`, running in
// it, to exit 0 (done gets its exit code; log is its stderr).
func stopServe(t *testing.T, done <-chan int, log *syncBuffer) {
	t.Helper()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve exit %d:\n%s", code, log.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
}

// The receiver role over TLS on both sides: a NATS server that requires TLS
// (NATS_TLS_CA) and a wss:// listener, driven by sim --verify.
func TestReceiverOverTLS(t *testing.T) {
	ca, cert, key := natstest.Certs(t)
	ns := natstest.StartTLS(t, cert, key)
	httpAddr := freePort(t)
	t.Setenv("NATS_URL", ns.URL())
	t.Setenv("NATS_TLS_CA", ca)
	t.Setenv("AUDIOFAN_HTTP_ADDR", httpAddr)
	t.Setenv("AUDIOFAN_TLS_CERT", cert)
	t.Setenv("AUDIOFAN_TLS_KEY", key)
	t.Setenv("AUDIOFAN_DRAIN_TIMEOUT", "5s")
	var errb syncBuffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"receiver"}, io.Discard, &errb) }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(errb.String(), "receiver listening") {
		if time.Now().After(deadline) {
			t.Fatalf("receiver did not start:\n%s", errb.String())
		}
		select {
		case code := <-done:
			t.Fatalf("receiver exited %d:\n%s", code, errb.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if !strings.Contains(errb.String(), "wss://") {
		t.Errorf("listening line does not say wss:\n%s", errb.String())
	}
	var simOut, simErr bytes.Buffer
	if code := run([]string{"sim", "--url", "wss://" + httpAddr + "/ws", "--ca", ca, "--calls", "2", "--duration", "1s", "--realtime=false", "--verify"},
		&simOut, &simErr); code != 0 {
		t.Errorf("sim exit %d: %s\n%s", code, simErr.String(), simOut.String())
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 0 {
		t.Errorf("receiver exit %d:\n%s", code, errb.String())
	}
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The recorder alone against a NATS server: ready once its consumer is in
// place, metrics of the role, the console beside them, a clean stop on
// SIGTERM.
func TestRecorderRole(t *testing.T) {
	ns := natstest.Start(t)
	httpAddr := freePort(t)
	t.Setenv("NATS_URL", ns.URL())
	t.Setenv("AUDIOFAN_HTTP_ADDR", httpAddr)
	t.Setenv("AUDIOFAN_DATA_DIR", t.TempDir())
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := broker.EnsureStream(context.Background(), js, natstest.Defaults[broker.StreamConfig](t), natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"recorder"}, &out, &errOut) }()
	waitHTTP(t, "recorder", "http://"+httpAddr+"/readyz", 30*time.Second, func() bool { return len(done) > 0 })
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`audiofan_subscriber_calls_owned{role="recording"} 0`, `audiofan_subscriber_messages_total{outcome="handled",role="recording"} 0`, "audiofan_recorder_recordings_total"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	for p := range natstest.Defaults[broker.StreamConfig](t).Partitions {
		if _, err := js.Consumer(context.Background(), "CALLS", subscribers.PartitionConsumer("recording", p)); err != nil {
			t.Errorf("the recorder's consumer of partition %d: %v", p, err)
		}
	}
	var hOut, hErr bytes.Buffer
	if code := run([]string{"health"}, &hOut, &hErr); code != 0 {
		t.Errorf("health of the recorder: exit %d: %s", code, hErr.String())
	}
	// On a loopback listener the role serves the console too.
	for _, path := range []string{"/", "/api/calls", "/api/health"} {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("console %s on the recorder: %s", path, resp.Status)
		}
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("recorder exit %d:\n%s", code, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("recorder did not stop on SIGTERM")
	}
}
