package recording

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// RoleName is the recorder's role: its consumers, metrics and event source.
const RoleName = codec.SourceRecording

// Config is the recorder's settings.
type Config struct {
	Store          string        `env:"AUDIOFAN_RECORDING_STORE" envDefault:"disk" help:"where finished recordings go: disk (AUDIOFAN_DATA_DIR/recordings/<call token>/), object (the JetStream Object Store bucket AUDIOFAN_RECORDING_BUCKET, as <call token>/<file>), both, or a blob store URL: azblob://<container> (credentials from AZURE_STORAGE_CONNECTION_STRING, an account and key or SAS, or a managed identity) or s3://<bucket> (the AWS default chain), ?prefix= for a folder; blobs are <prefix>/<date>/<call token>/<file>"`
	Bucket         string        `env:"AUDIOFAN_RECORDING_BUCKET" envDefault:"recordings" help:"Object Store bucket of the recordings (created when missing)"`
	BucketReplicas int           `env:"AUDIOFAN_RECORDING_BUCKET_REPLICAS" envDefault:"1" help:"replicas of the bucket when it is created (3 on a cluster)"`
	MaxDuration    time.Duration `env:"AUDIOFAN_RECORDING_MAX_DURATION" envDefault:"4h" help:"longest recording: audio later than this after a call's first frame is left out (counted); 0 = no bound"`
}

// onDisk says whether finished recordings stay under AUDIOFAN_DATA_DIR.
func (c Config) onDisk() bool { return c.Store == "disk" || c.Store == "both" }

// inObjectStore says whether finished recordings go to the JetStream
// Object Store.
func (c Config) inObjectStore() bool { return c.Store == "object" || c.Store == "both" }

// Validate checks the settings.
func (c Config) Validate() error {
	switch {
	case c.Store == "disk", c.Store == "object", c.Store == "both", isBlobURL(c.Store):
	case strings.Contains(c.Store, "://"):
		scheme, _, _ := strings.Cut(c.Store, "://")
		return fmt.Errorf("AUDIOFAN_RECORDING_STORE: a %s:// store is not supported: want azblob:// or s3://", scheme)
	default:
		return fmt.Errorf("AUDIOFAN_RECORDING_STORE %q: want disk, object, both, azblob://<container> or s3://<bucket>", c.Store)
	}
	if c.MaxDuration < 0 {
		return errors.New("AUDIOFAN_RECORDING_MAX_DURATION must not be negative")
	}
	if c.inObjectStore() && c.Bucket == "" {
		return errors.New("AUDIOFAN_RECORDING_BUCKET is empty")
	}
	return nil
}

// Recorder is the recording role: every call's audio into WAV files.
type Recorder struct {
	cfg   Config
	dir   string // recordings
	spool string // where calls in progress are spooled, per process
	store jetstream.ObjectStore
	// blob is the blob store (a blob URL's), or nil; blobErr why it could
	// not even be opened (the recorder then stays unready: calls wait on
	// the bus).
	blob       *blobStore
	blobErr    error
	blobFailed chan struct{} // an upload failed: probe the store again
	stopWatch  func()        // stops the store's probes
	version    string
	log        *slog.Logger

	mu      sync.Mutex
	pending map[codec.Token]time.Time // calls whose upload is not yet done, since their first attempt

	recordings *prometheus.CounterVec
	bytes      prometheus.Counter
	cut        prometheus.Counter
	uploadErrs prometheus.Counter
}

