package recording_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/recording"
)

// Azurite's well-known development account (its documentation's, not a
// secret).
const (
	devAccount = "devstoreaccount1"
	devKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// wrongKey is a well-formed key that is not the account's.
var wrongKey = "AAAA" + devKey[4:]

// azurite is Microsoft's Azure Storage emulator as a real process
// (tools/azurite, installed by make azurite; make test sets
// AUDIOFAN_AZURITE to its azurite-blob).
type azurite struct {
	t         testing.TB
	bin, dir  string
	port      int
	cmd       *exec.Cmd
	connector string // the connection string of the development account
}

func startAzurite(t testing.TB) *azurite {
	bin := os.Getenv("AUDIOFAN_AZURITE")
	if bin == "" {
		t.Skip("AUDIOFAN_AZURITE is not set: make test installs Azurite (make azurite) and sets it")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	a := &azurite{t: t, bin: bin, dir: t.TempDir(), port: port}
	a.connector = fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=http://127.0.0.1:%d/%s;", devAccount, devKey, port, devAccount)
	a.start()
	t.Cleanup(a.kill)
	return a
}

// start runs the emulator on its port and folder (what it stored survives
// a restart).
func (a *azurite) start() {
	a.t.Helper()
	a.cmd = exec.Command(a.bin, "--blobHost", "127.0.0.1", "--blobPort", fmt.Sprint(a.port), "--location", a.dir, "--silent", "--skipApiVersionCheck", "--loose")
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a.port)); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatal("azurite did not start")
		}
	}
}

// kill stops the emulator at once (SIGKILL), mid-upload if one is going.
func (a *azurite) kill() {
	if a.cmd != nil {
		_ = a.cmd.Process.Kill()
		_ = a.cmd.Wait()
		a.cmd = nil
	}
}

