package subscribers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
)

// GroupConfig tunes how a role's replicas share calls. Every replica of a
// role should run with the same values.
type GroupConfig struct {
	Lease       time.Duration `env:"AUDIOFAN_LEASE" envDefault:"10s" help:"how long the calls of a replica that stopped answering (killed, cut off) wait before another replica takes them over"`
	IdleTimeout time.Duration `env:"AUDIOFAN_CALL_IDLE_TIMEOUT" envDefault:"2m" help:"a call with no message for this long is finished as idle (its ended message may never come: its receiver died)"`
	MaxCalls    int           `env:"AUDIOFAN_MAX_CALLS" envDefault:"2000" help:"calls one replica works on at once; past it, it takes no new ones and others do"`
	Retries     int           `env:"AUDIOFAN_HANDLER_RETRIES" envDefault:"5" help:"attempts at a message that keeps failing before it is skipped (outages of disk or store are retried until they end)"`
	Backoff     time.Duration `env:"AUDIOFAN_RETRY_BACKOFF" envDefault:"100ms" help:"wait before the first retry of a failed message; it doubles with each retry, up to 50 times this"`
	Start       string        `env:"AUDIOFAN_CONSUMER_START" envDefault:"all" help:"where a role's consumer starts when first created: all (every call still in the stream) or new"`
	DoneTTL     time.Duration `env:"AUDIOFAN_DONE_TTL" envDefault:"48h" help:"how long a finished call is remembered so it is never done twice; keep it above the stream's max age"`
}

// Validate checks the settings.
func (c GroupConfig) Validate() error {
	switch {
	case c.Lease < 2*time.Second:
		return fmt.Errorf("AUDIOFAN_LEASE %s: want at least 2s", c.Lease)
	case c.IdleTimeout <= 0 || c.MaxCalls < 1 || c.Retries < 1 || c.Backoff <= 0:
		return errors.New("AUDIOFAN_CALL_IDLE_TIMEOUT, AUDIOFAN_MAX_CALLS, AUDIOFAN_HANDLER_RETRIES and AUDIOFAN_RETRY_BACKOFF must be positive")
	case c.Start != "all" && c.Start != "new":
		return fmt.Errorf("AUDIOFAN_CONSUMER_START %q: want all or new", c.Start)
	case c.DoneTTL < time.Minute:
		return fmt.Errorf("AUDIOFAN_DONE_TTL %s: want at least 1m", c.DoneTTL)
	}
	return nil
}

// Outcomes of one message, the label of audiofan_subscriber_messages_total.
const (
	OutcomeHandled    = "handled"
	OutcomeReplayed   = "replayed"   // applied again after a takeover, output dropped
	OutcomeRetried    = "retried"    // failed; tried again
	OutcomeTerminated = "terminated" // undecodable, or a Permanent error
	OutcomeGaveUp     = "gave_up"    // still failing after every retry: skipped
)

// Results of a call on a replica, the label of audiofan_subscriber_calls_total.
const (
	ResultEnded     = "ended"     // finished after its ended messages
	ResultIdle      = "idle"      // finished after the idle timeout
	ResultFailed    = "failed"    // End kept failing: finished without output
	ResultReleased  = "released"  // handed to another replica (this one stopping)
	ResultElsewhere = "elsewhere" // another replica had it, or had finished it
)

var roleName = regexp.MustCompile(`^[A-Za-z0-9-]+$`)

// ownerGroup is the priority group every replica pulls a call's consumer in.
const ownerGroup = "owner"

