package subscribers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/warn"
)

// GroupConfig tunes how a role's replicas share calls. Every replica of a
// role should run with the same values.
type GroupConfig struct {
	Lease       time.Duration `env:"AUDIOFAN_LEASE" envDefault:"10s" help:"how long the partitions of a replica that stopped answering (killed, cut off) wait before another replica takes them over"`
	IdleTimeout time.Duration `env:"AUDIOFAN_CALL_IDLE_TIMEOUT" envDefault:"2m" help:"a call with no message for this long is finished as idle (its ended message may never come: its receiver died)"`
	Retries     int           `env:"AUDIOFAN_HANDLER_RETRIES" envDefault:"5" help:"attempts at a message (or a call's end) that keeps failing before the call is parked (outages of disk or store: see AUDIOFAN_PARK_AFTER)"`
	Backoff     time.Duration `env:"AUDIOFAN_RETRY_BACKOFF" envDefault:"100ms" help:"wait before the first retry of a failed message; it doubles with each retry, up to 50 times this"`
	Start       string        `env:"AUDIOFAN_CONSUMER_START" envDefault:"all" help:"where a role's partition consumers start when first created: all (every call still in the stream) or new"`
	Checkpoint  time.Duration `env:"AUDIOFAN_CHECKPOINT_INTERVAL" envDefault:"1s" help:"how often a busy partition's owner checkpoints and acknowledges: a new owner replays at most about this much more; shorter costs the server more writes"`
	ReplicaID   string        `env:"AUDIOFAN_REPLICA_ID" help:"this replica's name among the role's replicas (empty: a random one each start); unique per replica. A stable one (the pod's name) gives a restarted replica its partitions back"`
	DoneTTL     time.Duration `env:"AUDIOFAN_DONE_TTL" envDefault:"10m" help:"how long a finished call is remembered, so a late message (a socket reconnecting after the call ended) does not start it again"`
	// Parking: see park.go.
	ParkAfter      time.Duration `env:"AUDIOFAN_PARK_AFTER" envDefault:"30s" help:"how long a call waits out an unavailable resource (disk, store, bus) in place before it is parked; a call whose failures fill its partition's window parks at once"`
	RedriveBackoff time.Duration `env:"AUDIOFAN_REDRIVE_BACKOFF" envDefault:"5s" help:"wait before a parked call is re-driven from the bus; it doubles with each parking, up to 5m. A success of the role after failures, or 'audiofan redrive', re-drives every parked call at once"`
	MaxAckPending  int           `env:"AUDIOFAN_PARTITION_MAX_ACK_PENDING" envDefault:"4096" help:"messages of one partition delivered to its replica and not yet acknowledged (the server's window, and what the replica may hold in memory for it); a call holding half of it with its failures is parked"`
}

// Validate checks the settings.
func (c GroupConfig) Validate() error {
	switch {
	case c.Lease < 2*time.Second:
		return fmt.Errorf("AUDIOFAN_LEASE %s: want at least 2s", c.Lease)
	case c.IdleTimeout <= 0 || c.Retries < 1 || c.Backoff <= 0:
		return errors.New("AUDIOFAN_CALL_IDLE_TIMEOUT, AUDIOFAN_HANDLER_RETRIES and AUDIOFAN_RETRY_BACKOFF must be positive")
	case c.Start != "all" && c.Start != "new":
		return fmt.Errorf("AUDIOFAN_CONSUMER_START %q: want all or new", c.Start)
	case c.Checkpoint < 10*time.Millisecond || c.Checkpoint > c.Lease/2:
		return fmt.Errorf("AUDIOFAN_CHECKPOINT_INTERVAL %s: want 10ms to half of AUDIOFAN_LEASE (acknowledgements wait for it, and the lease is their deadline)", c.Checkpoint)
	case strings.ContainsAny(c.ReplicaID, " \t\r\n"):
		return fmt.Errorf("AUDIOFAN_REPLICA_ID %q: no white space", c.ReplicaID)
	case c.DoneTTL < time.Minute:
		return fmt.Errorf("AUDIOFAN_DONE_TTL %s: want at least 1m", c.DoneTTL)
	case c.ParkAfter < 0:
		return fmt.Errorf("AUDIOFAN_PARK_AFTER %s: want 0 (park at the first outage) or more", c.ParkAfter)
	case c.RedriveBackoff < 10*time.Millisecond:
		return fmt.Errorf("AUDIOFAN_REDRIVE_BACKOFF %s: want at least 10ms", c.RedriveBackoff)
	case c.MaxAckPending < 64 || c.MaxAckPending > 1<<20:
		return fmt.Errorf("AUDIOFAN_PARTITION_MAX_ACK_PENDING %d: want 64 to 1048576", c.MaxAckPending)
	}
	return nil
}

