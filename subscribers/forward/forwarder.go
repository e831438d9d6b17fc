package forward

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"sync"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/warn"
	"github.com/audiofan/audiofan/subscribers"
)

// RoleName is the forwarder's role name: its consumers, metrics and NATS
// user.
const RoleName = "forwarder"

// Forwarder is one replica's forwarding: the targets, the dialer and what
// every call's sockets share.
type Forwarder struct {
	cfg    *Config
	pub    broker.Published
	nc     *nats.Conn
	dialer websocket.Dialer
	tm     []*targetMetrics // by target
	log    *slog.Logger
	warn   *warn.Limiter

	wg sync.WaitGroup // every socket's goroutines
}

// New prepares the forwarder; cfg must have been validated (it holds the
// targets read from it).
func New(cfg *Config, pub broker.Published, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*Forwarder, error) {
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	log = log.With("role", RoleName)
	f := &Forwarder{cfg: cfg, pub: pub, nc: nc, log: log, warn: warn.New(log, 1, 1, nil),
		dialer: websocket.Dialer{HandshakeTimeout: cfg.DialTimeout, TLSClientConfig: cfg.tls.Clone(), Proxy: http.ProxyFromEnvironment,
			ReadBufferSize: 4096, WriteBufferSize: 16384}}
	for _, t := range cfg.targets {
		f.tm = append(f.tm, m.forTarget(t.Name))
	}
	return f, nil
}

// Role is the forwarder's role: every kind a target asks for, per call.
func (f *Forwarder) Role() subscribers.Role {
	byKind := map[Kind]broker.Kind{KindAudio: broker.KindAudio, KindDtmf: broker.KindDtmf, KindTranscript: broker.KindTranscript}
	var kinds []broker.Kind
	for _, t := range f.cfg.targets {
		for _, k := range t.Kinds {
			if !slices.Contains(kinds, byKind[k]) {
				kinds = append(kinds, byKind[k])
			}
		}
	}
	return subscribers.Role{Name: RoleName, Kinds: kinds,
		NewCall: func(_ context.Context, c subscribers.CallInfo) (subscribers.CallHandler, error) {
			return newCall(f, c), nil
		}}
}

// Wait waits for every socket to be closed: the Group has stopped, so
// every call's Close has been called.
func (f *Forwarder) Wait() { f.wg.Wait() }

// Component is the forwarder as the binary knows it.
var Component = subscribers.Component{
	Role:     RoleName,
	Command:  RoleName,
	Summary:  "hands every call to ACS-speaking WebSocket services (AUDIOFAN_FORWARD_URL), two-way, one socket a call and target",
	Settings: func() subscribers.Settings { return &Config{} },
	Enabled:  func(s subscribers.Settings) bool { return s.(*Config).Enabled() },
	Start: func(_ context.Context, s subscribers.Settings, env subscribers.Env) (subscribers.Role, func(), error) {
		cfg := s.(*Config)
		f, err := New(cfg, env.Published, env.JS.Conn(), env.Reg, env.Log)
		if err != nil {
			return subscribers.Role{}, nil, err
		}
		names := make([]string, 0, len(cfg.targets))
		for _, t := range cfg.targets {
			names = append(names, t.Name+"="+t.URL)
		}
		env.Log.Info("forwarding", "targets", names)
		return f.Role(), f.Wait, nil
	},
	Publishes: func(_ subscribers.Settings, pub broker.Published) []string {
		return []string{pub.AnyCall(broker.KindOutbound)}
	},
}
