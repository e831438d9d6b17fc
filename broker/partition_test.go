package broker_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
)

// The stream stores every message of a call in the partition our code
// computes for it, whatever the id (ACS ids carry ':' and '+'), and the
// stored subjects parse back to the published ones.
func TestPartitionMatchesServer(t *testing.T) {
	b := natstest.StartBus(t)
	subj, err := broker.ReadSubjects(t.Context(), b.JS, b.Stream.StreamRef)
	if err != nil {
		t.Fatal(err)
	}
	if subj.Partitions() != b.Stream.Partitions || subj.Partitions() < 2 {
		t.Fatalf("partitions read back %d, configured %d", subj.Partitions(), b.Stream.Partitions)
	}
	ids := []string{"8:acs:6a1f0c2e-5b7d-4c39-9e1f-2a8b7c6d5e4f_0000001a-2b3c", "4:+14255550123", "0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f",
		"x", "_mixed", "17", "calls", "a.b", "lifecycle"}
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("call-%d", i))
	}
	seen := map[int]bool{}
	for _, id := range ids {
		tok := codec.EncodeToken(id)
		for _, published := range []string{subj.Lifecycle(tok), subj.Audio(tok, codec.EncodeToken("4:+1")), subj.Events(tok, "analytics"), subj.Outbound(tok)} {
			ack, err := b.JS.Publish(t.Context(), published, []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			m, err := b.JS.Stream(t.Context(), b.Stream.Name)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := m.GetMsg(t.Context(), ack.Sequence)
			if err != nil {
				t.Fatal(err)
			}
			want := subj.Stored(tok) + published[len(subj.Prefix)+1+len(tok):]
			if raw.Subject != want {
				t.Errorf("%s stored as %s, we compute %s", published, raw.Subject, want)
			}
			pub, err := subj.Parse(published)
			if err != nil {
				t.Fatal(err)
			}
			got, err := subj.ParseStored(raw.Subject)
			if err != nil || !got.Partitioned {
				t.Errorf("ParseStored(%s) = %+v, %v", raw.Subject, got, err)
			}
			got.Partitioned = false
			if got != pub {
				t.Errorf("ParseStored(%s) = %+v, Parse(%s) = %+v", raw.Subject, got, published, pub)
			}
			if ct, kind, ok := subj.CallTokenKind(raw.Subject); !ok || ct != tok || kind != pub.Kind {
				t.Errorf("CallTokenKind(%s) = %q, %q", raw.Subject, ct, kind)
			}
		}
		seen[subj.Partition(tok)] = true
	}
	if len(seen) < subj.Partitions()/2 {
		t.Errorf("%d ids fell in only %d of %d partitions", len(ids), len(seen), subj.Partitions())
	}
	// A message stored before partitioning (the published form) still parses.
	if got, err := subj.ParseStored("calls.4_3A_2B1.audio._mixed"); err != nil || got.Call != "4:+1" || got.Partitioned {
		t.Errorf("legacy subject: %+v, %v", got, err)
	}
}

// A stream without the partitioning transform (an older audiofan's) is
// reported as not ready, not read with the wrong scheme; provisioning adds
// the transform and the consumer limit.
func TestStreamPartitionedOnUpgrade(t *testing.T) {
	ns := natstest.Start(t)
	_, js := streamClient(t, ns)
	sc := natstest.Defaults[broker.StreamConfig](t)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: sc.Name, Subjects: []string{sc.Prefix + ".>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := broker.ReadSubjects(t.Context(), js, sc.StreamRef); !errors.Is(err, broker.ErrNotReady) || !errors.Is(err, broker.ErrNotPartitioned) {
		t.Fatalf("an unpartitioned stream: %v", err)
	}
	s, err := broker.EnsureStream(context.Background(), js, sc, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.MaxConsumers != sc.MaxConsumers || cfg.SubjectTransform == nil {
		t.Errorf("after provisioning: max consumers %d, transform %+v", cfg.MaxConsumers, cfg.SubjectTransform)
	}
	if subj, err := broker.ReadSubjects(t.Context(), js, sc.StreamRef); err != nil || subj.Partitions() != sc.Partitions {
		t.Errorf("read back: %+v, %v", subj, err)
	}
}

// A subject scheme gets its partitions only from a layout: the zero scheme
// (a literal, not read from the bus) has none, and asking it for a call's
// partition is a programming error that stops at once, never a silent 0.
func TestSubjectsWithoutPartitions(t *testing.T) {
	s := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: 32, Shards: 1}.Subjects()
	if s.Partitions() != 32 || s.Mapped() {
		t.Fatalf("from a layout: %d partitions, mapped %v", s.Partitions(), s.Mapped())
	}
	tok := codec.EncodeToken("4:+14255550123")
	if p := s.Partition(tok); p < 0 || p >= 32 {
		t.Fatalf("partition %d", p)
	}
	zero := broker.Subjects{Published: broker.Published{Prefix: "calls"}}
	defer func() {
		if recover() == nil {
			t.Error("Partition of a scheme without partitions answered")
		}
	}()
	_ = zero.Partition(tok)
}
