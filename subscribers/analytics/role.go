package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// RoleName is the analytics role: its consumers, metrics and event source.
const RoleName = codec.SourceAnalytics

// Config is the analytics settings.
type Config struct {
	Interval time.Duration `env:"AUDIOFAN_ANALYTICS_INTERVAL" envDefault:"5s" help:"an analytics event every this much call time while a call runs (0 = only the final summary)"`
	DeadAir  time.Duration `env:"AUDIOFAN_ANALYTICS_DEAD_AIR" envDefault:"3s" help:"silence of everyone for at least this long counts as dead air"`
	Bucket   string        `env:"AUDIOFAN_ANALYTICS_BUCKET" envDefault:"call-analytics" help:"KV bucket holding each call's latest summary (key: the call token)"`
	TTL      time.Duration `env:"AUDIOFAN_ANALYTICS_TTL" envDefault:"168h" help:"how long a summary stays in the bucket"`
	Replicas int           `env:"AUDIOFAN_ANALYTICS_BUCKET_REPLICAS" envDefault:"1" help:"replicas of the bucket when it is created (3 on a cluster)"`
}

// Validate checks the settings.
func (c Config) Validate() error {
	switch {
	case c.Interval < 0 || (c.Interval > 0 && c.Interval < speech.SlotDur):
		return fmt.Errorf("AUDIOFAN_ANALYTICS_INTERVAL %s: want 0 or at least 20ms", c.Interval)
	case c.DeadAir < speech.SlotDur:
		return fmt.Errorf("AUDIOFAN_ANALYTICS_DEAD_AIR %s: want at least 20ms", c.DeadAir)
	case c.Bucket == "":
		return errors.New("AUDIOFAN_ANALYTICS_BUCKET is empty")
	}
	return nil
}

// Analytics is the role.
type Analytics struct {
	cfg Config
	kv  jetstream.KeyValue
	log *slog.Logger

	inProgress prometheus.Gauge
	seconds    *prometheus.CounterVec
}

// New prepares the role and its KV bucket; metrics register on reg.
func New(ctx context.Context, cfg Config, js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger) (*Analytics, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var kv jetstream.KeyValue
	err := broker.Provision(ctx, log, "bucket "+cfg.Bucket, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: cfg.Bucket, History: 1, TTL: cfg.TTL,
			Replicas: cfg.Replicas, Description: "audiofan analytics: the latest summary of each call"})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("analytics bucket %s: %w", cfg.Bucket, err)
	}
	a := &Analytics{cfg: cfg, kv: kv, log: log.With("role", RoleName),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{Name: "audiofan_analytics_calls_in_progress",
			Help: "Calls this replica is analysing."}),
		seconds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_analytics_seconds_total",
			Help: "Call time of finished calls, by kind: talk and silence (summed over participants), overtalk, dead_air, call."},
			[]string{"kind"}),
	}
	for _, c := range []prometheus.Collector{a.inProgress, a.seconds} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("analytics metrics: %w", err)
		}
	}
	for _, k := range []string{"talk", "silence", "overtalk", "dead_air", "call"} {
		a.seconds.WithLabelValues(k)
	}
	return a, nil
}

// Role is analytics as the subscriber framework runs it.
func (a *Analytics) Role() subscribers.Role {
	return subscribers.Role{Name: RoleName, Kinds: []broker.Kind{broker.KindAudio},
		NewCall: func(_ context.Context, c subscribers.CallInfo) (subscribers.CallHandler, error) {
			a.inProgress.Inc()
			return &callAnalysis{a: a, call: c, an: newAnalysis(a.cfg.DeadAir)}, nil
		}}
}

type callAnalysis struct {
	a      *Analytics
	call   subscribers.CallInfo
	an     *analysis
	added  uint64 // stream sequence of the last frame added: a retried message is not added twice
	next   int64  // call time (slots) of the next live event
	closed bool
}

