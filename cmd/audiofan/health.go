package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// HealthSettings are the settings of `audiofan health`.
type HealthSettings struct {
	HTTPAddr string `env:"AUDIOFAN_HTTP_ADDR" envDefault:"127.0.0.1:8080" help:"the listener of the process to check"`
}

// healthCommand lets a container image without a shell or curl check its own
// process (Docker's HEALTHCHECK, an exec probe).
var healthCommand = command{
	name:    "health",
	summary: "exit 0 if the audiofan process on AUDIOFAN_HTTP_ADDR is ready (/readyz), 1 if not: for container health checks",
	config:  func() any { return &HealthSettings{} },
	run: func(ctx context.Context, cfg any, _ *slog.Logger, stdout io.Writer) error {
		addr := cfg.(*HealthSettings).HTTPAddr
		if strings.HasPrefix(addr, ":") {
			addr = "127.0.0.1" + addr // a listener on every interface answers on loopback
		}
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("not ready: %w", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("not ready: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		fmt.Fprint(stdout, string(body))
		return nil
	},
}