// New prepares the recorder: recordings go under dataDir/recordings. Calls
// being spooled live in a folder of this process's own under
// recordings/.spool; those of a process gone for an hour are removed.
func New(ctx context.Context, cfg Config, dataDir string, js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger) (*Recorder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Recorder{cfg: cfg, dir: filepath.Join(dataDir, "recordings"), log: log.With("role", RoleName),
		pending: map[codec.Token]time.Time{}, blobFailed: make(chan struct{}, 1),
		uploadErrs: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_recorder_upload_failures_total",
			Help: "Uploads of a recording to the blob store that failed (each is tried again; the call waits on the bus)."}),
		recordings: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_recorder_recordings_total",
			Help: "Calls recorded, by result: written, or empty (no audio)."}, []string{"result"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_recorder_written_bytes_total",
			Help: "Bytes of WAV files written (each store counted)."}),
		cut: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_recorder_frames_cut_total",
			Help: "Frames left out of recordings: later than AUDIOFAN_RECORDING_MAX_DURATION after the call's first."}),
	}
	pendingCalls := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "audiofan_recorder_uploads_pending",
		Help: "Calls whose recording is rendered or being rendered and not yet confirmed by the store."}, func() float64 {
		r.mu.Lock()
		defer r.mu.Unlock()
		return float64(len(r.pending))
	})
	oldest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "audiofan_recorder_upload_oldest_seconds",
		Help: "How long the oldest pending upload has waited since its first attempt (0: none pending): past the bus's retention its call can no longer be rebuilt whole."}, func() float64 {
		r.mu.Lock()
		defer r.mu.Unlock()
		var first time.Time
		for _, t := range r.pending {
			if first.IsZero() || t.Before(first) {
				first = t
			}
		}
		if first.IsZero() {
			return 0
		}
		return time.Since(first).Seconds()
	})
	for _, c := range []prometheus.Collector{r.recordings, r.bytes, r.cut, r.uploadErrs, pendingCalls, oldest} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("recorder metrics: %w", err)
		}
	}
	r.recordings.WithLabelValues("written")
	r.recordings.WithLabelValues("empty")
	root := filepath.Join(r.dir, ".spool")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("recordings folder: %w", err)
	}
	cleanSpools(root, time.Hour, log)
	spool, err := os.MkdirTemp(root, "proc-*")
	if err != nil {
		return nil, fmt.Errorf("recordings folder: %w", err)
	}
	r.spool = spool
	spoolBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "audiofan_recorder_spool_bytes",
		Help: "Bytes in this replica's spool: the calls in progress, and the recordings rendered and not yet confirmed by the store (what a store that stays down makes grow)."},
		func() float64 { return float64(dirBytes(spool)) })
	if err := reg.Register(spoolBytes); err != nil {
		_ = os.RemoveAll(spool)
		return nil, fmt.Errorf("recorder metrics: %w", err)
	}
	if isBlobURL(cfg.Store) {
		if r.blob, err = openBlobStore(ctx, cfg.Store); err != nil {
			// Unready, not a crash loop: the calls wait on the bus, and
			// the error says what to fix.
			r.blobErr = err
			r.log.Error("recordings cannot be stored: the recorder stays unready until this is fixed and it restarts", "err", err)
		} else {
			wctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			r.stopWatch = func() { cancel(); <-done }
			go func() { defer close(done); r.blob.watch(wctx, r.blobFailed) }()
		}
		return r, nil
	}
	if cfg.inObjectStore() {
		err = broker.Provision(ctx, log, "bucket "+cfg.Bucket, func(ctx context.Context) (err error) {
			r.store, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: cfg.Bucket,
				Description: "audiofan call recordings", Replicas: cfg.BucketReplicas})
			return err
		})
		if err != nil {
			_ = os.RemoveAll(spool)
			return nil, fmt.Errorf("recordings bucket %s: %w", cfg.Bucket, err)
		}
	}
	return r, nil
}

// Close removes this process's spool folder and closes the blob store.
func (r *Recorder) Close() error {
	err := os.RemoveAll(r.spool)
	if r.stopWatch != nil {
		r.stopWatch()
	}
	if r.blob != nil {
		err = errors.Join(err, r.blob.Close())
	}
	return err
}

// ready is the recorder's own readiness: its blob store takes uploads.
func (r *Recorder) ready() error {
	switch {
	case r.blobErr != nil:
		return r.blobErr
	case r.blob != nil:
		if err := r.blob.ready(); err != nil {
			return err
		}
	}
	return nil
}

// Role is the recorder as the subscriber framework runs it.
func (r *Recorder) Role() subscribers.Role {
	return subscribers.Role{Name: RoleName, Kinds: []broker.Kind{broker.KindAudio, broker.KindOutbound},
		NewCall: func(_ context.Context, c subscribers.CallInfo) (subscribers.CallHandler, error) {
			return &callRecorder{r: r, call: c}, nil
		}, Ready: r.ready}
}

// Dir is where a call's files go on disk.
func (r *Recorder) Dir(callToken codec.Token) string { return filepath.Join(r.dir, string(callToken)) }

