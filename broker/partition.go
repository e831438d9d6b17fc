package broker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strconv"
	"strings"

	"github.com/audiofan/audiofan/codec"
	"github.com/nats-io/nats.go/jetstream"
)

// How calls are partitioned. Publishers keep publishing the contract's
// subjects (<prefix>.<call>.<kind>...); the stream's subject transform stores
// each message as <prefix>.<partition>.<call>.<kind>..., the partition being
// NATS's partition() of the call token. Every message of a call lands in one
// partition, so a subscriber role can give each of its replicas whole
// partitions and keep a fixed number of consumers however many calls there
// are.

// MaxPartitions bounds AUDIOFAN_PARTITIONS: each role holds one durable
// consumer per partition.
const MaxPartitions = 1024

// ErrNotPartitioned is returned by SubjectsOf for a stream without the
// partitioning subject transform (one made by an older audiofan, or by hand).
var ErrNotPartitioned = errors.New("stream does not partition calls (no partition() subject transform)")

// Partition is the partition the stream stores a call's messages in: the
// FNV-1a hash of its token modulo the partition count, as nats-server's
// partition() mapping computes it.
func (s Subjects) Partition(callTok codec.Token) int {
	if s.partitions <= 0 {
		// A programming error, never input: every scheme a reader uses
		// comes from the bus (FindBus, ReadSubjects), which has partitions.
		panic("broker: Partition of a subject scheme without partitions (not read from the bus)")
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(callTok))
	return int(h.Sum32() % uint32(s.partitions))
}

// Stored is the subject a published subject of a call is stored under.
func (s Subjects) Stored(callTok codec.Token) string {
	return s.Prefix + "." + strconv.Itoa(s.Partition(callTok)) + "." + string(callTok)
}

// StoredCall matches every stored message of one call, given its token.
func (s Subjects) StoredCall(callTok codec.Token) string { return s.Stored(callTok) + ".>" }

// StoredKind matches the stored messages of one kind of one call.
// Lifecycle and outbound subjects have no fourth token; the others have one.
func (s Subjects) StoredKind(callTok codec.Token, kind Kind) string {
	return kindFilter(s.Stored(callTok), kind)
}

// PartitionAll matches every stored message of one partition. A consumer
// with this one filter costs the server a walk of the partition's subjects
// only; one with several wildcard filters makes it intersect them with
// every subject of the stream, again and again (55% of the server's CPU
// with 1,500 calls open, in a profile).
func (s Subjects) PartitionAll(p int) string { return s.Prefix + "." + strconv.Itoa(p) + ".>" }

// AnyCall matches the published subjects of one kind of every call: what
// a core NATS subscriber (the receivers' relay of outbound audio) listens to.
func (s Published) AnyCall(kind Kind) string {
	return kindFilter(s.Prefix+".*", kind)
}

// AllKind matches the stored messages of one kind of every call.
func (s Subjects) AllKind(kind Kind) string {
	return kindFilter(s.Prefix+".*.*", kind)
}

// LegacyCall matches every message of one call as a stream made before
// partitioning stored it (and, the call token being also a number below
// the partition count, that partition's messages: check what is read).
func (s Published) LegacyCall(callTok codec.Token) string {
	return s.Prefix + "." + string(callTok) + ".>"
}

// LegacyKind matches one kind of one call as a stream made before
// partitioning stored it: the published subject itself.
func (s Published) LegacyKind(callTok codec.Token, kind Kind) string {
	return kindFilter(s.Prefix+"."+string(callTok), kind)
}

func kindFilter(base string, kind Kind) string {
	switch kind {
	case KindLifecycle, KindOutbound:
		return base + "." + string(kind)
	}
	return base + "." + string(kind) + ".*"
}

// ParseStored reads a subject as the stream stores it: partitioned
// (<prefix>.<partition>.<call>.<kind>...), its partition checked against the
// call token's hash, or else in the published form, which a stream made
// before partitioning still holds.
func (s Subjects) ParseStored(subject string) (SubjectInfo, error) {
	if s.partitions > 0 {
		if rest, ok := strings.CutPrefix(subject, s.Prefix+"."); ok {
			if ptok, after, ok := strings.Cut(rest, "."); ok {
				tok, _, _ := strings.Cut(after, ".")
				if p, err := strconv.Atoi(ptok); err == nil && p >= 0 && p < s.partitions && s.Partition(codec.Token(tok)) == p &&
					strconv.Itoa(p) == ptok {
					if info, err := parseRest(subject, after); err == nil {
						info.Partitioned = true
						return info, nil
					}
				}
			}
		}
	}
	return s.Parse(subject)
}

// CallTokenKind returns the call token and the kind of a stored subject,
// without decoding or allocating.
func (s Subjects) CallTokenKind(stored string) (tok codec.Token, kind Kind, ok bool) {
	rest, ok := strings.CutPrefix(stored, s.Prefix+".")
	if !ok {
		return "", "", false
	}
	if s.partitions > 0 {
		if _, after, ok := strings.Cut(rest, "."); ok {
			rest = after
		}
	}
	t, rest, ok := strings.Cut(rest, ".")
	if !ok || t == "" {
		return "", "", false
	}
	k, _, _ := strings.Cut(rest, ".")
	return codec.Token(t), Kind(k), k != ""
}

// transform is the stream's subject transform for p partitions.
func (s Subjects) transform(p int) *jetstream.SubjectTransformConfig {
	return &jetstream.SubjectTransformConfig{
		Source:      s.Prefix + ".*.>",
		Destination: s.Prefix + ".{{partition(" + strconv.Itoa(p) + ",1)}}.{{wildcard(1)}}.>",
	}
}

var partitionDest = regexp.MustCompile(`^(.+)\.\{\{\s*partition\(\s*(\d+)\s*,\s*1\s*\)\s*\}\}\.\{\{\s*wildcard\(\s*1\s*\)\s*\}\}\.>$`)

// SubjectsOf reads the subject scheme of a stream from its configuration:
// its prefix and how many partitions its transform spreads calls over.
func SubjectsOf(ref StreamRef, cfg jetstream.StreamConfig) (Subjects, error) {
	s := Subjects{Published: ref.Published()}
	t := cfg.SubjectTransform
	if t == nil || t.Source != s.Prefix+".*.>" {
		return s, fmt.Errorf("stream %s: %w", cfg.Name, ErrNotPartitioned)
	}
	m := partitionDest.FindStringSubmatch(t.Destination)
	if m == nil || m[1] != s.Prefix {
		return s, fmt.Errorf("stream %s: transform %q: %w", cfg.Name, t.Destination, ErrNotPartitioned)
	}
	p, err := strconv.Atoi(m[2])
	if err != nil || p < 1 || p > MaxPartitions {
		return s, fmt.Errorf("stream %s: %d partitions: want 1 to %d", cfg.Name, p, MaxPartitions)
	}
	s.partitions = p
	return s, nil
}

// ReadSubjects reads the bus's subject scheme, partitions included: what
// every reader of stored subjects needs first (FindBus).
func ReadSubjects(ctx context.Context, js jetstream.JetStream, ref StreamRef) (Subjects, error) {
	b, err := FindBus(ctx, js, ref)
	if err != nil {
		return Subjects{Published: ref.Published()}, err
	}
	return b.Subjects(), nil
}
