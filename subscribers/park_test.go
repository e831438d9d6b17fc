package subscribers

import (
	"testing"
	"time"
)

func TestParkRule(t *testing.T) {
	r := parkRule{retries: 5, after: 30 * time.Second}
	for _, tc := range []struct {
		attempt     int
		unavailable bool
		failingFor  time.Duration
		want        bool
	}{
		{1, false, 0, false},
		{4, false, time.Hour, false}, // an ordinary error counts attempts, not time
		{5, false, 0, true},
		{100, true, 29 * time.Second, false}, // an outage counts time, not attempts
		{1, true, 30 * time.Second, true},
	} {
		if got := r.park(tc.attempt, tc.unavailable, tc.failingFor); got != tc.want {
			t.Errorf("attempt %d, unavailable %v, failing %v: park %v, want %v", tc.attempt, tc.unavailable, tc.failingFor, got, tc.want)
		}
	}
	if !(parkRule{retries: 5}).park(1, true, 0) {
		t.Error("AUDIOFAN_PARK_AFTER=0: an outage must park at once")
	}
}

func TestRedriveDelay(t *testing.T) {
	base := 5 * time.Second
	for _, tc := range []struct {
		tries int
		want  time.Duration
	}{
		{0, 5 * time.Second}, {1, 5 * time.Second}, {2, 10 * time.Second}, {4, 40 * time.Second},
		{7, maxRedriveDelay}, {1000, maxRedriveDelay}, // capped, and no overflow past 63 doublings
	} {
		if got := redriveDelay(base, tc.tries); got != tc.want {
			t.Errorf("tries %d: %v, want %v", tc.tries, got, tc.want)
		}
	}
}
