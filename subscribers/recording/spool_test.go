package recording

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-audio/wav"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/speech"
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

// rendered is a call rendered to files and read back with an independent
// WAV decoder (go-audio/wav).
type rendered struct {
	*Result
	pcm map[string][]byte // by file name
}

func render(t *testing.T, frames []codec.Frame) *rendered {
	t.Helper()
	dir := t.TempDir()
	sp, err := NewSpool(filepath.Join(dir, "spool"))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	for i := range frames {
		if err := sp.Add(&frames[i]); err != nil {
			t.Fatal(err)
		}
	}
	res, err := sp.Render(context.Background(), filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	r := &rendered{Result: res, pcm: map[string][]byte{}}
	for _, f := range res.Files {
		r.pcm[f.Name] = readWAV(t, f.Path, res.SampleRate, f)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "out")); len(entries) != len(res.Files) {
		t.Errorf("%d files in the folder, want %d", len(entries), len(res.Files))
	}
	return r
}

// readWAV decodes a file, checks its format, duration and checksum, and
// returns its samples as 16-bit little-endian bytes.
func readWAV(t *testing.T, path string, rate int, f File) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != f.SHA256 || int64(len(raw)) != f.Bytes {
		t.Errorf("%s: checksum or size differs from the reported one", f.Name)
	}
	dec := wav.NewDecoder(bytes.NewReader(raw))
	buf, err := dec.FullPCMBuffer()
	if err != nil {
		t.Fatal(err)
	}
	if dec.SampleRate != uint32(rate) || dec.NumChans != 1 || dec.BitDepth != 16 {
		t.Fatalf("%s: decoded %d Hz, %d ch, %d bit", f.Name, dec.SampleRate, dec.NumChans, dec.BitDepth)
	}
	if d := time.Duration(len(buf.Data)) * time.Second / time.Duration(rate); d != f.Duration {
		t.Errorf("%s: %v of samples, reported %v", f.Name, d, f.Duration)
	}
	out := make([]byte, 2*len(buf.Data))
	for i, v := range buf.Data {
		binary.LittleEndian.PutUint16(out[2*i:], uint16(int16(v)))
	}
	return out
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

	c := render(t, frames)
	if len(c.Files) != 4 || c.SampleRate != 16000 || !c.Start.Equal(t0) || c.Duration != time.Second {
		t.Fatalf("call: %d files, %d Hz, start %v, %v", len(c.Files), c.SampleRate, c.Start, c.Duration)
	}
	for i, want := range [][]byte{wantA, wantB, wantC} {
		if f := c.Files[i]; !bytes.Equal(c.pcm[f.Name], want) {
			t.Errorf("track %q differs (len %d, want %d)", f.Participant, len(c.pcm[f.Name]), len(want))
		}
	}
	if a, b, cc := c.Files[0], c.Files[1], c.Files[2]; a.Duplicates != 1 || a.Frames != 50 || b.Gaps != 5 || cc.Gaps != 0 || cc.Frames != 45 {
		t.Errorf("stats: %+v %+v %+v", statsOf(a), statsOf(b), statsOf(cc))
	}
	mix := c.pcm["mix.wav"]
	if len(mix) != len(wantA) || !c.Files[3].Mix {
		t.Fatalf("mix: %d bytes", len(mix))
	}
	for i := 0; i < len(mix); i += 2 {
		var s int32
		for _, w := range [][]byte{wantA, wantB, wantC} {
			s += int32(int16(binary.LittleEndian.Uint16(w[i:])))
		}
		if got := int32(int16(binary.LittleEndian.Uint16(mix[i:]))); got != s {
			t.Fatalf("mix sample %d = %d, want %d", i/2, got, s)
		}
	}
}

