package moderation

import (
	"regexp"
	"slices"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// wordsOf splits text into lower-case words with accents removed: letters and
// digits, everything else a separator. "Crème Brûlée!" gives [creme brulee].
func wordsOf(text string, dst []string) []string {
	dst = dst[:0]
	if !isASCII(text) {
		text = norm.NFD.String(text)
	}
	var b strings.Builder
	flush := func() {
		if b.Len() > 0 {
			dst = append(dst, b.String())
			b.Reset()
		}
	}
	for _, r := range text {
		switch {
		case r < 0x80 && (r >= 'a' && r <= 'z' || r >= '0' && r <= '9'):
			b.WriteRune(r)
		case r >= 'A' && r <= 'Z':
			b.WriteRune(r + 'a' - 'A')
		case unicode.Is(unicode.Mn, r): // a combining accent: dropped
		case unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(unicode.ToLower(r))
		default:
			flush()
		}
	}
	flush()
	return dst
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// phrases finds whole-word phrases in a text's words, whatever their case
// and accents. Lookup goes by a phrase's first word, so the cost per
// message hardly depends on how many phrases there are.
type phrases struct {
	byFirst map[string][][]string
}

func newPhrases(list []string) *phrases {
	p := &phrases{byFirst: map[string][][]string{}}
	for _, s := range list {
		ws := wordsOf(s, nil)
		if len(ws) == 0 {
			continue
		}
		p.byFirst[ws[0]] = append(p.byFirst[ws[0]], ws)
	}
	return p
}

// find returns the phrases present in ws, each once, in the order found.
func (p *phrases) find(ws []string) []string {
	var out []string
	for i, w := range ws {
		for _, ph := range p.byFirst[w] {
			if i+len(ph) <= len(ws) && slices.Equal(ws[i:i+len(ph)], ph) {
				s := strings.Join(ph, " ")
				if !slices.Contains(out, s) {
					out = append(out, s)
				}
			}
		}
	}
	return out
}

// Kinds of sensitive data found in transcripts.
const (
	Card  = "card"
	Email = "email"
	Phone = "phone"
)

// span is a piece of sensitive data in a text, by byte offsets.
type span struct {
	kind       string
	start, end int
}

var (
	emailRe = regexp.MustCompile(`[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}`)
	// Digits with spaces, dashes, dots or parentheses between (one or
	// two): how a transcript writes numbers read aloud.
	numberRe = regexp.MustCompile(`\+?\(?\d(?:\d|[ .\-()]{1,2}\d)*`)
)

// sensitive finds payment card numbers (13 to 19 digits passing the Luhn
// check, beginning with 2 to 6: the industries of payment cards), e-mail addresses and phone numbers (10 to 15 digits, or 7 to 15
// after a +) in text. A card is looked for inside every run of digits, not
// only as a whole run: people read a card out next to its expiry date or
// its security code, and a transcript joins them into one number.
func sensitive(text string) []span {
	var out []span
	for _, m := range emailRe.FindAllStringIndex(text, -1) {
		out = append(out, span{Email, m[0], m[1]})
	}
	var pos []int
	for _, m := range numberRe.FindAllStringIndex(text, -1) {
		if overlaps(out, m[0], m[1]) {
			continue
		}
		pos = pos[:0]
		for i := m[0]; i < m[1]; i++ {
			if text[i] >= '0' && text[i] <= '9' {
				pos = append(pos, i)
			}
		}
		if cards := cardsIn(text, pos, out); len(cards) > len(out) {
			out = cards
			continue
		}
		n := len(pos)
		if n >= 10 && n <= 15 || text[m[0]] == '+' && n >= 7 && n <= 15 {
			out = append(out, span{Phone, m[0], m[1]})
		}
	}
	slices.SortFunc(out, func(a, b span) int { return a.start - b.start })
	return out
}

// cardsIn appends to out a card span for each stretch of digits (at byte
// offsets pos, one run) covered by Luhn-valid windows of 13 to 19 digits;
// overlapping windows make one span. Masking keeps a span's last four
// digits: no window's other digits reach them, so what survives holds no
// card. Each window is checked in constant time from prefix sums, so a
// hostile transcript of a million digits costs linear time.
func cardsIn(text string, pos []int, out []span) []span {
	n := len(pos)
	if n < 13 {
		return out
	}
	// plain[p][k] and dbl[p][k]: the sum over digits before k whose index
	// has parity p, as they are and as Luhn doubles them.
	var plain, dbl [2][]int
	for p := range 2 {
		plain[p], dbl[p] = make([]int, n+1), make([]int, n+1)
	}
	for k, at := range pos {
		d := int(text[at] - '0')
		dd := 2 * d
		if dd > 9 {
			dd -= 9
		}
		for p := range 2 {
			plain[p][k+1], dbl[p][k+1] = plain[p][k], dbl[p][k]
		}
		plain[k%2][k+1] += d
		dbl[k%2][k+1] += dd
	}
	start, end := -1, -1 // the stretch being built, in digit indices
	for i := 0; i+13 <= n; i++ {
		if c := text[pos[i]]; c < '2' || c > '6' {
			continue
		}
		for j := i + 13; j <= min(i+19, n); j++ {
			// The last digit (j-1) is not doubled, the one before is: a
			// digit is doubled when its parity differs from j-1's.
			keep := (j - 1) % 2
			sum := plain[keep][j] - plain[keep][i] + dbl[1-keep][j] - dbl[1-keep][i]
			if sum%10 != 0 {
				continue
			}
			if start >= 0 && i >= end {
				out = append(out, span{Card, pos[start], pos[end-1] + 1})
				start = -1
			}
			if start < 0 {
				start = i
			}
			end = max(end, j)
		}
	}
	if start >= 0 {
		out = append(out, span{Card, pos[start], pos[end-1] + 1})
	}
	return out
}

func overlaps(spans []span, start, end int) bool {
	for _, s := range spans {
		if start < s.end && s.start < end {
			return true
		}
	}
	return false
}

func digitsOf(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			b = append(b, s[i])
		}
	}
	return string(b)
}

