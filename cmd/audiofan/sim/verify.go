package sim

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
)

// frameHead is the part of a Frame verification reads; msgpack skips the rest
// (the PCM included) without copying it.
type frameHead struct {
	Seq       uint64    `msgpack:"seq"`
	Timestamp time.Time `msgpack:"timestamp"`
}

// vstream is what was stored for one participant stream.
type vstream struct {
	seen       []uint64 // bitset of sequence numbers
	maxSeq     uint64
	stored     uint64
	duplicates uint64
	outOfOrder uint64
}

func (s *vstream) add(seq uint64) {
	s.stored++
	word, bit := seq/64, seq%64
	for uint64(len(s.seen)) <= word {
		s.seen = append(s.seen, 0)
	}
	if s.seen[word]&(1<<bit) != 0 {
		s.duplicates++
		return
	}
	s.seen[word] |= 1 << bit
	if seq < s.maxSeq {
		s.outOfOrder++
	}
	s.maxSeq = max(s.maxSeq, seq)
}

// latencies is a histogram of 0.1 ms buckets up to 10 s, exact enough for
// percentiles without keeping every sample.
type latencies struct {
	buckets [100_000]uint32
	over    uint64
	n       uint64
	max     time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.n++
	l.max = max(l.max, d)
	i := int(d / (100 * time.Microsecond))
	if i < 0 {
		i = 0 // clocks a hair apart on one machine
	}
	if i >= len(l.buckets) {
		l.over++
		return
	}
	l.buckets[i]++
}

func (l *latencies) quantile(q float64) time.Duration {
	if l.n == 0 {
		return 0
	}
	rank := uint64(q * float64(l.n))
	var acc uint64
	for i, c := range l.buckets {
		acc += uint64(c)
		if acc > rank {
			return time.Duration(i+1) * 100 * time.Microsecond
		}
	}
	return l.max
}

// verifier reads everything stored for the simulation's calls.
type verifier struct {
	subj   broker.Subjects
	prefix string
	ccs    []jetstream.ConsumeContext // one a shard

	mu          sync.Mutex
	streams     map[[2]string]*vstream // call, participant
	lat         latencies
	transcripts map[string]uint64
	dtmf        map[string]uint64
	ended       int
	frames      uint64
	undecodable uint64
}

func startVerifier(ctx context.Context, js jetstream.JetStream, sc broker.StreamRef, prefix string) (*verifier, error) {
	bus, err := broker.FindBus(ctx, js, sc)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	v := &verifier{subj: bus.Subjects(), prefix: prefix + "-", streams: map[[2]string]*vstream{},
		transcripts: map[string]uint64{}, dtmf: map[string]uint64{}}
	// Every shard, each from after what it holds now, not at "new": the
	// consumer may be created (on a busy cluster) after the first frames
	// are stored. handle locks: the shards' deliveries come concurrently.
	for _, stream := range bus.Shards() {
		name := stream.CachedInfo().Config.Name
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{v.subj.All()}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
			OptStartSeq: stream.CachedInfo().State.LastSeq + 1})
		if err != nil {
			v.stop()
			return nil, fmt.Errorf("verify: consumer on stream %s: %w", name, err)
		}
		cc, err := cons.Consume(v.handle)
		if err != nil {
			v.stop()
			return nil, fmt.Errorf("verify: consume %s: %w", name, err)
		}
		v.ccs = append(v.ccs, cc)
	}
	return v, nil
}

func (v *verifier) handle(msg jetstream.Msg) {
	info, err := v.subj.ParseStored(msg.Subject())
	if err != nil || !strings.HasPrefix(info.Call, v.prefix) {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch info.Kind {
	case broker.KindAudio:
		var f frameHead
		if err := codec.Unmarshal(msg.Data(), &f); err != nil {
			v.undecodable++
			return
		}
		key := [2]string{info.Call, info.Participant}
		s := v.streams[key]
		if s == nil {
			s = &vstream{}
			v.streams[key] = s
		}
		s.add(f.Seq)
		v.frames++
		if md, err := msg.Metadata(); err == nil {
			v.lat.add(md.Timestamp.Sub(f.Timestamp))
		}
	case broker.KindTranscript:
		v.transcripts[info.Call]++
	case broker.KindDtmf:
		v.dtmf[info.Call]++
	case broker.KindLifecycle:
		var lc codec.Lifecycle
		if err := codec.Unmarshal(msg.Data(), &lc); err == nil && lc.Type == codec.LifecycleEnded {
			v.ended++
		}
	}
}

func (v *verifier) storedFrames() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.frames
}

func (v *verifier) stop() {
	for _, cc := range v.ccs {
		cc.Stop()
	}
}

// finish waits until every socket's `ended` is stored (it comes after all of
// that socket's messages), or settle passes, and compares with what was sent.
func (v *verifier) finish(r *runner, sockets int, settle time.Duration) *Verification {
	deadline := time.Now().Add(settle)
	for {
		v.mu.Lock()
		ended := v.ended
		v.mu.Unlock()
		if ended >= sockets || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	v.stop()
	v.mu.Lock()
	defer v.mu.Unlock()
	out := &Verification{EndedSockets: v.ended, Sockets: sockets, Undecodable: v.undecodable,
		LatencyP50ms: ms(v.lat.quantile(0.50)), LatencyP99ms: ms(v.lat.quantile(0.99)), LatencyMaxMS: ms(v.lat.max)}
	known := map[[2]string]bool{}
	for _, c := range r.calls {
		for _, s := range c.streams {
			key := [2]string{c.id, s.participant}
			known[key] = true
			st := v.streams[key]
			if st == nil {
				st = &vstream{}
			}
			res := StreamResult{Call: c.id, Participant: s.participant, Sent: s.sent.Load(), Stored: st.stored,
				Duplicates: st.duplicates, OutOfOrder: st.outOfOrder}
			unique := st.stored - st.duplicates
			if res.Sent > unique {
				res.Missing = res.Sent - unique
			}
			out.add(res)
		}
		out.TranscriptsSent += c.transcripts.Load()
		out.TranscriptsStored += v.transcripts[c.id]
		out.DtmfSent += c.dtmf.Load()
		out.DtmfStored += v.dtmf[c.id]
	}
	for key, st := range v.streams {
		if !known[key] {
			out.add(StreamResult{Call: key[0], Participant: key[1], Stored: st.stored, Unexpected: true})
		}
	}
	sort.Slice(out.Streams, func(i, j int) bool {
		a, b := out.Streams[i], out.Streams[j]
		return a.Call < b.Call || a.Call == b.Call && a.Participant < b.Participant
	})
	out.OK = out.Missing == 0 && out.Duplicates == 0 && out.OutOfOrder == 0 && out.Unexpected == 0 && out.Undecodable == 0 &&
		out.TranscriptsStored == out.TranscriptsSent && out.DtmfStored == out.DtmfSent && out.EndedSockets == sockets
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
