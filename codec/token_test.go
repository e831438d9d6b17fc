package codec

import (
	"errors"
	"testing"
)

func TestTokenTable(t *testing.T) {
	for _, tc := range []struct {
		id  string
		tok Token
	}{
		{"", MixedToken},
		{"0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f", "0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f"},
		{"4:+14255550123", "4_3A_2B14255550123"},
		{"8:acs:res_user", "8_3Aacs_3Ares_5Fuser"},
		{"_mixed", "_5Fmixed"},
		{"a.b*c>d e", "a_2Eb_2Ac_3Ed_20e"},
		{"\x00\xff", "_00_FF"},
	} {
		if got := EncodeToken(tc.id); got != tc.tok {
			t.Errorf("EncodeToken(%q) = %q, want %q", tc.id, got, tc.tok)
		}
		if n := TokenLen(tc.id); n != len(tc.tok) {
			t.Errorf("TokenLen(%q) = %d, want %d", tc.id, n, len(tc.tok))
		}
		back, err := DecodeToken(tc.tok)
		if err != nil || back != tc.id {
			t.Errorf("DecodeToken(%q) = %q, %v; want %q", tc.tok, back, err, tc.id)
		}
	}
}

func TestDecodeTokenRejects(t *testing.T) {
	for _, tok := range []string{"", "a.b", "_3", "_3a", "_41", "x_ZZ", "a b", "_mixe"} {
		if _, err := DecodeToken(Token(tok)); !errors.Is(err, ErrBadToken) {
			t.Errorf("DecodeToken(%q) err = %v, want ErrBadToken", tok, err)
		}
	}
}

func FuzzToken(f *testing.F) {
	for _, s := range []string{"", "4:+14255550123", "8:acs:a_b", "_mixed", "8:orgid:0f6c2e1a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		tok := EncodeToken(id)
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; !tokenSafe(c) && c != '_' {
				t.Fatalf("token %q of %q has byte %q", tok, id, c)
			}
		}
		back, err := DecodeToken(tok)
		if err != nil || back != id {
			t.Fatalf("round trip %q -> %q -> %q, %v", id, tok, back, err)
		}
		// Any string that decodes must encode back to itself: one id, one token.
		if dec, err := DecodeToken(Token(id)); err == nil && EncodeToken(dec) != Token(id) {
			t.Fatalf("token %q decodes to %q which encodes to %q", id, dec, EncodeToken(dec))
		}
	})
}
