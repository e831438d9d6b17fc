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
// check), e-mail addresses and phone numbers (10 to 15 digits, or 7 to 15
// after a +) in text.
func sensitive(text string) []span {
	var out []span
	for _, m := range emailRe.FindAllStringIndex(text, -1) {
		out = append(out, span{Email, m[0], m[1]})
	}
	for _, m := range numberRe.FindAllStringIndex(text, -1) {
		if overlaps(out, m[0], m[1]) {
			continue
		}
		digits := digitsOf(text[m[0]:m[1]])
		switch {
		case len(digits) >= 13 && len(digits) <= 19 && luhn(digits):
			out = append(out, span{Card, m[0], m[1]})
		case len(digits) >= 10 && len(digits) <= 15, text[m[0]] == '+' && len(digits) >= 7 && len(digits) <= 15:
			out = append(out, span{Phone, m[0], m[1]})
		}
	}
	slices.SortFunc(out, func(a, b span) int { return a.start - b.start })
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

// luhn reports whether the digits pass the Luhn check of card numbers.
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
			keep := 4
			if s.kind == Phone {
				keep = 2
			}
			b.WriteString(maskDigits(v, keep))
		}
		last = s.end
	}
	b.WriteString(text[last:])
	return b.String()
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
