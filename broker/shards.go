package broker

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/audiofan/audiofan/codec"
)

// How the bus is laid out over streams. A JetStream stream stores every
// message on one goroutine of its leader, so one stream caps the whole bus
// at about a core of one node. With AUDIOFAN_STREAM_SHARDS = S > 1 the bus
// is S streams, <stream>-<i>of<S>; partition p is in shard p mod S, and a
// shard binds the stored subjects of its partitions (<prefix>.<p>.>).
// Publishers still publish <prefix>.<call>.…: the NATS account's subject
// mapping (Mappings) inserts the partition token before any stream or
// subscriber sees the message, so nothing that publishes knows S, and core
// NATS subscribers see the stored form too (Subjects.Live).
//
// S = 1 is the single stream of audiofan before shards: <stream> itself,
// storing <prefix>.> with its own partitioning transform and no server
// mapping, so a deployment that sets nothing keeps working as it was.
//
// The shard's name carries S, so the streams of two layouts never share a
// name: going from one to another (Reshard) creates the new streams while
// the old ones, retired, are still read to their end.

// MaxShards bounds AUDIOFAN_STREAM_SHARDS.
const MaxShards = 64

// Layout is the bus's partitions and shards: which stream holds what.
type Layout struct {
	// Stream is AUDIOFAN_STREAM: the single stream's name, and the one the
	// shards' names derive from.
	Stream     string
	Prefix     string
	Partitions int
	Shards     int
}

// ErrLayout marks settings that cannot lay the bus out.
var ErrLayout = errors.New("bad bus layout")

// Validate checks that the shards can split the partitions: each shard
// holds whole ones. S need not divide P (S = 3 nodes, P = 32: shards of
// 11, 11 and 10 partitions); the closer to even, the more evenly the
// leaders share the work.
func (l Layout) Validate() error {
	switch {
	case l.Shards < 1 || l.Shards > MaxShards:
		return fmt.Errorf("%w: AUDIOFAN_STREAM_SHARDS %d: want 1 to %d", ErrLayout, l.Shards, MaxShards)
	case l.Partitions < 1 || l.Partitions > MaxPartitions:
		return fmt.Errorf("%w: AUDIOFAN_PARTITIONS %d: want 1 to %d", ErrLayout, l.Partitions, MaxPartitions)
	case l.Shards > l.Partitions:
		return fmt.Errorf("%w: AUDIOFAN_STREAM_SHARDS %d is more than AUDIOFAN_PARTITIONS %d: every shard holds whole partitions",
			ErrLayout, l.Shards, l.Partitions)
	}
	return nil
}

// Sharded says whether the bus is shard streams fed by the server's mapping
// (S > 1) rather than the single stream with its own transform.
func (l Layout) Sharded() bool { return l.Shards > 1 }

// Subjects is the subject scheme of the layout.
func (l Layout) Subjects() Subjects {
	return Subjects{Published: Published{Prefix: l.Prefix}, partitions: l.Partitions, mapped: l.Sharded()}
}

// ShardOf is the shard that holds partition p.
func (l Layout) ShardOf(p int) int { return p % l.Shards }

// ShardStream is the name of shard i's stream.
func (l Layout) ShardStream(i int) string {
	if !l.Sharded() {
		return l.Stream
	}
	return l.Stream + "-" + strconv.Itoa(i) + "of" + strconv.Itoa(l.Shards)
}

// StreamOf is the name of the stream that holds partition p.
func (l Layout) StreamOf(p int) string { return l.ShardStream(l.ShardOf(p)) }

// Streams are the names of the layout's streams, by shard.
func (l Layout) Streams() []string {
	out := make([]string, l.Shards)
	for i := range out {
		out[i] = l.ShardStream(i)
	}
	return out
}

// ShardPartitions are the partitions shard i holds, in order: P/S of them,
// one more for the first P mod S shards.
func (l Layout) ShardPartitions(i int) []int {
	var out []int
	for p := i; p < l.Partitions; p += l.Shards {
		out = append(out, p)
	}
	return out
}

// shardSubjects are the stream subjects of shard i: its partitions' stored
// subjects.
func (l Layout) shardSubjects(i int) []string {
	s := l.Subjects()
	var out []string
	for _, p := range l.ShardPartitions(i) {
		out = append(out, s.PartitionAll(p))
	}
	return out
}

// String names the layout for logs and errors.
func (l Layout) String() string {
	if !l.Sharded() {
		return fmt.Sprintf("stream %s (%d partitions)", l.Stream, l.Partitions)
	}
	return fmt.Sprintf("%d shards %s-*of%d (%d partitions)", l.Shards, l.Stream, l.Shards, l.Partitions)
}

// BusStreams are the names of the streams a NATS user's permissions name
// for the layout: the single stream (what a bus moved to shards keeps,
// retired) and the shards.
func (l Layout) BusStreams() []string {
	if !l.Sharded() {
		return []string{l.Stream}
	}
	return append([]string{l.Stream}, l.Streams()...)
}