func (a *azurite) client(t testing.TB) *azblob.Client {
	c, err := azblob.NewClientFromConnectionString(a.connector, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// download fetches every blob under prefix into a folder, by file name.
func (a *azurite) download(t *testing.T, containerName, prefix string) (dir string, md map[string]map[string]*string) {
	t.Helper()
	c := a.client(t)
	dir, md = t.TempDir(), map[string]map[string]*string{}
	pager := c.NewListBlobsFlatPager(containerName, &azblob.ListBlobsFlatOptions{Prefix: to.Ptr(prefix), Include: azblob.ListBlobsInclude{Metadata: true}})
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page.Segment.BlobItems {
			name := filepath.Base(*b.Name)
			f, err := os.Create(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.DownloadFile(context.Background(), containerName, *b.Name, f, nil); err != nil {
				t.Fatal(err)
			}
			f.Close()
			md[name] = b.Metadata
		}
	}
	return dir, md
}

// azuriteRig is a receiver and a recorder rig storing to a container of a
// fresh Azurite, through AZURE_STORAGE_CONNECTION_STRING alone.
func azuriteRig(t *testing.T, store string) (*azurite, *rig) {
	t.Helper()
	az := startAzurite(t)
	if _, err := az.client(t).CreateContainer(context.Background(), "recordings", nil); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", az.connector)
	r := newRig(t)
	r.cfg.Store = store
	return az, r
}

// Calls recorded into Azure Blob Storage (Azurite) with only
// AUDIOFAN_RECORDING_STORE=azblob://<container> and Azure's own
// AZURE_STORAGE_CONNECTION_STRING: 24 concurrent calls with ACS-shaped ids,
// each file a blob named <prefix>/<date>/<call token>/<file>, its PCM
// bit-exact, with the call's metadata, and the recording event naming the
// blobs. The senders' clock is 12 days behind the bus's (t0): the date
// folder is the bus's day, never the sender's.
func TestRecorderAzureBlob(t *testing.T) {
	az, r := azuriteRig(t, "azblob://recordings?prefix=calls/")
	rep := r.replica(t)
	dayBefore := time.Now().UTC().Format("2006-01-02")
	calls := make([]*acsCall, 24)
	var wg sync.WaitGroup
	for i := range calls {
		calls[i] = &acsCall{id: fmt.Sprintf("8:acs:1d0c-44a2+blob/%d", i), parts: []string{fmt.Sprintf("4:+1425555%04d", i), "8:acs:00000000-aaaa_0000002a"},
			n: 80, skip: func(p, f int) bool { return p == 1 && f%9 == i%9 }}
		wg.Go(func() { calls[i].stream(t, r.rcv.Addr, nil) })
	}
	wg.Wait()
	dayAfter := time.Now().UTC().Format("2006-01-02")
	for _, c := range calls {
		conformance.WaitFor(t, "the recording of "+c.id, func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	}
	for _, c := range calls {
		tok := string(codec.EncodeToken(c.id))
		var dir, prefix string
		var md map[string]map[string]*string
		for _, day := range []string{dayBefore, dayAfter} { // the bus's day, whichever side of midnight
			prefix = "calls/" + day + "/" + tok + "/"
			if dir, md = az.download(t, "recordings", prefix); len(md) > 0 {
				break
			}
		}
		if len(md) != 3 {
			t.Fatalf("blobs under %s: %v (the date folder must be the bus's day, not the sender's %s)", prefix, md, t0.Format("2006-01-02"))
		}
		c.check(t, dir)
		m := map[string]string{}
		for k, v := range md["mix.wav"] {
			if v != nil {
				m[k] = *v
			}
		}
		checkStored(t, r, c, m, "azblob://recordings/"+prefix)
	}
	if got := conformance.Metric(t, rep.reg, "audiofan_recorder_uploads_pending", ""); got != 0 {
		t.Errorf("%v uploads pending after the recordings", got)
	}
}

// The store is killed before a call ends, and the replica recording it is
// killed while its upload waits: nothing is lost. The replica is unready
// while the store is down, the upload is retried and counted, and once
// the emulator is back the replica that took the call over uploads it
// whole, once.
func TestRecorderAzureBlobOutage(t *testing.T) {
	az, r := azuriteRig(t, "azblob://recordings")
	a := r.replica(t)
	// Azurite saves its container list every few seconds: a kill right
	// after the container's creation forgets it (the emulator's, not
	// audiofan's); wait for the save.
	time.Sleep(6 * time.Second)
	az.kill()
	c := &acsCall{id: "4:+14255550199-outage", parts: []string{"8:acs:alice", "8:acs:bob"}, n: 60, skip: func(p, i int) bool { return false }}
	c.stream(t, r.rcv.Addr, nil)
	conformance.WaitFor(t, "a failed upload", func() bool {
		return conformance.Metric(t, a.reg, "audiofan_recorder_upload_failures_total", "") > 0
	})
	conformance.WaitFor(t, "the replica unready", func() bool { return a.g.Ready() != nil })
	t.Logf("unready while the store is down: %v", a.g.Ready())
	a.kill()
	b := r.start(t) // takes the call over while the store is still down
	conformance.WaitFor(t, "the takeover's upload failing too", func() bool {
		return conformance.Metric(t, b.reg, "audiofan_recorder_upload_failures_total", "") > 0
	})
	az.start()
	conformance.WaitFor(t, "the recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	var dir string
	for _, day := range []time.Time{time.Now(), time.Now().Add(-24 * time.Hour)} { // the bus's day, whichever side of midnight
		var md map[string]map[string]*string
		if dir, md = az.download(t, "recordings", day.UTC().Format("2006-01-02")+"/"+string(codec.EncodeToken(c.id))+"/"); len(md) == 3 {
			break
		}
	}
	c.check(t, dir)
	conformance.WaitFor(t, "the replica ready again", func() bool { return b.g.Ready() == nil })
}

// Bad settings are a clear error and an unready recorder, never a crash:
// a container that does not exist, a key that is not the account's, and
// credentials that may only read.
func TestRecorderAzureBlobRefused(t *testing.T) {
	az := startAzurite(t)
	if _, err := az.client(t).CreateContainer(context.Background(), "readonly", nil); err != nil {
		t.Fatal(err)
	}
	cred, err := azblob.NewSharedKeyCredential(devAccount, devKey)
	if err != nil {
		t.Fatal(err)
	}
	q, err := sas.BlobSignatureValues{Protocol: sas.ProtocolHTTPSandHTTP, ExpiryTime: time.Now().Add(time.Hour), ContainerName: "readonly",
		Permissions: to.Ptr(sas.ContainerPermissions{Read: true, List: true}).String()}.SignWithSharedKey(cred)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, store string
		env         map[string]string
		want        string
	}{
		{"no such container", "azblob://missing", map[string]string{"AZURE_STORAGE_CONNECTION_STRING": az.connector}, "no such container"},
		{"wrong key", "azblob://readonly", map[string]string{"AZURE_STORAGE_CONNECTION_STRING": strings.Replace(az.connector, devKey, wrongKey, 1)}, "credentials are refused"},
		{"read-only SAS", fmt.Sprintf("azblob://readonly?protocol=http&domain=127.0.0.1:%d&localemu=true", az.port),
			map[string]string{"AZURE_STORAGE_ACCOUNT": devAccount, "AZURE_STORAGE_SAS_TOKEN": q.Encode()}, "may not write"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := newRig(t)
			r.cfg.Store = tc.store
			rep := r.start(t)
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				err := rep.g.Ready()
				if err != nil && strings.Contains(err.Error(), tc.want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("not unready with %q: %v", tc.want, err)
				}
			}
			err := rep.g.Ready()
			t.Logf("unready: %v", err)
			if strings.Contains(err.Error(), "sig=") || strings.Contains(err.Error(), devKey) || strings.Contains(err.Error(), wrongKey) {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
}

// Files of many pieces (11 MiB: six Azure blocks of 2 MiB, each checked
// against its CRC64, and three S3 parts of 5 MiB, each with its CRC32),
// uploaded as the recorder uploads, come back byte for byte.
func TestBlobManyPieces(t *testing.T) {
	data := make([]byte, 11<<20+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "large.wav")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("azure", func(t *testing.T) {
		az := startAzurite(t)
		if _, err := az.client(t).CreateContainer(context.Background(), "recordings", nil); err != nil {
			t.Fatal(err)
		}
		t.Setenv("AZURE_STORAGE_CONNECTION_STRING", az.connector)
		if err := recording.PutBlob(context.Background(), "azblob://recordings", "x/large.wav", path); err != nil {
			t.Fatal(err)
		}
		dir, _ := az.download(t, "recordings", "x/")
		if got, err := os.ReadFile(filepath.Join(dir, "large.wav")); err != nil || !bytes.Equal(got, data) {
			t.Errorf("the blob differs from the file (%d bytes of %d, %v)", len(got), len(data), err)
		}
	})
	t.Run("s3", func(t *testing.T) {
		s3 := conformance.StartS3(t, "recordings")
		if err := recording.PutBlob(context.Background(), s3.URL("recordings", ""), "x/large.wav", path); err != nil {
			t.Fatal(err)
		}
		if got := s3.Objects("recordings", "x/")["large.wav"].Data; !bytes.Equal(got, data) {
			t.Errorf("the object differs from the file (%d bytes of %d)", len(got), len(data))
		}
	})
}

// checkStored checks what a blob store holds of a call beside its audio:
// mix.wav's metadata md (values URL-escaped, as gocloud writes them), and
// the recording event naming each file as an object under where
// (scheme://bucket/prefix/date/token/) and as no path on disk.
func checkStored(t *testing.T, r *rig, c *acsCall, md map[string]string, where string) {
	t.Helper()
	get := func(k string) string {
		v, err := url.PathUnescape(md[k])
		if err != nil {
			t.Errorf("metadata %s=%q: %v", k, md[k], err)
		}
		return v
	}
	if get("callid") != c.id || get("calltoken") != string(codec.EncodeToken(c.id)) || get("samplerate") != "16000" ||
		get("start") != t0.Format(time.RFC3339Nano) || get("audiofanversion") == "" || get("participants") != strings.Join(c.parts, ",") {
		t.Errorf("mix.wav's metadata: %v", md)
	}
	ev := recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)[0]
	for _, f := range ev.Data["files"].([]any) {
		f := f.(map[string]any)
		if want := where + f["name"].(string); f["object"] != want || f["path"] != "" {
			t.Errorf("event file %v, want object %s and no path", f, want)
		}
	}
}
