package main

import (
	"runtime"
	"testing"
	"time"
)

func TestMemoryLimitOf(t *testing.T) {
	if l, m, ok := memoryLimitOf("1073741824\n"); !ok || m != 1<<30 || l != (1<<30)/10*8 {
		t.Errorf("1 GiB: %d %d %v", l, m, ok)
	}
	for _, s := range []string{"max\n", "", "-1", "lots"} {
		if _, _, ok := memoryLimitOf(s); ok {
			t.Errorf("%q taken as a bound", s)
		}
	}
}

// After a burst of garbage, an idle check gives the memory back; a busy
// period does not.
func TestReleaseWhenIdle(t *testing.T) {
	var r releaser
	r.check(time.Hour) // baseline
	junk := make([][]byte, 0, 256)
	for range 256 {
		junk = append(junk, make([]byte, 1<<20))
	}
	runtime.KeepAlive(junk)
	junk = nil
	if _, _, released := r.check(time.Millisecond); released {
		t.Error("released while allocating 256 MB a millisecond")
	}
	held, now, released := r.check(time.Hour)
	if !released || now >= held || held-now < 128<<20 {
		t.Errorf("idle after a burst: released %v, held %d MB, now %d MB", released, held>>20, now>>20)
	}
}