// Outcome is what became of one message: the label of
// audiofan_subscriber_messages_total.
type Outcome string

// Outcomes of one message.
const (
	OutcomeHandled    Outcome = "handled"
	OutcomeReplayed   Outcome = "replayed"   // applied again after a takeover or a re-drive, output dropped
	OutcomeRetried    Outcome = "retried"    // failed; tried again
	OutcomeTerminated Outcome = "terminated" // undecodable, or a Permanent error
	OutcomeParked     Outcome = "parked"     // of a parked call: left on the bus for its re-drive
	OutcomeLate       Outcome = "late"       // of a call already finished here: dropped
)

// Result is how a call left a replica: the label of
// audiofan_subscriber_calls_total.
type Result string

// Results of a call on a replica.
const (
	ResultEnded     Result = "ended"     // finished after its ended messages
	ResultIdle      Result = "idle"      // finished after the idle timeout
	ResultFailed    Result = "failed"    // End failed for good, or the call could not start: finished without output
	ResultParked    Result = "parked"    // kept failing: parked, to be re-driven from the bus
	ResultReleased  Result = "released"  // its partition handed to another replica
	ResultElsewhere Result = "elsewhere" // another replica had finished it, or took its partition
)

var roleName = regexp.MustCompile(`^[A-Za-z0-9-]+$`)

// ownerGroup is the priority group every replica pulls a partition in.
const ownerGroup = "owner"

// Group runs one role: it shares the stream's partitions with the role's
// other replicas and works on every call of the partitions it holds.
//
// How (see the README for the choice and its figures): the stream stores a
// call's messages in one of P partitions (broker.SubjectsOf). Each role has
// one durable consumer per partition, in a pinned-client priority group, so
// the server delivers a partition to one replica at a time; P is fixed, so
// the role's JetStream objects do not grow with calls, and a call start
// costs no JetStream request. Replicas learn of each other by heartbeats on
// core NATS and each pulls the partitions a shared rendezvous hash gives it;
// the pin settles any moment of disagreement. A replica demultiplexes its
// partitions into calls, each applied in order by a goroutine of its own.
// About once a second it checkpoints each partition (the floor below which
// everything is applied, and the calls then in progress, in a KV bucket) and
// acknowledges up to it. A new owner (after a crash, a stop or a rebalance)
// reads the checkpoint, replays each call in progress from its first message
// to the floor to rebuild its state, and carries on from the floor; output
// stays exactly once through the events' Nats-Msg-Ids.
type Group struct {
	cfg  GroupConfig
	role Role
	ref  broker.StreamRef
	subj broker.Subjects
	nc   *nats.Conn
	js   jetstream.JetStream
	bus  *broker.Bus
	kv   jetstream.KeyValue
	log  *slog.Logger
	m    *groupMetrics
	id   string

	warnings *warn.Limiter

	legacyUntil atomic.Int64 // unix nanoseconds: the upgrade from the per-call design is under way until then

	// ends bounds the calls finishing at once: End is a role's heaviest
	// step (files rendered, events and buckets written), and a burst of
	// calls ending together would otherwise run them all at once and make
	// each one's writes time out. A slot is held for one attempt, never
	// across a retry's wait.
	ends chan struct{}
	// readers bounds the calls reading their history from the stream at
	// once (takeovers, re-drives).
	readers chan struct{}
	parking parkRule
	// repairs counts the successes after failures: a partition that sees
	// it move re-drives its parked calls (what failed may work again), at
	// most once a backoff; asked counts an operator's requests
	// (`audiofan redrive`), acted on at once.
	repairs atomic.Uint64
	asked   atomic.Uint64

	shards atomic.Int32 // the bus's shard count, for the metrics

	mu      sync.Mutex
	parts   []*partition
	ready   bool
	unavail atomic.Int64

	// dropDelivery, set by tests before Run, loses the deliveries it says
	// on every partition.
	dropDelivery func() bool
}

