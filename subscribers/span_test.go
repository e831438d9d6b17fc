package subscribers

import (
	"slices"
	"testing"
)

func TestSpanOf(t *testing.T) {
	spans := []span{{name: "CALLS", base: 0}, {name: "CALLS-0of2", base: 1000}, {name: "CALLS-0of4", base: 1500}}
	for _, c := range []struct {
		pos  uint64
		want int
	}{
		{0, 0}, {1, 0}, {1000, 0}, // the first span holds 1..1000
		{1001, 1}, {1500, 1},
		{1501, 2}, {1 << 40, 2},
	} {
		if got := spanOf(spans, c.pos); got != c.want {
			t.Errorf("spanOf(%d) = %d, want %d", c.pos, got, c.want)
		}
	}
	if got := spanOf(spans[:1], 5); got != 0 {
		t.Errorf("one span: %d", got)
	}
}

func TestNeededSpans(t *testing.T) {
	priors := []span{{name: "CALLS", base: 0}, {name: "CALLS-0of2", base: 1000}}
	const cur = 1500 // the shard's positions start past 1500
	names := func(s []span) []string {
		var out []string
		for _, x := range s {
			out = append(out, x.name)
		}
		return out
	}
	for _, c := range []struct {
		name   string
		firsts []uint64
		want   []string
	}{
		{"no calls", nil, nil},
		{"calls begun in the shard", []uint64{1501, 2000}, nil},
		{"a call begun in the first", []uint64{2000, 999}, []string{"CALLS", "CALLS-0of2"}},
		{"a call begun in the second", []uint64{1200, 1600}, []string{"CALLS-0of2"}},
		{"at the second's last position", []uint64{1500}, []string{"CALLS-0of2"}},
	} {
		if got := names(neededSpans(priors, cur, c.firsts)); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
