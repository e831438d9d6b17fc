// Package warn keeps warnings about hostile or broken input, and about
// dependencies that keep failing, from flooding the log: a burst, then a
// steady trickle, with the number left out reported on the next line that
// gets through (and counted, when given a counter). The receiver and the
// subscriber roles share it.
package warn

import (
	"context"
	"log/slog"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// Limiter logs warnings at a bounded rate.
type Limiter struct {
	log        *slog.Logger
	lim        *rate.Limiter
	suppressed atomic.Int64
	metric     interface{ Inc() }
}

// New logs to log at most perSecond warnings a second after a burst of
// burst; metric (nil: none) counts each warning left out.
func New(log *slog.Logger, perSecond float64, burst int, metric interface{ Inc() }) *Limiter {
	return &Limiter{log: log, lim: rate.NewLimiter(rate.Limit(perSecond), burst), metric: metric}
}

// Warn logs msg at Warn level unless the rate is spent.
func (w *Limiter) Warn(msg string, args ...any) {
	if !w.lim.Allow() {
		w.suppressed.Add(1)
		if w.metric != nil {
			w.metric.Inc()
		}
		return
	}
	if n := w.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed_since_last", n)
	}
	w.log.Log(context.Background(), slog.LevelWarn, msg, args...)
}
