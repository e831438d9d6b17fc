package receiver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/broker/receiver"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
)

// goodCall streams frames on a call of its own while an attack runs, and
// returns a check that every one of them was stored, in order.
func (h *harness) goodCall(t *testing.T, call string, frames int) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := dialACS(t, h.wsURL("?callId="+call), nil)
		c.audioMetadata("s", 16000)
		for i := 0; i < frames; i++ {
			c.audio(time.Now(), "p", frameOf(3, i, 640), false)
			time.Sleep(2 * time.Millisecond)
		}
		c.close()
	}()
	return func() {
		<-done
		var seqs []uint64
		for _, m := range h.readStream(1) {
			if f, ok := m.payload.(*codec.Frame); ok && f.Call == call {
				if !bytes.Equal(f.Data, frameOf(3, int(f.Seq-1), 640)) {
					t.Fatalf("good call: frame %d has wrong PCM", f.Seq)
				}
				seqs = append(seqs, f.Seq)
			}
		}
		if len(seqs) != frames {
			t.Fatalf("good call: %d of %d frames stored", len(seqs), frames)
		}
		for i, s := range seqs {
			if s != uint64(i+1) {
				t.Fatalf("good call: frame %d stored as %d", i+1, s)
			}
		}
	}
}

// dialerFrom dials from another loopback address, as a different host would.
func dialerFrom(ip string) *websocket.Dialer {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &websocket.Dialer{NetDialContext: d.DialContext, HandshakeTimeout: 5 * time.Second}
}

// Slowloris: connections that trickle their request are cut off at the
// handshake timeout, and a call next to them loses nothing.
func TestSlowloris(t *testing.T) {
	h := newHarness(t, func(c *receiver.Config) { c.HandshakeTimeout = 300 * time.Millisecond })
	check := h.goodCall(t, "good", 200)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_, _ = io.WriteString(c, "GET /ws?callId=slow HTTP/1.1\r\nHost: x\r\n")
			closed := make(chan struct{})
			go func() {
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, _ = io.Copy(io.Discard, c) // returns when the server closes
				close(closed)
			}()
			for j := 0; ; j++ {
				select {
				case <-closed:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if j > 200 {
					t.Error("a slow client was never cut off")
					return
				}
				_, _ = io.WriteString(c, "X") // one byte of a header that never ends
			}
		}()
	}
	wg.Wait()
	check()
}

// A flood of upgrades from one address is refused with 429 past its rate,
// while a call from another address goes through untouched.
func TestUpgradeFlood(t *testing.T) {
	h := newHarness(t, func(c *receiver.Config) { c.UpgradeRate, c.UpgradeBurst = 5, 10 })
	check := h.goodCall(t, "good", 100)
	flood := dialerFrom("127.0.0.2")
	accepted, limited := 0, 0
	for i := 0; i < 100; i++ {
		c, resp, err := flood.Dial(h.wsURL(fmt.Sprintf("?callId=flood-%d", i)), nil)
		switch {
		case err == nil:
			accepted++
			c.Close()
		case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
			limited++
			if resp.Header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		default:
			t.Fatalf("flood dial %d: %v", i, err)
		}
	}
	if accepted < 10 || accepted > 20 || limited != 100-accepted {
		t.Errorf("flood: %d accepted, %d refused; want the burst of 10 (and a few for the rate) through", accepted, limited)
	}
	if got := h.counter("audiofan_receiver_connections_total", "result", "rate_limited"); got != float64(limited) {
		t.Errorf("rate_limited counted %v, refused %d", got, limited)
	}
	check()
}

// One socket sends as fast as it can: the call next to it loses nothing,
// the flood's frames are each stored or counted as shed, and what is in
// flight never exceeds the windows.
func TestMessageFlood(t *testing.T) {
	const window = 64
	h := newHarness(t, func(c *receiver.Config) { c.Publish.Window = window })
	check := h.goodCall(t, "good", 200)

	stop := make(chan struct{})
	var peak float64
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
				peak = max(peak, h.counter("audiofan_receiver_publish_inflight"))
			}
		}
	}()
	const floodFrames = 5000
	f := dialACS(t, h.wsURL("?callId=flood"), nil)
	f.audioMetadata("s", 16000)
	msg := acs.AppendAudioData(nil, time.Now(), "p", frameOf(1, 0, 640), false)
	for i := 0; i < floodFrames; i++ {
		f.sendRaw(string(msg))
	}
	f.close()
	check()
	close(stop)
	sampler.Wait()

	stored := 0
	for _, m := range h.readStream(2) {
		if fr, ok := m.payload.(*codec.Frame); ok && fr.Call == "flood" {
			stored++
		}
	}
	shed := h.counter("audiofan_receiver_dropped_total", "reason", "backpressure")
	if stored+int(shed) != floodFrames {
		t.Errorf("flood: stored %d + shed %v != sent %d", stored, shed, floodFrames)
	}
	if peak > 2*window {
		t.Errorf("in flight peaked at %v, above two sockets' windows (%d)", peak, 2*window)
	}
}

