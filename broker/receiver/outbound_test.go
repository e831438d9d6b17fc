package receiver_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
)

// outboundCall opens a media socket for call and waits until its start is
// stored (the receiver then holds the call).
func (h *harness) outboundCall(t *testing.T, call string) *fakeACS {
	c := dialACS(t, h.wsURL("?callId="+call), nil)
	c.audioMetadata("s", 16000)
	waitFor(t, "started", func() bool { return len(h.readAll()) > 0 })
	return c
}

func (h *harness) speak(t *testing.T, call string, out codec.Outbound) {
	t.Helper()
	data, err := codec.Marshal(&out)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.NC.Publish(h.sc.Subjects().Outbound(codec.EncodeToken(call)), data); err != nil {
		t.Fatal(err)
	}
}

// next reads the next outbound message ACS would get, or false on timeout.
func (a *fakeACS) next(timeout time.Duration) (acs.Outbound, bool) {
	_ = a.c.SetReadDeadline(time.Now().Add(timeout))
	_, msg, err := a.c.ReadMessage()
	if err != nil {
		return acs.Outbound{}, false
	}
	out, err := acs.ParseOutbound(msg)
	if err != nil {
		a.t.Fatalf("receiver sent %q: %v", msg, err)
	}
	return out, true
}

func TestOutboundRelayedPaced(t *testing.T) {
	h := newHarness(t, nil)
	c := h.outboundCall(t, "speak")
	pcm := frameOf(7, 0, 32000) // one second at 16 kHz
	start := time.Now()
	h.speak(t, "speak", codec.Outbound{V: 1, Kind: codec.OutboundKindAudio, Data: pcm})
	var got []byte
	chunks := 0
	for len(got) < len(pcm) {
		out, ok := c.next(5 * time.Second)
		if !ok || out.Kind != acs.OutboundAudioData {
			t.Fatalf("after %d bytes: %+v %v", len(got), out, ok)
		}
		if len(out.PCM) != 3200 {
			t.Errorf("chunk of %d bytes, want 100 ms (3200)", len(out.PCM))
		}
		got = append(got, out.PCM...)
		chunks++
	}
	elapsed := time.Since(start)
	if !bytes.Equal(got, pcm) || chunks != 10 {
		t.Errorf("%d chunks, PCM equal %v", chunks, bytes.Equal(got, pcm))
	}
	// Paced: the last chunk may go at most 200 ms before its time (0.9 s).
	if elapsed < 600*time.Millisecond {
		t.Errorf("one second of audio relayed in %v: not paced", elapsed)
	}
	c.close()
	if got := h.counter("audiofan_receiver_outbound_total", "result", "relayed"); got != 1 {
		t.Errorf("relayed counted %v", got)
	}
}

func TestOutboundStop(t *testing.T) {
	h := newHarness(t, nil)
	c := h.outboundCall(t, "barge")
	h.speak(t, "barge", codec.Outbound{V: 1, Kind: codec.OutboundKindAudio, Data: frameOf(1, 0, 3*32000)})
	if out, ok := c.next(5 * time.Second); !ok || out.Kind != acs.OutboundAudioData {
		t.Fatalf("first chunk: %+v %v", out, ok)
	}
	h.speak(t, "barge", codec.Outbound{V: 1, Kind: codec.OutboundKindStop})
	for {
		out, ok := c.next(5 * time.Second)
		if !ok {
			t.Fatal("no StopAudio")
		}
		if out.Kind == acs.OutboundStopAudio {
			break
		}
	}
	if out, ok := c.next(500 * time.Millisecond); ok {
		t.Errorf("audio after StopAudio: %+v", out.Kind)
	}
	_ = c.c.Close()
}

func TestOutboundNotHereAndInvalid(t *testing.T) {
	h := newHarness(t, nil)
	c := h.outboundCall(t, "here")
	h.speak(t, "nobody", codec.Outbound{V: 1, Kind: codec.OutboundKindAudio, Data: make([]byte, 640)})
	if err := h.NC.Publish(h.sc.Subjects().Outbound("here"), []byte{0xc1}); err != nil {
		t.Fatal(err)
	}
	h.speak(t, "here", codec.Outbound{V: 1, Kind: "shout"})
	waitFor(t, "counted", func() bool {
		return h.counter("audiofan_receiver_outbound_total", "result", "not_here") == 1 &&
			h.counter("audiofan_receiver_outbound_total", "result", "invalid") == 2
	})
	if _, ok := c.next(300 * time.Millisecond); ok {
		t.Error("something was relayed")
	}
	_ = c.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	_ = c.c.Close()
}

// More than 60 s of queued audio for one call is dropped and counted; what
// was queued keeps playing.
func TestOutboundQueueBound(t *testing.T) {
	h := newHarness(t, nil)
	c := h.outboundCall(t, "long")
	half := make([]byte, 31*32000) // 31 s at 16 kHz: two exceed the bound
	h.speak(t, "long", codec.Outbound{V: 1, Kind: codec.OutboundKindAudio, Data: half})
	h.speak(t, "long", codec.Outbound{V: 1, Kind: codec.OutboundKindAudio, Data: half})
	waitFor(t, "counted", func() bool {
		return h.counter("audiofan_receiver_outbound_total", "result", "relayed") == 1 &&
			h.counter("audiofan_receiver_outbound_total", "result", "queue_full") == 1
	})
	if out, ok := c.next(5 * time.Second); !ok || out.Kind != acs.OutboundAudioData {
		t.Errorf("the queued audio does not play: %+v %v", out, ok)
	}
	_ = c.c.Close()
}