// NewGroup prepares a role's replica; Run starts it. Metrics register on reg.
func NewGroup(cfg GroupConfig, role Role, ref broker.StreamRef, nc *nats.Conn, js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger) (*Group, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !roleName.MatchString(role.Name) || role.NewCall == nil {
		return nil, fmt.Errorf("role %q: a name of letters, digits and '-' and a NewCall are required", role.Name)
	}
	m, err := newGroupMetrics(role.Name, reg)
	if err != nil {
		return nil, err
	}
	g := &Group{cfg: cfg, role: role, ref: ref, nc: nc, js: js, m: m,
		log: log.With("role", role.Name), id: cmp.Or(cfg.ReplicaID, nuid.Next()), ends: make(chan struct{}, 4*runtime.GOMAXPROCS(0)),
		readers: make(chan struct{}, historyReaders), parking: parkRule{retries: cfg.Retries, after: cfg.ParkAfter}}
	// One warning a second, with a count of those held back: a flood of bad
	// messages must not flood the log.
	g.warnings = warn.New(g.log, 1, 1, nil)
	sum := func(f func(p *partition) float64) func() float64 {
		return func() float64 {
			g.mu.Lock()
			defer g.mu.Unlock()
			v := 0.0
			for _, p := range g.parts {
				if p.isOwned.Load() {
					v += f(p)
				}
			}
			return v
		}
	}
	l := prometheus.Labels{"role": role.Name}
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "audiofan_subscriber_calls_owned",
			Help: "Calls this replica is working on.", ConstLabels: l}, sum(func(p *partition) float64 { return float64(p.ncalls.Load()) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "audiofan_subscriber_calls_parked",
			Help: "Calls parked on this replica's partitions: they kept failing, their messages wait on the bus, and they are re-driven from there.", ConstLabels: l},
			sum(func(p *partition) float64 { return float64(p.nparked.Load()) })),
		&lagCollector{g: g, desc: prometheus.NewDesc("audiofan_subscriber_lag_messages",
			"Messages of the partitions this replica owns stored but not yet delivered to it, by the shard that holds them (a partition still reading a retired stream after a move counts under its new shard).",
			[]string{"shard"}, l)},
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("%s metrics: %w", role.Name, err)
		}
	}
	return g, nil
}

// Ready reports whether the replica can do its work: connected, its
// consumers in place, and no call stuck on an unavailable resource.
func (g *Group) Ready() error {
	g.mu.Lock()
	ready := g.ready
	g.mu.Unlock()
	switch {
	case !ready:
		return errors.New(g.role.Name + ": not started")
	case !g.nc.IsConnected():
		return errors.New(g.role.Name + ": NATS disconnected")
	case g.unavail.Load() > 0:
		return fmt.Errorf("%s: %d calls waiting on an unavailable resource", g.role.Name, g.unavail.Load())
	case g.role.Ready != nil:
		if err := g.role.Ready(); err != nil {
			return fmt.Errorf("%s: %w", g.role.Name, err)
		}
	}
	return nil
}

