package broker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
)

func TestLayoutValidate(t *testing.T) {
	for _, tc := range []struct {
		p, s int
		want string // "" = valid
	}{
		{32, 1, ""},
		{32, 4, ""},
		{32, 32, ""},
		{30, 3, ""},
		{32, 0, "AUDIOFAN_STREAM_SHARDS 0"},
		{32, -2, "AUDIOFAN_STREAM_SHARDS -2"},
		{4, 8, "more than AUDIOFAN_PARTITIONS"},
		{32, 3, ""},
		{32, broker.MaxShards + 1, "want 1 to"},
	} {
		l := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: tc.p, Shards: tc.s}
		err := l.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("P=%d S=%d: %v", tc.p, tc.s, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, broker.ErrLayout)):
			t.Errorf("P=%d S=%d: %v, want an ErrLayout saying %q", tc.p, tc.s, err, tc.want)
		}
	}
}

// Every partition is in exactly one shard, the shards hold as many each,
// and the names of two layouts never meet.
func TestLayoutShards(t *testing.T) {
	for _, tc := range []struct{ p, s, most, least int }{{32, 4, 8, 8}, {32, 3, 11, 10}, {5, 5, 1, 1}} {
		l := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: tc.p, Shards: tc.s}
		seen := map[int]int{}
		for i := range l.Shards {
			n := len(l.ShardPartitions(i))
			if n < tc.least || n > tc.most {
				t.Errorf("P=%d S=%d: shard %d holds %d partitions", tc.p, tc.s, i, n)
			}
			for _, p := range l.ShardPartitions(i) {
				seen[p]++
				if l.ShardOf(p) != i {
					t.Errorf("P=%d S=%d: partition %d in shard %d", tc.p, tc.s, p, l.ShardOf(p))
				}
			}
		}
		for p := range tc.p {
			if seen[p] != 1 {
				t.Errorf("P=%d S=%d: partition %d in %d shards", tc.p, tc.s, p, seen[p])
			}
		}
	}
	l := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: 32, Shards: 4}
	seen := map[int]int{}
	for i := range l.Shards {
		ps := l.ShardPartitions(i)
		for _, p := range ps {
			seen[p]++
			if l.ShardOf(p) != i || l.StreamOf(p) != l.ShardStream(i) {
				t.Errorf("partition %d: shard %d, stream %s", p, l.ShardOf(p), l.StreamOf(p))
			}
		}
	}
	for p := range 32 {
		if seen[p] != 1 {
			t.Errorf("partition %d in %d shards", p, seen[p])
		}
	}
	if got := l.Streams(); !slices.Equal(got, []string{"CALLS-0of4", "CALLS-1of4", "CALLS-2of4", "CALLS-3of4"}) {
		t.Errorf("streams %v", got)
	}
	other := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: 32, Shards: 2}
	for _, n := range other.Streams() {
		if slices.Contains(l.Streams(), n) {
			t.Errorf("%s in two layouts", n)
		}
	}
	if one := (broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: 32, Shards: 1}); !slices.Equal(one.Streams(), []string{"CALLS"}) {
		t.Errorf("one shard: %v", one.Streams())
	}
}

// Live gives core subscribers the form the server's mapping delivers.
func TestSubjectsLive(t *testing.T) {
	tok := codec.EncodeToken("8:acs:c+1")
	single := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: 32, Shards: 1}.Subjects()
	sharded := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: 32, Shards: 4}.Subjects()
	if got := single.Live(single.AnyCall(broker.KindOutbound)); got != "calls.*.outbound" {
		t.Errorf("single: %s", got)
	}
	if got := sharded.Live(sharded.AnyCall(broker.KindOutbound)); got != "calls.*.*.outbound" {
		t.Errorf("sharded, any call: %s", got)
	}
	want := fmt.Sprintf("calls.%d.%s.audio.*", sharded.Partition(tok), tok)
	if got := sharded.Live(sharded.Audio(tok, "*")); got != want {
		t.Errorf("sharded, one call: %s, want %s", got, want)
	}
	for _, s := range []broker.Subjects{single, sharded} {
		got, ok := s.LiveCall(s.Live(s.Outbound(tok)))
		if !ok || got != tok {
			t.Errorf("mapped %v: LiveCall = %q, %v", s.Mapped(), got, ok)
		}
	}
}

