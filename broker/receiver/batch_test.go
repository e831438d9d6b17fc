package receiver_test

import (
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker/receiver"
	"github.com/audiofan/audiofan/codec"
)

// In batch mode every frame of many sockets, sent as fast as they go, is
// stored once, in each participant's order, through fast batches that the
// stream was made to allow; the ended messages count them.
func TestFastBatchPublishing(t *testing.T) {
	h := newHarness(t, func(c *receiver.Config) { c.Publish.Mode = receiver.ModeAuto })
	if h.Config.Publish.Mode != receiver.ModeBatch {
		t.Fatalf("auto against nats-server 2.14+ resolved to %q", h.Config.Publish.Mode)
	}
	const sockets, perPart = 8, 300
	parts := []string{"8:acs:a", "4:+14255550123"}
	t0 := time.Now()
	var wg sync.WaitGroup
	for s := range sockets {
		c := dialACS(t, h.wsURL("?callId="+url.QueryEscape(fmt.Sprintf("8:acs:batch+%d", s))), nil)
		c.audioMetadata("s", 16000)
		wg.Go(func() {
			for i := range perPart {
				for p, part := range parts {
					c.audio(t0.Add(time.Duration(i)*20*time.Millisecond), part, frameOf(p, i, 640), false)
				}
			}
			c.close()
		})
	}
	wg.Wait()
	// A last call of one frame, after the flood: a tail no flow ack
	// covers, so its batch must be committed for it to be acknowledged.
	lone := dialACS(t, h.wsURL("?callId="+url.QueryEscape("4:+14255550100")), nil)
	lone.audioMetadata("s", 16000)
	lone.audio(t0, "4:+14255550100", frameOf(0, 0, 640), false)
	lone.close()
	msgs := h.readStream(sockets + 1)
	last := map[string]uint64{}
	seen := map[string]bool{}
	for _, m := range msgs {
		f, ok := m.payload.(*codec.Frame)
		if !ok {
			continue
		}
		if !strings.HasPrefix(f.Call, "8:acs:batch+") && f.Call != "4:+14255550100" {
			t.Fatalf("call id %q: not as the socket gave it", f.Call)
		}
		key := f.Call + "/" + f.Participant
		if seen[fmt.Sprint(key, f.Seq)] {
			t.Fatalf("%s frame %d stored twice", key, f.Seq)
		}
		seen[fmt.Sprint(key, f.Seq)] = true
		if f.Seq <= last[key] {
			t.Fatalf("%s: frame %d stored after %d", key, f.Seq, last[key])
		}
		last[key] = f.Seq
	}
	// Sockets sending as fast as they can may outrun the window on a
	// loaded machine: the receiver then sheds live frames, by design and
	// counted. Every frame is stored once or counted as shed.
	sent := sockets*perPart*len(parts) + 1
	shed := int(h.counter("audiofan_receiver_dropped_total", "reason", "backpressure"))
	if n := frames(msgs); n+shed != sent {
		// Say where the frames went: what each socket's ended message
		// counted as stored, against the last sequence stored.
		claimed := map[string]uint64{}
		for _, m := range msgs {
			if lc, ok := m.payload.(*codec.Lifecycle); ok && lc.Type == codec.LifecycleEnded {
				for part, n := range lc.Frames {
					claimed[lc.Call+"/"+part] = n
				}
			}
		}
		later := frames(h.readAll()) - n
		t.Errorf("%d frames stored and %d shed, want %d in all; %d more stored after the ended messages; per stream, ended's count against the last stored seq: %v against %v",
			n, shed, sent, later, claimed, last)
	} else if shed > 0 {
		t.Logf("%d frames shed for backpressure (the machine is loaded)", shed)
	}
	if h.counter("audiofan_receiver_fast_batches_total", "result", "committed") == 0 {
		t.Error("no fast batch committed: the last frame's tail was not")
	}
	if d := h.counter("audiofan_receiver_dropped_total", "reason", "publish_failed"); d != 0 {
		t.Errorf("%v dropped", d)
	}
	s, err := h.js.Stream(t.Context(), h.sc.Name)
	if err != nil || !s.CachedInfo().Config.AllowBatchPublish {
		t.Errorf("the stream does not allow batches: %v", err)
	}
}

// auto falls back to async against a stream without allow_batched (a server
// older than 2.14 drops it); batch refuses to start.
func TestPublishModeResolve(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		allowed bool
		want    string
		err     bool
	}{
		{receiver.ModeAuto, true, receiver.ModeBatch, false},
		{receiver.ModeAuto, false, receiver.ModeAsync, false},
		{receiver.ModeBatch, true, receiver.ModeBatch, false},
		{receiver.ModeBatch, false, "", true},
		{receiver.ModeAsync, true, receiver.ModeAsync, false},
	} {
		c := receiver.PublishConfig{Mode: tc.mode}
		err := c.Resolve(jetstream.StreamConfig{Name: "CALLS", AllowBatchPublish: tc.allowed, Duplicates: time.Minute})
		if (err != nil) != tc.err || !tc.err && c.Mode != tc.want {
			t.Errorf("%s, allowed %v: %q, %v", tc.mode, tc.allowed, c.Mode, err)
		}
	}
}

// A stream that forgets message ids before the receiver stops sending one
// again would store it twice: refused at start, naming the settings.
func TestDuplicateWindowCoversResends(t *testing.T) {
	for _, tc := range []struct {
		window, retryFor, ackTimeout time.Duration
		ok                           bool
	}{
		{time.Minute, 30 * time.Second, 5 * time.Second, true}, // the defaults
		{35 * time.Second, 30 * time.Second, 5 * time.Second, true},
		{30 * time.Second, 30 * time.Second, 5 * time.Second, false},
		{2 * time.Minute, 2 * time.Minute, time.Second, false},
	} {
		c := receiver.PublishConfig{Mode: receiver.ModeAsync, RetryFor: tc.retryFor, AckTimeout: tc.ackTimeout}
		err := c.Resolve(jetstream.StreamConfig{Name: "CALLS", Duplicates: tc.window})
		if (err == nil) != tc.ok {
			t.Errorf("window %s, retry %s + %s: %v", tc.window, tc.retryFor, tc.ackTimeout, err)
		}
		if err != nil && !strings.Contains(err.Error(), "AUDIOFAN_STREAM_DUPLICATE_WINDOW") {
			t.Errorf("the error does not name the setting: %v", err)
		}
	}
}
