package recording_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// fakeS3 is an S3-compatible server (gofakes3: the S3 REST API, its
// SigV4-signed and aws-chunked uploads and multipart completion included)
// on a loopback port, whose objects outlive a restart of its listener, so
// that a test can take the store away and bring it back.
//
// Why not a process like Azurite: s3rver, the npm emulator, was last
// released in 2021 and predates the aws-chunked, checksum-trailed uploads
// the AWS SDK has sent by default since 2025; gofakes3 speaks them.
type fakeS3 struct {
	t       *testing.T
	backend *s3mem.Backend
	addr    string
	srv     *httptest.Server
	corrupt atomic.Int32 // WAV uploads still to store with a byte changed
}

// corrupting stores the next f.corrupt WAV objects with a byte changed, as
// a faulty store or path would, after the transfer itself checked out.
type corrupting struct {
	*s3mem.Backend
	f *fakeS3
}

func (c corrupting) PutObject(bucket, key string, meta map[string]string, input io.Reader, size int64, cond *gofakes3.PutConditions) (gofakes3.PutObjectResult, error) {
	if !strings.HasSuffix(key, ".wav") || c.f.corrupt.Add(-1) < 0 {
		return c.Backend.PutObject(bucket, key, meta, input, size, cond)
	}
	data, err := io.ReadAll(input)
	if err != nil {
		return gofakes3.PutObjectResult{}, err
	}
	data[len(data)-1] ^= 0x40
	return c.Backend.PutObject(bucket, key, meta, bytes.NewReader(data), size, cond)
}

func startS3(t *testing.T, buckets ...string) *fakeS3 {
	f := &fakeS3{t: t, backend: s3mem.New()}
	for _, b := range buckets {
		if err := f.backend.CreateBucket(b); err != nil {
			t.Fatal(err)
		}
	}
	f.start()
	t.Cleanup(f.stop)
	// The AWS default chain's static keys: what any S3 deployment is given
	// (an IAM role on EKS comes through the same chain).
	t.Setenv("AWS_ACCESS_KEY_ID", "audiofan-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "audiofan-test-secret")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	return f
}

// start serves the store, on the port it had before if it had one.
func (f *fakeS3) start() {
	f.t.Helper()
	addr := f.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if l, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		f.t.Fatal(err)
	}
	f.addr = l.Addr().String()
	f.srv = httptest.NewUnstartedServer(gofakes3.New(corrupting{f.backend, f}, gofakes3.WithLogger(gofakes3.DiscardLog())).Server())
	f.srv.Listener.Close()
	f.srv.Listener = l
	f.srv.Start()
}

// stop takes the store away at once: open connections are cut.
func (f *fakeS3) stop() {
	if f.srv != nil {
		f.srv.CloseClientConnections()
		f.srv.Close()
		f.srv = nil
	}
}

// url is AUDIOFAN_RECORDING_STORE for bucket on this server, as for any
// S3-compatible store (MinIO, Ceph, R2): its endpoint, path-style.
func (f *fakeS3) url(bucket, query string) string {
	u := fmt.Sprintf("s3://%s?endpoint=%s&use_path_style=true&region=us-east-1", bucket, url.QueryEscape("http://"+f.addr))
	if query != "" {
		u += "&" + query
	}
	return u
}

