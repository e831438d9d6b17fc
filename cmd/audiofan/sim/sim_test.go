package sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/broker/receiver"
	"github.com/audiofan/audiofan/codec"
)

func startReceiver(t *testing.T, modify func(*receiver.Config)) *natstest.Receiver {
	return natstest.StartReceiver(t, natstest.Start(t), modify)
}

// The acceptance run: 20 calls × 4 participants at full speed with
// verification: nothing lost, nothing twice, order kept. At full speed on a
// busy test machine the store may fall behind for longer than the default
// half second a socket waits before shedding; the receiver waits here
// instead, so what is tested is the path, not the machine's speed.
func TestVerifiedRunLosesNothing(t *testing.T) {
	r := startReceiver(t, func(c *receiver.Config) { c.Publish.Block = time.Minute })
	cfg := Defaults()
	cfg.URL, cfg.Calls, cfg.Participants, cfg.Duration, cfg.Realtime = r.URL(""), 20, 4, 3*time.Second, false
	cfg.Verify, cfg.Transcripts, cfg.DTMF = true, true, true
	sum, err := Run(context.Background(), cfg, r.JS, r.Stream.StreamRef, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := sum.Verify
	if !sum.OK || v == nil || !v.OK {
		var b strings.Builder
		sum.WriteText(&b)
		t.Fatalf("run not OK:\n%s", b.String())
	}
	if want := uint64(20 * 4 * 150); sum.FramesSent != want || v.Sent != want || v.Stored != want {
		t.Errorf("sent %d, verified sent %d, stored %d; want %d", sum.FramesSent, v.Sent, v.Stored, want)
	}
	if len(v.Streams) != 80 || v.Sockets != 40 || v.TranscriptsSent == 0 || v.DtmfSent != 0 {
		// 3 s calls: no DTMF yet (one every 5 s of call time)
		t.Errorf("streams %d sockets %d transcripts %d dtmf %d", len(v.Streams), v.Sockets, v.TranscriptsSent, v.DtmfSent)
	}
	if v.LatencyMaxMS <= 0 || v.LatencyP50ms > v.LatencyP99ms {
		t.Errorf("latency p50 %v p99 %v max %v", v.LatencyP50ms, v.LatencyP99ms, v.LatencyMaxMS)
	}
}

// A WAV file at the call's rate goes through the bus bit for bit.
func TestWAVRoundTrip(t *testing.T) {
	r := startReceiver(t, nil)
	dir := t.TempDir()
	var wavs []string
	var pcms [][]byte
	for i, samples := range []int{24000*1 + 123, 24000/2 + 7} { // not whole frames
		pcm := make([]byte, 2*samples)
		for j := 0; j < samples; j++ {
			binary.LittleEndian.PutUint16(pcm[2*j:], uint16(int16((j*(37+i))%65536-32768)))
		}
		path := filepath.Join(dir, "p"+string(rune('a'+i))+".wav")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeWAV(f, 24000, pcm); err != nil {
			t.Fatal(err)
		}
		f.Close()
		wavs, pcms = append(wavs, path), append(pcms, pcm)
	}
	cfg := Defaults()
	cfg.URL, cfg.Calls, cfg.Participants, cfg.Rate, cfg.Duration, cfg.Realtime = r.URL(""), 1, 2, 24000, 0, false
	cfg.WAV, cfg.Verify, cfg.CallPrefix = wavs, true, "wav"
	sum, err := Run(context.Background(), cfg, r.JS, r.Stream.StreamRef, nil)
	if err != nil || !sum.OK {
		t.Fatalf("run: %v %+v", err, sum)
	}

	// Read the call back and put each participant's frames together.
	cons, err := r.JS.OrderedConsumer(context.Background(), r.Stream.Name, jetstream.OrderedConsumerConfig{FilterSubjects: []string{r.Stream.Subjects().StoredKind("wav-0", broker.KindAudio)}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]codec.Frame{}
	for range sum.FramesSent {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var f codec.Frame
		if err := codec.Unmarshal(msg.Data(), &f); err != nil {
			t.Fatal(err)
		}
		got[f.Participant] = append(got[f.Participant], f)
	}
	for p, pcm := range pcms {
		frames := got[participantID(0, p)]
		sort.Slice(frames, func(i, j int) bool { return frames[i].Seq < frames[j].Seq })
		var all []byte
		for _, f := range frames {
			all = append(all, f.Data...)
		}
		// The longer file sets the call's length; the rest is silence.
		if len(all) != 51*960 || !bytes.Equal(all[:len(pcm)], pcm) || bytes.ContainsFunc(all[len(pcm):], func(r rune) bool { return r != 0 }) {
			t.Errorf("participant %d: %d bytes back, %d sent; equal prefix %v", p, len(all), len(pcm), bytes.Equal(all[:min(len(all), len(pcm))], pcm))
		}
		for _, f := range frames {
			if f.SampleRate != 24000 {
				t.Fatalf("sample rate %d", f.SampleRate)
			}
		}
	}
}

func TestRefusedUpgrade(t *testing.T) {
	r := startReceiver(t, func(c *receiver.Config) { c.Auth.Mode, c.Auth.Secret = "secret", "0123456789abcdef-secret" })
	cfg := Defaults()
	cfg.URL, cfg.Duration = r.URL(""), time.Second
	_, err := Run(context.Background(), cfg, nil, r.Stream.StreamRef, nil)
	if !errors.Is(err, ErrNothingConnected) || !strings.Contains(err.Error(), "HTTP 401") {
		t.Fatalf("err = %v", err)
	}
	// With the secret it goes through.
	cfg.Secret, cfg.Realtime = "0123456789abcdef-secret", false
	if sum, err := Run(context.Background(), cfg, nil, r.Stream.StreamRef, nil); err != nil || !sum.OK {
		t.Fatalf("with secret: %v %+v", err, sum)
	}
}

func TestVerifierCounts(t *testing.T) {
	var s vstream
	for _, seq := range []uint64{1, 2, 4, 3, 3, 5, 200} {
		s.add(seq)
	}
	if s.stored != 7 || s.duplicates != 1 || s.outOfOrder != 1 || s.maxSeq != 200 {
		t.Errorf("%+v", s)
	}
	var l latencies
	for i := 1; i <= 100; i++ {
		l.add(time.Duration(i) * time.Millisecond)
	}
	if p50, p99 := l.quantile(0.5), l.quantile(0.99); p50 < 50*time.Millisecond || p50 > 52*time.Millisecond || p99 < 99*time.Millisecond || p99 > 101*time.Millisecond || l.max != 100*time.Millisecond {
		t.Errorf("p50 %v p99 %v max %v", p50, p99, l.max)
	}
}

func TestConfigRefusals(t *testing.T) {
	for _, mod := range []func(*Config){
		func(c *Config) { c.URL = "http://x/ws" },
		func(c *Config) { c.Calls = 0 },
		func(c *Config) { c.Participants = 0 },
		func(c *Config) { c.Rate = 44100 },
		func(c *Config) { c.Duration = 0 },
	} {
		c := Defaults()
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}