// Group runs one role: it takes calls from the role's dispatch consumer and
// works on each with a CallHandler, sharing the calls with the role's other
// replicas.
//
// How calls are shared (see the README for the choice): each role has a
// durable dispatch consumer on the calls' lifecycle messages, pulled by
// every replica one message at a time, so calls spread across replicas.
// Holding a lifecycle message unacknowledged (kept alive with in-progress
// acks) is a replica's lease on the call: if the replica dies, the server
// redelivers it after Lease to a live replica. The call's messages come from
// a durable consumer of its own (filtered to the call), in a pinned-client
// priority group: the server delivers to one client at a time, so two
// replicas holding leases for one call (its audio and transcription sockets
// both started it) never both apply it, and when the pinned one dies the pin
// moves. Its acknowledgement floor says how far the call was applied; a new
// owner reads the call from the stream to its end, replaying up to the floor
// to rebuild its state and applying the rest, then takes the consumer's
// deliveries. Finished calls
// are remembered in a KV bucket, written before the call's consumer is
// deleted, so a late or redelivered lifecycle message never starts a call
// twice.
type Group struct {
	cfg    GroupConfig
	role   Role
	ref    broker.StreamRef
	subj   broker.Subjects
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	log    *slog.Logger
	m      *groupMetrics
	bucket string

	warnings warnLimiter

	mu      sync.Mutex
	workers map[string]*worker
	ready   bool
	unavail int
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
	g := &Group{cfg: cfg, role: role, ref: ref, subj: ref.Subjects(), nc: nc, js: js, m: m,
		log: log.With("role", role.Name), bucket: ref.Name + "-" + role.Name + "-done", workers: map[string]*worker{}}
	m.owned = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "audiofan_subscriber_calls_owned",
		Help: "Calls this replica is working on.", ConstLabels: prometheus.Labels{"role": role.Name}}, func() float64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		n := 0
		for _, w := range g.workers {
			if w.owned.Load() {
				n++
			}
		}
		return float64(n)
	})
	lag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "audiofan_subscriber_lag_messages",
		Help:        "Messages of the calls this replica owns stored but not yet delivered to it.",
		ConstLabels: prometheus.Labels{"role": role.Name}}, func() float64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		var n uint64
		for _, w := range g.workers {
			n += w.pending.Load()
		}
		return float64(n)
	})
	for _, c := range []prometheus.Collector{m.owned, lag} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("%s metrics: %w", role.Name, err)
		}
	}
	return g, nil
}

// DispatchConsumer is the name of a role's dispatch consumer.
func DispatchConsumer(role string) string { return role }

// CallConsumer is the name of the consumer of one call for a role.
func CallConsumer(role, callToken string) string {
	name := role + "-" + callToken
	if len(name) > 200 { // the server's limit is 255; tokens of long ids are hashed
		sum := sha256.Sum256([]byte(callToken))
		name = role + "-h" + hex.EncodeToString(sum[:16])
	}
	return name
}

// Ready reports whether the replica can do its work: connected, its
// consumer in place, and no call stuck on an unavailable resource.
func (g *Group) Ready() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case !g.ready:
		return errors.New(g.role.Name + ": not started")
	case !g.nc.IsConnected():
		return errors.New(g.role.Name + ": NATS disconnected")
	case g.unavail > 0:
		return fmt.Errorf("%s: %d calls waiting on an unavailable resource", g.role.Name, g.unavail)
	}
	return nil
}