// callRecorder spools one call's frames and renders them when it ends.
type callRecorder struct {
	r     *Recorder
	call  subscribers.CallInfo
	spool *Spool
	rate  int // the call's, from its audio socket's started message
	// lag is the least of receivedAt - place over the frames so far: how
	// far the receivers' clock (which stored times follow) runs ahead of
	// the timeline the frames are placed on (clock: one wild timestamp
	// must not move the audio played into the call by years).
	lag     time.Duration
	haveLag bool
	clock   speech.Clock
	// outEnd is when the audio played into the call so far ends: the
	// receiver plays each Outbound after the one before.
	outEnd time.Time
	// firstStored is when the bus stored the call's first message: the
	// same on every replica (a takeover replays from it), and the bus's
	// clock, not the sender's, which can be years off.
	firstStored time.Time
	// ends counts the attempts at End: one after the first was tried
	// again (it failed), and its blobs stored already are kept.
	ends int
}

func (c *callRecorder) Handle(_ context.Context, d subscribers.Delivery, _ *subscribers.Output) error {
	if c.firstStored.IsZero() {
		c.firstStored = d.Stored
	}
	var err error
	switch p := d.Payload.(type) {
	case *codec.Lifecycle:
		if p.Type == codec.LifecycleStarted && p.Stream == codec.StreamAudio && p.SampleRate > 0 {
			c.rate = p.SampleRate
		}
		return nil
	case *codec.Frame:
		at := c.clock.Place(p.Participant, p.Timestamp, p.ReceivedAt)
		if lag := p.ReceivedAt.Sub(at); !p.ReceivedAt.IsZero() && (!c.haveLag || lag < c.lag) {
			c.lag, c.haveLag = lag, true
		}
		if err = c.open(); err == nil {
			err = c.spool.Add(p)
		}
	case *codec.Outbound:
		err = c.outbound(p, d.Stored)
	default:
		return nil
	}
	if err != nil {
		if errors.Is(err, ErrFormat) {
			return subscribers.Permanent(err)
		}
		return fsError(err)
	}
	return nil
}

// fsError classes a failure to write: a name the file system refuses (a
// call token too long for a folder, from a publisher that did not bound
// it) can never succeed and is Permanent, so the call is given up rather
// than retried forever; anything else (a full or read-only disk, a store
// down) is an outage, retried until it ends.
func fsError(err error) error {
	if errors.Is(err, syscall.ENAMETOOLONG) || errors.Is(err, syscall.EINVAL) {
		return subscribers.Permanent(err)
	}
	return fmt.Errorf("%w: %w", subscribers.ErrUnavailable, err)
}

func (c *callRecorder) open() error {
	if c.spool != nil {
		return nil
	}
	sp, err := NewSpool(c.r.spool)
	if err != nil {
		return err
	}
	sp.MaxDuration = c.r.cfg.MaxDuration
	c.spool = sp
	return nil
}

// outbound puts audio played into the call on its timeline, as the
// receiver holding the call plays it: from when it was stored (moved onto
// the capture-time clock), after what was still playing; a stop cuts what
// plays from then on. A call whose rate is not known yet (no audio socket)
// has nothing to record it against.
func (c *callRecorder) outbound(o *codec.Outbound, stored time.Time) error {
	if c.rate == 0 {
		return nil
	}
	at := stored.Add(-c.lag)
	switch o.Kind {
	case codec.OutboundKindStop:
		if c.spool != nil {
			c.spool.CutOutbound(at)
		}
		if c.outEnd.After(at) {
			c.outEnd = at
		}
		return nil
	case codec.OutboundKindAudio:
		if len(o.Data) == 0 {
			return nil
		}
		if err := c.open(); err != nil {
			return err
		}
		if c.outEnd.After(at) {
			at = c.outEnd
		}
		end, err := c.spool.AddOutbound(at, c.rate, o.Data)
		if err != nil {
			return err
		}
		c.outEnd = end
	}
	return nil
}

