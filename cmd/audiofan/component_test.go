package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/console"
)

// framesSettings are the test role's own settings.
type framesSettings struct {
	Min int `env:"AUDIOFAN_FRAMES_MIN" envDefault:"1" help:"calls with fewer audio frames are not counted"`
}

func (s *framesSettings) Validate() error {
	if s.Min < 1 {
		return errors.New("AUDIOFAN_FRAMES_MIN must be at least 1")
	}
	return nil
}

// framesRole counts each finished call's audio frames.
type framesRole struct {
	mu    sync.Mutex
	calls map[string]int // call id: frames, at its end
	// started is the settings Start was given.
	started *framesSettings
}

func (f *framesRole) component() subscribers.Component {
	return subscribers.Component{
		Role:     "frames",
		Command:  "frames",
		Summary:  "count each call's frames",
		Settings: func() subscribers.Settings { return &framesSettings{} },
		Start: func(_ context.Context, s subscribers.Settings, _ subscribers.Env) (subscribers.Role, func(), error) {
			f.mu.Lock()
			f.started = s.(*framesSettings)
			f.mu.Unlock()
			return subscribers.Role{Name: "frames", Kinds: []broker.Kind{broker.KindAudio},
				NewCall: func(_ context.Context, c subscribers.CallInfo) (subscribers.CallHandler, error) {
					return &framesCall{f: f, call: c.ID}, nil
				}}, func() {}, nil
		},
		Publishes: func(_ subscribers.Settings, _ broker.Published) []string { return []string{"$KV.frames.>"} },
	}
}

func (f *framesRole) count(call string) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.calls[call]
	return n, ok
}

type framesCall struct {
	f    *framesRole
	call string
	n    int
}

func (c *framesCall) Handle(_ context.Context, d subscribers.Delivery, _ *subscribers.Output) error {
	if d.Info.Kind == broker.KindAudio {
		c.n++
	}
	return nil
}

func (c *framesCall) End(context.Context, subscribers.EndReason, *subscribers.Output) error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	if c.n >= c.f.started.Min {
		c.f.calls[c.call] = c.n
	}
	return nil
}

func (c *framesCall) Close() error { return nil }

// A role is a Component and a line in components: with that alone it has a
// command, a part in serve (settings, validation, a Group on the bus), a
// NATS user whose consumers the others may not touch, and a place in the
// console's health view.
func TestAddingARole(t *testing.T) {
	f := &framesRole{calls: map[string]int{}}
	saved := components
	components = append(slices.Clone(components), f.component())
	t.Cleanup(func() { components = saved })

	help := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
		return out.String()
	}
	if h := help("--help"); !strings.Contains(h, "  frames ") {
		t.Errorf("audiofan --help lacks the command:\n%s", h)
	}
	for _, cmd := range []string{"frames", "serve"} {
		if h := help(cmd, "--help"); !strings.Contains(h, "AUDIOFAN_FRAMES_MIN") || !strings.Contains(h, "AUDIOFAN_LEASE") {
			t.Errorf("%s --help lacks the role's or the Group's settings:\n%s", cmd, h)
		}
	}

	// Its settings are validated by both commands before anything starts.
	t.Setenv("AUDIOFAN_FRAMES_MIN", "0")
	for _, cmd := range []string{"frames", "serve"} {
		var out, errb bytes.Buffer
		if code := run([]string{cmd}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "AUDIOFAN_FRAMES_MIN") {
			t.Errorf("%s with a bad role setting: exit %d: %s", cmd, code, errb.String())
		}
	}
	t.Setenv("AUDIOFAN_FRAMES_MIN", "3")

	// Its NATS user, confined to its own consumers, and kept out of the
	// others'.
	acc := help("nats-accounts")
	if !strings.Contains(acc, "user: frames,") || !strings.Contains(acc, `"$KV.frames.>"`) ||
		strings.Count(acc, `"$JS.API.CONSUMER.*.*.frames-p0"`) != len(saved)+1 {
		t.Errorf("nats-accounts does not confine the role:\n%s", acc)
	}

	// serve runs it on the bus with the others.
	httpAddr, natsAddr := freePort(t), freePort(t)
	t.Setenv("AUDIOFAN_HTTP_ADDR", httpAddr)
	t.Setenv("AUDIOFAN_NATS_LISTEN", natsAddr)
	t.Setenv("AUDIOFAN_DATA_DIR", t.TempDir())
	t.Setenv("AUDIOFAN_DRAIN_TIMEOUT", "5s")
	var serveErr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"serve"}, &syncBuffer{}, &serveErr) }()
	waitHTTP(t, "serve", "http://"+httpAddr+"/readyz", 30*time.Second, func() bool { return len(done) > 0 })

	var simOut, simErr bytes.Buffer
	if code := run([]string{"sim", "--url", "ws://" + httpAddr + "/ws", "--calls", "1", "--participants", "2",
		"--duration", "1s", "--realtime=false", "--call-prefix", "8:acs:frames+"}, &simOut, &simErr); code != 0 {
		t.Fatalf("sim exit %d: %s\n%s", code, simErr.String(), simOut.String())
	}
	conformance.WaitFor(t, "the role counts the call", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.calls) == 1
	})
	for call, n := range f.calls {
		if n != 100 || !strings.HasPrefix(call, "8:acs:frames+") {
			t.Errorf("the role counted %d frames of %q, want 100", n, call)
		}
	}
	if f.started.Min != 3 {
		t.Errorf("the role was started with %+v", f.started)
	}

	conformance.WaitFor(t, "the console shows the role", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/api/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var h console.Health
		if json.NewDecoder(resp.Body).Decode(&h) != nil {
			return false
		}
		return slices.ContainsFunc(h.Roles, func(r console.RoleHealth) bool { return r.Role == "frames" && r.Partitions > 0 })
	})

	stopServe(t, done, &serveErr)
}
