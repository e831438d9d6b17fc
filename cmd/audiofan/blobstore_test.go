package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// serve recording to an S3-compatible store (AUDIOFAN_RECORDING_STORE and
// the AWS chain's environment, nothing else): the call's files land as
// objects, the console lists them by their blob URL and plays them from
// the store (a range too, as the page's player seeks), byte for byte.
func TestServeRecordsToBlobStore(t *testing.T) {
	s3 := conformance.StartS3(t, "recordings")
	httpAddr, natsAddr := freePort(t), freePort(t)
	t.Setenv("AUDIOFAN_HTTP_ADDR", httpAddr)
	t.Setenv("AUDIOFAN_NATS_LISTEN", natsAddr)
	t.Setenv("AUDIOFAN_DATA_DIR", t.TempDir())
	t.Setenv("AUDIOFAN_DRAIN_TIMEOUT", "5s")
	t.Setenv("AUDIOFAN_RECORDING_STORE", s3.URL("recordings", "prefix=audiofan/"))
	var serveOut, serveErr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"serve"}, &serveOut, &serveErr) }()
	waitHTTP(t, "serve", "http://"+httpAddr+"/readyz", 30*time.Second, func() bool { return len(done) > 0 })
	defer stopServe(t, done, &serveErr)

	const call = "8:acs:6a1f0c2e+blob-console"
	streamCall(t, "ws://"+httpAddr+"/ws", call, bytes.Repeat([]byte{3, 4}, 320), 25)
	tok := string(codec.EncodeToken(call))
	base := "http://" + httpAddr + "/api/calls/" + tok
	var view struct {
		Recording *codec.Recording `json:"recording"`
	}
	waitFor(t, "the console listing the recording", func() bool {
		resp, err := http.Get(base)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&view) == nil && view.Recording != nil
	})
	objs, prefix := s3.CallObjects("recordings", "audiofan/", tok)
	if len(objs) != 2 {
		t.Fatalf("objects under %s: %d, want 2 (the participant's and the mix)", prefix, len(objs))
	}
	for _, f := range view.Recording.Files {
		if want := "s3://recordings/" + prefix + f.Name; f.Object != want {
			t.Errorf("the console names %s as %q, want %q", f.Name, f.Object, want)
		}
		stored := objs[f.Name].Data
		resp, err := http.Get(base + "/recordings/" + f.Name)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, stored) || len(stored) != 44+25*640 {
			t.Errorf("%s from the console: %d, %d bytes, want the stored object's %d", f.Name, resp.StatusCode, len(body), len(stored))
		}
		req, _ := http.NewRequest(http.MethodGet, base+"/recordings/"+f.Name, nil)
		req.Header.Set("Range", "bytes=44-1000")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, stored[44:1001]) {
			t.Errorf("%s, bytes 44-1000: %d, %d bytes", f.Name, resp.StatusCode, len(body))
		}
	}
	if strings.Contains(serveErr.String(), conformance.S3Secret) {
		t.Error("serve logged the S3 secret key")
	}
}
