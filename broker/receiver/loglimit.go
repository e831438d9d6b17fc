package receiver

import (
	"context"
	"log/slog"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// warnLimiter keeps warnings about hostile or broken input from flooding the
// log: a burst, then a steady trickle, with the number left out reported on
// the next line that gets through (and counted in a metric).
type warnLimiter struct {
	log        *slog.Logger
	lim        *rate.Limiter
	suppressed atomic.Int64
	metric     interface{ Inc() }
}

func newWarnLimiter(log *slog.Logger, perSecond float64, burst int, metric interface{ Inc() }) *warnLimiter {
	return &warnLimiter{log: log, lim: rate.NewLimiter(rate.Limit(perSecond), burst), metric: metric}
}

func (w *warnLimiter) Warn(msg string, args ...any) {
	if !w.lim.Allow() {
		w.suppressed.Add(1)
		w.metric.Inc()
		return
	}
	if n := w.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed_since_last", n)
	}
	w.log.Log(context.Background(), slog.LevelWarn, msg, args...)
}
