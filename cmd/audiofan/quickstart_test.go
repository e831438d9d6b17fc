package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// quickStart is the README's quick start: the commands of each sh block
// marked <!-- quickstart -->, in order.
func quickStart(t *testing.T) [][]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var cmds [][]string
	for _, m := range regexp.MustCompile("(?s)<!-- quickstart[^>]*-->\n```sh\n(.*?)```").FindAllStringSubmatch(string(raw), -1) {
		for _, l := range strings.Split(strings.TrimSpace(m[1]), "\n") {
			cmds = append(cmds, strings.Fields(l))
		}
	}
	if len(cmds) != 3 {
		t.Fatalf("the README's quick start has %d commands, the test knows 3: %q", len(cmds), cmds)
	}
	return cmds
}

// A new user's first minutes, as the README's quick start writes them: `make
// run`, then `sim` streaming two calls, `tap` on one of them, the console,
// and the recordings. Each command runs as written (`make run` is `audiofan
// serve`, `go run ./cmd/audiofan` the binary built once), on the default
// ports, from a fresh folder.
func TestQuickStart(t *testing.T) {
	cmds := quickStart(t)
	if !slices.Equal(cmds[0], []string{"make", "run"}) {
		t.Fatalf("the quick start starts with %q, not make run", cmds[0])
	}
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.1:4222"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the quick start uses %s, which is taken (a `make run` left running?): %v", addr, err)
		}
		l.Close()
	}
	t.Parallel()
	bin, _ := buildBinaries(t)
	dir := t.TempDir()
	args := func(c []string) []string {
		if len(c) < 3 || c[0] != "go" || c[1] != "run" || c[2] != "./cmd/audiofan" {
			t.Fatalf("a quick start command the test cannot run: %q", c)
		}
		return c[3:]
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var serveOut bytes.Buffer
	serve := exec.CommandContext(ctx, bin, "serve")
	serve.Dir, serve.Env = dir, cleanEnv()
	serve.Stdout, serve.Stderr = &serveOut, &serveOut
	serve.Cancel = func() error { return serve.Process.Signal(os.Interrupt) }
	serve.WaitDelay = 30 * time.Second
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = serve.Wait()
		if t.Failed() {
			t.Logf("serve:\n%s", tail(serveOut.String(), 40))
		}
	}()
	waitHTTP(t, "serve", "http://127.0.0.1:8080/readyz", 60*time.Second, nil)

	var simOut syncBuffer // read on a timeout while sim still runs
	sim := exec.Command(bin, args(cmds[1])...)
	sim.Dir, sim.Env, sim.Stdout, sim.Stderr = dir, cleanEnv(), &simOut, &simOut
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	simDone := make(chan error, 1)
	go func() { simDone <- sim.Wait() }()

	// tap, as in a third terminal once the calls are under way.
	time.Sleep(2 * time.Second)
	tapCtx, tapCancel := context.WithTimeout(ctx, 30*time.Second)
	defer tapCancel()
	tap := exec.CommandContext(tapCtx, bin, args(cmds[2])...)
	tap.Dir, tap.Env = dir, cleanEnv()
	out, err := tap.Output()
	if err != nil {
		t.Fatalf("tap: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	audio := 0
	for _, l := range lines {
		var m struct {
			Subject string         `json:"subject"`
			Payload map[string]any `json:"payload"`
		}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("tap printed %q: %v", l, err)
		}
		if !strings.Contains(m.Subject, ".demo-1.") {
			t.Errorf("tap --call demo-1 printed %s", m.Subject)
		}
		if strings.Contains(m.Subject, ".audio.") {
			audio++
		}
	}
	if len(lines) != 20 || audio == 0 {
		t.Errorf("tap printed %d lines, %d of them audio:\n%s", len(lines), audio, out)
	}
	t.Logf("tap's first line: %s", lines[0])

	// The console, meanwhile.
	resp, err := http.Get("http://127.0.0.1:8080/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(page, []byte("<html")) {
		t.Errorf("the console: %s, %.80q", resp.Status, page)
	}

	select {
	case err := <-simDone:
		if err != nil {
			t.Fatalf("sim --verify: %v\n%s", err, tail(simOut.String(), 20))
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("sim did not finish:\n%s", tail(simOut.String(), 20))
	}
	t.Logf("sim:\n%s", tail(simOut.String(), 8))

	// The recordings, once the calls have ended.
	rec := filepath.Join(dir, "data", "recordings", "demo-1")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		wavs, _ := filepath.Glob(filepath.Join(rec, "*.wav"))
		if _, err := os.Stat(filepath.Join(rec, "mix.wav")); err == nil && len(wavs) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recordings of demo-1 in %s a minute after the calls: %v", rec, wavs)
		}
	}
}

// cleanEnv is this process's environment without the settings a developer's
// shell might carry, so the quick start runs on its defaults.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AUDIOFAN_") && !strings.HasPrefix(kv, "NATS_") {
			env = append(env, kv)
		}
	}
	return env
}

func tail(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
