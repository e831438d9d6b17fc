package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestConsoleInBrowser drives the console in headless Chromium (AUDIOFAN_BROWSER:
// its path; `make test-browser`, part of `make test`, installs Debian's
// chromium and sets it): serve, two calls from sim (ids with ':' and '_',
// participants "8:acs:…" and "4:+1…"), the list, a call's page with moving
// meters and transcript lines, listening in until samples reach the Web
// Audio graph, then to one participant, then the finished call's recording
// played back.
// Screenshots go to the test's artifact folder (go test -artifacts).
func TestConsoleInBrowser(t *testing.T) {
	browser := os.Getenv("AUDIOFAN_BROWSER")
	if browser == "" {
		t.Skip("set AUDIOFAN_BROWSER to a Chromium binary (make test-browser)")
	}
	if _, err := exec.LookPath(browser); err != nil {
		t.Fatalf("AUDIOFAN_BROWSER=%s: %v", browser, err)
	}
	httpAddr, natsAddr := freePort(t), freePort(t)
	t.Setenv("AUDIOFAN_HTTP_ADDR", httpAddr)
	t.Setenv("AUDIOFAN_NATS_LISTEN", natsAddr)
	t.Setenv("AUDIOFAN_DATA_DIR", t.TempDir())
	t.Setenv("AUDIOFAN_DRAIN_TIMEOUT", "5s")
	t.Setenv("AUDIOFAN_ANALYTICS_INTERVAL", "1s")
	var serveOut, serveErr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"serve"}, &serveOut, &serveErr) }()
	defer func() {
		_ = syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
		if t.Failed() {
			t.Logf("serve log:\n%s", serveErr.String())
		}
	}()
	waitHTTP(t, "serve", "http://"+httpAddr+"/readyz", 30*time.Second, func() bool { return len(done) > 0 })

	// Two calls of two speakers with transcripts, in real time: long enough
	// for every live step below on a loaded machine (12 s calls ended
	// before the last one, listening to one participant, in a make test).
	simDone := make(chan int, 1)
	var simOut, simErr syncBuffer
	go func() {
		simDone <- run([]string{"sim", "--url", "ws://" + httpAddr + "/ws", "--calls", "2", "--participants", "2",
			"--duration", "25s", "--transcription", "--call-prefix", "browser:call_x"}, &simOut, &simErr)
	}()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("autoplay-policy", "no-user-gesture-required"), chromedp.WindowSize(1280, 1000),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()

	shot := func(name string) {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Errorf("screenshot %s: %v", name, err)
			return
		}
		path := filepath.Join(t.ArtifactDir(), name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Error(err)
		}
		t.Logf("screenshot %s", path)
	}
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			shot("failed.png")
			t.Fatalf("%s: %v", what, err)
		}
	}
	step := func(what string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		_, err := chromedp.Run(ctx, a)
		check(what, err)
	}
	poll := func(what, js string) {
		t.Helper()
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(45*time.Second)))
		check(what, err)
	}
	eval := func(what, js string) float64 {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[float64](js, chromedp.EvalAwaitPromise))
		check(what, err)
		return v
	}

	step("open the console", chromedp.Navigate("http://"+httpAddr+"/"))
	poll("both calls listed live", `audiofan.calls.filter(c => c.live && c.id.startsWith("browser:call_x-")).length === 2`)
	poll("their participants listed", `audiofan.calls.filter(c => c.participants.length === 2).length === 2`)
	poll("their frames counted", `[...document.querySelectorAll("#calls td.fps")].filter(td => +td.textContent > 0).length === 2`)

	step("open the first call", chromedp.Click(chromedp.CSS(`#calls tbody tr.call`)))
	poll("the call's participants shown", `document.querySelectorAll("#parts tbody tr").length === 2`)
	// Meters move: a participant's level takes several values over time.
	levels := eval("meters move", `new Promise(res => {
		const seen = new Set();
		const iv = setInterval(() => document.querySelectorAll(".meter").forEach(m => seen.add(m.dataset.level)), 100);
		setTimeout(() => { clearInterval(iv); res(seen.size); }, 3000);
	})`)
	if levels < 4 {
		t.Errorf("the meters showed %.0f distinct levels in 3 s: not moving", levels)
	}
	poll("transcript lines", `document.querySelectorAll("#transcript li").length > 0`)
	poll("speech on the timeline", `audiofan.call.segs.length > 0 || audiofan.call.parts.some(p => p.talking)`)

	step("listen in", chromedp.Click(chromedp.CSS(`#listen-all`)))
	poll("audio samples reach the Web Audio graph", `audiofan.listen.samples >= 16000 && audiofan.listen.rms > 0.001`)
	shot("console-call-live.png")
	step("switch to one participant", chromedp.Click(chromedp.CSS(`#parts tbody tr .listen-one`)))
	poll("listening to one participant", `audiofan.listen.running && document.querySelector("#listen-state").textContent.includes("listening to")`)
	// Real participant ids hold ':' and '+': the button must address the
	// participant by its token, or it hears nothing.
	before := eval("frames so far", `audiofan.listen.frames`)
	poll("one participant's frames arrive", fmt.Sprintf(`audiofan.listen.frames >= %.0f + 50`, before))
	step("stop listening", chromedp.Click(chromedp.CSS(`#listen-stop`)))
	poll("stopped", `!audiofan.listen.running`)

	select {
	case code := <-simDone:
		if code != 0 {
			t.Fatalf("sim exited %d: %s", code, simErr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("sim did not finish")
	}
	poll("the call ended", `audiofan.call.call && !audiofan.call.call.live && !audiofan.call.parts.some(p => p.talking)`)
	first, err := chromedp.Run(ctx, chromedp.Evaluate[string](`audiofan.call.tok`))
	check("the call's token", err)

	// Back to the list, and into the other call, finished before it was
	// opened: the page reads it from the stream.
	step("back to the list", chromedp.Click(chromedp.CSS(`header a.brand`)))
	poll("both calls ended", `audiofan.calls.filter(c => !c.live && c.id.startsWith("browser:call_x-")).length === 2`)
	shot("console-calls.png")
	step("open the other call", chromedp.Click(chromedp.CSS(`#calls tbody tr.call:not([data-token="`+first+`"])`)))
	poll("its timeline read back", `audiofan.call && audiofan.call.tok !== "`+first+`" && audiofan.call.segs.length > 0`)
	poll("its recordings listed", `document.querySelectorAll("#recordings audio").length === 3`)
	poll("its analytics summary", `document.querySelectorAll("#summary table.summary tbody tr").length === 2`)
	dur := eval("play the whole call's recording", `(async () => {
		const a = [...document.querySelectorAll("#recordings li")].find(li => li.textContent.includes("whole call")).querySelector("audio");
		await a.play();
		await new Promise(r => setTimeout(r, 1500));
		a.pause();
		return a.currentTime > 0.5 ? a.duration : -a.currentTime;
	})()`)
	if dur < 24 || dur > 26.5 {
		t.Errorf("the recording played for %.2f s of %.2f s (negative: did not advance); want a 25 s call", dur, dur)
	}
	shot("console-call-finished.png")
	if n := eval("policy violations", `audiofan.csp`); n != 0 {
		t.Errorf("%v Content-Security-Policy violations on the page", n)
	}

	// The recording is also there to download.
	href, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#recordings a"), "href"))
	check("download link", err)
	resp, err := http.Get("http://" + httpAddr + "/" + href.Value)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Disposition") == "" {
		t.Fatalf("download: %s, Content-Disposition %q", resp.Status, resp.Header.Get("Content-Disposition"))
	}

	step("open a call that is not there", chromedp.Navigate("http://"+httpAddr+"/#/call/no-such-call"))
	poll("told so", `document.querySelector("#call-title").textContent === "No such call"`)
}
