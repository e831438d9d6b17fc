package conformance

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// S3 is an S3-compatible server for tests (gofakes3: the S3 REST API, with
// SigV4-signed and aws-chunked uploads and multipart completion) on a
// loopback port, whose objects outlive a restart of its listener, so that a
// test can take the store away and bring it back.
//
// Not a process as Azurite is: s3rver, the npm emulator, was last released
// in 2021, before the checksum-trailed uploads the AWS SDK has sent by
// default since 2025; gofakes3 takes them.
type S3 struct {
	t       testing.TB
	backend *s3mem.Backend
	// Addr is where it listens (host:port), the same across Stop and Start.
	Addr string
	srv  *httptest.Server
	// Corrupt is how many WAV uploads are still to be stored with a byte
	// changed, as a faulty store would keep them after the transfer
	// itself checked out; CorruptOnly, when set before any upload, limits
	// them to keys ending so (one file of a call).
	Corrupt     atomic.Int32
	CorruptOnly string

	mu   sync.Mutex
	puts map[string]int // uploads received, by key
}

// Puts is how many uploads of key the store received, whole-object or
// completed multipart alike.
func (s *S3) Puts(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts[key]
}

// StartS3 serves an S3-compatible store holding the buckets, and sets the
// AWS default chain's environment (static keys, a region, no shared files)
// for the test, as any S3 deployment is given its credentials.
func StartS3(t testing.TB, buckets ...string) *S3 {
	t.Helper()
	s := &S3{t: t, backend: s3mem.New()}
	for _, b := range buckets {
		if err := s.backend.CreateBucket(b); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "audiofan-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", S3Secret)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// S3Secret is the secret key StartS3 sets, for tests to look for in logs
// and errors.
const S3Secret = "audiofan-test-secret"

// Start serves the store, on the port it had before if it had one.
func (s *S3) Start() {
	s.t.Helper()
	addr := s.Addr
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
		s.t.Fatal(err)
	}
	s.Addr = l.Addr().String()
	s.srv = httptest.NewUnstartedServer(gofakes3.New(corrupting{s.backend, s}, gofakes3.WithLogger(gofakes3.DiscardLog())).Server())
	s.srv.Listener.Close()
	s.srv.Listener = l
	s.srv.Start()
}

// Stop takes the store away at once: open connections are cut.
func (s *S3) Stop() {
	if s.srv != nil {
		s.srv.CloseClientConnections()
		s.srv.Close()
		s.srv = nil
	}
}

// URL is AUDIOFAN_RECORDING_STORE for bucket on this server, as for any
// S3-compatible store (MinIO, Ceph, R2): its endpoint, path-style; query
// adds options (prefix=…).
func (s *S3) URL(bucket, query string) string {
	u := fmt.Sprintf("s3://%s?endpoint=%s&use_path_style=true&region=us-east-1", bucket, url.QueryEscape("http://"+s.Addr))
	if query != "" {
		u += "&" + query
	}
	return u
}

// Object is one stored object: its bytes and its user metadata (the
// x-amz-meta- headers, names lower-cased, values as stored).
type Object struct {
	Data     []byte
	Metadata map[string]string
}

// Objects are the objects under prefix, by the last element of their key.
func (s *S3) Objects(bucket, prefix string) map[string]Object {
	s.t.Helper()
	list, err := s.backend.ListBucket(bucket, &gofakes3.Prefix{HasPrefix: true, Prefix: prefix}, gofakes3.ListBucketPage{})
	if err != nil {
		s.t.Fatal(err)
	}
	out := map[string]Object{}
	for _, c := range list.Contents {
		obj, err := s.backend.GetObject(bucket, c.Key, nil)
		if err != nil {
			s.t.Fatal(err)
		}
		data, err := io.ReadAll(obj.Contents)
		obj.Contents.Close()
		if err != nil {
			s.t.Fatal(err)
		}
		md := map[string]string{}
		for k, v := range obj.Metadata {
			if name, ok := strings.CutPrefix(strings.ToLower(k), "x-amz-meta-"); ok {
				md[name] = v
			}
		}
		out[c.Key[strings.LastIndex(c.Key, "/")+1:]] = Object{Data: data, Metadata: md}
	}
	return out
}

// CallObjects are a call's recording files under prefix: in the date
// folder of today or yesterday (UTC; the bus's day, whichever side of
// midnight the test ran), with the folder they were found in.
func (s *S3) CallObjects(bucket, prefix, token string) (map[string]Object, string) {
	s.t.Helper()
	var at string
	for _, day := range []time.Time{time.Now(), time.Now().Add(-24 * time.Hour)} {
		at = prefix + day.UTC().Format("2006-01-02") + "/" + token + "/"
		if objs := s.Objects(bucket, at); len(objs) > 0 {
			return objs, at
		}
	}
	return nil, at
}

// corrupting stores the next s.Corrupt WAV objects with a byte changed.
type corrupting struct {
	*s3mem.Backend
	s *S3
}

func (c corrupting) PutObject(bucket, key string, meta map[string]string, input io.Reader, size int64, cond *gofakes3.PutConditions) (gofakes3.PutObjectResult, error) {
	c.s.mu.Lock()
	if c.s.puts == nil {
		c.s.puts = map[string]int{}
	}
	c.s.puts[key]++
	c.s.mu.Unlock()
	if !strings.HasSuffix(key, ".wav") || !strings.HasSuffix(key, c.s.CorruptOnly) || c.s.Corrupt.Load() <= 0 || c.s.Corrupt.Add(-1) < 0 {
		return c.Backend.PutObject(bucket, key, meta, input, size, cond)
	}
	data, err := io.ReadAll(input)
	if err != nil {
		return gofakes3.PutObjectResult{}, err
	}
	data[len(data)-1] ^= 0x40
	return c.Backend.PutObject(bucket, key, meta, bytes.NewReader(data), size, cond)
}