func (c *callRecorder) End(ctx context.Context, reason subscribers.EndReason, out *subscribers.Output) error {
	c.ends++
	rec := codec.Recording{Reason: string(reason), Files: []codec.RecordingFile{}}
	if c.spool == nil || c.spool.Frames() == 0 {
		c.r.recordings.WithLabelValues("empty").Inc()
		return emit(ctx, out, &rec)
	}
	dir := c.r.Dir(c.call.Token)
	if !c.r.cfg.onDisk() { // rendered in the spool, then stored elsewhere
		tmp, err := os.MkdirTemp(c.r.spool, "render-*")
		if err != nil {
			return fmt.Errorf("%w: %w", subscribers.ErrUnavailable, err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	res, err := c.spool.Render(ctx, dir)
	if err != nil {
		return fsError(err)
	}
	for _, f := range res.Files {
		rf := codec.RecordingFile{Name: f.Name, Participant: f.Participant, Mix: f.Mix, Outbound: f.Outbound, Bytes: f.Bytes,
			SHA256: f.SHA256, DurationMs: f.Duration.Milliseconds(), Frames: f.Frames, Duplicates: f.Duplicates, Gaps: f.Gaps, Cut: f.Cut}
		if f.Cut > 0 && !f.Mix {
			c.r.cut.Add(float64(f.Cut))
			c.r.log.Warn("recording cut at AUDIOFAN_RECORDING_MAX_DURATION", "call", c.call.ID, "file", f.Name, "frames", f.Cut)
		}
		if c.r.cfg.onDisk() {
			rf.Path = path.Join("recordings", string(c.call.Token), f.Name) // under AUDIOFAN_DATA_DIR
			c.r.bytes.Add(float64(f.Bytes))
		}
		if c.r.store != nil {
			name := string(c.call.Token) + "/" + f.Name
			uploaded, err := c.r.upload(ctx, name, &f, c.ends > 1)
			if err != nil {
				return err
			}
			rf.Object = c.r.cfg.Bucket + "/" + name
			if uploaded {
				c.r.bytes.Add(float64(f.Bytes))
			}
		}
		rec.Files = append(rec.Files, rf)
	}
	if c.r.blob != nil || c.r.blobErr != nil {
		if err := c.r.uploadBlobs(ctx, c.call, cmp.Or(c.firstStored, res.Start), res, rec.Files, c.ends > 1); err != nil {
			return err
		}
	}
	rec.SampleRate, rec.Start, rec.DurationMs = res.SampleRate, res.Start, res.Duration.Milliseconds()
	c.r.recordings.WithLabelValues("written").Inc()
	c.r.log.Debug("call recorded", "call", c.call.ID, "files", len(res.Files), "duration", res.Duration, "dir", dir)
	return emit(ctx, out, &rec)
}

// emit publishes a recording event.
func emit(ctx context.Context, out *subscribers.Output, rec *codec.Recording) error {
	ev, err := codec.NewEvent(codec.EventRecording, rec)
	if err != nil {
		return subscribers.Permanent(err)
	}
	return out.Emit(ctx, ev)
}

// upload puts a rendered file into the Object Store as name. When again
// (End tried again after a failure), an object the bucket holds already
// with the file's size and SHA-256 is kept: only what is missing goes.
func (r *Recorder) upload(ctx context.Context, name string, rf *File, again bool) (uploaded bool, err error) {
	if again && r.storedAlready(ctx, name, rf) {
		return false, nil
	}
	f, err := os.Open(rf.Path)
	if err != nil {
		return false, fmt.Errorf("%w: %w", subscribers.ErrUnavailable, err)
	}
	defer f.Close()
	if _, err := r.store.Put(ctx, jetstream.ObjectMeta{Name: name}, f); err != nil {
		return false, fmt.Errorf("%w: upload %s to %s: %w", subscribers.ErrUnavailable, name, r.cfg.Bucket, err)
	}
	return true, nil
}

// storedAlready says whether the Object Store holds name with rf's size
// and SHA-256.
func (r *Recorder) storedAlready(ctx context.Context, name string, rf *File) bool {
	info, err := r.store.GetInfo(ctx, name)
	if err != nil || info.Size != uint64(rf.Bytes) {
		return false
	}
	got, err := jetstream.DecodeObjectDigest(info.Digest)
	return err == nil && hex.EncodeToString(got) == rf.SHA256
}

// uploadBlobs uploads a rendered call's files to the blob store, naming
// each blob in its file's Object. Until the store confirms every one the
// call's End fails as unavailable: it is tried again, and its messages
// stay on the bus (parked after a while, re-driven once the store is back),
// so a store that is down loses nothing while the bus keeps the call. A
// file uploaded twice (a retry, a takeover) is the same blob again.
// The blobs' date folder is day's: when the bus stored the call's first
// message.
func (r *Recorder) uploadBlobs(ctx context.Context, call subscribers.CallInfo, day time.Time, res *Result, files []codec.RecordingFile, again bool) error {
	r.mu.Lock()
	if _, ok := r.pending[call.Token]; !ok {
		r.pending[call.Token] = time.Now()
	}
	r.mu.Unlock()
	if r.blobErr != nil {
		return fmt.Errorf("%w: %w", subscribers.ErrUnavailable, r.blobErr)
	}
	var parts []string
	for _, f := range res.Files {
		if f.Participant != "" {
			parts = append(parts, f.Participant)
		}
	}
	for i, f := range res.Files {
		key := blobKey(day, string(call.Token), f.Name)
		md := map[string]string{
			// Raw: gocloud URL-escapes metadata values (HTTP headers are ASCII).
			"callid": call.ID, "calltoken": string(call.Token), "participants": strings.Join(parts, ","),
			"participant": f.Participant, "start": res.Start.UTC().Format(time.RFC3339Nano),
			"samplerate": strconv.Itoa(res.SampleRate), "audiofanversion": cmp.Or(r.version, "devel"),
		}
		uploaded, err := r.blob.put(ctx, key, f.Path, md, again)
		if err != nil {
			r.uploadErrs.Inc()
			select {
			case r.blobFailed <- struct{}{}:
			default:
			}
			return fmt.Errorf("%w: upload %s to %s: %s: %s", subscribers.ErrUnavailable, key, r.blob.where, storeFault(err), firstLine(err))
		}
		files[i].Object = r.blob.where + "/" + key
		if uploaded {
			r.bytes.Add(float64(f.Bytes))
		}
	}
	r.mu.Lock()
	delete(r.pending, call.Token)
	r.mu.Unlock()
	return nil
}

func (c *callRecorder) Close() error {
	// Done here (recorded, handed over or parked): a parked call shows in
	// audiofan_subscriber_calls_parked, and its re-drive starts again.
	c.r.mu.Lock()
	delete(c.r.pending, c.call.Token)
	c.r.mu.Unlock()
	if c.spool == nil {
		return nil
	}
	return c.spool.Close()
}

// cleanSpools removes the spool folders of processes that stopped writing
// to them more than age ago: a replica that was killed leaves its folder
// behind (its calls were replayed elsewhere).
func cleanSpools(root string, age time.Duration, log *slog.Logger) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "proc-") {
			continue
		}
		dir := filepath.Join(root, e.Name())
		newest := time.Time{}
		_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
			if err == nil {
				if info, err := d.Info(); err == nil && info.ModTime().After(newest) {
					newest = info.ModTime()
				}
			}
			return nil
		})
		if time.Since(newest) > age {
			if err := os.RemoveAll(dir); err == nil {
				log.Info("removed the spool of a stopped recorder", "dir", dir)
			}
		}
	}
}

// Component is the recorder as the binary runs it.
var Component = subscribers.Component{
	Role:     RoleName,
	Command:  "recorder",
	Summary:  "record every call into WAV files (a participant each and a mix), one replica of many",
	DataDir:  true,
	Settings: func() subscribers.Settings { return &Config{} },
	Start: func(ctx context.Context, s subscribers.Settings, env subscribers.Env) (subscribers.Role, func(), error) {
		r, err := New(ctx, *s.(*Config), env.DataDir, env.JS, env.Reg, env.Log)
		if err != nil {
			return subscribers.Role{}, nil, err
		}
		r.version = env.Version
		return r.Role(), func() {
			if err := r.Close(); err != nil {
				env.Log.Warn("recorder spool", "err", err)
			}
		}, nil
	},
	Publishes: func(s subscribers.Settings, _ broker.Published) []string {
		return []string{"$O." + s.(*Config).Bucket + ".>"}
	},
}

// dirBytes is the size of the files under dir, read at each scrape (a
// spool holds a few files a call: walking it costs less than keeping
// every write's count right across renders and removals).
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil // a file removed meanwhile: not counted
	})
	return n
}