// Run works on calls until ctx ends, then hands every call it holds to the
// other replicas (its progress acknowledged, its leases returned) and
// returns. Until the stream exists it waits for it.
func (g *Group) Run(ctx context.Context) error {
	// The stream may not exist yet (its receiver starts later): wait for
	// it rather than fail, as a deployment starts its parts in any order.
	var dispatch jetstream.Consumer
	for attempt := 1; ; attempt++ {
		var err error
		if dispatch, err = g.setup(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		if attempt == 1 || attempt%10 == 0 {
			g.log.Warn("waiting for the stream", "err", err)
		}
		sleep(ctx, time.Second)
	}
	g.mu.Lock()
	g.ready = true
	g.mu.Unlock()
	g.log.Info("subscriber ready", "consumer", DispatchConsumer(g.role.Name), "lease", g.cfg.Lease)

	wctx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { g.keepLeases(wctx) })
	for ctx.Err() == nil {
		if g.count() >= g.cfg.MaxCalls {
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		batch, err := dispatch.Fetch(1, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if ctx.Err() == nil {
				g.log.Debug("dispatch fetch", "err", err)
				sleep(ctx, 250*time.Millisecond)
			}
			continue
		}
		for msg := range batch.Messages() {
			g.route(wctx, &wg, msg)
		}
		cancel()
	}
	g.mu.Lock()
	g.ready = false
	g.mu.Unlock()
	g.log.Info("stopping: handing calls over", "calls", g.count())
	stopWorkers()
	wg.Wait()
	return nil
}

func (g *Group) setup(ctx context.Context) (jetstream.Consumer, error) {
	deliver := jetstream.DeliverAllPolicy
	if g.cfg.Start == "new" {
		deliver = jetstream.DeliverNewPolicy
	}
	dispatch, err := g.js.CreateOrUpdateConsumer(ctx, g.ref.Name, jetstream.ConsumerConfig{
		Durable:       DispatchConsumer(g.role.Name),
		Description:   "audiofan " + g.role.Name + ": which replica works on which call",
		FilterSubject: g.subj.Prefix + ".*." + broker.KindLifecycle,
		DeliverPolicy: deliver,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       g.cfg.Lease,
		MaxDeliver:    -1,
		MaxAckPending: 100_000, // leases held at once, across replicas
	})
	if err != nil {
		return nil, fmt.Errorf("%s dispatch consumer on %s: %w", g.role.Name, g.ref.Name, err)
	}
	if g.stream, err = g.js.Stream(ctx, g.ref.Name); err != nil {
		return nil, fmt.Errorf("stream %s: %w", g.ref.Name, err)
	}
	// The finished marks are as safe as the calls: as many replicas.
	if _, err := g.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: g.bucket,
		Description: "audiofan " + g.role.Name + ": finished calls", TTL: g.cfg.DoneTTL, History: 1,
		Replicas: g.stream.CachedInfo().Config.Replicas}); err != nil {
		return nil, fmt.Errorf("%s bucket %s: %w", g.role.Name, g.bucket, err)
	}
	return dispatch, nil
}

// route gives a lifecycle message, a lease, to the call's worker, starting
// one if this replica has none.
func (g *Group) route(ctx context.Context, wg *sync.WaitGroup, msg jetstream.Msg) {
	info, err := g.subj.Parse(msg.Subject())
	if err != nil || info.Call == "" {
		g.log.Warn("dispatch: message outside the scheme dropped", "subject", msg.Subject())
		_ = msg.Term()
		return
	}
	if md, err := msg.Metadata(); err == nil {
		g.m.dispatchPending.Set(float64(md.NumPending))
	}
	tok := codec.EncodeToken(info.Call)
	g.mu.Lock()
	defer g.mu.Unlock()
	if w, ok := g.workers[tok]; ok {
		w.leases = append(w.leases, msg)
		return
	}
	w := newWorker(g, CallInfo{ID: info.Call, Token: tok}, msg)
	g.workers[tok] = w
	wg.Go(func() { w.run(ctx) })
}

// remove forgets a worker and returns the leases it held, which its caller
// settles: a lease routed after this starts a new worker, which finds the
// call finished or carries on with it.
func (g *Group) remove(w *worker) []jetstream.Msg {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.workers, w.call.Token)
	return w.leases
}

func (g *Group) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.workers)
}

// keepLeases tells the server, a few times per lease, that this replica still
// works on the calls it holds.
func (g *Group) keepLeases(ctx context.Context) {
	t := time.NewTicker(g.cfg.Lease / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.mu.Lock()
		var leases []jetstream.Msg
		for _, w := range g.workers {
			leases = append(leases, w.leases...)
		}
		g.mu.Unlock()
		for _, l := range leases {
			_ = l.InProgress() // a lease settled meanwhile refuses it; nothing to do
		}
	}
}

