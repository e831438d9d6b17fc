// Package console is the live web console: the calls in progress and recently
// ended, per participant meters, talk timelines, transcripts and moderation
// events, listening in from the browser, recordings and analytics of finished
// calls, and the health of the bus. It reads only from the bus (and the
// recordings), so it runs at `/` of any role's listener (`audiofan serve`
// included) or alone as `audiofan console`, any number of replicas.
//
// What a page shows is fed by one consumer or subscription per call however
// many pages watch it: pages share a call's watcher, and its listeners share
// one NATS subscription and get their frames batched, so ten pages on a busy
// call cost what one does, plus the bytes written to each.
package console

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/httpserve"
	"github.com/audiofan/audiofan/broker/warn"
	"github.com/audiofan/audiofan/codec"
)

//go:embed static
var static embed.FS

// Config are the console's settings.
type Config struct {
	Mode     string        `env:"AUDIOFAN_CONSOLE" envDefault:"auto" help:"web console at / : auto (on when the listener is loopback or a credential is set), on, off"`
	Token    string        `env:"AUDIOFAN_CONSOLE_TOKEN" help:"bearer token for the console (Authorization: Bearer, or open /?token=... once to get a cookie)"`
	User     string        `env:"AUDIOFAN_CONSOLE_USER" help:"basic-auth user for the console (with AUDIOFAN_CONSOLE_PASSWORD)"`
	Password string        `env:"AUDIOFAN_CONSOLE_PASSWORD" help:"basic-auth password for the console"`
	History  time.Duration `env:"AUDIOFAN_CONSOLE_HISTORY" envDefault:"1h" help:"how far back the call list reaches at start, and how long ended calls stay listed"`
	MaxEnded int           `env:"AUDIOFAN_CONSOLE_MAX_ENDED" envDefault:"200" help:"ended calls kept in the list"`
	// Recordings is opened by whoever starts the console (the blob
	// drivers live with the recorder), and given as Deps.Blobs.
	Recordings string `env:"AUDIOFAN_CONSOLE_RECORDINGS" help:"blob store the console plays recordings from (azblob://<container> or s3://<bucket>, as the recorder's AUDIOFAN_RECORDING_STORE, its credentials in the environment); empty: beside a recorder (serve, audiofan recorder) the recorder's own store, else none"`
}

// ErrUnprotected: the console would expose call audio beyond this machine
// without a credential.
var ErrUnprotected = errors.New("the console would expose call audio without a credential: set AUDIOFAN_CONSOLE_TOKEN or AUDIOFAN_CONSOLE_USER and AUDIOFAN_CONSOLE_PASSWORD, or AUDIOFAN_CONSOLE=off")

// Validate checks the settings.
func (c Config) Validate() error {
	switch {
	case c.Mode != "auto" && c.Mode != "on" && c.Mode != "off":
		return fmt.Errorf("AUDIOFAN_CONSOLE %q: want auto, on or off", c.Mode)
	case (c.User == "") != (c.Password == ""):
		return errors.New("AUDIOFAN_CONSOLE_USER and AUDIOFAN_CONSOLE_PASSWORD go together")
	case c.History <= 0:
		return errors.New("AUDIOFAN_CONSOLE_HISTORY must be positive")
	case c.MaxEnded < 1:
		return errors.New("AUDIOFAN_CONSOLE_MAX_ENDED must be at least 1")
	}
	return nil
}

func (c Config) protected() bool { return c.Token != "" || c.User != "" }

// Enabled says whether the console is served on a listener at addr: off when
// asked, on behind a credential, and without one only on loopback. A console
// asked for (on) that would be open beyond loopback is ErrUnprotected.
func (c Config) Enabled(addr string) (bool, error) {
	switch {
	case c.Mode == "off":
		return false, nil
	case c.protected() || httpserve.Loopback(addr):
		return true, nil
	case c.Mode == "on":
		return false, ErrUnprotected
	}
	return false, nil
}

// Deps are what the console reads from.
type Deps struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	Stream broker.StreamRef
	// DataDir holds the recordings written to disk (AUDIOFAN_DATA_DIR).
	DataDir string
	// Blobs opens recordings a blob store holds; nil: none is read.
	Blobs BlobSource
	// Roles are the subscriber roles whose consumers the health view shows.
	Roles []string
	Reg   prometheus.Registerer
	Log   *slog.Logger
}

// BlobSource opens a recording that a blob store holds, by the object URL
// its recording event names, to read and seek in; a missing object, or one
// outside the store, is fs.ErrNotExist.
type BlobSource interface {
	OpenBlob(ctx context.Context, object string) (io.ReadSeekCloser, time.Time, error)
}

// Console serves the pages and their feeds.
type Console struct {
	cfg Config
	d   Deps
	pub broker.Published
	log *slog.Logger
	// warn bounds the warnings a page's requests can cause (a browser
	// retrying a recording the store will not give, say).
	warn  *warn.Limiter
	index *index
	m     metrics

	mu       sync.Mutex
	watchers map[codec.Token]*watcher
	hubs     map[codec.Token]*hub
	rates    *rates
	health   healthCache
	ctx      context.Context
}

