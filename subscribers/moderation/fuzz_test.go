package moderation

import (
	"testing"
	"unicode/utf8"
)

// FuzzTranscriptRules feeds arbitrary transcript text (it comes from the bus:
// hostile input) through the default rules and the masking. Nothing may
// panic, the spans must be ordered and inside the text, valid UTF-8 must stay
// valid, and no card number may survive masking, which a brute-force search
// of every window of every run of digits checks.
func FuzzTranscriptRules(f *testing.F) {
	for _, s := range []string{
		"my card is 4111 1111 1111 1111 thanks", "mail me at first.last@example.co.uk", "call +1 (425) 555-0123 now",
		"4111-1111-1111-1111 and 5500 0000 0000 0004", "", "ÀÉÎ naïve café", "12345678901234567890123", "a@b.cd 4242424242424242",
		"you idiot, my card is 4111 1111 1111 1111 12 26", "4111-1111-1111-1111 0426", "4111 1111 1111 1111. 4",
		"4111111111111111 5500000000000004", "99 4111111111111111 99999999999999999999",
	} {
		f.Add(s)
	}
	rs, err := ParseRules(defaultRules, "default")
	if err != nil {
		f.Fatal(err)
	}
	var words []string
	f.Fuzz(func(t *testing.T, text string) {
		_ = matchTranscript(rs, text, &words)
		spans := sensitive(text)
		last := 0
		for _, s := range spans {
			if s.start < last || s.end > len(text) || s.start >= s.end {
				t.Fatalf("spans out of order or outside the text: %+v", spans)
			}
			last = s.end
		}
		masked := mask(text, spans)
		if utf8.ValidString(text) && !utf8.ValidString(masked) {
			t.Fatalf("masking broke UTF-8: %q -> %q", text, masked)
		}
		if c := cardLeft(masked); c != "" {
			t.Fatalf("a card number survives masking: %q -> %q (%s)", text, masked, c)
		}
	})
}

// FuzzParseRules parses arbitrary rule files: a refusal or rules that run,
// never a panic.
func FuzzParseRules(f *testing.F) {
	f.Add(defaultRules)
	f.Add([]byte("rules:\n  - name: k\n    kind: keywords\n    words: [refund, \"cancel my account\"]\n"))
	f.Add([]byte(`{"rules":[{"name":"r","kind":"regex","pattern":"(?i)lawyer"}]}`))
	var words []string
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRules(data, "fuzz")
		if err != nil {
			return
		}
		_ = matchTranscript(rs, "I want a refund, call my lawyer at +1 425 555 0123 or 4111 1111 1111 1111", &words)
	})
}