// Run works on the partitions given to this replica until ctx ends, then
// hands them to the other replicas (checkpointed, acknowledged, unpinned)
// and returns. Until the stream exists it waits for it.
func (g *Group) Run(ctx context.Context) error {
	// The stream may not exist yet (its receiver starts later): wait for
	// it rather than fail, as a deployment starts its parts in any order.
	if err := broker.Provision(ctx, g.log, g.role.Name+" consumers", g.setup); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	mctx, stopMembers := context.WithCancel(ctx)
	mem := newMembers(MembersSubject(g.ref.Name, g.role.Name), g.id, g.cfg.Lease, func() { g.asked.Add(1) })
	membersDone := make(chan error, 1)
	go func() { membersDone <- mem.run(mctx, g.nc) }()
	g.mu.Lock()
	g.ready = true
	g.mu.Unlock()
	g.log.Info("subscriber ready", "partitions", g.subj.Partitions(), "replica", g.id, "lease", g.cfg.Lease)
	// Hear the replicas already there before taking any partition, so a
	// replica joining does not pull partitions only to give them back:
	// each answers a newcomer's first "up" at once, so a short wait after
	// it reached the server is enough. One that answers later costs
	// nothing lost: a partition another replica holds stays pinned to it,
	// and this one's pulls get nothing until the assignment settles.
	select {
	case <-mem.joined:
		sleep(ctx, joinWait) // under the heartbeat period: the lease is at least 2 s
	case <-ctx.Done():
	}

	type running struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	runs := map[int]*running{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	checked := time.Now()
	var runErr error
	for ctx.Err() == nil && runErr == nil {
		if time.Since(checked) >= layoutCheck {
			checked = time.Now()
			if g.moved(ctx) {
				// Every partition hands over (checkpointed against its old
				// stream), then the consumers are put on the new shards.
				for n, r := range runs {
					r.cancel()
					<-r.done
					delete(runs, n)
				}
				if err := broker.Provision(ctx, g.log, g.role.Name+" consumers", g.setup); err != nil {
					if ctx.Err() == nil {
						runErr = fmt.Errorf("the bus was moved and its new streams cannot be read: %w", err)
					}
					break
				}
				g.log.Warn("the bus was moved: reading its new streams", "layout", g.bus.Layout.String(), "retired", g.bus.Retired)
			}
		}
		if until := g.legacyUntil.Load(); until > 0 && time.Now().UnixNano() > until {
			g.finishUpgrade(ctx)
		}
		owners := AssignPartitions(g.subj.Partitions(), mem.list())
		mine := 0
		for n, owner := range owners {
			if owner == g.id {
				mine++
			}
			r := runs[n]
			if r != nil {
				select {
				case <-r.done:
					delete(runs, n)
					r = nil
				default:
				}
			}
			switch {
			case owner == g.id && r == nil:
				pctx, cancel := context.WithCancel(ctx)
				r = &running{cancel: cancel, done: make(chan struct{})}
				runs[n] = r
				p := g.parts[n]
				go func() {
					defer close(r.done)
					p.run(pctx)
				}()
			case owner != g.id && r != nil:
				r.cancel() // it hands the partition over; done closes after
			}
		}
		g.m.assigned.Set(float64(mine))
		select {
		case <-ctx.Done():
		case <-mem.changed:
		case <-tick.C:
		}
	}
	g.mu.Lock()
	g.ready = false
	g.mu.Unlock()
	g.log.Info("stopping: handing partitions over", "partitions", len(runs))
	g.m.assigned.Set(0)
	stopMembers() // the others start pulling now; they are pinned as each partition is released
	for _, r := range runs {
		r.cancel()
	}
	for _, r := range runs {
		<-r.done
	}
	<-membersDone
	return runErr
}

// setupRequests bounds the partition consumers a replica reads or makes at
// once when it starts.
const setupRequests = 8

// joinWait is how long a starting replica listens for the others' answers
// to its first announcement before pulling partitions (it used to wait a
// quarter lease, their heartbeat period: 2.5 s at the default lease, of a
// restart's or a scale-out's time to its first message).
const joinWait = 200 * time.Millisecond

// layoutCheck is how often a replica looks whether the bus was moved to
// other streams (audiofan reshard): a list of stream names and S stream
// infos.
const layoutCheck = 10 * time.Second

// moved says whether the bus is laid out otherwise than when setup read it.
func (g *Group) moved(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, provisionCheck)
	defer cancel()
	b, err := broker.FindBus(ctx, g.js, g.ref)
	return err == nil && b.Layout != g.bus.Layout
}

// provisionCheck bounds the look for a move.
const provisionCheck = 5 * time.Second