func shardedConfig(t *testing.T, shards int) broker.StreamConfig {
	sc := natstest.Defaults[broker.StreamConfig](t)
	sc.Shards, sc.MaxBytes = shards, 256<<20
	return sc
}

// A sharded bus: S streams, each binding its partitions; what a publisher
// sends on the contract's subjects lands, mapped by the server, in the
// shard of its call's partition, and nowhere else.
func TestShardedBus(t *testing.T) {
	ns := natstest.Start(t)
	sc := shardedConfig(t, 4)
	ns.Map(sc)
	_, js := streamClient(t, ns)
	bus, err := broker.EnsureBus(t.Context(), js, sc, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	if bus.Layout != sc.Layout() || len(bus.Shards()) != 4 || len(bus.Retired) != 0 {
		t.Fatalf("bus %v, %d shards, retired %v", bus.Layout, len(bus.Shards()), bus.Retired)
	}
	subj := bus.Subjects()
	perShard := map[string]int{}
	for i := range 40 {
		tok := codec.EncodeToken(fmt.Sprintf("4:+1425555%04d", i))
		ack, err := js.Publish(t.Context(), subj.Audio(tok, codec.EncodeToken("8:acs:p")), []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		p := subj.Partition(tok)
		if want := sc.Layout().StreamOf(p); ack.Stream != want {
			t.Errorf("call %s (partition %d) stored in %s, want %s", tok, p, ack.Stream, want)
		}
		perShard[ack.Stream]++
		msg, err := bus.Stream(p).GetMsg(t.Context(), ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		if want := subj.Stored(tok) + ".audio." + string(codec.EncodeToken("8:acs:p")); msg.Subject != want {
			t.Errorf("stored as %s, want %s", msg.Subject, want)
		}
	}
	if len(perShard) != 4 {
		t.Errorf("40 calls landed in %d shards: %v", len(perShard), perShard)
	}
	// The same settings again find it as it is.
	if _, err := broker.EnsureBus(t.Context(), js, sc, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	found, err := broker.FindBus(t.Context(), js, sc.StreamRef)
	if err != nil || found.Layout != sc.Layout() {
		t.Fatalf("FindBus: %v, %v", found, err)
	}
}

// Each bad setting is refused at start, naming the setting, never a
// silent fall back to one stream.
func TestShardSettingsRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*broker.StreamConfig)
		want   string
	}{
		{"no shards", func(c *broker.StreamConfig) { c.Shards = 0 }, "AUDIOFAN_STREAM_SHARDS 0"},
		{"more shards than partitions", func(c *broker.StreamConfig) { c.Shards, c.Partitions = 8, 4 }, "AUDIOFAN_STREAM_SHARDS 8 is more than AUDIOFAN_PARTITIONS 4"},
		{"too many", func(c *broker.StreamConfig) { c.Shards = broker.MaxShards + 1 }, "AUDIOFAN_STREAM_SHARDS 65: want 1 to 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := natstest.Defaults[broker.StreamConfig](t)
			tc.modify(&sc)
			if err := sc.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}

	ns := natstest.Start(t)
	_, js := streamClient(t, ns)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	t.Run("no mapping", func(t *testing.T) {
		_, err := broker.EnsureBus(ctx, js, shardedConfig(t, 4), natstest.Logger())
		if !errors.Is(err, broker.ErrMapping) || !strings.Contains(err.Error(), "came back unmapped") {
			t.Fatalf("%v, want ErrMapping", err)
		}
	})
	t.Run("mapping of other partitions", func(t *testing.T) {
		other := shardedConfig(t, 4)
		other.Partitions = 16
		ns.Map(other)
		defer ns.Map(natstest.Defaults[broker.StreamConfig](t))
		_, err := broker.EnsureBus(ctx, js, shardedConfig(t, 4), natstest.Logger())
		if !errors.Is(err, broker.ErrMapping) || !strings.Contains(err.Error(), "AUDIOFAN_PARTITIONS=32") {
			t.Fatalf("%v, want ErrMapping naming AUDIOFAN_PARTITIONS", err)
		}
	})
	t.Run("single stream under a mapping", func(t *testing.T) {
		ns.Map(shardedConfig(t, 4))
		defer ns.Map(natstest.Defaults[broker.StreamConfig](t))
		_, err := broker.EnsureBus(ctx, js, natstest.Defaults[broker.StreamConfig](t), natstest.Logger())
		if !errors.Is(err, broker.ErrMapping) || !strings.Contains(err.Error(), "AUDIOFAN_STREAM_SHARDS=1") {
			t.Fatalf("%v, want ErrMapping", err)
		}
	})
	ns.Map(shardedConfig(t, 4))
	t.Run("shard missing, provisioning off", func(t *testing.T) {
		sc := shardedConfig(t, 4)
		if _, err := broker.EnsureBus(ctx, js, sc, natstest.Logger()); err != nil {
			t.Fatal(err)
		}
		if err := js.DeleteStream(ctx, sc.Layout().ShardStream(2)); err != nil {
			t.Fatal(err)
		}
		sc.Provision = false
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := broker.EnsureBus(short, js, sc, natstest.Logger())
		if err == nil || !strings.Contains(err.Error(), "AUDIOFAN_STREAM_PROVISION=false") || !strings.Contains(err.Error(), "CALLS-2of4") {
			t.Fatalf("%v, want the missing shard named", err)
		}
	})
	t.Run("shard misconfigured, provisioning off", func(t *testing.T) {
		sc := shardedConfig(t, 4)
		if _, err := broker.EnsureBus(ctx, js, sc, natstest.Logger()); err != nil { // puts shard 2 back
			t.Fatal(err)
		}
		s, err := js.Stream(ctx, "CALLS-1of4")
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.Subjects = cfg.Subjects[:len(cfg.Subjects)-1]
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		sc.Provision = false
		_, err = broker.EnsureBus(ctx, js, sc, natstest.Logger())
		if err == nil || !strings.Contains(err.Error(), "CALLS-1of4 binds") {
			t.Fatalf("%v, want the misconfigured shard named", err)
		}
	})
	t.Run("laid out otherwise", func(t *testing.T) {
		if _, err := broker.EnsureBus(ctx, js, shardedConfig(t, 4), natstest.Logger()); err != nil { // shard 1 repaired
			t.Fatal(err)
		}
		_, err := broker.EnsureBus(ctx, js, shardedConfig(t, 8), natstest.Logger())
		if !errors.Is(err, broker.ErrLayoutDiffers) || !strings.Contains(err.Error(), "audiofan reshard") {
			t.Fatalf("%v, want ErrLayoutDiffers", err)
		}
	})
}

// Reshard moves the single stream of audiofan before shards to four: the
// old stream keeps what it held and binds nothing, and new messages land
// in the shards.
func TestReshardFromSingle(t *testing.T) {
	ns := natstest.Start(t)
	_, js := streamClient(t, ns)
	single := natstest.Defaults[broker.StreamConfig](t)
	single.MaxBytes = 256 << 20
	if _, err := broker.EnsureBus(t.Context(), js, single, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	tok := codec.EncodeToken("8:acs:before")
	if _, err := js.Publish(t.Context(), single.Subjects().Lifecycle(tok), []byte("x")); err != nil {
		t.Fatal(err)
	}
	sc := shardedConfig(t, 4)
	// A mapping of another partition count is never gone on through: it
	// would store calls in the wrong partitions.
	wrong := shardedConfig(t, 4)
	wrong.Partitions = 16
	ns.Map(wrong)
	if _, err := broker.Reshard(t.Context(), js, sc, natstest.Logger()); !errors.Is(err, broker.ErrMapping) || errors.Is(err, broker.ErrNotMapped) {
		t.Fatalf("reshard under a mapping of 16 partitions: %v, want ErrMapping", err)
	}
	ns.Map(single)
	// The refused move left the bus as it was.
	if b, err := broker.FindBus(t.Context(), js, single.StreamRef); err != nil || b.Layout != single.Layout() {
		t.Fatalf("after a refused move: %v, %v", b, err)
	}
	bus, err := broker.Reshard(t.Context(), js, sc, natstest.Logger()) // the mapping comes after: allowed
	if err != nil {
		t.Fatal(err)
	}
	ns.Map(sc)
	if !slices.Equal(bus.Retired, []string{"CALLS"}) {
		t.Errorf("retired %v", bus.Retired)
	}
	old, err := js.Stream(t.Context(), "CALLS")
	if err != nil {
		t.Fatal(err)
	}
	// Its transform stays: what the server had queued for it when it was
	// retired is stored after, partitioned still.
	if got := old.CachedInfo(); got.State.Msgs != 1 || slices.Contains(got.Config.Subjects, "calls.>") || got.Config.SubjectTransform == nil {
		t.Errorf("retired stream: %d messages, subjects %v, transform %v", got.State.Msgs, got.Config.Subjects, got.Config.SubjectTransform)
	}
	ack, err := js.Publish(t.Context(), sc.Subjects().Lifecycle(tok), []byte("y"))
	if err != nil {
		t.Fatal(err)
	}
	if want := sc.Layout().StreamOf(sc.Subjects().Partition(tok)); ack.Stream != want {
		t.Errorf("after the move stored in %s, want %s", ack.Stream, want)
	}
	// A receiver with the old setting is refused, not moved back.
	if _, err := broker.EnsureBus(t.Context(), js, single, natstest.Logger()); !errors.Is(err, broker.ErrLayoutDiffers) && !errors.Is(err, broker.ErrMapping) {
		t.Errorf("old settings: %v", err)
	}
	// S to S': the mapping stays; CALLS, retired by the move before and
	// read by every role (none has a consumer there), is removed.
	eight := shardedConfig(t, 8)
	bus, err = broker.Reshard(t.Context(), js, eight, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	if len(bus.Shards()) != 8 || len(bus.Retired) != 4 || slices.Contains(bus.Retired, "CALLS") {
		t.Errorf("8 shards: %d shards, retired %v", len(bus.Shards()), bus.Retired)
	}
	if _, err := js.Stream(t.Context(), "CALLS-0of8"); err != nil {
		t.Error(err)
	}
	var _ jetstream.Stream = bus.Stream(0)
}

// The mapping probes tell the bus's partition count from every other: for
// each count up to MaxPartitions, a probe's call falls in another partition.
func TestProbeTokensSeparate(t *testing.T) {
	for _, p := range []int{1, 2, 16, 32, 64, 1024} {
		toks := broker.ProbeTokens(p)
		if len(toks) == 0 || len(toks) > 40 {
			t.Fatalf("P=%d: %d probes", p, len(toks))
		}
		want := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: p, Shards: 1}.Subjects()
		for q := 1; q <= broker.MaxPartitions; q++ {
			if q == p {
				continue
			}
			other := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: q, Shards: 1}.Subjects()
			if !slices.ContainsFunc(toks, func(tok codec.Token) bool { return other.Partition(tok) != want.Partition(tok) }) {
				t.Errorf("P=%d: no probe tells a mapping of %d partitions apart", p, q)
				break
			}
		}
	}
}
