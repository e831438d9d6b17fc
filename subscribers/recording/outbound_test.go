package recording

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/speech"
)

func constPCM(ms int, v int16) []byte {
	b := make([]byte, 16*ms*2) // 16 kHz
	for i := 0; i < len(b); i += 2 {
		binary.LittleEndian.PutUint16(b[i:], uint16(v))
	}
	return b
}

// What was played into the call is recorded as the receiver played it: from
// when it was stored, moved onto the capture-time clock by the receivers'
// lag; a prompt that comes while another plays follows it; a stop cuts what
// plays from then on. It has its own track, outbound.wav, and is in the mix.
func TestOutboundRecorded(t *testing.T) {
	c := &callRecorder{r: &Recorder{spool: t.TempDir()}, call: subscribers.CallInfo{ID: "c", Token: "c"}}
	defer c.Close()
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	const lag = 30 * time.Millisecond // the receivers' clock, ahead of capture times
	deliver := func(p any, stored time.Time) {
		t.Helper()
		if err := c.Handle(context.Background(), subscribers.Delivery{Message: subscribers.Message{Payload: p}, Stored: stored}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Before the audio socket says its rate: nothing to record it against.
	deliver(&codec.Outbound{Kind: codec.OutboundKindAudio, Data: constPCM(100, 9000)}, t0)
	deliver(&codec.Lifecycle{Type: codec.LifecycleStarted, Stream: codec.StreamAudio, SampleRate: 16000}, t0)
	for i := range 100 { // 2 s of one participant
		ts := t0.Add(time.Duration(i) * 20 * time.Millisecond)
		deliver(&codec.Frame{Participant: "p", Seq: uint64(i + 1), Timestamp: ts, ReceivedAt: ts.Add(lag + time.Duration(i%3)*time.Millisecond),
			SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: constPCM(20, 100)}, ts.Add(lag))
	}
	at := func(ms int) time.Time { return t0.Add(lag + time.Duration(ms)*time.Millisecond) }
	deliver(&codec.Outbound{Kind: codec.OutboundKindAudio, Data: constPCM(500, 1000)}, at(400))  // plays 400-900 ms
	deliver(&codec.Outbound{Kind: codec.OutboundKindAudio, Data: constPCM(300, 2000)}, at(500))  // queued: 900-1200 ms
	deliver(&codec.Outbound{Kind: codec.OutboundKindStop}, at(1000))                             // cuts it at 1000 ms
	deliver(&codec.Outbound{Kind: codec.OutboundKindAudio, Data: constPCM(200, 3000)}, at(1500)) // 1500-1700 ms
	if c.spool.Frames() != 100 {
		t.Fatalf("%d participant frames counted", c.spool.Frames())
	}

	res, err := c.spool.Render(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != 3 || res.Files[1].Name != "outbound.wav" || !res.Files[1].Outbound || res.Files[1].Participant != "" {
		t.Fatalf("files %+v", res.Files)
	}
	read := func(f File) []int16 {
		b, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		pcm, rate, err := speech.ParseWAV(b, f.Path)
		if err != nil || rate != 16000 {
			t.Fatalf("%s: %v at %d Hz", f.Name, err, rate)
		}
		out := make([]int16, len(pcm)/2)
		for i := range out {
			out[i] = int16(binary.LittleEndian.Uint16(pcm[2*i:]))
		}
		return out
	}
	out, mix := read(res.Files[1]), read(res.Files[2])
	if len(out) != 2000*16 || len(mix) != len(out) {
		t.Fatalf("outbound %d samples, mix %d: want the call's 2 s", len(out), len(mix))
	}
	for _, span := range []struct {
		from, to int // ms
		want     int16
	}{{0, 400, 0}, {400, 900, 1000}, {900, 1000, 2000}, {1000, 1500, 0}, {1500, 1700, 3000}, {1700, 2000, 0}} {
		for ms := span.from; ms < span.to; ms++ {
			if got := out[ms*16]; got != span.want {
				t.Fatalf("outbound at %d ms: %d, want %d", ms, got, span.want)
			}
			if got := mix[ms*16]; got != span.want+100 {
				t.Fatalf("mix at %d ms: %d, want the participant's 100 plus %d", ms, got, span.want)
			}
		}
	}
	// Rendered again (a retry after a full disk), the same files.
	again, err := c.spool.Render(context.Background(), filepath.Join(t.TempDir(), "again"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range res.Files {
		a, _ := os.ReadFile(res.Files[i].Path)
		b, _ := os.ReadFile(again.Files[i].Path)
		if !bytes.Equal(a, b) {
			t.Fatalf("%s differs when rendered again", res.Files[i].Name)
		}
	}
}