var shardName = regexp.MustCompile(`^(.+)-(\d+)of(\d+)$`)

// ownStream says whether name is one of base's streams, of any layout.
func ownStream(base, name string) bool {
	if name == base {
		return true
	}
	m := shardName.FindStringSubmatch(name)
	return m != nil && m[1] == base
}

// Mapping is one subject mapping of a NATS account: published subjects
// matching Source are delivered as Destination.
type Mapping struct{ Source, Destination string }

// Mappings are the account mappings a sharded bus needs: one per kind,
// each matching the published form's exact token count, so a subject
// already in the stored form (a publisher may publish it) is not mapped
// again. They depend on the partitions only: changing S leaves them.
func Mappings(prefix string, partitions int) []Mapping {
	part := "{{partition(" + strconv.Itoa(partitions) + ",1)}}"
	var out []Mapping
	for _, k := range []Kind{KindLifecycle, KindOutbound} {
		out = append(out, Mapping{prefix + ".*." + string(k), prefix + "." + part + ".{{wildcard(1)}}." + string(k)})
	}
	for _, k := range []Kind{KindAudio, KindTranscript, KindDtmf, KindEvents} {
		out = append(out, Mapping{prefix + ".*." + string(k) + ".*",
			prefix + "." + part + ".{{wildcard(1)}}." + string(k) + ".{{wildcard(2)}}"})
	}
	return out
}

// MappingTable is ms as a table, source to destination.
func MappingTable(ms []Mapping) map[string]string {
	out := make(map[string]string, len(ms))
	for _, m := range ms {
		out[m.Source] = m.Destination
	}
	return out
}

// Live is the form in which core NATS subscribers see the published
// subject pattern pub (<prefix>.<call or *>.…): the stored form when the
// server maps (a sharded bus), else pub itself.
func (s Subjects) Live(pub string) string {
	if !s.mapped {
		return pub
	}
	rest, ok := strings.CutPrefix(pub, s.Prefix+".")
	if !ok {
		return pub
	}
	tok, _, _ := strings.Cut(rest, ".")
	part := "*"
	if tok != "*" && tok != ">" {
		part = strconv.Itoa(s.Partition(codec.Token(tok)))
	}
	return s.Prefix + "." + part + "." + rest
}

// metadata keys of a shard stream: what a reader learns the layout from.
const (
	mdLayout     = "audiofan.layout"
	mdShards     = "audiofan.shards"
	mdShard      = "audiofan.shard"
	mdPartitions = "audiofan.partitions"
	mdPrefix     = "audiofan.prefix"
	mdRetired    = "audiofan.retired"
)

func (l Layout) metadata(i int) map[string]string {
	return map[string]string{mdLayout: "shards", mdShards: strconv.Itoa(l.Shards), mdShard: strconv.Itoa(i),
		mdPartitions: strconv.Itoa(l.Partitions), mdPrefix: l.Prefix}
}

// layoutOf reads the layout a shard stream's metadata states.
func layoutOf(base, name string, md map[string]string) (Layout, int, bool) {
	if md[mdLayout] != "shards" {
		return Layout{}, 0, false
	}
	s, err1 := strconv.Atoi(md[mdShards])
	i, err2 := strconv.Atoi(md[mdShard])
	p, err3 := strconv.Atoi(md[mdPartitions])
	if err := errors.Join(err1, err2, err3); err != nil {
		return Layout{}, 0, false
	}
	l := Layout{Stream: base, Prefix: md[mdPrefix], Partitions: p, Shards: s}
	if l.Validate() != nil || i < 0 || i >= s || l.ShardStream(i) != name {
		return Layout{}, 0, false
	}
	return l, i, true
}

// checkShard says what is wrong with shard i's stream configuration, as
// found: the subjects it binds, and its transform.
func (l Layout) checkShard(i int, subjects []string, hasTransform bool) error {
	want := l.shardSubjects(i)
	got := slices.Clone(subjects)
	slices.Sort(got)
	w := slices.Clone(want)
	slices.Sort(w)
	switch {
	case hasTransform:
		return fmt.Errorf("stream %s has a subject transform: a shard stores the subjects the server's mapping made", l.ShardStream(i))
	case !slices.Equal(got, w):
		return fmt.Errorf("stream %s binds %v, want %v (shard %d of %d, partitions %d)", l.ShardStream(i), subjects, want, i, l.Shards, l.Partitions)
	}
	return nil
}

// LiveCall is the call token of a subject as a core NATS subscriber sees it
// (Live), without decoding or allocating.
func (s Subjects) LiveCall(subject string) (codec.Token, bool) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".")
	if !ok {
		return "", false
	}
	if s.mapped {
		if _, rest, ok = strings.Cut(rest, "."); !ok {
			return "", false
		}
	}
	tok, _, ok := strings.Cut(rest, ".")
	return codec.Token(tok), ok && tok != ""
}