// mask rewrites text with every span masked: a card keeps its last four
// digits, a phone number its last two, an e-mail address the first letter
// of its user and its top-level domain. The layout (spaces, dashes) stays.
func mask(text string, spans []span) string {
	if len(spans) == 0 {
		return text
	}
	var b strings.Builder
	last := 0
	for _, s := range spans {
		b.WriteString(text[last:s.start])
		v := text[s.start:s.end]
		switch s.kind {
		case Email:
			b.WriteString(v[:1] + "***@***" + v[strings.LastIndexByte(v, '.'):])
		default:
			b.WriteString(maskDigits(v, keepOf(s.kind)))
		}
		last = s.end
	}
	b.WriteString(text[last:])
	return b.String()
}

// maskMatch masks text[a:b], a rule's match, with the sensitive spans of
// the whole text: a pattern that matches part of a card number (a run of
// digits, the words around it) shows no more of it than the masked
// transcript does. Checking the match alone would not do: part of a card
// is no card.
func maskMatch(text string, spans []span, a, b int) string {
	var out strings.Builder
	last := a
	for _, s := range spans {
		if s.end <= a || s.start >= b {
			continue
		}
		lo, hi := max(s.start, a), min(s.end, b)
		out.WriteString(text[last:lo])
		if s.kind == Email {
			if lo == s.start && hi == s.end {
				out.WriteString(mask(text[lo:hi], []span{{Email, 0, hi - lo}}))
			} else {
				out.WriteString(strings.Repeat("*", hi-lo)) // the address pattern is ASCII
			}
		} else {
			// Masking digits keeps the length: the match's part of the
			// masked number is at the same offsets.
			out.WriteString(maskDigits(text[s.start:s.end], keepOf(s.kind))[lo-s.start : hi-s.start])
		}
		last = hi
	}
	out.WriteString(text[last:b])
	return out.String()
}

// keepOf is how many trailing digits masking leaves of a kind of number.
func keepOf(kind string) int {
	if kind == Phone {
		return 2
	}
	return 4
}

// maskDigits replaces every digit but the last keep with '*'.
func maskDigits(v string, keep int) string {
	n := len(digitsOf(v))
	out := []byte(v)
	seen := 0
	for i := range out {
		if out[i] >= '0' && out[i] <= '9' {
			if seen < n-keep {
				out[i] = '*'
			}
			seen++
		}
	}
	return string(out)
}
