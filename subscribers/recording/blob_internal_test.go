package recording

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/nats-io/nats.go/jetstream"
	"gocloud.dev/blob/memblob"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
)

// What an operator reads for each kind of store failure.
func TestStoreFault(t *testing.T) {
	mem := memblob.OpenBucket(nil)
	defer mem.Close()
	_, missing := mem.Attributes(context.Background(), "no/such/blob") // gocloud's NotFound, as a driver gives it
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("put: %w", errBlobMismatch), "the store holds other bytes than were sent"},
		{&azcore.ResponseError{StatusCode: http.StatusNotFound, ErrorCode: "ContainerNotFound"}, "no such container or bucket (ContainerNotFound)"},
		{&azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthorizationFailure"}, "the credentials are refused, or may not write there (AuthorizationFailure)"},
		{missing, "no such container or bucket"},
		{context.DeadlineExceeded, "the store does not answer"},
	} {
		if got := storeFault(tc.err); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.err, got, tc.want)
		}
	}
}

// Blob names: the bus's UTC day, whatever the zone of the time given, and
// the call's token, safe in any store for ACS ids with ':' and '+'.
func TestBlobKey(t *testing.T) {
	pst := time.FixedZone("PST", -8*3600)
	for _, tc := range []struct {
		day  time.Time
		call string
		want string
	}{
		{time.Date(2026, 12, 7, 23, 30, 0, 0, pst), "4:+14255550123", "2026-12-08/4_3A_2B14255550123/mix.wav"},
		{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), "8:acs:6a1f0c2e-5b7d_0000002a", "2026-01-01/8_3Aacs_3A6a1f0c2e-5b7d_5F0000002a/mix.wav"},
	} {
		if got := blobKey(tc.day, string(codec.EncodeToken(tc.call)), "mix.wav"); got != tc.want {
			t.Errorf("%v %s: %q, want %q", tc.day, tc.call, got, tc.want)
		}
	}
}

// A retried End keeps the blobs the store holds whole already, and uploads
// again one that differs or is missing; a first attempt always uploads.
func TestBlobPutAgain(t *testing.T) {
	ctx := context.Background()
	s := &blobStore{bucket: memblob.OpenBucket(nil), where: "mem://test", part: 5 << 20}
	defer s.Close()
	path := filepath.Join(t.TempDir(), "a.wav")
	write := func(b string) {
		if err := os.WriteFile(path, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("RIFF one")
	// Named as the recorder names a blob: an ACS call's token, ':' and '+'
	// escaped, in its UTC day's folder.
	key := blobKey(time.Date(2026, 12, 7, 23, 59, 59, 0, time.FixedZone("PST", -8*3600)), string(codec.EncodeToken("4:+14255550123")), "mix.wav")
	for _, tc := range []struct {
		what    string
		content string // "" leaves the file as it is
		remove  bool   // the blob removed first
		again   bool
		want    bool // uploaded
	}{
		{what: "first attempt", again: false, want: true},
		{what: "first attempt, the blob there", again: false, want: true},
		{what: "retry, the blob whole", again: true, want: false},
		{what: "retry, the file differs", content: "RIFF two", again: true, want: true},
		{what: "retry, the same size, other bytes", content: "RIFF tw0", again: true, want: true},
		{what: "retry, the blob gone", remove: true, again: true, want: true},
		{what: "retry, the blob whole again", again: true, want: false},
	} {
		if tc.content != "" {
			write(tc.content)
		}
		if tc.remove {
			if err := s.bucket.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
		}
		uploaded, err := s.put(ctx, key, path, map[string]string{"callid": "4:+14255550123"}, tc.again)
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if uploaded != tc.want {
			t.Errorf("%s: uploaded %v, want %v", tc.what, uploaded, tc.want)
		}
		got, err := s.bucket.ReadAll(ctx, key)
		if want, _ := os.ReadFile(path); err != nil || string(got) != string(want) {
			t.Errorf("%s: the blob holds %q (%v), want %q", tc.what, got, err, want)
		}
	}
}

// The same rule for the NATS Object Store: a retry keeps an object held
// whole (size and SHA-256), and uploads one that differs.
func TestObjectPutAgain(t *testing.T) {
	ctx := context.Background()
	bus := natstest.StartBus(t)
	store, err := bus.JS.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "rec-test"})
	if err != nil {
		t.Fatal(err)
	}
	r := &Recorder{store: store}
	path := filepath.Join(t.TempDir(), "a.wav")
	name := string(codec.EncodeToken("8:acs:6a1f0c2e-5b7d+store_0000002a")) + "/mix.wav" // as the recorder names it
	for _, tc := range []struct {
		what    string
		content string
		again   bool
		want    bool // uploaded
	}{
		{"first attempt", "RIFF one", false, true},
		{"retry, the object whole", "RIFF one", true, false},
		{"first attempt, the object there", "RIFF one", false, true},
		{"retry, other bytes of the same size", "RIFF tw0", true, true},
		{"retry, whole again", "RIFF tw0", true, false},
	} {
		if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(tc.content))
		f := &File{Path: path, Bytes: int64(len(tc.content)), SHA256: hex.EncodeToString(sum[:])}
		uploaded, err := r.upload(ctx, name, f, tc.again)
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if uploaded != tc.want {
			t.Errorf("%s: uploaded %v, want %v", tc.what, uploaded, tc.want)
		}
		if got, err := store.GetBytes(ctx, name); err != nil || string(got) != tc.content {
			t.Errorf("%s: the object holds %q (%v), want %q", tc.what, got, err, tc.content)
		}
	}
}
