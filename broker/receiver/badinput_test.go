package receiver_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/broker/receiver"
	"github.com/audiofan/audiofan/codec"
)

func TestBadInput(t *testing.T) {
	h := newHarness(t, func(c *receiver.Config) {
		c.FirstMessageTimeout = 500 * time.Millisecond
		c.MaxInvalidMessages = 10
	})
	t0 := time.Now()

	// A good call streams the whole time next door; it must lose nothing.
	good := dialACS(t, h.wsURL("?callId=good"), nil)
	good.audioMetadata("s", 16000)
	goodDone := make(chan int)
	go func() {
		n := 0
		for ; n < 200; n++ {
			good.audio(t0.Add(time.Duration(n)*20*time.Millisecond), "8:acs:good", frameOf(0, n, 640), false)
			time.Sleep(time.Millisecond)
		}
		good.close()
		goodDone <- n
	}()

	// Bad messages among good ones: each refused and counted, the rest stored.
	c := dialACS(t, h.wsURL("?callId=mixed-bag"), nil)
	c.audio(t0, "p", frameOf(1, 0, 640), false) // before metadata
	c.audioMetadata("s", 16000)
	c.audio(t0, "p", frameOf(1, 1, 640), false)
	c.sendRaw(`{"kind":"AudioData","audioData":{"data":`)                            // malformed
	c.sendRaw(`{"kind":"AudioData","audioData":{"data":"AAAA","silent":"yes"}}`)     // field type
	c.sendRaw(`{"kind":"AudioData","audioData":{"data":"#not base64#"}}`)            // base64
	c.sendRaw(`{"kind":"AudioData","audioData":{"data":"AAE="}}`)                    // 2 bytes: fine
	c.sendRaw(`{"kind":"AudioData","audioData":{"data":"AAEC"}}`)                    // 3 bytes: not whole samples
	c.sendRaw(`{"kind":"AudioData","audioData":{"data":"AAAA","timestamp":"noon"}}`) // timestamp
	c.sendRaw(`{"kind":"AudioData","audioData":{"data":"AAAAAA==","participantRawID":"` + strings.Repeat("x", 300) + `"}}`)
	// 100 bytes, but 300 once escaped: too long for a file name.
	c.sendRaw(`{"kind":"AudioData","audioData":{"data":"AAAAAA==","participantRawID":"` + strings.Repeat(":", 100) + `"}}`)
	if err := c.c.WriteMessage(websocket.BinaryMessage, []byte(`{"kind":"AudioData","audioData":{"data":"AQI=","participantRawID":"p"}}`)); err != nil {
		t.Fatal(err)
	}
	c.audio(t0.Add(20*time.Millisecond), "p", frameOf(1, 2, 640), false)
	c.close()

	// Each of these closes its own socket with the code the protocol calls for.
	for _, tc := range []struct {
		name string
		send func(a *fakeACS)
		code int
	}{
		{"sample rate", func(a *fakeACS) { a.audioMetadata("s", 8000) }, websocket.CloseUnsupportedData},
		{"encoding", func(a *fakeACS) {
			a.sendRaw(`{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"s","encoding":"OPUS","sampleRate":16000,"channels":1}}`)
		}, websocket.CloseUnsupportedData},
		{"too large", func(a *fakeACS) { a.audioMetadata("s", 16000); a.trySend(strings.Repeat("x", 70<<10)) }, websocket.CloseMessageTooBig},
		{"flood", func(a *fakeACS) {
			a.audioMetadata("s", 16000)
			for i := 0; i < 11; i++ {
				a.trySend("garbage")
			}
		}, websocket.ClosePolicyViolation},
		{"no call id", func(a *fakeACS) {
			a.sendRaw(`{"kind":"AudioMetadata","audioMetadata":{"encoding":"PCM","sampleRate":16000,"channels":1}}`)
		}, websocket.ClosePolicyViolation},
	} {
		a := dialACS(t, h.wsURL(""), nil)
		tc.send(a)
		if code := a.waitClosed(); code != tc.code {
			t.Errorf("%s: closed with %d, want %d", tc.name, code, tc.code)
		}
	}

	// A socket that never says anything is closed after the first-message timeout.
	silent := dialACS(t, h.wsURL("?callId=silent"), nil)
	silent.waitClosed()

	// An id that cannot be a call id is refused before the upgrade.
	if _, resp, err := websocket.DefaultDialer.Dial(h.wsURL("?callId="+strings.Repeat("y", 300)), nil); err == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("long call id: %v", err)
	}
	if _, resp, err := websocket.DefaultDialer.Dial(h.wsURL("?callId="+strings.Repeat("%3A", 100)), nil); err == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("call id whose token is too long: %v", err)
	}

	if n := <-goodDone; n != 200 {
		t.Fatal(n)
	}
	msgs := h.readStream(2)
	var goodFrames, bagFrames []*codec.Frame
	for _, m := range msgs {
		if f, ok := m.payload.(*codec.Frame); ok {
			switch f.Call {
			case "good":
				goodFrames = append(goodFrames, f)
			case "mixed-bag":
				bagFrames = append(bagFrames, f)
			default:
				t.Errorf("frame of call %q stored", f.Call)
			}
		}
	}
	if len(goodFrames) != 200 {
		t.Errorf("good call: %d of 200 frames stored", len(goodFrames))
	}
	for i, f := range goodFrames {
		if f.Seq != uint64(i+1) || !bytes.Equal(f.Data, frameOf(0, i, 640)) {
			t.Fatalf("good frame %d: seq %d", i, f.Seq)
		}
	}
	// Stored: the frame after metadata, the 2-byte mixed one, the binary one, the last one.
	if len(bagFrames) != 4 || !bytes.Equal(bagFrames[0].Data, frameOf(1, 1, 640)) || !bytes.Equal(bagFrames[1].Data, []byte{0, 1}) ||
		!bytes.Equal(bagFrames[2].Data, []byte{1, 2}) || !bytes.Equal(bagFrames[3].Data, frameOf(1, 2, 640)) {
		t.Errorf("mixed bag stored %d frames", len(bagFrames))
	}

	for reason, want := range map[string]float64{"no_metadata": 1, "json": 12, "field_type": 1, "base64": 1, "pcm_length": 1, "timestamp": 1,
		"bad_id": 5, "sample_rate": 1, "encoding": 1, "too_large": 1, "flood": 1} {
		if got := h.counter("audiofan_receiver_invalid_messages_total", "reason", reason); got != want {
			t.Errorf("invalid{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	// sample rate, encoding, no call id, silent
	if got := h.counter("audiofan_receiver_connections_without_metadata_total"); got != 4 {
		t.Errorf("connections without metadata = %v, want 4", got)
	}
	if got := h.counter("audiofan_receiver_connections_closed_total", "reason", "idle"); got != 1 {
		t.Errorf("idle closes = %v, want 1", got)
	}
}