func (g *Group) setUnavailable(delta int) {
	g.mu.Lock()
	g.unavail += delta
	g.mu.Unlock()
}

// markDone remembers that the call is finished.
func (g *Group) markDone(ctx context.Context, tok string) error {
	_, err := g.js.Publish(ctx, "$KV."+g.bucket+"."+doneKey(tok), []byte(time.Now().UTC().Format(time.RFC3339)))
	if err != nil {
		return fmt.Errorf("mark call %s done: %w", tok, err)
	}
	return nil
}

// isDone reads the finished mark from the bucket's stream leader (not a
// possibly lagging replica, as a KV get may): a call finished a moment ago
// must be seen as finished.
func (g *Group) isDone(ctx context.Context, tok string) (bool, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": "$KV." + g.bucket + "." + doneKey(tok)})
	subject := "$JS.API.STREAM.MSG.GET.KV_" + g.bucket
	// A request lost in a server's failure would otherwise wait forever.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := g.nc.RequestWithContext(ctx, subject, req)
	if err != nil {
		return false, fmt.Errorf("read done mark of %s: %w", tok, err)
	}
	var r struct {
		Error *struct {
			Code    int    `json:"code"`
			ErrCode int    `json:"err_code"`
			Desc    string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return false, fmt.Errorf("read done mark of %s: %w", tok, err)
	}
	if r.Error == nil {
		return true, nil
	}
	if r.Error.Code == 404 {
		return false, nil
	}
	return false, fmt.Errorf("read done mark of %s: %s", tok, r.Error.Desc)
}

func doneKey(tok string) string {
	if len(tok) > 200 {
		sum := sha256.Sum256([]byte(tok))
		return "h" + hex.EncodeToString(sum[:16])
	}
	return tok
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

type groupMetrics struct {
	messages        *prometheus.CounterVec
	calls           *prometheus.CounterVec
	handle          prometheus.Observer
	dispatchPending prometheus.Gauge
	takeovers       prometheus.Counter
	owned           prometheus.GaugeFunc
}

func newGroupMetrics(role string, reg prometheus.Registerer) (*groupMetrics, error) {
	l := prometheus.Labels{"role": role}
	m := &groupMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_subscriber_messages_total",
			Help:        "Messages of calls applied by a role, by outcome: handled, replayed, retried, terminated, gave_up.",
			ConstLabels: l}, []string{"outcome"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_subscriber_calls_total",
			Help:        "Calls this replica stopped working on, by result: ended, idle, failed, released, elsewhere.",
			ConstLabels: l}, []string{"result"}),
		dispatchPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "audiofan_subscriber_dispatch_pending",
			Help: "Lifecycle messages no replica has taken yet, as of the last one taken.", ConstLabels: l}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_subscriber_takeovers_total",
			Help: "Calls this replica took over from another that had part of them (it read them from the start).", ConstLabels: l}),
	}
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "audiofan_subscriber_handle_seconds",
		Help: "Time a role's handler takes for one message.", ConstLabels: l,
		Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10)})
	m.handle = h
	for _, c := range []prometheus.Collector{m.messages, m.calls, m.dispatchPending, m.takeovers, h} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("%s metrics: %w", role, err)
		}
	}
	for _, o := range []string{OutcomeHandled, OutcomeReplayed, OutcomeRetried, OutcomeTerminated, OutcomeGaveUp} {
		m.messages.WithLabelValues(o)
	}
	for _, r := range []string{ResultEnded, ResultIdle, ResultFailed, ResultReleased, ResultElsewhere} {
		m.calls.WithLabelValues(r)
	}
	return m, nil
}

// warnLimiter keeps a flood of bad messages from flooding the log: one
// warning a second, with a count of those held back.
type warnLimiter struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (g *Group) warn(msg string, args ...any) {
	l := &g.warnings
	l.mu.Lock()
	if time.Since(l.last) < time.Second {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = time.Now(), 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	g.log.Warn(msg, args...)
}
