package moderation

import (
	"slices"
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