func (c *callAnalysis) Handle(ctx context.Context, d subscribers.Delivery, out *subscribers.Output) error {
	f, ok := d.Payload.(*codec.Frame)
	if !ok {
		return nil
	}
	if f.Channels != 1 || f.Encoding != codec.EncodingPCM16 || len(f.Data)%2 != 0 {
		return subscribers.Permanent(fmt.Errorf("frame format: %d channels, %q, %d bytes", f.Channels, f.Encoding, len(f.Data)))
	}
	// A failed publish below is retried with this same message: the frame
	// is added once, and the event stays due until it is published.
	if d.Seq != c.added {
		c.an.add(f)
		c.added = d.Seq
	}
	if c.a.cfg.Interval == 0 {
		return nil
	}
	every := int64(c.a.cfg.Interval / speech.SlotDur)
	if c.next == 0 {
		c.next = every
	}
	if c.an.max-c.an.min+1 < c.next {
		return nil
	}
	// The event's time is the call time it covers, not the clock: the same
	// messages give the same events on any replica.
	if !d.Replay { // on a replay the previous owner published it: do not summarise for nothing
		sum := c.an.summary(false)
		if err := c.publish(ctx, out, codec.EventProgress, &sum, false); err != nil {
			return err
		}
	}
	for c.next <= c.an.max-c.an.min+1 {
		c.next += every
	}
	return nil
}

func (c *callAnalysis) End(ctx context.Context, reason subscribers.EndReason, out *subscribers.Output) error {
	sum := c.an.summary(true)
	sum.Reason = string(reason) // the event's field, on the wire
	if err := c.publish(ctx, out, codec.EventSummary, &sum, false); err != nil {
		return err
	}
	c.count(&sum)
	return nil
}

// publish emits the event and keeps the summary as the call's latest; a
// replay does neither (the previous owner did).
func (c *callAnalysis) publish(ctx context.Context, out *subscribers.Output, typ string, sum *codec.Analysis, replay bool) error {
	if replay {
		return nil
	}
	ev, err := codec.NewEvent(typ, sum)
	if err != nil {
		return subscribers.Permanent(err)
	}
	ev.At = c.an.clock.Time(c.an.max)
	if err := out.Emit(ctx, ev); err != nil {
		return err
	}
	ev.V, ev.Call, ev.Source = codec.Version, c.call.ID, RoleName
	b, err := codec.Marshal(&ev)
	if err != nil {
		return subscribers.Permanent(err)
	}
	if _, err := c.a.kv.Put(ctx, string(c.call.Token), b); err != nil {
		return fmt.Errorf("%w: analytics bucket: %w", subscribers.ErrUnavailable, err)
	}
	return nil
}

// count adds a finished call to the aggregate metrics.
func (c *callAnalysis) count(sum *codec.Analysis) {
	sec := func(ms int64) float64 { return float64(ms) / 1000 }
	for _, p := range sum.Participants {
		c.a.seconds.WithLabelValues("talk").Add(sec(p.TalkMs))
		c.a.seconds.WithLabelValues("silence").Add(sec(p.SilenceMs))
	}
	c.a.seconds.WithLabelValues("overtalk").Add(sec(sum.OvertalkMs))
	c.a.seconds.WithLabelValues("dead_air").Add(sec(sum.DeadAirMs))
	c.a.seconds.WithLabelValues("call").Add(sec(sum.DurationMs))
}

func (c *callAnalysis) Close() error {
	if !c.closed {
		c.closed = true
		c.a.inProgress.Dec()
	}
	return nil
}

// Component is analytics as the binary runs it.
var Component = subscribers.Component{
	Role:     RoleName,
	Command:  "analytics",
	Summary:  "talk time, levels, overtalk and dead air of every call, live and at its end, one replica of many",
	Settings: func() subscribers.Settings { return &Config{} },
	Start: func(ctx context.Context, s subscribers.Settings, env subscribers.Env) (subscribers.Role, func(), error) {
		a, err := New(ctx, *s.(*Config), env.JS, env.Reg, env.Log)
		if err != nil {
			return subscribers.Role{}, nil, err
		}
		return a.Role(), func() {}, nil
	},
	Publishes: func(s subscribers.Settings, _ broker.Published) []string {
		return []string{"$KV." + s.(*Config).Bucket + ".>"}
	},
}
