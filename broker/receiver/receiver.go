package receiver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/httpserve"
	"github.com/audiofan/audiofan/broker/warn"
	"github.com/audiofan/audiofan/codec"
)

// ReceiverConfig holds the receiver's settings.
type Config struct {
	HTTPAddr            string `env:"AUDIOFAN_HTTP_ADDR" envDefault:"127.0.0.1:8080" help:"WebSocket (/ws), health and metrics listener"`
	Auth                AuthConfig
	TLS                 TLSConfig
	Instance            string          `env:"AUDIOFAN_INSTANCE" help:"this replica's name in lifecycle messages (default: the host name)"`
	MaxConnections      int             `env:"AUDIOFAN_MAX_CONNECTIONS" envDefault:"10000" help:"open sockets past which upgrades are refused with 503"`
	MaxMessageBytes     broker.ByteSize `env:"AUDIOFAN_MAX_MESSAGE_BYTES" envDefault:"64KiB" help:"largest ACS message; a larger one closes the socket with 1009"`
	MaxParticipants     int             `env:"AUDIOFAN_MAX_PARTICIPANTS" envDefault:"64" help:"distinct participant ids one socket may carry"`
	HandshakeTimeout    time.Duration   `env:"AUDIOFAN_HANDSHAKE_TIMEOUT" envDefault:"10s" help:"time for a client to send its upgrade request (slow ones are cut off)"`
	UpgradeRate         float64         `env:"AUDIOFAN_UPGRADE_RATE" envDefault:"100" help:"sockets one IP address may open per second, on average (0 = no limit; behind a proxy this limits the proxy)"`
	UpgradeBurst        int             `env:"AUDIOFAN_UPGRADE_BURST" envDefault:"200" help:"sockets one IP address may open at once before AUDIOFAN_UPGRADE_RATE applies"`
	FirstMessageTimeout time.Duration   `env:"AUDIOFAN_FIRST_MESSAGE_TIMEOUT" envDefault:"15s" help:"a socket that sends no metadata within this is closed"`
	IdleTimeout         time.Duration   `env:"AUDIOFAN_IDLE_TIMEOUT" envDefault:"10m" help:"a socket silent this long after its metadata is closed (0 = never)"`
	MaxInvalidMessages  int             `env:"AUDIOFAN_MAX_INVALID_MESSAGES" envDefault:"20" help:"invalid messages a socket may send per AUDIOFAN_INVALID_WINDOW before it is closed with 1008"`
	InvalidWindow       time.Duration   `env:"AUDIOFAN_INVALID_WINDOW" envDefault:"10s" help:"window of AUDIOFAN_MAX_INVALID_MESSAGES"`
	PProf               bool            `env:"AUDIOFAN_PPROF" envDefault:"false" help:"serve Go's profiler at /debug/pprof/ on the listener (for diagnosis; keep it off on a public listener)"`
	DrainTimeout        time.Duration   `env:"AUDIOFAN_DRAIN_TIMEOUT" envDefault:"2m" help:"on SIGTERM, how long open calls may go on before their sockets are closed with 1001"`
	Publish             PublishConfig
}

// Validate checks the settings and fills in defaults that depend on the host.
func (c *Config) Validate() error {
	if c.Instance == "" {
		c.Instance, _ = os.Hostname()
	}
	host, _, err := net.SplitHostPort(c.HTTPAddr)
	if err != nil {
		return fmt.Errorf("AUDIOFAN_HTTP_ADDR %q: %w", c.HTTPAddr, err)
	}
	if err := c.Auth.validate(httpserve.Loopback(host), c.HTTPAddr); err != nil {
		return err
	}
	if err := c.TLS.validate(); err != nil {
		return err
	}
	if c.MaxConnections < 1 || c.MaxMessageBytes < 1024 || c.MaxParticipants < 1 || c.MaxInvalidMessages < 0 || c.FirstMessageTimeout <= 0 ||
		c.HandshakeTimeout <= 0 || c.UpgradeRate < 0 || c.UpgradeBurst < 0 {
		return errors.New("receiver limits must be positive (AUDIOFAN_MAX_MESSAGE_BYTES at least 1KiB)")
	}
	return c.Publish.Validate()
}

// checkMaxPayload refuses a message limit the NATS server cannot take:
// audio (three quarters of its ACS message, base64 decoded) must always fit
// in the server's max_payload, so the limit may not exceed it. A transcript
// whose words encode larger than that is refused one message at a time.
func checkMaxPayload(limit broker.ByteSize, maxPayload int64) error {
	if maxPayload > 0 && int64(limit) > maxPayload {
		return fmt.Errorf("AUDIOFAN_MAX_MESSAGE_BYTES %d is over the NATS server's max_payload %d (raise max_payload or lower the limit): %w", limit, maxPayload, ErrTooLarge)
	}
	return nil
}

