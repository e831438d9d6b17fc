package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// ErrNothingConnected means not one socket was accepted: the receiver is
// down, refuses the upgrade, or the URL is wrong.
var ErrNothingConnected = errors.New("no socket was accepted")

// runner holds one simulation's state.
type runner struct {
	cfg        Config
	tls        *tls.Config // nil: the system's roots
	calls      []*call
	framesSent atomic.Uint64
	callsUp    atomic.Int32
	errMu      sync.Mutex
	errs       []string
	errCount   int
}

func (r *runner) fail(err error) {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	r.errCount++
	if len(r.errs) < 10 {
		r.errs = append(r.errs, err.Error())
	}
}

// Run simulates cfg's calls against the receiver. With cfg.Verify, js must
// reach the NATS the receiver publishes to, and sc name its stream; the
// summary then says what was stored. Progress, when not nil, gets a live line
// twice a second. The error is for a simulation that could not run at all;
// a run with failures returns a Summary whose OK is false.
func Run(ctx context.Context, cfg Config, js jetstream.JetStream, sc broker.StreamRef, progress io.Writer) (*Summary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CallPrefix == "" {
		cfg.CallPrefix = "sim-" + randomHex(4)
	}
	r := &runner{cfg: cfg}
	if err := r.build(); err != nil {
		return nil, err
	}
	var v *verifier
	if cfg.Verify {
		if js == nil {
			return nil, errors.New("verification needs a NATS connection")
		}
		var err error
		if v, err = startVerifier(ctx, js, sc, cfg.CallPrefix); err != nil {
			return nil, err
		}
		defer v.stop()
	}

	stopProgress := r.progress(progress, v)
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range r.calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if cfg.Ramp > 0 {
				select {
				case <-time.After(time.Duration(i) * cfg.Ramp / time.Duration(len(r.calls))):
				case <-ctx.Done():
					return
				}
			}
			r.runCall(ctx, c)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()

	sum := r.summary(elapsed)
	if sum.Sockets == 0 {
		if len(r.errs) > 0 {
			return sum, fmt.Errorf("%w: %s", ErrNothingConnected, r.errs[0])
		}
		return sum, ErrNothingConnected
	}
	if v != nil {
		sum.Verify = v.finish(r, sum.Sockets, cfg.Settle)
	}
	sum.OK = sum.CallsFailed == 0 && sum.Errors == 0 && (sum.Verify == nil || sum.Verify.OK)
	return sum, nil
}

// build prepares every call: ids, participants, their sources and schedules.
func (r *runner) build() error {
	cfg := r.cfg
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca %s: no PEM certificate in it", cfg.CAFile)
		}
		r.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	size := cfg.Rate / 50 * 2
	var wavs []*wavAudio
	for _, path := range cfg.WAV {
		w, err := readWAV(path, cfg.Rate)
		if err != nil {
			return err
		}
		wavs = append(wavs, w)
	}
	for i := 0; i < cfg.Calls; i++ {
		c := &call{id: fmt.Sprintf("%s-%d", cfg.CallPrefix, i), correlation: randomHex(16), index: i}
		length := cfg.Duration
		if length == 0 {
			length = time.Hour // WAV played once: the schedule only feeds transcripts
		}
		c.spurts = schedule(cfg.Participants, length, cfg.Seed+uint64(i))
		switch {
		case len(wavs) > 0 && cfg.Mixed:
			c.streams = []*stream{{wav: wavs[i%len(wavs)]}}
		case len(wavs) > 0:
			for p := 0; p < cfg.Participants; p++ {
				c.streams = append(c.streams, &stream{participant: participantID(i, p), wav: wavs[(i*cfg.Participants+p)%len(wavs)]})
			}
		case cfg.Mixed:
			c.streams = []*stream{{}}
			for p := 0; p < cfg.Participants; p++ {
				c.mixVoices = append(c.mixVoices, newVoice(p, cfg.Rate, c.spurts[p]))
			}
		default:
			for p := 0; p < cfg.Participants; p++ {
				c.streams = append(c.streams, &stream{participant: participantID(i, p), voice: newVoice(p, cfg.Rate, c.spurts[p])})
			}
		}
		c.frames = int(cfg.Duration / speech.SlotDur)
		if cfg.Duration == 0 {
			for _, s := range c.streams {
				c.frames = max(c.frames, s.wav.frames(size))
			}
		}
		r.calls = append(r.calls, c)
	}
	return nil
}

func (r *runner) runCall(ctx context.Context, c *call) {
	var wg sync.WaitGroup
	if r.cfg.Transcripts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.transcription(ctx, c); err != nil {
				r.fail(err)
			}
		}()
	}
	r.callsUp.Add(1)
	if err := r.media(ctx, c); err != nil {
		r.fail(err)
	}
	r.callsUp.Add(-1)
	wg.Wait()
}

// progress prints a live line to w until the returned func is called.
func (r *runner) progress(w io.Writer, v *verifier) func() {
	if w == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		last, lastAt := uint64(0), time.Now()
		for {
			select {
			case <-done:
				fmt.Fprintln(w)
				return
			case now := <-tick.C:
				sent := r.framesSent.Load()
				rate := float64(sent-last) / now.Sub(lastAt).Seconds()
				last, lastAt = sent, now
				r.errMu.Lock()
				errs := r.errCount
				r.errMu.Unlock()
				line := fmt.Sprintf("\rcalls up %d/%d  frames/s %.0f  sent %d  errors %d", r.callsUp.Load(), len(r.calls), rate, sent, errs)
				if v != nil {
					line += fmt.Sprintf("  stored %d", v.storedFrames())
				}
				fmt.Fprint(w, line+"   ")
			}
		}
	}()
	return func() { close(done); <-finished }
}