// setup reads the stream's partitioning and puts the role's consumers and
// state bucket in place.
func (g *Group) setup(ctx context.Context) error {
	bus, err := broker.FindBus(ctx, g.js, g.ref)
	if err != nil {
		return err
	}
	subj := bus.Subjects()
	g.bus, g.subj = bus, subj
	// The checkpoints are as safe as the calls: as many replicas. Read
	// first: a replica restarting into a cluster still recovering a node
	// should not need a write through the meta leader to start.
	bucket := StateBucket(g.ref.Name, g.role.Name)
	if g.kv, err = g.js.KeyValue(ctx, bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
		g.kv, err = g.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket,
			Description: "audiofan " + g.role.Name + ": partition checkpoints", History: 1,
			Replicas: bus.Config().Replicas})
	}
	if err != nil {
		return fmt.Errorf("%s bucket %s: %w", g.role.Name, bucket, err)
	}
	if g.parts == nil || len(g.parts) != subj.Partitions() {
		parts := make([]*partition, subj.Partitions())
		for n := range parts {
			parts[n] = newPartition(g, n)
			parts[n].dropDelivery = g.dropDelivery
		}
		g.mu.Lock()
		g.parts = parts
		g.mu.Unlock()
	}
	g.shards.Store(int32(bus.Layout.Shards))
	// A few consumers at a time: each is one to three API requests, and a
	// consumer made (a first start) is a write through the meta leader of a
	// cluster, so one after another the round trips add up.
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(setupRequests)
	for _, p := range g.parts {
		p.shard.Store(int32(bus.Layout.ShardOf(p.n)))
		p.cur = bus.Stream(p.n)
		eg.Go(func() error {
			c, err := g.ensureConsumer(ectx, p, p.cur)
			if err != nil {
				return err
			}
			p.curCons = c
			p.stream, p.cons, p.next = p.cur, c, nil // run's prepare picks a retired stream first, if one is to be read
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return err
	}
	g.detectUpgrade(ctx)
	return nil
}

// ensureConsumer reads the partition's consumer on stream s and writes it
// only when it is missing or differs, so replicas starting together do not
// each propose the same update. A consumer made anew (the first start, an
// operator deleted it, its storage changed) starts after the partition's
// checkpoint, not at the stream's start: what was applied is not
// delivered again.
func (g *Group) ensureConsumer(ctx context.Context, p *partition, s jetstream.Stream) (jetstream.Consumer, error) {
	want := p.consumerConfig()
	c, err := s.Consumer(ctx, p.name)
	switch {
	case err == nil:
		cur := c.CachedInfo().Config
		if slices.Equal(cur.FilterSubjects, want.FilterSubjects) && cur.AckWait == want.AckWait &&
			cur.PinnedTTL == want.PinnedTTL && cur.MaxAckPending == want.MaxAckPending && cur.Description == want.Description &&
			cur.MemoryStorage == want.MemoryStorage {
			return c, nil
		}
		if cur.MemoryStorage == want.MemoryStorage {
			want.DeliverPolicy, want.OptStartSeq = cur.DeliverPolicy, cur.OptStartSeq // fixed at creation
			if c, err = s.UpdateConsumer(ctx, want); err != nil {
				return nil, fmt.Errorf("consumer %s: %w", p.name, err)
			}
			return c, nil
		}
		// The storage of a consumer cannot change: make it again.
		if err := s.DeleteConsumer(ctx, p.name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("consumer %s: %w", p.name, err)
		}
	case !errors.Is(err, jetstream.ErrConsumerNotFound):
		return nil, fmt.Errorf("consumer %s: %w", p.name, err)
	}
	ck, err := readCheckpoint(ctx, g.kv, p.n, g.ref.Name)
	if err != nil {
		return nil, err
	}
	if ck = ck.of(s.CachedInfo().Config.Name); ck.Floor > ck.Base {
		want.DeliverPolicy, want.OptStartSeq = jetstream.DeliverByStartSequencePolicy, ck.Floor-ck.Base+1
	}
	c, err = s.CreateConsumer(ctx, want)
	if errors.Is(err, jetstream.ErrConsumerExists) {
		c, err = s.Consumer(ctx, p.name) // another replica made it meanwhile
	}
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", p.name, err)
	}
	return c, nil
}

// legacyDescription starts the description of the per-call design's
// consumers, which an upgraded role removes.
func legacyCallDescription(role string) string { return "audiofan " + role + " of call " }

// detectUpgrade notices a stream that the per-call design (audiofan before
// partitions) used: its dispatch consumer, named as the role, is there. For
// an idle timeout from now, a call this replica meets for the first time is
// looked for under its unpartitioned subjects too, so the calls in flight
// across the upgrade are read whole; then the old consumers are removed.
func (g *Group) detectUpgrade(ctx context.Context) {
	if g.bus.Layout.Sharded() {
		return // the per-call design knew one stream only
	}
	c, err := g.bus.Shards()[0].Consumer(ctx, g.role.Name)
	if err != nil || c.CachedInfo().Config.FilterSubject != g.ref.Published().AnyCall(broker.KindLifecycle) {
		return
	}
	until := time.Now().Add(g.cfg.IdleTimeout + g.cfg.Lease)
	g.legacyUntil.Store(until.UnixNano())
	g.log.Info("upgrading from per-call consumers: calls in flight are read whole; the old consumers go after", "until", until.Format(time.RFC3339))
}

func (g *Group) inLegacyWindow() bool {
	until := g.legacyUntil.Load()
	return until > 0 && time.Now().UnixNano() <= until
}

// reads says whether the role reads messages of kind (lifecycle: always).
func (g *Group) reads(kind broker.Kind) bool {
	return kind == broker.KindLifecycle || slices.Contains(g.role.Kinds, kind)
}

