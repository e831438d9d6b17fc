package subscribers

import (
	"context"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// A partition's positions. The messages of a partition are numbered by the
// stream that holds them; a move of the bus (audiofan reshard) starts the
// partition again in another stream, numbered from 1. So that calls,
// checkpoints and the acknowledgement order keep comparing numbers across a
// move, they work on positions: a message of stream sequence s in a span
// is at position base+s, and the span that follows a move starts past
// every position of the one before (its base is that one's base plus its
// last sequence). A partition read from one stream only has one span, of
// base 0, where positions are the stream's sequences.

// span is one stream of a partition's history and where its positions
// start.
type span struct {
	name   string
	base   uint64
	stream jetstream.Stream // nil until looked up (a retired stream named by a checkpoint)
}

// spanOf is the index of the span that holds position pos: the last one
// starting before it (the first, for a position before all).
func spanOf(spans []span, pos uint64) int {
	i, _ := slices.BinarySearchFunc(spans, pos, func(s span, pos uint64) int {
		if s.base < pos {
			return -1
		}
		return 1
	})
	return max(i-1, 0)
}

// neededSpans is what of priors (the spans before the current one, oldest
// first, the current one starting at cur) the calls whose first positions
// are firsts still need: every span from the one holding the earliest.
func neededSpans(priors []span, cur uint64, firsts []uint64) []span {
	if len(firsts) == 0 || len(priors) == 0 {
		return nil
	}
	earliest := slices.Min(firsts)
	if earliest > cur {
		return nil
	}
	return slices.Clone(priors[spanOf(priors, earliest):])
}

// spans are the partition's spans as a call started now reads its history:
// its priors, then the stream it reads.
func (p *partition) spans() []span {
	return append(slices.Clone(p.priors), p.span())
}

// span is the stream the partition reads now.
func (p *partition) span() span {
	return span{name: p.stream.CachedInfo().Config.Name, base: p.base, stream: p.stream}
}

// resolve looks sp's stream up if it is not yet.
func (p *partition) resolve(ctx context.Context, sp span) (span, error) {
	if sp.stream != nil {
		return sp, nil
	}
	s, err := p.g.js.Stream(ctx, sp.name)
	if err != nil {
		return sp, fmt.Errorf("stream %s: %w", sp.name, err)
	}
	sp.stream = s
	return sp, nil
}

// ckSpans and spansOf are spans as a checkpoint keeps them.
func ckSpans(spans []span) []ckSpan {
	var out []ckSpan
	for _, s := range spans {
		out = append(out, ckSpan{Stream: s.name, Base: s.base})
	}
	return out
}

func spansOf(cks []ckSpan) []span {
	var out []span
	for _, s := range cks {
		out = append(out, span{name: s.Stream, base: s.Base})
	}
	return out
}