type metrics struct {
	pages      *prometheus.GaugeVec
	dropped    *prometheus.CounterVec
	authFailed prometheus.Counter
}

// New prepares a console; Run feeds it.
func New(cfg Config, d Deps) (*Console, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := d.Log.With("component", "console")
	c := &Console{cfg: cfg, d: d, pub: d.Stream.Published(), log: log, warn: warn.New(log, 1, 5, nil),
		watchers: map[codec.Token]*watcher{},
		m: metrics{
			pages: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "audiofan_console_feeds",
				Help: "Console feeds open, by kind: calls (the list), call (a call's page), listen (audio to a browser)."}, []string{"kind"}),
			dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_console_dropped_total",
				Help: "Updates or audio frames not sent to a browser that could not keep up, by kind."}, []string{"kind"}),
			authFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_console_auth_failures_total",
				Help: "Console requests refused for a missing or wrong credential."}),
		},
	}
	for _, col := range []prometheus.Collector{c.m.pages, c.m.dropped, c.m.authFailed} {
		if err := d.Reg.Register(col); err != nil {
			return nil, fmt.Errorf("console metrics: %w", err)
		}
	}
	for _, k := range []string{"calls", "call", "listen"} {
		c.m.pages.WithLabelValues(k)
		c.m.dropped.WithLabelValues(k)
	}
	// The stored scheme (its partitions) is the bus's: the index reads it
	// when it finds the bus.
	c.index = newIndex(cfg, broker.Subjects{Published: c.pub})
	c.rates = newRates(c)
	return c, nil
}

// Run reads the calls' lifecycle and events into the list until ctx ends.
// The pages' feeds stop with it.
func (c *Console) Run(ctx context.Context) error {
	c.mu.Lock()
	c.ctx = ctx
	c.mu.Unlock()
	return c.index.run(ctx, c.d.JS, c.d.Stream, c.log)
}

func (c *Console) runCtx() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		return context.Background()
	}
	return c.ctx
}

// Handler serves the console under /, behind its credential.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	files, _ := fs.Sub(static, "static")
	mux.Handle("GET /", noCache(http.FileServerFS(files)))
	mux.HandleFunc("GET /api/calls", c.serveCalls)
	mux.HandleFunc("GET /api/calls/feed", c.serveCallsFeed)
	mux.HandleFunc("GET /api/calls/{call}", c.serveCall)
	mux.HandleFunc("GET /api/calls/{call}/feed", c.serveCallFeed)
	mux.HandleFunc("GET /api/calls/{call}/listen", c.serveListen)
	mux.HandleFunc("GET /api/calls/{call}/recordings/{file}", c.serveRecording)
	mux.HandleFunc("GET /api/health", c.serveHealth)
	return c.authorize(secureHeaders(mux))
}

// secureHeaders keeps the pages to themselves: no framing by another site
// (clickjacking a play button), no script or connection but the console's
// own, no referrer carrying a call id away.
func secureHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"media-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The pages are embedded in the binary: a new binary must not be
		// hidden behind an old cached script.
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

const tokenCookie = "audiofan_console"

// authorize lets through a request with the bearer token (header or the
// cookie a ?token= link sets) or the basic-auth user. With no credential set
// (the console is then on loopback only) it lets through requests for a
// loopback host name alone: a web page whose own name resolves to 127.0.0.1
// (DNS rebinding) would otherwise read calls and listen in, since the
// browser sends that name as Host and as the listen socket's Origin.
func (c *Console) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.cfg.protected() {
			if !httpserve.Loopback(r.Host) {
				c.m.authFailed.Inc()
				http.Error(w, "the console without a credential answers only to localhost, 127.0.0.1 or [::1]", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if c.cfg.Token != "" {
			if q := r.URL.Query().Get("token"); q != "" && equal(q, c.cfg.Token) && r.URL.Path == "/" {
				// A link with the token signs the browser in; the token
				// leaves the address bar and the history at once.
				http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: q, Path: "/", HttpOnly: true,
					SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
				http.Redirect(w, r, "/", http.StatusSeeOther)
				return
			}
			if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && equal(tok, c.cfg.Token) {
				next.ServeHTTP(w, r)
				return
			}
			if ck, err := r.Cookie(tokenCookie); err == nil && equal(ck.Value, c.cfg.Token) {
				next.ServeHTTP(w, r)
				return
			}
		}
		if c.cfg.User != "" {
			if u, p, ok := r.BasicAuth(); ok && equal(u, c.cfg.User) && equal(p, c.cfg.Password) {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="audiofan console", charset="UTF-8"`)
		}
		c.m.authFailed.Inc()
		http.Error(w, "unauthorized", http.StatusUnauthorized)
	})
}

// equal compares in constant time, whatever the lengths.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// Ready reports why the console cannot show the calls yet, or nil: it is
// connected and has read the list up to now.
func (c *Console) Ready() error {
	if !c.d.NC.IsConnected() {
		return fmt.Errorf("nats: %s", c.d.NC.Status())
	}
	c.index.mu.Lock()
	defer c.index.mu.Unlock()
	if !c.index.ready {
		return errors.New("reading the calls")
	}
	return nil
}
