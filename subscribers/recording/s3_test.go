package recording_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/recording"
)

// toDir writes objects into a folder by name, for acsCall.check.
func toDir(t *testing.T, objs map[string]conformance.Object) string {
	t.Helper()
	dir := t.TempDir()
	for name, o := range objs {
		if err := os.WriteFile(filepath.Join(dir, name), o.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Calls recorded into an S3-compatible store with the AWS default chain's
// credentials, 32 at once: each file an object named <prefix>/<date>/<call token>/<file>,
// its PCM bit-exact, with the call's metadata, and the event naming it.
func TestRecorderS3(t *testing.T) {
	s3 := conformance.StartS3(t, "recordings")
	r := newRig(t)
	r.cfg.Store = s3.URL("recordings", "prefix=calls/")
	rep := r.replica(t)
	calls := []*acsCall{
		{id: "8:acs:1d0c-44a2+s3/0", parts: []string{"4:+14255550100", "8:acs:00000000-aaaa_0000002a"}, n: 80, skip: func(p, f int) bool { return p == 1 && f%7 == 3 }},
		{id: "4:+14255550101", parts: []string{"8:acs:bob"}, n: 60, skip: func(p, f int) bool { return false }},
	}
	// And 30 more at once, phone numbers and ACS users, uploading
	// together (the senders' clock is days behind the bus's, t0).
	for i := range 30 {
		calls = append(calls, &acsCall{id: fmt.Sprintf("4:+1425555%04d-s3", i), parts: []string{fmt.Sprintf("8:acs:6a1f0c2e_%08x", i)}, n: 40,
			skip: func(p, f int) bool { return f%13 == 1+i%10 }}) // never the first or last frame, which bound the call
	}
	var wg sync.WaitGroup
	for _, c := range calls {
		wg.Go(func() { c.stream(t, r.rcv.Addr, nil) })
	}
	wg.Wait()
	for _, c := range calls {
		conformance.WaitFor(t, "the recording of "+c.id, func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
		tok := string(codec.EncodeToken(c.id))
		objs, prefix := s3.CallObjects("recordings", "calls/", tok)
		if len(objs) != len(c.parts)+1 {
			t.Fatalf("objects under %s: %d, want %d", prefix, len(objs), len(c.parts)+1)
		}
		c.check(t, toDir(t, objs))
		checkStored(t, r, c, objs["mix.wav"].Metadata, "s3://recordings/"+prefix)
	}
	if got := conformance.Metric(t, rep.reg, "audiofan_recorder_uploads_pending", ""); got != 0 {
		t.Errorf("%v uploads pending after the recordings", got)
	}
}

// The S3 store is away when a call ends: the replica is unready, its
// upload fails and is counted, and once the store is back the recording
// arrives whole, once.
func TestRecorderS3Outage(t *testing.T) {
	s3 := conformance.StartS3(t, "recordings")
	r := newRig(t)
	r.cfg.Store = s3.URL("recordings", "")
	rep := r.replica(t)
	conformance.WaitFor(t, "the replica ready", func() bool { return rep.g.Ready() == nil })
	s3.Stop()
	c := &acsCall{id: "4:+14255550199-s3outage", parts: []string{"8:acs:alice", "8:acs:bob"}, n: 60, skip: func(p, i int) bool { return false }}
	c.stream(t, r.rcv.Addr, nil)
	conformance.WaitFor(t, "a failed upload", func() bool {
		return conformance.Metric(t, rep.reg, "audiofan_recorder_upload_failures_total", "") > 0
	})
	conformance.WaitFor(t, "the replica unready", func() bool { return rep.g.Ready() != nil })
	t.Logf("unready while the store is down: %v", rep.g.Ready())
	if got := conformance.Metric(t, rep.reg, "audiofan_recorder_spool_bytes", ""); got < 2*60*640 {
		t.Errorf("spool bytes %v while the recording waits for the store: want its files", got)
	}
	s3.Start()
	conformance.WaitFor(t, "the recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	objs, prefix := s3.CallObjects("recordings", "", string(codec.EncodeToken(c.id)))
	if len(objs) != 3 {
		t.Fatalf("objects under %s: %d, want 3", prefix, len(objs))
	}
	c.check(t, toDir(t, objs))
	conformance.WaitFor(t, "the replica ready again", func() bool { return rep.g.Ready() == nil })
	conformance.WaitFor(t, "the spool emptied", func() bool { return conformance.Metric(t, rep.reg, "audiofan_recorder_spool_bytes", "") == 0 })
}

// A bucket that does not exist: the recorder is unready, saying so, and
// its error shows no secret.
func TestRecorderS3Refused(t *testing.T) {
	s3 := conformance.StartS3(t, "recordings")
	r := newRig(t)
	r.cfg.Store = s3.URL("missing", "")
	rep := r.start(t)
	var err error
	conformance.WaitFor(t, "the replica unready, saying why", func() bool {
		err = rep.g.Ready()
		return err != nil && strings.Contains(err.Error(), "no such container or bucket")
	})
	t.Logf("unready: %v", err)
	if strings.Contains(err.Error(), conformance.S3Secret) {
		t.Errorf("the error shows a secret: %v", err)
	}
}

// A store that keeps other bytes than it was sent (the transfer checked
// out): the read-back MD5 differs, the upload counts as failed and is made
// again, and the recording in the store ends up whole.
func TestRecorderS3Corrupted(t *testing.T) {
	s3 := conformance.StartS3(t, "recordings")
	s3.Corrupt.Store(1)
	r := newRig(t)
	r.cfg.Store = s3.URL("recordings", "")
	rep := r.replica(t)
	c := &acsCall{id: "8:acs:corrupt+1", parts: []string{"8:acs:alice"}, n: 40, skip: func(p, i int) bool { return false }}
	c.stream(t, r.rcv.Addr, nil)
	conformance.WaitFor(t, "the recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	if got := conformance.Metric(t, rep.reg, "audiofan_recorder_upload_failures_total", ""); got < 1 {
		t.Errorf("upload failures %v: the corrupted blob was taken as stored", got)
	}
	objs, prefix := s3.CallObjects("recordings", "", string(codec.EncodeToken(c.id)))
	if len(objs) != 2 {
		t.Fatalf("objects under %s: %d, want 2", prefix, len(objs))
	}
	c.check(t, toDir(t, objs))
}

// A retried End keeps what the store holds whole already: the call's last
// file (the mix) comes back corrupted once, and the retry sends the mix
// again but not the participants' files, confirmed on the first attempt.
func TestRecorderS3RetryKeepsStored(t *testing.T) {
	s3 := conformance.StartS3(t, "recordings")
	s3.CorruptOnly = "/mix.wav"
	s3.Corrupt.Store(1)
	r := newRig(t)
	r.cfg.Store = s3.URL("recordings", "prefix=calls/")
	rep := r.replica(t)
	c := &acsCall{id: "8:acs:6a1f0c2e-5b7d+retry_0000002a", parts: []string{"4:+14255550123", "8:acs:00000000-aaaa_0000002b"}, n: 60,
		skip: func(p, f int) bool { return p == 0 && f%9 == 4 }}
	c.stream(t, r.rcv.Addr, nil)
	conformance.WaitFor(t, "the recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	if got := conformance.Metric(t, rep.reg, "audiofan_recorder_upload_failures_total", ""); got < 1 {
		t.Errorf("upload failures %v: the corrupted mix was taken as stored", got)
	}
	objs, prefix := s3.CallObjects("recordings", "calls/", string(codec.EncodeToken(c.id)))
	if len(objs) != len(c.parts)+1 {
		t.Fatalf("objects under %s: %d, want %d", prefix, len(objs), len(c.parts)+1)
	}
	c.check(t, toDir(t, objs))
	for name := range objs {
		want := 1
		if name == "mix.wav" {
			want = 2
		}
		if got := s3.Puts(prefix + name); got != want {
			t.Errorf("%s uploaded %d times, want %d", name, got, want)
		}
	}
}

// The console's reader opens only objects of the store it was given: an
// event naming another bucket, another prefix or another kind of store is
// not found, and nothing is dialled for it.
func TestBlobSourceStaysInItsStore(t *testing.T) {
	s3 := conformance.StartS3(t, "recordings", "other")
	src, err := recording.OpenBlobSource(t.Context(), s3.URL("recordings", "prefix=calls/"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, obj := range []string{"s3://other/calls/x.wav", "s3://recordings/callsx/x.wav", "s3://recordings/x.wav", "azblob://recordings/calls/x.wav",
		"s3://recordings/calls/", "s3://recordings/calls/2026-12-07/missing/mix.wav"} {
		if _, _, err := src.OpenBlob(t.Context(), obj); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v, want not found", obj, err)
		}
	}
	if _, err := recording.OpenBlobSource(t.Context(), "disk"); !errors.Is(err, recording.ErrStoreSetting) {
		t.Errorf("a store that is no blob URL: %v", err)
	}
}

// Store URLs that cannot work are a clear reason on an unready recorder at
// start, never a crash, and never echo a secret they carry.
func TestRecorderBadStoreURL(t *testing.T) {
	for _, tc := range []struct{ store, want string }{
		{"azblob://user:s3cr3t@recordings", "never in the URL"},
		{"s3://:s3cr3t@/", "not a blob URL"},
		{"s3://recordings?region=us-east-1&nosuchoption=s3cr3t", "AUDIOFAN_RECORDING_STORE s3://recordings"},
	} {
		t.Run(tc.store, func(t *testing.T) {
			r := newRig(t)
			r.cfg.Store = tc.store
			rep := r.start(t)
			var err error
			conformance.WaitFor(t, "the replica unready, saying why", func() bool {
				err = rep.g.Ready()
				return err != nil && strings.Contains(err.Error(), tc.want)
			})
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("the error shows the secret: %v", err)
			}
		})
	}
}