func statsOf(f File) [3]int { return [3]int{f.Frames, f.Duplicates, f.Gaps} }

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
	c := render(t, frames)
	if !bytes.Equal(c.pcm["_mixed.wav"], want) || !bytes.Equal(c.pcm["mix.wav"], want) {
		t.Error("jittered timestamps moved audio")
	}

	// Frames 0 and 1 stamped alike: both kept, in capture then seq order.
	frames = []codec.Frame{frame("c", "p", 0, 0, 0), frame("c", "p", 0, 1, 0), frame("c", "p", 0, 2, 40*time.Millisecond)}
	c = render(t, frames)
	if want := append(append(pcm(0, 0, 640), pcm(0, 1, 640)...), pcm(0, 2, 640)...); !bytes.Equal(c.pcm["p.wav"], want) {
		t.Error("two frames in one slot: one was lost or misplaced")
	}
}

func TestSpoolRefusesOtherFormats(t *testing.T) {
	sp, err := NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	a, b, c := frame("c", "a", 0, 0, 0), frame("c", "b", 0, 0, 0), frame("c", "b", 0, 1, 0)
	b.SampleRate, c.Channels = 24000, 2
	if err := sp.Add(&a); err != nil {
		t.Fatal(err)
	}
	for _, f := range []codec.Frame{b, c} {
		if err := sp.Add(&f); !errors.Is(err, ErrFormat) {
			t.Errorf("err = %v", err)
		}
	}
	empty, err := NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if _, err := empty.Render(context.Background(), t.TempDir()); err == nil {
		t.Error("no frames rendered")
	}
}