// finishUpgrade removes the per-call design's consumers of this role: its
// dispatch consumer and what is left of its per-call consumers.
func (g *Group) finishUpgrade(ctx context.Context) {
	g.legacyUntil.Store(0)
	n := 0
	stream := g.bus.Shards()[0]
	names := stream.ListConsumers(ctx)
	for ci := range names.Info() {
		if ci.Name == g.role.Name || strings.HasPrefix(ci.Config.Description, legacyCallDescription(g.role.Name)) {
			if err := stream.DeleteConsumer(ctx, ci.Name); err == nil || errors.Is(err, jetstream.ErrConsumerNotFound) {
				n++
			}
		}
	}
	g.log.Info("upgrade from per-call consumers finished", "removed", n)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// repaired notes a success after failures.
func (g *Group) repaired() { g.repairs.Add(1) }

type groupMetrics struct {
	redrives    prometheus.Counter
	historyLost prometheus.Counter
	messages    *prometheus.CounterVec
	handled     prometheus.Counter // messages' outcomes counted per message, resolved once
	replayed    prometheus.Counter
	calls       *prometheus.CounterVec
	handle      prometheus.Observer
	takeovers   prometheus.Counter
	partitions  prometheus.Gauge
	assigned    prometheus.Gauge
	reads       prometheus.Counter
}

func newGroupMetrics(role string, reg prometheus.Registerer) (*groupMetrics, error) {
	l := prometheus.Labels{"role": role}
	m := &groupMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_subscriber_messages_total",
			Help:        "Messages of calls applied by a role, by outcome: handled, replayed, retried, terminated, parked, late.",
			ConstLabels: l}, []string{"outcome"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_subscriber_calls_total",
			Help:        "Calls this replica stopped working on, by result: ended, idle, failed, parked, released, elsewhere.",
			ConstLabels: l}, []string{"result"}),
		partitions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "audiofan_subscriber_partitions_owned",
			Help: "Partitions this replica holds the pin of and works on (an assigned partition is taken at its first message).", ConstLabels: l}),
		reads: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_subscriber_gap_reads_total",
			Help: "Times a partition was read from the stream because deliveries were missing (lost in a reconnect, redelivered, or held by a previous owner).", ConstLabels: l}),
		assigned: prometheus.NewGauge(prometheus.GaugeOpts{Name: "audiofan_subscriber_partitions_assigned",
			Help: "Partitions the replicas' shared assignment gives this replica, which it pulls.", ConstLabels: l}),
		redrives: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_subscriber_redrives_total",
			Help: "Parked calls re-driven from the bus.", ConstLabels: l}),
		historyLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_subscriber_history_lost_total",
			Help: "Calls read back from the stream (a takeover, a re-drive) whose start the stream no longer held (its retention removed it): rebuilt from what was left.", ConstLabels: l}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_subscriber_takeovers_total",
			Help: "Calls this replica took over from another that had part of them (it replayed them from their start).", ConstLabels: l}),
	}
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "audiofan_subscriber_handle_seconds",
		Help: "Time a role's handler takes for one message.", ConstLabels: l,
		Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10)})
	m.handle = h
	for _, c := range []prometheus.Collector{m.messages, m.calls, m.partitions, m.assigned, m.reads, m.takeovers, m.redrives, m.historyLost, h} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("%s metrics: %w", role, err)
		}
	}
	for _, o := range []Outcome{OutcomeHandled, OutcomeReplayed, OutcomeRetried, OutcomeTerminated, OutcomeParked, OutcomeLate} {
		m.messages.WithLabelValues(string(o))
	}
	m.handled, m.replayed = m.messages.WithLabelValues(string(OutcomeHandled)), m.messages.WithLabelValues(string(OutcomeReplayed))
	for _, r := range []Result{ResultEnded, ResultIdle, ResultFailed, ResultParked, ResultReleased, ResultElsewhere} {
		m.calls.WithLabelValues(string(r))
	}
	return m, nil
}

// lagCollector reports a replica's lag by shard: a shard whose leader is
// slow, or a shard with more calls, shows as its own.
type lagCollector struct {
	g    *Group
	desc *prometheus.Desc
}

// Describe is prometheus.Collector's.
func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect is prometheus.Collector's.
func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	lag := make([]float64, max(c.g.shards.Load(), 1))
	c.g.mu.Lock()
	for _, p := range c.g.parts {
		if i := int(p.shard.Load()); p.isOwned.Load() && i < len(lag) {
			lag[i] += float64(p.pending.Load() + p.nextPending.Load())
		}
	}
	c.g.mu.Unlock()
	for i, v := range lag {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, strconv.Itoa(i))
	}
}
