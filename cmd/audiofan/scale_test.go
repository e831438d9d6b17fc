package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// scaleCalls is how many calls the scale test holds open at once: far past
// the 330 at which the per-call design ran into the server's default of
// 1,000 consumers per stream.
const scaleCalls = 1500

// TestServeManyCalls opens scaleCalls calls at once on `audiofan serve`
// (ACS-shaped ids: phone numbers and ACS users, so ':' and '+'), sends a
// few frames on each, then ends them all: every call is recorded and
// analysed, the stream's durable consumers stay the roles' partitions, and
// no JetStream limit is hit.
func TestServeManyCalls(t *testing.T) {
	if testing.Short() {
		t.Skip("a scale test")
	}
	httpAddr, natsAddr := freePort(t), freePort(t)
	dataDir := t.TempDir()
	t.Setenv("AUDIOFAN_HTTP_ADDR", httpAddr)
	t.Setenv("AUDIOFAN_NATS_LISTEN", natsAddr)
	t.Setenv("AUDIOFAN_DATA_DIR", dataDir)
	t.Setenv("AUDIOFAN_CONSOLE", "off")
	t.Setenv("AUDIOFAN_DRAIN_TIMEOUT", "10s")
	var serveOut, serveErr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"serve"}, &serveOut, &serveErr) }()
	waitHTTP(t, "serve", "http://"+httpAddr+"/readyz", 30*time.Second, func() bool { return len(done) > 0 })

	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	sc := natstest.Defaults[broker.StreamConfig](t)
	subj := sc.Subjects()
	ctx := context.Background()
	var failed atomic.Int64
	pub := func(subject string, v any) {
		data, err := codec.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		for attempt := 0; ; attempt++ {
			_, err := js.PublishAsync(subject, data)
			if err == nil {
				return
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) || attempt == 100 {
				failed.Add(1)
				return
			}
			<-js.PublishAsyncComplete() // the window is full: let it drain
		}
	}
	id := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("4:+1425555%04d", i)
		}
		return fmt.Sprintf("8:acs:6a1f0c2e-5b7d-4c39-9e1f-2a8b7c6d5e4f_%08x", i)
	}
	const frames = 10
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	pcm := make([]byte, 640)
	for i := range pcm {
		pcm[i] = byte(i)
	}
	start := time.Now()
	// Every call starts before any ends: all of them open at once.
	for i := range scaleCalls {
		c := id(i)
		pub(subj.Lifecycle(codec.EncodeToken(c)), &codec.Lifecycle{V: 1, Call: c, Type: codec.LifecycleStarted, Stream: codec.StreamAudio,
			Connection: c + "/a", Receiver: "scale", SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, At: t0, Frames: map[string]uint64{}})
	}
	for f := range frames {
		for i := range scaleCalls {
			c, part := id(i), "8:acs:speaker"
			ts := t0.Add(time.Duration(f) * 20 * time.Millisecond)
			pub(subj.Audio(codec.EncodeToken(c), codec.EncodeToken(part)), &codec.Frame{V: 1, Call: c, Participant: part, Seq: uint64(f + 1),
				Timestamp: ts, ReceivedAt: ts, SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: pcm})
		}
	}
	for i := range scaleCalls {
		c := id(i)
		pub(subj.Lifecycle(codec.EncodeToken(c)), &codec.Lifecycle{V: 1, Call: c, Type: codec.LifecycleEnded, Stream: codec.StreamAudio,
			Connection: c + "/a", Receiver: "scale", At: t0.Add(frames * 20 * time.Millisecond), Frames: map[string]uint64{"8:acs:speaker": frames}})
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		t.Fatal("publishing did not complete")
	}
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d publishes failed", n)
	}
	t.Logf("%d calls stored in %v", scaleCalls, time.Since(start).Round(time.Millisecond))

	kv, err := js.KeyValue(ctx, "call-analytics")
	if err != nil {
		t.Fatal(err)
	}
	missing := func() (recorded, analysed int) {
		for i := range scaleCalls {
			tok := codec.EncodeToken(id(i))
			if _, err := os.Stat(filepath.Join(dataDir, "recordings", string(tok), "mix.wav")); err == nil {
				recorded++
			}
		}
		keys, err := kv.ListKeys(ctx)
		if err == nil {
			for range keys.Keys() {
				analysed++
			}
		}
		return scaleCalls - recorded, scaleCalls - analysed
	}
	deadline := time.Now().Add(4 * time.Minute)
	for n := 0; ; n++ {
		r, a := missing()
		if r == 0 && a == 0 {
			break
		}
		if n%10 == 0 {
			t.Logf("%v: %d calls not recorded yet, %d not analysed", time.Since(start).Round(time.Second), r, a)
		}
		if time.Now().After(deadline) {
			log := serveErr.String()
			if len(log) > 6000 {
				log = log[len(log)-6000:]
			}
			t.Fatalf("%d calls not recorded, %d not analysed; serve's log ends:\n%s", r, a, log)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("every call recorded and analysed %v after the first was stored", time.Since(start).Round(time.Millisecond))
	conformance.WaitFor(t, "the analytics summaries", func() bool {
		e, err := kv.Get(ctx, string(codec.EncodeToken(id(7))))
		var ev codec.Event
		return err == nil && codec.Unmarshal(e.Value(), &ev) == nil && ev.Type == "summary"
	})
	// A listing taken while readers come and go can skip a name (see
	// DurableConsumerNames): a count off by that is looked at again.
	var names []string
	for attempt := 0; attempt < 5; attempt++ {
		if names = durableConsumerNames(t, js); len(names) == 3*sc.Partitions {
			break
		}
		time.Sleep(time.Second)
	}
	if len(names) != 3*sc.Partitions {
		t.Errorf("%d durable consumers with %d calls, want %d (3 roles' partitions): %v", len(names), scaleCalls, 3*sc.Partitions, names)
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve exit %d", code)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
	log := serveErr.String()
	for _, bad := range []string{"maximum consumers", "limit reached", "err_code=10026", "insufficient resources"} {
		if strings.Contains(log, bad) {
			t.Errorf("serve logged %q", bad)
		}
	}
}