// Silent frames are kept, those without samples too; rendering again gives
// the same bytes and replaces the files whole; an unwritable folder is an
// error, not a panic.
func TestRenderSilentAndAgain(t *testing.T) {
	frames := []codec.Frame{frame("c", "p", 0, 0, 0), frame("c", "p", 0, 1, 20*time.Millisecond), frame("c", "p", 0, 2, 40*time.Millisecond)}
	frames[1].Silent, frames[1].Data = true, make([]byte, 640)
	frames[2].Silent, frames[2].Data = true, nil
	c := render(t, frames)
	if want := append(pcm(0, 0, 640), make([]byte, 1280)...); !bytes.Equal(c.pcm["p.wav"], want) || c.Files[0].Frames != 3 {
		t.Fatalf("silent frames: %d bytes, %d frames", len(c.pcm["p.wav"]), c.Files[0].Frames)
	}
	dir := t.TempDir()
	sp, err := NewSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	for i := range frames {
		if err := sp.Add(&frames[i]); err != nil {
			t.Fatal(err)
		}
	}
	first, err := sp.Render(context.Background(), filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := sp.Render(context.Background(), filepath.Join(dir, "out"))
	if err != nil || again.Files[0].SHA256 != first.Files[0].SHA256 || again.Files[1].SHA256 != first.Files[1].SHA256 {
		t.Errorf("rendering again: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "out")); len(entries) != 2 {
		t.Errorf("left %d files behind", len(entries))
	}
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Render(context.Background(), filepath.Join(blocker, "out")); err == nil {
		t.Error("a folder under a file accepted")
	}
}

func TestWAVHeader(t *testing.T) {
	b := append(wavHeader(16000, 4), 1, 2, 3, 4)
	if len(b) != 48 || string(b[0:4]) != "RIFF" || string(b[8:16]) != "WAVEfmt " || string(b[36:40]) != "data" ||
		binary.LittleEndian.Uint32(b[24:]) != 16000 || binary.LittleEndian.Uint32(b[40:]) != 4 || !bytes.Equal(b[44:], []byte{1, 2, 3, 4}) {
		t.Errorf("header % x", b[:44])
	}
}

// Past 4 GiB a file is RF64; the header reads back (speech.ParseWAV) with
// the sizes it gives. A small body stands for the large one.
func TestRF64Header(t *testing.T) {
	if h := wavHeader(16000, maxRIFFData); len(h) != 44 || string(h[:4]) != "RIFF" {
		t.Errorf("at the RIFF limit: % x", h[:12])
	}
	h := wavHeader(16000, maxRIFFData+2)
	if len(h) != 80 || string(h[:4]) != "RF64" || string(h[12:16]) != "ds64" || binary.LittleEndian.Uint64(h[28:]) != maxRIFFData+2 ||
		binary.LittleEndian.Uint32(h[76:]) != 0xFFFFFFFF {
		t.Fatalf("past it: % x", h)
	}
	body := pcm(0, 0, 640)
	small := append(rf64Header(16000, int64(len(body))), body...)
	got, rate, err := speech.ParseWAV(small, "rf64")
	if err != nil || rate != 16000 || !bytes.Equal(got, body) {
		t.Errorf("RF64 read back: %d Hz, %d bytes, %v", rate, len(got), err)
	}
}

// The timeline's frames, with timestamps a sender got wrong: one frame
// stamped three years early (as Microsoft's sample frame is) or two hours
// late, a clock that jumps for good, and a stream stamped all alike sent
// faster than real time. None stretches the call.
func TestRenderWildTimestamps(t *testing.T) {
	const n = 150 // 3 s
	for name, wild := range map[string]func(i int, f *codec.Frame){
		"one frame 3 years early": func(i int, f *codec.Frame) {
			if i == 70 {
				f.Timestamp = f.Timestamp.AddDate(-3, 0, 0)
			}
		},
		"one frame 2 hours late": func(i int, f *codec.Frame) {
			if i == 70 {
				f.Timestamp = f.Timestamp.Add(2 * time.Hour)
			}
		},
		"the first frame 3 years early": func(i int, f *codec.Frame) {
			if i == 0 {
				f.Timestamp = f.Timestamp.AddDate(-3, 0, 0)
			}
		},
		"a clock that jumps 2 hours for good": func(i int, f *codec.Frame) {
			if i >= 70 {
				f.Timestamp = f.Timestamp.Add(2 * time.Hour)
			}
		},
		"all stamped alike": func(i int, f *codec.Frame) { f.Timestamp = t0 },
	} {
		var frames []codec.Frame
		var want []byte
		for i := range n {
			for p, id := range []string{"8:acs:alice", "4:+14255550123"} {
				f := frame("c", id, p, i, time.Duration(i)*20*time.Millisecond)
				f.ReceivedAt = t0.Add(time.Second + time.Duration(i)*20*time.Millisecond)
				if p == 0 {
					wild(i, &f)
					want = append(want, f.Data...)
				}
				frames = append(frames, f)
			}
		}
		c := render(t, frames)
		if c.Duration > 3*time.Second+2*time.Second {
			t.Errorf("%s: a call of 3 s rendered as %v", name, c.Duration)
		}
		if got := c.pcm[string(codec.EncodeToken("8:acs:alice"))+".wav"]; !bytes.Contains(got, want[:640*60]) ||
			!bytes.Contains(got, want[640*71:]) {
			t.Errorf("%s: the frames around the wild one are not in order", name)
		}
	}
}

// Frames stamped alike, sent faster than real time: every one kept, in
// order, one after another; placing them is linear (BenchmarkRenderColliding).
func TestRenderManyColliding(t *testing.T) {
	const n = 20_000
	frames := make([]codec.Frame, n)
	var want []byte
	for i := range frames {
		frames[i] = frame("c", "p", 0, i, 0)
		want = append(want, frames[i].Data...)
	}
	c := render(t, frames)
	if got := c.pcm["p.wav"]; !bytes.Equal(got, want) || c.Files[0].Frames != n {
		t.Errorf("%d colliding frames: %d bytes, %d frames placed", n, len(got), c.Files[0].Frames)
	}
}

// A recording is bounded: frames past MaxDuration are cut and counted.
func TestRenderMaxDuration(t *testing.T) {
	sp, err := NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	sp.MaxDuration = time.Second
	for i := range 100 {
		f := frame("c", "p", 0, i, time.Duration(i)*20*time.Millisecond)
		if err := sp.Add(&f); err != nil {
			t.Fatal(err)
		}
	}
	res, err := sp.Render(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if p := res.Files[0]; res.Duration != time.Second || p.Frames != 50 || p.Cut != 50 {
		t.Errorf("bounded to 1 s: %v, %d frames, %d cut", res.Duration, p.Frames, p.Cut)
	}
}

// Rendering stops when its context ends, and leaves nothing behind.
func TestRenderCancelled(t *testing.T) {
	sp, err := NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	for i := range 3000 {
		f := frame("c", "p", 0, i, time.Duration(i)*20*time.Millisecond)
		if err := sp.Add(&f); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	if _, err := sp.Render(ctx, dir); !errors.Is(err, context.Canceled) {
		t.Errorf("render after cancel: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("%d files left behind", len(entries))
	}
}

// A long call's index goes to disk as it comes (a few thousand entries a
// participant stay in memory, however long the call) and renders to the
// same bytes as with every entry in memory: shuffled frames, a duplicate,
// skipped frames, jittered timestamps, outbound audio cut by a stop.
func TestSpillKeepsTheBytes(t *testing.T) {
	const n = 3000 // a minute of three participants
	var frames []codec.Frame
	for i := range n {
		at := time.Duration(i)*20*time.Millisecond + time.Duration(i%7)*time.Millisecond
		for p, id := range []string{"8:acs:a", "4:+14255550100", "8:acs:c"} {
			if (i+p)%97 == 3 {
				continue // lost on the way
			}
			f := frame("call", id, p, i, at)
			f.ReceivedAt = f.Timestamp.Add(time.Duration(5+p) * time.Millisecond)
			frames = append(frames, f)
		}
	}
	frames = append(frames, frames[1234]) // redelivered
	// A sender's clock jumping: frames stamped years off, both ways (their
	// records on disk must carry any int64, negative ones too).
	for i, jump := range []time.Duration{-20 * 365 * 24 * time.Hour, 3 * 365 * 24 * time.Hour, -time.Hour} {
		f := frame("call", "8:acs:a", 0, n+i, time.Duration(n+i)*20*time.Millisecond)
		f.Timestamp = f.Timestamp.Add(jump)
		f.ReceivedAt = t0.Add(time.Duration(n+i)*20*time.Millisecond + 5*time.Millisecond)
		frames = append(frames, f)
	}
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(frames), func(i, j int) { frames[i], frames[j] = frames[j], frames[i] })

	renderWith := func(spillAt int) (map[string][]byte, int) {
		dir := t.TempDir()
		sp, err := NewSpool(filepath.Join(dir, "spool"))
		if err != nil {
			t.Fatal(err)
		}
		defer sp.Close()
		sp.spillAt = spillAt
		most := 0
		for i := range frames {
			if err := sp.Add(&frames[i]); err != nil {
				t.Fatal(err)
			}
			if i == len(frames)/2 {
				if _, err := sp.AddOutbound(t0.Add(10*time.Second), 16000, pcm(9, 0, 64000)); err != nil {
					t.Fatal(err)
				}
				sp.CutOutbound(t0.Add(11 * time.Second))
			}
			for id, p := range sp.parts {
				if id != outboundKey {
					most = max(most, len(p.es))
				}
			}
		}
		if got := sp.Frames(); got != len(frames) {
			t.Fatalf("Frames() = %d, want %d", got, len(frames))
		}
		res, err := sp.Render(context.Background(), filepath.Join(dir, "out"))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]byte{}
		for _, f := range res.Files {
			b, err := os.ReadFile(f.Path)
			if err != nil {
				t.Fatal(err)
			}
			out[f.Name] = b
		}
		if len(out) != 5 { // three tracks, the outbound track, the mix
			t.Fatalf("%d files", len(out))
		}
		return out, most
	}
	want, _ := renderWith(1 << 30)
	got, most := renderWith(64)
	for name, w := range want {
		if !bytes.Equal(got[name], w) {
			t.Errorf("%s differs when the index spills", name)
		}
	}
	if limit := 64 + partBuffer/640 + 1; most > limit {
		t.Errorf("%d entries of a participant in memory, want at most %d", most, limit)
	}
}
