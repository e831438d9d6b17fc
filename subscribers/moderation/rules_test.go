package moderation

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-audio/audio"
	"github.com/go-audio/wav"
)

func TestDefaultRules(t *testing.T) {
	rs, err := ParseRules(defaultRules, "default")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[RuleKind]bool{}
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
		// Found by FuzzParseRules: a regex rule without a pattern crashed
		// the parser, and so the moderator on a hot reload.
		{"rules:\n  - name: a\n    kind: regex\n", "line 2: rule \"a\": pattern is required"},
		{`{"rules":[{"name":"b","kind":"regex","pattern":""}]}`, "line 1: rule \"b\": pattern is required"},
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
	writeWAV(t, wav, 8000, 4000) // 0.5 s at 8 kHz, by an independent encoder
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

// writeWAV writes n samples of 16-bit mono PCM at rate with go-audio/wav.
func writeWAV(t *testing.T, path string, rate, n int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	enc := wav.NewEncoder(f, rate, 16, 1, 1)
	buf := &audio.IntBuffer{Format: &audio.Format{NumChannels: 1, SampleRate: rate}, SourceBitDepth: 16, Data: make([]int, n)}
	for i := range buf.Data {
		buf.Data[i] = i % 1000
	}
	if err := enc.Write(buf); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
}
