// Package httpserve is what every audiofan process serves over HTTP besides
// its own work: the probes (/healthz, /readyz, one answer everywhere), the
// metrics, and the check of whether an address is loopback (which decides
// whether a listener may go without a credential).
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// Probes adds /healthz (the process answers) and /readyz (ready returns
// nil; otherwise 503 with its error) to mux.
func Probes(mux *http.ServeMux, ready func(context.Context) error) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
}

// Serve serves a role's probes and /metrics on ln until ctx ends; other
// paths go to root when it is not nil.
func Serve(ctx context.Context, ln net.Listener, ready func() error, metrics, root http.Handler) error {
	mux := http.NewServeMux()
	Probes(mux, func(context.Context) error { return ready() })
	mux.Handle("GET /metrics", metrics)
	if root != nil {
		mux.Handle("/", root)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("health listener: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("health listener: %w", err)
	}
	return nil
}

// Loopback reports whether an address (a host, host:port, or a Host
// header: "localhost", "127.0.0.1:8080", "[::1]") names the loopback
// interface: localhost or a loopback address, never a name that merely
// resolves to one.
func Loopback(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
