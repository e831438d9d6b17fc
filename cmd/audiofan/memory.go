package main

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Memory after a burst. Go frees garbage only when it allocates again, and
// gives freed pages back to the operating system slowly; sync.Pool buffers
// (the embedded NATS server keeps 8 MiB message-block caches in them) live
// two collections. A process that goes idle after a flood would hold its
// peak, gigabytes, for minutes: what a container's memory limit, and the
// scheduler packing pods by usage, see. releaseWhenIdle hands it back.
const (
	idleCheck = 15 * time.Second
	// idleAllocRate: allocating less than this per second is idle (a
	// replica with no calls allocates a few KB/s for heartbeats).
	idleAllocRate = 1 << 20
	// releaseSlack: growing less than this since the last release is not
	// worth a collection.
	releaseSlack = 64 << 20
)

var releasing struct {
	sync.Mutex
	on bool
}

// releaseWhenIdle starts, unless one runs already, a check every idleCheck
// until ctx ends: when
// the process allocated little since the last check and holds much more
// than its live heap, it collects twice (the second empties what sync.Pool
// kept through the first) and returns the free pages at once
// (debug.FreeOSMemory). Under load it does nothing: the runtime's own
// pacing is right there, and GOMEMLIMIT bounds the peak.
func releaseWhenIdle(ctx context.Context, log *slog.Logger) {
	releasing.Lock()
	defer releasing.Unlock()
	if releasing.on {
		return
	}
	releasing.on = true
	go func() {
		releaseLoop(ctx, log)
		releasing.Lock()
		releasing.on = false
		releasing.Unlock()
	}()
}

func releaseLoop(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(idleCheck)
	defer t.Stop()
	var r releaser
	r.check(idleCheck) // the baseline of allocation
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if held, now, ok := r.check(idleCheck); ok {
			log.Debug("idle: memory returned to the system", "heldMB", held>>20, "nowMB", now>>20)
		}
	}
}

// releaser is one process's idle check.
type releaser struct {
	s          [4]metrics.Sample
	lastAllocs uint64
	floor      uint64 // what the heap held after the last release
}

// check returns memory to the system if the process allocated less than
// idleAllocRate over the last period and holds more than releaseSlack
// beyond what it held after the last release (the live heap as of the
// last collection would not do: that collection ran during the burst);
// it says how much it held and holds now.
func (r *releaser) check(period time.Duration) (held, now uint64, released bool) {
	if r.s[0].Name == "" {
		for i, n := range []string{"/gc/heap/allocs:bytes", "/memory/classes/heap/objects:bytes",
			"/memory/classes/heap/free:bytes", "/memory/classes/heap/unused:bytes"} {
			r.s[i].Name = n
		}
	}
	metrics.Read(r.s[:])
	allocs := r.s[0].Value.Uint64()
	held = r.s[1].Value.Uint64() + r.s[2].Value.Uint64() + r.s[3].Value.Uint64()
	idle := allocs-r.lastAllocs < uint64(idleAllocRate*period.Seconds())
	r.lastAllocs = allocs
	if !idle || held < r.floor+releaseSlack {
		return held, held, false
	}
	debug.FreeOSMemory()
	debug.FreeOSMemory()
	metrics.Read(r.s[:])
	r.lastAllocs = r.s[0].Value.Uint64()
	r.floor = r.s[1].Value.Uint64() + r.s[2].Value.Uint64() + r.s[3].Value.Uint64()
	return held, r.floor, true
}

// cgroupMemoryMax is where cgroup v2 says how much memory the container
// may use ("max": no bound).
const cgroupMemoryMax = "/sys/fs/cgroup/memory.max"

// limitMemory sets a soft memory limit for the Go runtime, unless
// GOMEMLIMIT sets one: 80% of the container's memory bound, when there is
// one. Near the limit the runtime collects harder instead of growing, so a
// flood (a socket blasting 60 KB messages) costs CPU and sheds audio
// rather than getting the pod killed for memory. The rest is left for
// what Go does not count (thread stacks, the page cache of the store).
func limitMemory(log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	b, err := os.ReadFile(cgroupMemoryMax)
	if err != nil {
		return
	}
	limit, max, ok := memoryLimitOf(string(b))
	if !ok {
		return
	}
	debug.SetMemoryLimit(limit)
	log.Info("memory limit set from the container's", "limitMB", limit>>20, "containerMB", max>>20)
}

// memoryLimitOf reads cgroup v2's memory.max: the soft limit to set (80%
// of it) and the bound itself; false for "max" (no bound) or garbage.
func memoryLimitOf(memoryMax string) (limit, max int64, ok bool) {
	max, err := strconv.ParseInt(strings.TrimSpace(memoryMax), 10, 64)
	if err != nil || max <= 0 {
		return 0, 0, false
	}
	return max / 10 * 8, max, true
}
