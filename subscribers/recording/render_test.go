package recording

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-audio/wav"

	"github.com/audiofan/audiofan/codec"
)

var t0 = time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)

// pcm gives distinct, non-silent audio for (participant, frame).
func pcm(p, i, n int) []byte {
	b := make([]byte, n)
	for j := 0; j < n; j += 2 {
		binary.LittleEndian.PutUint16(b[j:], uint16(int16(1000*(p+1)+((i*37+j)%500))))
	}
	return b
}

func frame(call, part string, p, i int, at time.Duration) codec.Frame {
	return codec.Frame{V: 1, Call: call, Participant: part, Seq: uint64(i + 1), Timestamp: t0.Add(at), SampleRate: 16000,
		Channels: 1, Encoding: codec.EncodingPCM16, Data: pcm(p, i, 640)}
}

// Three participants: A complete (with a duplicate, shuffled), B skipping
// frames 10-14, C joining at frame 5. Every byte lands where its time says.
func TestRenderBitExact(t *testing.T) {
	const n = 50
	var frames []codec.Frame
	var wantA, wantB, wantC []byte
	for i := 0; i < n; i++ {
		at := time.Duration(i) * 20 * time.Millisecond
		frames = append(frames, frame("c", "a", 0, i, at))
		wantA = append(wantA, pcm(0, i, 640)...)
		if i >= 10 && i < 15 {
			wantB = append(wantB, make([]byte, 640)...)
		} else {
			frames = append(frames, frame("c", "b", 1, i, at))
			wantB = append(wantB, pcm(1, i, 640)...)
		}
		if i < 5 {
			wantC = append(wantC, make([]byte, 640)...)
		} else {
			frames = append(frames, frame("c", "c", 2, i, at))
			wantC = append(wantC, pcm(2, i, 640)...)
		}
	}
	frames = append(frames, frame("c", "a", 0, 20, 20*20*time.Millisecond)) // redelivered
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(frames), func(i, j int) { frames[i], frames[j] = frames[j], frames[i] })

	c, err := Render(frames)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Tracks) != 3 || c.SampleRate != 16000 || !c.Start.Equal(t0) || c.Duration() != time.Second {
		t.Fatalf("call: %d tracks, %d Hz, start %v, %v", len(c.Tracks), c.SampleRate, c.Start, c.Duration())
	}
	for i, want := range [][]byte{wantA, wantB, wantC} {
		if tr := c.Tracks[i]; !bytes.Equal(tr.PCM, want) {
			t.Errorf("track %q differs (len %d, want %d)", tr.Participant, len(tr.PCM), len(want))
		}
	}
	if a, b, cc := c.Tracks[0], c.Tracks[1], c.Tracks[2]; a.Duplicates != 1 || a.Frames != 50 || b.Gaps != 5 || cc.Gaps != 0 || cc.Frames != 45 {
		t.Errorf("stats: %+v %+v %+v", statsOf(a), statsOf(b), statsOf(cc))
	}
	for i := 0; i < len(c.Mix); i += 2 {
		var s int32
		for _, w := range [][]byte{wantA, wantB, wantC} {
			s += int32(int16(binary.LittleEndian.Uint16(w[i:])))
		}
		if got := int32(int16(binary.LittleEndian.Uint16(c.Mix[i:]))); got != s {
			t.Fatalf("mix sample %d = %d, want %d", i/2, got, s)
		}
	}
}

func statsOf(t Track) [3]int { return [3]int{t.Frames, t.Duplicates, t.Gaps} }

// Timestamps a few milliseconds off the grid, and two frames in one slot:
// nothing is lost, nothing moves more than it must.
func TestRenderJitter(t *testing.T) {
	var frames []codec.Frame
	var want []byte
	for i := 0; i < 20; i++ {
		jitter := time.Duration((i%3)-1) * 3 * time.Millisecond // -3..+3 ms, as ACS's clock may
		frames = append(frames, frame("c", "", 0, i, time.Duration(i)*20*time.Millisecond+jitter))
		want = append(want, pcm(0, i, 640)...)
	}
	c, err := Render(frames)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Tracks[0].PCM, want) || !bytes.Equal(c.Mix, want) {
		t.Error("jittered timestamps moved audio")
	}

	// Frames 0 and 1 stamped alike: both kept, in capture then seq order.
	frames = []codec.Frame{frame("c", "p", 0, 0, 0), frame("c", "p", 0, 1, 0), frame("c", "p", 0, 2, 40*time.Millisecond)}
	c, err = Render(frames)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(append(pcm(0, 0, 640), pcm(0, 1, 640)...), pcm(0, 2, 640)...); !bytes.Equal(c.Tracks[0].PCM, want) {
		t.Error("two frames in one slot: one was lost or misplaced")
	}
}

func TestRenderRefusesMixedFormats(t *testing.T) {
	a, b := frame("c", "a", 0, 0, 0), frame("c", "b", 0, 0, 0)
	b.SampleRate = 24000
	if _, err := Render([]codec.Frame{a, b}); !errors.Is(err, ErrMixedFormats) {
		t.Errorf("err = %v", err)
	}
	if _, err := Render(nil); err == nil {
		t.Error("no frames accepted")
	}
}

// The file is a WAV an independent decoder reads with the right format and
// duration, its samples are ours, and writing it again replaces it whole.
func TestWriteWAV(t *testing.T) {
	data := pcm(1, 3, 24000*2*3/2) // 1.5 s at 24 kHz
	path := filepath.Join(t.TempDir(), "call", "p.wav")
	f, err := WriteWAV(path, 24000, data)
	if err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	dec := wav.NewDecoder(fh)
	buf, err := dec.FullPCMBuffer()
	if err != nil {
		t.Fatal(err)
	}
	dur, err := dec.Duration()
	if err != nil {
		t.Fatal(err)
	}
	// go-audio's Duration counts the header's bytes as audio: within 1 ms.
	samples := time.Duration(len(buf.Data)) * time.Second / 24000
	if dec.SampleRate != 24000 || dec.NumChans != 1 || dec.BitDepth != 16 || samples != 1500*time.Millisecond ||
		(dur-samples).Abs() > time.Millisecond || len(buf.Data) != len(data)/2 {
		t.Fatalf("decoded %d Hz, %d ch, %d bit, %v, %d samples", dec.SampleRate, dec.NumChans, dec.BitDepth, dur, len(buf.Data))
	}
	for i, s := range buf.Data {
		if int16(s) != int16(binary.LittleEndian.Uint16(data[2*i:])) {
			t.Fatalf("sample %d differs", i)
		}
	}
	if f.Bytes != int64(44+len(data)) || len(f.SHA256) != 64 {
		t.Errorf("file %+v", f)
	}
	again, err := WriteWAV(path, 24000, data)
	if err != nil || again.SHA256 != f.SHA256 {
		t.Errorf("rewrite: %v %+v", err, again)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("left %d files behind", len(entries))
	}
	if _, err := WriteWAV(filepath.Join(string([]byte{0}), "x.wav"), 16000, data); err == nil {
		t.Error("unwritable path accepted")
	}
}

func TestAppendWAVHeader(t *testing.T) {
	b := AppendWAV(nil, 16000, []byte{1, 2, 3, 4})
	if len(b) != 48 || string(b[0:4]) != "RIFF" || string(b[8:16]) != "WAVEfmt " || string(b[36:40]) != "data" ||
		binary.LittleEndian.Uint32(b[24:]) != 16000 || binary.LittleEndian.Uint32(b[40:]) != 4 || !bytes.Equal(b[44:], []byte{1, 2, 3, 4}) {
		t.Errorf("header % x", b[:44])
	}
}