// JetStream full: the stream drops its oldest messages, live calls go on,
// nothing the receiver publishes is refused.
func TestJetStreamFull(t *testing.T) {
	ns := natstest.Start(t)
	sc := defaults[broker.StreamConfig](t)
	sc.MaxBytes = 256 << 10 // about 250 frames
	r := natstest.StartReceiverStream(t, ns, sc, nil)
	h := wrap(t, ns, r)

	c := dialACS(t, h.wsURL("?callId=full"), nil)
	c.audioMetadata("s", 16000)
	const frames = 1000
	for i := 0; i < frames; i++ {
		c.audio(time.Now(), "p", frameOf(0, i, 640), false)
	}
	c.close()

	msgs := h.readStream(1)
	if got := h.counter("audiofan_receiver_stored_total", "kind", "audio"); got != frames {
		t.Errorf("stored %v of %d frames: JetStream refused some", got, frames)
	}
	for _, reason := range []string{"backpressure", "publish_failed", "rejected"} {
		if d := h.counter("audiofan_receiver_dropped_total", "reason", reason); d != 0 {
			t.Errorf("dropped{%s} = %v", reason, d)
		}
	}
	last := msgs[len(msgs)-1].payload.(*codec.Lifecycle)
	if last.Type != codec.LifecycleEnded || last.Frames["p"] != frames {
		t.Errorf("last message %+v", last)
	}
	info, err := h.js.Stream(context.Background(), sc.Name)
	if err != nil {
		t.Fatal(err)
	}
	st := info.CachedInfo().State
	if st.Bytes > uint64(sc.MaxBytes) || st.FirstSeq == 1 || len(msgs) >= frames {
		t.Errorf("stream state %+v: the oldest messages should have gone", st)
	}
}

// A transcript whose words encode to more than the server's max_payload
// (tiny JSON words become whole msgpack maps) is refused at once and
// counted; the socket's audio on either side of it is all stored, none
// shed, and the socket stays open.
func TestMessageTooLargeForNATS(t *testing.T) {
	h := newHarness(t, func(c *receiver.Config) { c.MaxMessageBytes = 256 << 10 })
	c := dialACS(t, h.wsURL("?callId=big"), nil)
	c.audioMetadata("s", 16000)
	const n = 1000
	start := time.Now()
	for i := 0; i < n; i++ {
		c.audio(start.Add(time.Duration(i)*20*time.Millisecond), "4:+14255550123", frameOf(1, i, 640), false)
	}
	words := strings.Repeat(`{},`, 80_000)
	c.sendRaw(`{"kind":"TranscriptionData","transcriptionData":{"text":"x","format":"display","confidence":1,"offset":1,"duration":1,"words":[` +
		words[:len(words)-1] + `],"participantRawID":"4:+14255550123","resultStatus":"Final"}}`)
	for i := n; i < 2*n; i++ {
		c.audio(start.Add(time.Duration(i)*20*time.Millisecond), "4:+14255550123", frameOf(1, i, 640), false)
	}
	c.close()
	msgs := h.readStream(1)
	if got := frames(msgs); got != 2*n {
		t.Errorf("stored %d of %d frames", got, 2*n)
	}
	if got := h.counter("audiofan_receiver_dropped_total", "reason", "too_large"); got != 1 {
		t.Errorf("dropped{too_large} = %v, want 1", got)
	}
	for _, reason := range []string{"backpressure", "publish_failed", "rejected"} {
		if d := h.counter("audiofan_receiver_dropped_total", "reason", reason); d != 0 {
			t.Errorf("dropped{%s} = %v", reason, d)
		}
	}
	if got := h.counter("audiofan_receiver_publish_retries_total"); got != 0 {
		t.Errorf("%v retries: the refused message was sent again", got)
	}
}

// A message limit over the server's max_payload is refused at start: audio
// of that size could never be stored.
func TestMaxMessageBytesOverMaxPayload(t *testing.T) {
	ns := natstest.Start(t)
	cfg := defaults[receiver.Config](t)
	cfg.HTTPAddr, cfg.MaxMessageBytes = "127.0.0.1:0", 2<<20 // the server's max_payload is 1 MiB
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := receiver.NewJetStream(nc, cfg.Publish)
	if err != nil {
		t.Fatal(err)
	}
	r := receiver.New(cfg, defaults[broker.StreamConfig](t), nc, js, prometheus.NewRegistry(), natstest.Logger())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = r.Serve(context.Background(), ln, nil)
	if !errors.Is(err, receiver.ErrTooLarge) {
		t.Errorf("Serve: %v, want ErrTooLarge", err)
	}
}

// A participant past AUDIOFAN_MAX_PARTICIPANTS has its frames refused,
// counted, while the socket stays open and the others' audio is stored.
func TestParticipantPastTheLimit(t *testing.T) {
	const limit, n = 4, 200
	h := newHarness(t, func(c *receiver.Config) { c.MaxParticipants = limit })
	c := dialACS(t, h.wsURL("?callId=many"), nil)
	c.audioMetadata("s", 16000)
	start := time.Now()
	for i := 0; i < n; i++ {
		for p := 0; p <= limit; p++ {
			c.audio(start.Add(time.Duration(i)*20*time.Millisecond), fmt.Sprintf("8:acs:res_user-%d", p), frameOf(p, i, 640), false)
		}
	}
	c.close()
	msgs := h.readStream(1)
	if got := frames(msgs); got != limit*n {
		t.Errorf("stored %d frames, want %d (the first %d participants')", got, limit*n, limit)
	}
	if got := h.counter("audiofan_receiver_invalid_messages_total", "reason", "too_many_participants"); got != n {
		t.Errorf("invalid{too_many_participants} = %v, want %d", got, n)
	}
	if got := h.counter("audiofan_receiver_invalid_messages_total", "reason", "flood"); got != 0 {
		t.Errorf("the socket was closed for flooding (%v)", got)
	}
}
