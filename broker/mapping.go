package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/audiofan/audiofan/codec"
)

// ErrMapping is the NATS server not mapping published subjects as the
// bus's layout needs: a sharded bus needs the account mappings of
// Mappings (`audiofan nats-accounts` writes them), the single stream
// needs none.
var ErrMapping = errors.New("the NATS server's subject mapping does not fit the bus")

// ErrNotMapped is the ErrMapping of a server that does not map at all (a
// node not yet reloaded with the mappings): the one Reshard may go on
// through, since what is published through it finds no stream and is sent
// again. A mapping of another partition count is never gone on through: it
// would store calls in the wrong partitions.
var ErrNotMapped = fmt.Errorf("%w: published subjects are not mapped", ErrMapping)

// probeStream is the stream a probe expects: none has this name, so the
// stream that gets the probe refuses it and stores nothing.
const probeStream = "audiofan-mapping-probe"

// CheckMapping asks the NATS server nc is connected to how it delivers a
// published subject: it publishes outbound messages for made-up calls
// (which every stream refuses, their Nats-Expected-Stream naming none, and
// no receiver holds) and sees in which form they come back. A cluster's
// nodes each have their own configuration: this checks nc's.
func CheckMapping(ctx context.Context, nc *nats.Conn, s Subjects) error {
	for _, tok := range probeTokens(s.partitions) {
		got, err := probe(ctx, nc, s, tok)
		if err != nil {
			return err
		}
		if err := s.judgeProbe(got.tok, got.subject); err != nil {
			return err
		}
	}
	return nil
}

// probeTokens are made-up calls whose partitions tell a mapping of p
// partitions from one of any other count: for every count q up to
// MaxPartitions, one of them falls in another partition under q than
// under p. Random ones did not: a mapping of 16 partitions puts half of all
// calls where one of 32 does, so four random probes passed it one time in
// sixteen.
func probeTokens(p int) []codec.Token {
	if v, ok := probeSets.Load(p); ok {
		return v.([]codec.Token)
	}
	left := map[int]bool{}
	for q := 1; q <= MaxPartitions; q++ {
		if q != p {
			left[q] = true
		}
	}
	var toks []codec.Token
	for n := 0; len(left) > 0 || len(toks) == 0; n++ {
		tok := codec.Token("audiofan-probe-" + strconv.Itoa(n))
		want := Subjects{partitions: max(p, 1)}.Partition(tok)
		useful := len(toks) == 0
		for q := range left {
			if (Subjects{partitions: q}).Partition(tok) != want {
				delete(left, q)
				useful = true
			}
		}
		if useful {
			toks = append(toks, tok)
		}
	}
	probeSets.Store(p, toks)
	return toks
}

// probeSets caches probeTokens by partition count.
var probeSets sync.Map

type probeResult struct {
	tok     codec.Token
	subject string
}

func probe(ctx context.Context, nc *nats.Conn, s Subjects, tok codec.Token) (probeResult, error) {
	pub := s.Outbound(tok)
	ch := make(chan string, 4)
	// Both forms: what comes says whether, and how, the server maps.
	var subs []*nats.Subscription
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}()
	for _, subj := range []string{pub, s.Prefix + ".*." + string(tok) + "." + string(KindOutbound)} {
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
			select {
			case ch <- m.Subject:
			default:
			}
		})
		if err != nil {
			return probeResult{}, fmt.Errorf("mapping probe: subscribe %s: %w", subj, err)
		}
		subs = append(subs, sub)
	}
	m := nats.NewMsg(pub)
	m.Header.Set(jetstreamExpectedStream, probeStream)
	if err := nc.PublishMsg(m); err != nil {
		return probeResult{}, fmt.Errorf("mapping probe: publish %s: %w", pub, err)
	}
	if err := nc.FlushWithContext(ctx); err != nil {
		return probeResult{}, fmt.Errorf("mapping probe: %w", err)
	}
	t := time.NewTimer(probeWait)
	defer t.Stop()
	select {
	case subj := <-ch:
		return probeResult{tok, subj}, nil
	case <-t.C:
		return probeResult{}, fmt.Errorf("mapping probe: %s did not come back in %s (no permission to subscribe to it?)", pub, probeWait)
	case <-ctx.Done():
		return probeResult{}, ctx.Err()
	}
}

// probeWait bounds the wait for a probe: it comes back within a round trip.
const probeWait = 2 * time.Second

const jetstreamExpectedStream = "Nats-Expected-Stream"

// judgeProbe says whether got, the subject a probe published for call tok
// came back as, is what the layout needs.
func (s Subjects) judgeProbe(tok codec.Token, got string) error {
	pub := s.Outbound(tok)
	want := s.Live(pub)
	if got == want {
		return nil
	}
	if !s.mapped {
		return fmt.Errorf("%w: %s came back as %s: the server maps published subjects, and the single stream (AUDIOFAN_STREAM_SHARDS=1) partitions them itself; remove the mapping or set AUDIOFAN_STREAM_SHARDS as it was laid out for",
			ErrMapping, pub, got)
	}
	if got == pub {
		return fmt.Errorf("%w: %s came back unmapped: a bus of AUDIOFAN_STREAM_SHARDS > 1 needs the server's account to map it into partitions (the mappings `audiofan nats-accounts` writes, deploy/nats/accounts.conf)",
			ErrNotMapped, pub)
	}
	return fmt.Errorf("%w: %s came back as %s, want %s: the server's mapping partitions calls otherwise than AUDIOFAN_PARTITIONS=%s",
		ErrMapping, pub, got, want, strconv.Itoa(s.partitions))
}
