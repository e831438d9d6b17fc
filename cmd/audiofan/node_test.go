package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// examples/node/tap.mjs reads a call from the bus of a running serve, fed
// by sim: one line per audio frame, every frame of the call, and it exits
// by itself once the call's sockets have ended. make test installs the node
// examples' packages and sets AUDIOFAN_NODE_EXAMPLES.
func TestNodeTap(t *testing.T) {
	dir := os.Getenv("AUDIOFAN_NODE_EXAMPLES")
	if dir == "" {
		t.Skip("AUDIOFAN_NODE_EXAMPLES is not set: make test installs examples/node (make node-examples) and sets it")
	}
	t.Parallel()
	bin, _ := buildBinaries(t)
	httpAddr, natsAddr := freePort(t), freePort(t)
	env := append(cleanEnv(), "AUDIOFAN_HTTP_ADDR="+httpAddr, "AUDIOFAN_NATS_LISTEN="+natsAddr, "AUDIOFAN_DATA_DIR="+t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var serveOut bytes.Buffer
	serve := exec.CommandContext(ctx, bin, "serve")
	serve.Env, serve.Stdout, serve.Stderr = env, &serveOut, &serveOut
	serve.Cancel = func() error { return serve.Process.Signal(os.Interrupt) }
	serve.WaitDelay = 30 * time.Second
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = serve.Wait()
		if t.Failed() {
			t.Logf("serve:\n%s", tail(serveOut.String(), 30))
		}
	}()
	waitHTTP(t, "serve", "http://"+httpAddr+"/readyz", 60*time.Second, nil)
	const call = "4:+14255550123-0" // sim's first call of the prefix: an id with ':' and '+'
	sim := exec.Command(bin, "sim", "--url", "ws://"+httpAddr+"/ws", "--call-prefix", "4:+14255550123", "--calls", "1", "--participants", "2", "--duration", "3s", "--transcription")
	sim.Env = env
	if out, err := sim.CombinedOutput(); err != nil {
		t.Fatalf("sim: %v\n%s", err, out)
	}
	tctx, tcancel := context.WithTimeout(ctx, time.Minute)
	defer tcancel()
	tap := exec.CommandContext(tctx, "node", filepath.Join(dir, "tap.mjs"), call)
	tap.Env = append(cleanEnv(), "NATS_URL=nats://"+natsAddr)
	var stderr bytes.Buffer
	tap.Stderr = &stderr
	out, err := tap.Output()
	if err != nil {
		t.Fatalf("tap.mjs (it should exit by itself when the call ends): %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	parts := map[string]int{}
	for _, l := range lines {
		var f struct {
			Participant, Timestamp string
			Bytes                  int
		}
		if err := json.Unmarshal([]byte(l), &f); err != nil || f.Bytes != 640 || f.Timestamp == "" {
			t.Fatalf("tap.mjs printed %q (%v)", l, err)
		}
		parts[f.Participant]++
	}
	if len(parts) != 2 || len(lines) != 2*150 {
		t.Errorf("tap.mjs printed %d frames of %v, want 150 of each of 2 participants", len(lines), parts)
	}
}

// examples/node/member.mjs runs as two replicas of one scaled role of its
// own, sharing the partitions as the contract says: each call is handled
// by exactly one replica, each replica takes its share, and when one is
// killed the other takes its partitions over once their pins lapse.
func TestNodeMembers(t *testing.T) {
	dir := os.Getenv("AUDIOFAN_NODE_EXAMPLES")
	if dir == "" {
		t.Skip("AUDIOFAN_NODE_EXAMPLES is not set: make test installs examples/node (make node-examples) and sets it")
	}
	t.Parallel()
	bin, _ := buildBinaries(t)
	httpAddr, natsAddr := freePort(t), freePort(t)
	env := append(cleanEnv(), "AUDIOFAN_HTTP_ADDR="+httpAddr, "AUDIOFAN_NATS_LISTEN="+natsAddr, "AUDIOFAN_DATA_DIR="+t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	serve := exec.CommandContext(ctx, bin, "serve")
	serve.Env = env
	serve.Cancel = func() error { return serve.Process.Signal(os.Interrupt) }
	serve.WaitDelay = 30 * time.Second
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = serve.Wait() }()
	waitHTTP(t, "serve", "http://"+httpAddr+"/readyz", 60*time.Second, nil)

	type member struct {
		cmd      *exec.Cmd
		out, err *syncBuffer
	}
	start := func(i int) member {
		m := member{cmd: exec.CommandContext(ctx, "node", filepath.Join(dir, "member.mjs"), "talktime"), out: &syncBuffer{}, err: &syncBuffer{}}
		m.cmd.Env = append(cleanEnv(), "NATS_URL=nats://"+natsAddr, "MEMBERS=2", "MEMBER_INDEX="+strconv.Itoa(i), "MEMBER=m"+strconv.Itoa(i), "STANDBY_MS=1000")
		m.cmd.Stdout, m.cmd.Stderr = m.out, m.err
		if err := m.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	ms := []member{start(0), start(1)}
	defer func() {
		for _, m := range ms {
			_ = m.cmd.Process.Kill()
			_ = m.cmd.Wait()
			if t.Failed() {
				t.Logf("member stderr:\n%s", tail(m.err.String(), 10))
			}
		}
	}()
	for _, m := range ms {
		waitFor(t, "the members joined", func() bool { return strings.Contains(m.err.String(), `"joining"`) })
	}
	time.Sleep(2 * time.Second) // every partition pulled, the standbys too
	// handled reads the members' lines: who handled each call.
	handled := func(prefix string) map[string][]string {
		by := map[string][]string{}
		for _, m := range ms {
			for _, l := range strings.Split(strings.TrimSpace(m.out.String()), "\n") {
				var r struct {
					Member, Call string
					Frames       map[string]int
					Partial      bool
				}
				if l == "" || json.Unmarshal([]byte(l), &r) != nil || !strings.HasPrefix(r.Call, prefix) {
					continue
				}
				if r.Partial || len(r.Frames) != 2 {
					t.Errorf("a call partial or without its two participants: %s", l)
				}
				for _, n := range r.Frames {
					if n != 100 {
						t.Errorf("a call's participant with %d frames, want 100: %s", n, l)
					}
				}
				by[r.Call] = append(by[r.Call], r.Member)
			}
		}
		return by
	}
	sim := func(prefix string) {
		cmd := exec.Command(bin, "sim", "--url", "ws://"+httpAddr+"/ws", "--call-prefix", prefix, "--calls", "8", "--duration", "2s")
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sim: %v\n%s", err, out)
		}
	}
	sim("8:acs:both")
	var by map[string][]string
	waitFor(t, "every call handled", func() bool { by = handled("8:acs:both"); return len(by) == 8 })
	count := map[string]int{}
	for call, who := range by {
		if len(who) != 1 {
			t.Errorf("%s handled by %v", call, who)
		}
		count[who[0]]++
	}
	if count["m0"] == 0 || count["m1"] == 0 {
		t.Errorf("the calls by member: %v: a replica took no share", count)
	}
	// m1 is killed: its partitions' pins lapse (5 s) and m0, pulling them
	// as a standby, is given them.
	_ = ms[1].cmd.Process.Kill()
	time.Sleep(6 * time.Second)
	sim("8:acs:after")
	waitFor(t, "every call handled after the kill", func() bool { by = handled("8:acs:after"); return len(by) == 8 })
	for call, who := range by {
		if len(who) != 1 || who[0] != "m0" {
			t.Errorf("after m1's death, %s handled by %v", call, who)
		}
	}
	t.Logf("calls by member: %v, then all 8 by m0", count)
}

// waitFor polls ok for up to a minute.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !ok(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
