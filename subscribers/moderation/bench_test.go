package moderation

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// BenchmarkTranscriptRules evaluates one final transcript (25 words, a card
// number in it) against the default sensitive-data rule, a regex rule and a
// keyword rule of 1,000 words and phrases; the target is under 20 µs a
// message. Beside it, in the same run, the baseline: the naive way, a
// lower-cased strings.Contains per keyword (not even whole words).
func BenchmarkTranscriptRules(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 7))
	var kw []string
	for i := range 1000 {
		w := fmt.Sprintf("w%04x%c", rng.IntN(1<<16), 'a'+rune(i%26))
		if i%10 == 0 {
			w += " phrase"
		}
		kw = append(kw, w)
	}
	file := "rules:\n  - {name: kw, kind: keywords, words: [" + strings.Join(kw, ", ") + "]}\n" +
		"  - {name: re, kind: regex, pattern: \"(?i)cancel (my|the) account\"}\n" +
		"  - {name: pii, kind: sensitive, types: [card, email, phone]}\n"
	rs, err := ParseRules([]byte(file), "bench")
	if err != nil {
		b.Fatal(err)
	}
	text := "Hello, I would like to check why my last payment with the card 4111 1111 1111 1111 was declined yesterday at the shop, thank you"
	var words []string
	var hits int
	start := time.Now()
	for b.Loop() {
		hits += len(matchTranscript(rs, text, &words))
	}
	per := time.Since(start) / time.Duration(b.N)
	// Baseline: the same keywords, the naive way.
	lower := strings.ToLower
	base := time.Now()
	rounds := max(1, b.N/10)
	for range rounds {
		t := lower(text)
		for _, k := range kw {
			if strings.Contains(t, k) {
				hits++
			}
		}
	}
	basePer := time.Since(base) / time.Duration(rounds)
	if hits == 0 {
		b.Fatal("no hit")
	}
	b.ReportMetric(float64(per.Nanoseconds())/1000, "µs/msg")
	b.ReportMetric(float64(basePer)/float64(per), "x-naive-contains")
}