// Receiver accepts ACS WebSocket connections and publishes what they carry.
type Receiver struct {
	cfg     Config
	subj    broker.Subjects
	streams []string
	nc      *nats.Conn
	js      jetstream.JetStream
	// pub is what the sockets publish through: js, or a batcher over it
	// (set by Serve).
	pub  publisher
	log  *slog.Logger
	warn *warn.Limiter
	auth *authenticator // set by Serve, before the listener is served
	m    *metrics
	root http.Handler // set by Mount, before Serve

	upgrader websocket.Upgrader
	bufs     sync.Pool
	perIP    *ipLimiter

	mu       sync.Mutex
	sockets  map[*socket]struct{}
	calls    map[codec.Token]*socket // call token -> the media socket outbound audio goes to
	closing  bool                    // the drain deadline passed: sockets still open are closed
	wg       sync.WaitGroup
	open     atomic.Int64
	draining atomic.Bool
}

// NewReceiver builds a receiver publishing through js on nc (which the
// caller owns and drains) into the stream of sc. Metrics register on reg.
func New(cfg Config, sc broker.StreamConfig, nc *nats.Conn, js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger) *Receiver {
	r := &Receiver{
		cfg: cfg, subj: sc.Subjects(), streams: sc.Layout().Streams(), nc: nc, js: js, pub: js, log: log,
		sockets: map[*socket]struct{}{},
		calls:   map[codec.Token]*socket{},
	}
	r.m = newMetrics(reg, func() float64 { return float64(r.open.Load()) })
	r.warn = warn.New(log, 5, 20, r.m.logSuppressed)
	r.bufs.New = func() any { b := make([]byte, 0, 2048); return &b }
	r.perIP = newIPLimiter(cfg.UpgradeRate, cfg.UpgradeBurst)
	r.upgrader = websocket.Upgrader{
		HandshakeTimeout: cfg.HandshakeTimeout,
		// A small frame-header buffer of gorilla's own over a lazyConn (see
		// lazyconn.go), instead of keeping the HTTP server's 4 KiB one.
		ReadBufferSize: 128,
		// Idle sockets hold no write buffer; the pool lends one for the rare
		// write (a close frame, a pong).
		WriteBufferPool: &sync.Pool{},
		// ACS is a server, not a browser: it sends no Origin to check.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	return r
}

// Mount gives every path the receiver does not serve to h (the console in
// `audiofan serve`). Call it before Serve.
func (r *Receiver) Mount(h http.Handler) { r.root = h }

// Handler serves /ws, /healthz, /readyz and /metrics, and what Mount gave.
func (r *Receiver) Handler(metricsHandler http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", r.serveWS)
	mux.HandleFunc("GET /ws/{secret}", r.serveWS)
	httpserve.Probes(mux, r.Ready)
	mux.Handle("GET /metrics", metricsHandler)
	if r.root != nil {
		mux.Handle("/", r.root)
	}
	if r.cfg.PProf {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	}
	return mux
}

// Ready reports why the receiver should get no new calls, or nil.
func (r *Receiver) Ready(ctx context.Context) error {
	if r.draining.Load() {
		return errors.New("draining")
	}
	if !r.nc.IsConnected() {
		return fmt.Errorf("nats: %s", r.nc.Status())
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for _, name := range r.streams {
		if _, err := r.js.Stream(ctx, name); err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
	}
	return nil
}

func (r *Receiver) serveWS(w http.ResponseWriter, req *http.Request) {
	if r.draining.Load() {
		r.m.conns.WithLabelValues("draining").Inc()
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	if !r.perIP.allow(req.RemoteAddr, time.Now()) {
		r.m.conns.WithLabelValues("rate_limited").Inc()
		r.warn.Warn("WebSocket upgrade refused: too many from one address", "remote", req.RemoteAddr, "rate", r.cfg.UpgradeRate)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many connections from this address", http.StatusTooManyRequests)
		return
	}
	if reason := r.auth.check(req); reason != "" {
		// The token is never logged: the reason says enough.
		r.m.conns.WithLabelValues("unauthorized").Inc()
		r.m.authFailures.WithLabelValues(reason).Inc()
		r.warn.Warn("WebSocket upgrade refused", "reason", reason, "remote", req.RemoteAddr)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	call := req.Header.Get("x-ms-call-connection-id")
	if call == "" {
		call = req.URL.Query().Get("callId")
	}
	if call != "" && !validID(call) {
		r.m.conns.WithLabelValues("bad_request").Inc()
		r.m.invalid.WithLabelValues(reasonBadID).Inc()
		http.Error(w, "call id too long (256 bytes, 240 as a subject token)", http.StatusBadRequest)
		return
	}
	if n := r.open.Add(1); n > int64(r.cfg.MaxConnections) {
		r.open.Add(-1)
		r.m.conns.WithLabelValues("limit").Inc()
		r.warn.Warn("WebSocket upgrade refused: connection limit", "limit", r.cfg.MaxConnections)
		http.Error(w, "too many connections", http.StatusServiceUnavailable)
		return
	}
	// Counted in the drain before the upgrade: a socket that gets its 101
	// is drained like any other, never dropped unread because a drain began
	// in between.
	if !r.reserve() {
		r.open.Add(-1)
		r.m.conns.WithLabelValues("draining").Inc()
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	conn, err := r.upgrader.Upgrade(lazyHijacker{w}, req, nil)
	if err != nil {
		r.open.Add(-1)
		r.wg.Done()
		r.m.conns.WithLabelValues("upgrade_failed").Inc()
		return // the upgrader has answered with an HTTP error
	}
	r.m.conns.WithLabelValues("accepted").Inc()
	conn.SetReadLimit(int64(r.cfg.MaxMessageBytes))

	s := &socket{r: r, conn: conn, id: newConnID(), remote: req.RemoteAddr, correlationID: req.Header.Get("x-ms-call-correlation-id")}
	s.pipe = pipeline{js: r.pub, cfg: r.cfg.Publish, m: r.m, connID: s.id, events: s, maxPayload: r.nc.MaxPayload()}
	if call != "" {
		s.call, s.callTok, s.callFromURL = call, codec.EncodeToken(call), true
	}
	closing := r.track(s)
	// The socket lives on in a goroutine of its own, and the HTTP handler
	// returns: the server then lets go of the request and its buffers, and the
	// socket's goroutine starts with a small stack.
	go func() {
		defer r.open.Add(-1)
		defer r.untrack(s)
		if closing {
			s.drain() // it came in after the drain deadline
		}
		s.run(context.Background())
	}()
}

// reserve counts a socket about to be upgraded in the drain's wait, unless
// the receiver is draining already.
func (r *Receiver) reserve() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.draining.Load() {
		return false
	}
	r.wg.Add(1)
	return true
}

// track registers an upgraded socket (reserved before) for the drain to
// close; it reports whether the drain deadline has passed already.
func (r *Receiver) track(s *socket) (closing bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sockets[s] = struct{}{}
	return r.closing
}

func (r *Receiver) untrack(s *socket) {
	r.mu.Lock()
	delete(r.sockets, s)
	r.mu.Unlock()
	r.wg.Done()
}

// Serve answers on ln until ctx ends, then drains: readiness goes false, no
// new sockets are taken, open calls go on until they end or DrainTimeout
// passes, when their sockets are closed with 1001 (ACS then reconnects to
// another replica). Every socket's messages are flushed and its "ended"
// published before Serve returns. The NATS connection is the caller's.
func (r *Receiver) Serve(ctx context.Context, ln net.Listener, metricsHandler http.Handler) error {
	if err := checkMaxPayload(r.cfg.MaxMessageBytes, r.nc.MaxPayload()); err != nil {
		_ = ln.Close()
		return err
	}
	auth, err := newAuthenticator(ctx, r.cfg.Auth, r.log)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("auth: %w", err)
	}
	r.auth = auth
	sub, err := r.nc.Subscribe(r.subj.Live(r.subj.AnyCall(broker.KindOutbound)), r.relayOutbound)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("subscribe to outbound audio: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if r.cfg.Publish.Mode == ModeBatch {
		b, err := newBatcher(r.nc, r.js, r.cfg.Publish, r.log, func(reason string, err error) {
			r.m.batches.WithLabelValues(reason).Inc()
			if err != nil {
				r.warn.Warn("fast batch ended before all its messages were stored: they are sent again", "reason", reason, "err", err)
			}
		})
		if err != nil {
			_ = ln.Close()
			return err
		}
		// After the drain: every socket has flushed by then.
		defer b.close()
		r.pub = b
	}
	if r.cfg.TLS.enabled() {
		// TLS ends here: sockets read through tls.Conn rather than lazyConn,
		// so they hold more memory than behind a TLS-terminating balancer.
		tc, err := r.cfg.TLS.serverTLS()
		if err != nil {
			_ = ln.Close()
			return err
		}
		ln = tls.NewListener(ln, tc)
	}
	srv := &http.Server{
		Handler: r.Handler(metricsHandler),
		// Slowloris: a request must be in within the handshake timeout, and
		// its headers are small (ACS sends a handful).
		ReadHeaderTimeout: r.cfg.HandshakeTimeout,
		MaxHeaderBytes:    32 << 10,
		// Idle keep-alive connections (probes, scrapers) are let go.
		IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ErrorLog:    slog.NewLogLogger(r.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http serve: %w", err)
	case <-ctx.Done():
	}
	r.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// Drain stops taking sockets and waits for the open ones as Serve describes.
func (r *Receiver) Drain() {
	r.mu.Lock()
	r.draining.Store(true)
	n := len(r.sockets)
	r.mu.Unlock()
	r.m.draining.Set(1)
	r.log.Info("draining: refusing new calls, waiting for open ones", "open", n, "timeout", r.cfg.DrainTimeout)
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
		r.log.Info("drained: every call ended")
		return
	case <-time.After(r.cfg.DrainTimeout):
	}
	r.mu.Lock()
	r.closing = true
	for s := range r.sockets {
		s.drain()
	}
	r.mu.Unlock()
	<-done
	r.log.Info("drained: remaining calls closed with 1001")
}
