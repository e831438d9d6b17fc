package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
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
