package moderation

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestWordsAndPhrases(t *testing.T) {
	if got := wordsOf("Crème BRÛLÉE, s'il-vous-plaît! 42x", nil); !slices.Equal(got, []string{"creme", "brulee", "s", "il", "vous", "plait", "42x"}) {
		t.Errorf("words: %q", got)
	}
	p := newPhrases([]string{"idiot", "Shut Up", "crème brûlée"})
	for text, want := range map[string][]string{
		"You are an IDIOT.":            {"idiot"},
		"that was idiotic":             nil, // whole words only
		"please shut   up now":         {"shut up"},
		"shut the door, up":            nil,
		"CREME BRULEE for dessert":     {"creme brulee"},
		"idiot, idiot! shut up, idiot": {"idiot", "shut up"},
		"":                             nil,
	} {
		if got := p.find(wordsOf(text, nil)); !slices.Equal(got, want) {
			t.Errorf("%q: found %q, want %q", text, got, want)
		}
	}
}

func TestSensitiveAndMask(t *testing.T) {
	for _, tc := range []struct{ text, masked string }{
		{"my card is 4111 1111 1111 1111 thanks", "my card is **** **** **** 1111 thanks"},
		{"card 4111-1111-1111-1111.", "card ****-****-****-1111."},
		{"not a card 4111 1111 1111 1112", "not a card 4111 1111 1111 1112"}, // fails Luhn, too long for a phone
		{"mail john.doe@example.co.uk now", "mail j***@***.uk now"},
		{"call me on +44 20 7946 0958", "call me on +** ** **** **58"},
		{"or (425) 555-0123", "or (***) ***-**23"},
		{"order 12345 of 2024", "order 12345 of 2024"},
	} {
		if got := mask(tc.text, sensitive(tc.text)); got != tc.masked {
			t.Errorf("%q: masked %q, want %q", tc.text, got, tc.masked)
		}
	}
	kinds := func(text string) []string {
		var out []string
		for _, s := range sensitive(text) {
			out = append(out, s.kind)
		}
		return out
	}
	if got := kinds("4111111111111111 a@b.io +1 425 555 0123"); !slices.Equal(got, []string{Card, Email, Phone}) {
		t.Errorf("kinds %v", got)
	}
	if !luhn("79927398713") || luhn("79927398710") {
		t.Error("luhn")
	}
}

// luhn is the Luhn check written the plain way, to check the windowed sums
// of cardsIn against.
func luhn(digits string) bool {
	sum := 0
	for i := range len(digits) {
		d := int(digits[len(digits)-1-i] - '0')
		if i%2 == 1 {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return sum%10 == 0
}

// cardLeft returns a Luhn-valid window of 13 to 19 digits beginning with 2
// to 6 in text, digits
// joined as numberRe joins them, found by brute force; "" if there is none.
func cardLeft(text string) string {
	for _, m := range numberRe.FindAllStringIndex(text, -1) {
		d := digitsOf(text[m[0]:m[1]])
		for i := range len(d) {
			for j := i + 13; j <= min(i+19, len(d)); j++ {
				if d[i] >= '2' && d[i] <= '6' && luhn(d[i:j]) {
					return d[i:j]
				}
			}
		}
	}
	return ""
}

func TestCardsInsideLongerNumbers(t *testing.T) {
	for _, tc := range []struct{ text, masked string }{
		{"you idiot, my card is 4111 1111 1111 1111 12 26", "you idiot, my card is **** **** **** 1111 12 26"},
		{"4111-1111-1111-1111 0426", "****-****-****-1111 0426"},
		{"cards 4111 1111 1111 1111 5500 0000 0000 0004 ok", "cards **** **** **** 1111 **** **** **** 0004 ok"},
		{"it is 4111 1111 1111 1111. 4", "it is **** **** **** 1111. 4"},
		{"ref 0001 4111111111111111", "ref 0001 ************1111"},
		{"serial 1111111111111111112", "serial 1111111111111111112"}, // Luhn-valid windows, but no card begins with 1
	} {
		got := mask(tc.text, sensitive(tc.text))
		if got != tc.masked {
			t.Errorf("%q: masked %q, want %q", tc.text, got, tc.masked)
		}
		if c := cardLeft(got); c != "" {
			t.Errorf("%q: card %s survives in %q", tc.text, c, got)
		}
	}
}

func TestAbuseEvidenceMasksCardNextToDigits(t *testing.T) {
	rs, err := ParseRules(defaultRules, "default")
	if err != nil {
		t.Fatal(err)
	}
	var words []string
	text := "you idiot, my card is 4111 1111 1111 1111 12 26"
	ms := matchTranscript(rs, text, &words)
	kinds := []string{}
	for _, m := range ms {
		kinds = append(kinds, string(m.rule.Kind))
		if ev := fmt.Sprint(m.evidence); strings.Contains(ev, "4111 1111 1111 1111") {
			t.Errorf("rule %s leaks the card: %s", m.rule.Name, ev)
		}
	}
	if !slices.Contains(kinds, string(KindSensitive)) || !slices.Contains(kinds, string(KindKeywords)) {
		t.Errorf("rules hit: %v, want the keyword and the sensitive-data rules", kinds)
	}
}

// A regex rule whose match covers part of a card number shows only what
// the masked transcript shows.
func TestRegexMatchesMasked(t *testing.T) {
	rs, err := ParseRules([]byte("rules:\n  - {name: digits, kind: regex, pattern: '\\d{6}'}\n  - {name: words, kind: regex, pattern: 'card is \\d+'}\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	var words []string
	text := "my card is 4111111111111111 ok"
	ms := matchTranscript(rs, text, &words)
	if got := fmt.Sprint(ms[0].evidence["matches"]); got != "[****** ******]" {
		t.Errorf("digits rule shows %s", got)
	}
	got := fmt.Sprint(ms[1].evidence["matches"])
	if got != "[card is ************1111]" {
		t.Errorf("words rule: %s", got)
	}
}
