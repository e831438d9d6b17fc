package moderation

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultRules(t *testing.T) {
	rs, err := ParseRules(defaultRules, "default")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, r := range rs.List {
		kinds[r.Kind] = true
	}
	for k := range kindFields {
		if k != KindRegex && !kinds[k] {
			t.Errorf("the default rules have no %s rule", k)
		}
	}
	if pcm := rs.List[0].prompt.pcm16(16000); len(pcm) != 2*16000*300/1000 {
		t.Errorf("shouting prompt: %d bytes", len(pcm))
	}
}

// A bad file is refused with its line named.
func TestBadRules(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"rules:\n  - name: a\n    kind: keywords\n    words: [x\n", "line"},
		{"rules:\n  - name: a\n    kind: keywords\n    words: [x]\n  - name: b\n    kind: shout\n", "line 5: rule \"b\": unknown kind \"shout\""},
		{"rules:\n  - name: a\n    kind: regex\n    pattern: \"(unclosed\"\n", "line 4: rule \"a\": pattern"},
		{"rules:\n  - name: a\n    kind: dead_air\n    for: 3s\n    level: 3\n", "line 5: rule \"a\": unknown field \"level\""},
		{"rules:\n  - name: a\n    kind: dead_air\n    for: soon\n", "line 4: for: want a duration"},
		{"rules:\n  - name: a\n    kind: dead_air\n    for: 3s\n  - name: a\n    kind: dead_air\n    for: 4s\n", "line 5: rule \"a\" defined twice"},
		{"rules:\n  - name: a\n    kind: shouting\n    level: -10\n    for: 2s\n    action: play\n", "line 2: rule \"a\": action play needs a prompt"},
		{"rules:\n  - name: a\n    kind: sensitive\n    types: [card, iban]\n", "line 4: rule \"a\": unknown type \"iban\""},
		{"rules:\n  - name: a\n    kind: shouting\n    level: 12\n    for: 2s\n", "line 4: level: want a number from -60 to 0"},
		{"rulez: []\n", "line 1: unknown key \"rulez\""},
	} {
		_, err := ParseRules([]byte(tc.file), "r.yaml")
		if !errors.Is(err, ErrRules) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got  %v\n want …%s…", tc.file, err, tc.want)
		}
	}
}

// JSON is read too, and a prompt can be a WAV file at another rate.
func TestJSONRulesAndWAVPrompt(t *testing.T) {
	dir := t.TempDir()
	wav := filepath.Join(dir, "warn.wav")
	pcm := make([]byte, 8000) // 0.5 s at 8 kHz
	for i := range pcm {
		pcm[i] = byte(i)
	}
	if err := os.WriteFile(wav, wavFile(8000, pcm), 0o644); err != nil {
		t.Fatal(err)
	}
	file := `{"rules": [{"name": "calm", "kind": "shouting", "level": -8, "for": "1500ms", "cooldown": "1m",
	  "action": "play", "prompt": {"wav": "` + wav + `"}}]}`
	rs, err := ParseRules([]byte(file), "r.json")
	if err != nil {
		t.Fatal(err)
	}
	r := rs.List[0]
	if r.Level != -8 || r.For != 1500*time.Millisecond || r.Cooldown != time.Minute || r.Action != ActionPlay {
		t.Errorf("rule %+v", r)
	}
	if got := len(r.prompt.pcm16(16000)); got != 2*8000 { // 0.5 s at 16 kHz
		t.Errorf("resampled prompt: %d bytes, want %d", got, 2*8000)
	}
}

// wavFile is a canonical 16-bit mono PCM WAV file.
func wavFile(rate int, pcm []byte) []byte {
	h := make([]byte, 44)
	copy(h, "RIFF")
	binary.LittleEndian.PutUint32(h[4:], uint32(36+len(pcm)))
	copy(h[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(h[16:], 16)
	binary.LittleEndian.PutUint16(h[20:], 1)
	binary.LittleEndian.PutUint16(h[22:], 1)
	binary.LittleEndian.PutUint32(h[24:], uint32(rate))
	binary.LittleEndian.PutUint32(h[28:], uint32(rate*2))
	binary.LittleEndian.PutUint16(h[32:], 2)
	binary.LittleEndian.PutUint16(h[34:], 16)
	copy(h[36:], "data")
	binary.LittleEndian.PutUint32(h[40:], uint32(len(pcm)))
	return append(h, pcm...)
}
