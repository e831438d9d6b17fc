package sim

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSchedule(t *testing.T) {
	const d = 120 * time.Second
	s := schedule(4, d, 7)
	var talk [4]time.Duration
	overtalk := false
	for p, spurts := range s {
		for i, sp := range spurts {
			if sp.start < 0 || sp.end > d || sp.end <= sp.start || sp.end-sp.start > 4*time.Second {
				t.Fatalf("participant %d spurt %+v", p, sp)
			}
			if i > 0 && sp.start < spurts[i-1].end {
				t.Fatalf("participant %d overlaps itself", p)
			}
			talk[p] += sp.end - sp.start
		}
	}
	for p, tt := range talk {
		if tt < 10*time.Second {
			t.Errorf("participant %d talks only %v of %v", p, tt, d)
		}
	}
	for at := time.Duration(0); at < d; at += 10 * time.Millisecond {
		n := 0
		for _, spurts := range s {
			if talking(spurts, at) {
				n++
			}
		}
		overtalk = overtalk || n > 1
	}
	if !overtalk {
		t.Error("no overtalk in two minutes")
	}
	if again := schedule(4, d, 7); len(again[0]) != len(s[0]) || again[0][0] != s[0][0] {
		t.Error("schedule is not reproducible from its seed")
	}
}

func TestVoiceFrames(t *testing.T) {
	v := newVoice(0, 16000, []spurt{{time.Second, 2 * time.Second}})
	pcm := make([]byte, 640)
	if !v.frame(pcm, 0) || !bytes.Equal(pcm, make([]byte, 640)) {
		t.Error("frame outside a spurt is not silent zeros")
	}
	if v.frame(pcm, 1500*time.Millisecond) {
		t.Fatal("frame inside a spurt is silent")
	}
	var peak int16
	for i := 0; i < 320; i++ {
		peak = max(peak, int16(binary.LittleEndian.Uint16(pcm[2*i:])))
	}
	if peak < 1000 {
		t.Errorf("speech peak %d is too quiet to analyse", peak)
	}
}

func writeTestWAV(t *testing.T, header func(h []byte), data []byte) string {
	t.Helper()
	var b bytes.Buffer
	if err := writeWAV(&b, 8000, data); err != nil {
		t.Fatal(err)
	}
	raw := b.Bytes()
	if header != nil {
		header(raw)
	}
	path := filepath.Join(t.TempDir(), "x.wav")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadWAV(t *testing.T) {
	pcm := make([]byte, 1600) // 100 ms at 8 kHz
	for i := range pcm {
		pcm[i] = byte(i)
	}
	w, err := readWAV(writeTestWAV(t, nil, pcm), 16000)
	if err != nil || len(w.pcm) != 3200 {
		t.Fatalf("resample 8k→16k: %v, %d bytes", err, len(w.pcm))
	}
	stereo := writeTestWAV(t, func(h []byte) { binary.LittleEndian.PutUint16(h[22:], 2) }, []byte{10, 0, 30, 0, 0xfe, 0xff, 0x02, 0})
	if w, err := readWAV(stereo, 8000); err != nil || !bytes.Equal(w.pcm, []byte{20, 0, 0, 0}) {
		t.Fatalf("stereo downmix: %v %v", err, w)
	}
	for name, tc := range map[string]struct {
		mod  func([]byte)
		want string
	}{
		"8-bit":     {func(h []byte) { binary.LittleEndian.PutUint16(h[34:], 8) }, "want 16-bit PCM"},
		"float":     {func(h []byte) { binary.LittleEndian.PutUint16(h[20:], 3) }, "want 16-bit PCM"},
		"6 channel": {func(h []byte) { binary.LittleEndian.PutUint16(h[22:], 6) }, "channels"},
		"not riff":  {func(h []byte) { copy(h, "RIFX") }, "not a RIFF/WAVE"},
	} {
		if _, err := readWAV(writeTestWAV(t, tc.mod, pcm), 16000); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