// download fetches every object under prefix into a folder, by file name,
// with its metadata.
func (f *fakeS3) download(t *testing.T, bucket, prefix string) (dir string, md map[string]map[string]string) {
	t.Helper()
	dir, md = t.TempDir(), map[string]map[string]string{}
	list, err := f.backend.ListBucket(bucket, &gofakes3.Prefix{HasPrefix: true, Prefix: prefix}, gofakes3.ListBucketPage{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list.Contents {
		obj, err := f.backend.GetObject(bucket, c.Key, nil)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(obj.Contents)
		obj.Contents.Close()
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(c.Key)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		md[name] = obj.Metadata
	}
	return dir, md
}

// s3Day finds the date folder a call's files went to (the bus's day,
// whichever side of midnight the test ran).
func (f *fakeS3) s3Day(t *testing.T, bucket, prefix, token string) (string, map[string]map[string]string, string) {
	t.Helper()
	var dir, at string
	var md map[string]map[string]string
	for _, day := range []time.Time{time.Now(), time.Now().Add(-24 * time.Hour)} {
		at = prefix + day.UTC().Format("2006-01-02") + "/" + token + "/"
		if dir, md = f.download(t, bucket, at); len(md) > 0 {
			break
		}
	}
	return dir, md, at
}

// Calls recorded into an S3-compatible store with the AWS default chain's
// credentials: each file an object named <prefix>/<date>/<call token>/<file>,
// its PCM bit-exact, with the call's metadata, and the event naming it.
func TestRecorderS3(t *testing.T) {
	s3 := startS3(t, "recordings")
	r := newRig(t)
	r.cfg.Store = s3.url("recordings", "prefix=calls/")
	rep := r.replica(t)
	calls := []*acsCall{
		{id: "8:acs:1d0c-44a2+s3/0", parts: []string{"4:+14255550100", "8:acs:00000000-aaaa_0000002a"}, n: 80, skip: func(p, f int) bool { return p == 1 && f%7 == 3 }},
		{id: "4:+14255550101", parts: []string{"8:acs:bob"}, n: 60, skip: func(p, f int) bool { return false }},
	}
	for _, c := range calls {
		c.stream(t, r.rcv.Addr, nil)
	}
	for _, c := range calls {
		conformance.WaitFor(t, "the recording of "+c.id, func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
		tok := string(codec.EncodeToken(c.id))
		dir, md, prefix := s3.s3Day(t, "recordings", "calls/", tok)
		if len(md) != len(c.parts)+1 {
			t.Fatalf("objects under %s: %v", prefix, md)
		}
		c.check(t, dir)
		m := md["mix.wav"]
		get := func(k string) string { // gocloud URL-escapes the values; S3 keeps them as x-amz-meta- headers
			for mk, v := range m {
				if strings.EqualFold(mk, "X-Amz-Meta-"+k) {
					s, err := url.PathUnescape(v)
					if err != nil {
						t.Errorf("metadata %s=%q: %v", k, v, err)
					}
					return s
				}
			}
			return ""
		}
		if get("callid") != c.id || get("calltoken") != tok || get("samplerate") != "16000" || get("audiofanversion") == "" ||
			get("participants") != strings.Join(c.parts, ",") {
			t.Errorf("mix.wav's metadata: %v", m)
		}
		ev := recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)[0]
		for _, f := range ev.Data["files"].([]any) {
			f := f.(map[string]any)
			if want := "s3://recordings/" + prefix + f["name"].(string); f["object"] != want || f["path"] != "" {
				t.Errorf("event file %v, want object %s and no path", f, want)
			}
		}
	}
	if got := conformance.Metric(t, rep.reg, "audiofan_recorder_uploads_pending", ""); got != 0 {
		t.Errorf("%v uploads pending after the recordings", got)
	}
}

// The S3 store is away when a call ends: the replica is unready, its
// upload fails and is counted, and once the store is back the recording
// arrives whole, once.
func TestRecorderS3Outage(t *testing.T) {
	s3 := startS3(t, "recordings")
	r := newRig(t)
	r.cfg.Store = s3.url("recordings", "")
	rep := r.replica(t)
	conformance.WaitFor(t, "the replica ready", func() bool { return rep.g.Ready() == nil })
	s3.stop()
	c := &acsCall{id: "4:+14255550199-s3outage", parts: []string{"8:acs:alice", "8:acs:bob"}, n: 60, skip: func(p, i int) bool { return false }}
	c.stream(t, r.rcv.Addr, nil)
	conformance.WaitFor(t, "a failed upload", func() bool {
		return conformance.Metric(t, rep.reg, "audiofan_recorder_upload_failures_total", "") > 0
	})
	conformance.WaitFor(t, "the replica unready", func() bool { return rep.g.Ready() != nil })
	t.Logf("unready while the store is down: %v", rep.g.Ready())
	s3.start()
	conformance.WaitFor(t, "the recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	dir, md, prefix := s3.s3Day(t, "recordings", "", string(codec.EncodeToken(c.id)))
	if len(md) != 3 {
		t.Fatalf("objects under %s: %v", prefix, md)
	}
	c.check(t, dir)
	conformance.WaitFor(t, "the replica ready again", func() bool { return rep.g.Ready() == nil })
}

// A bucket that does not exist: the recorder is unready, saying so, and
// its error shows no secret.
func TestRecorderS3Refused(t *testing.T) {
	s3 := startS3(t, "recordings")
	r := newRig(t)
	r.cfg.Store = s3.url("missing", "")
	rep := r.start(t)
	var err error
	conformance.WaitFor(t, "the replica unready, saying why", func() bool {
		err = rep.g.Ready()
		return err != nil && strings.Contains(err.Error(), "no such container or bucket")
	})
	t.Logf("unready: %v", err)
	if strings.Contains(err.Error(), os.Getenv("AWS_SECRET_ACCESS_KEY")) {
		t.Errorf("the error shows a secret: %v", err)
	}
	if resp, err := http.Get("http://" + s3.addr + "/missing"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("the fake store answers %d for a missing bucket", resp.StatusCode)
		}
	}
}

// A store that keeps other bytes than it was sent (the transfer checked
// out): the read-back MD5 differs, the upload counts as failed and is made
// again, and the recording in the store ends up whole.
func TestRecorderS3Corrupted(t *testing.T) {
	s3 := startS3(t, "recordings")
	s3.corrupt.Store(1)
	r := newRig(t)
	r.cfg.Store = s3.url("recordings", "")
	rep := r.replica(t)
	c := &acsCall{id: "8:acs:corrupt+1", parts: []string{"8:acs:alice"}, n: 40, skip: func(p, i int) bool { return false }}
	c.stream(t, r.rcv.Addr, nil)
	conformance.WaitFor(t, "the recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	if got := conformance.Metric(t, rep.reg, "audiofan_recorder_upload_failures_total", ""); got < 1 {
		t.Errorf("upload failures %v: the corrupted blob was taken as stored", got)
	}
	dir, md, prefix := s3.s3Day(t, "recordings", "", string(codec.EncodeToken(c.id)))
	if len(md) != 2 {
		t.Fatalf("objects under %s: %v", prefix, md)
	}
	c.check(t, dir)
}
