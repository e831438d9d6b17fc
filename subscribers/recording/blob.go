package recording

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob" // azblob:// URLs
	_ "gocloud.dev/blob/s3blob"  // s3:// URLs
	"gocloud.dev/gcerrors"
)

// Blob stores: recordings uploaded to Azure Blob Storage or S3 through
// gocloud.dev/blob, whose URL openers take credentials the way each
// ecosystem does (AZURE_STORAGE_CONNECTION_STRING, an account and key or
// SAS, or a managed identity through azidentity's default chain; the AWS
// default chain for S3), and whose writers commit a blob only when it is
// whole (Azure's block list, S3's multipart completion): a blob is never
// visible under its name half written.

// blobSchemes are the URL schemes AUDIOFAN_RECORDING_STORE takes for a blob
// store.
var blobSchemes = []string{"azblob", "s3"}

// isBlobURL says whether a store setting names a blob store.
func isBlobURL(store string) bool {
	scheme, _, ok := strings.Cut(store, "://")
	if !ok {
		return false
	}
	for _, s := range blobSchemes {
		if scheme == s {
			return true
		}
	}
	return false
}

// ErrStoreSetting marks a blob store setting that cannot work: a bad URL,
// a missing container, refused credentials or no write permission. The
// recorder stays unready with it until the store accepts a probe.
var ErrStoreSetting = errors.New("recording store")

// errBlobMismatch is a blob the store holds otherwise than it was sent:
// the upload failed, and is made again.
var errBlobMismatch = errors.New("the stored blob differs from the recording")

// blobStore is the bucket recordings go to.
type blobStore struct {
	bucket *blob.Bucket
	where  string // scheme://bucket/prefix, for logs and events: no query, so no secret
	// part is the size of the pieces an upload is sent in, each held in
	// memory while it goes (two at a time).
	part int

	mu      sync.Mutex
	checked error // the last probe's result
}

// openBlobStore opens the bucket a blob URL names. It does not reach the
// store: check does.
func openBlobStore(ctx context.Context, raw string) (*blobStore, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: AUDIOFAN_RECORDING_STORE: not a blob URL (azblob://<container> or s3://<bucket>)", ErrStoreSetting)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: AUDIOFAN_RECORDING_STORE: credentials go in the environment (AZURE_STORAGE_CONNECTION_STRING, AWS_…), never in the URL", ErrStoreSetting)
	}
	var b *blob.Bucket
	if cs := os.Getenv("AZURE_STORAGE_CONNECTION_STRING"); u.Scheme == "azblob" && cs != "" && !hasAny(u.Query(), "domain", "protocol", "localemu", "storage_account") {
		// The connection string names its own endpoint (Azure's, or
		// Azurite's http://127.0.0.1:10000/devstoreaccount1): used as it
		// is, as Azure's own tools do, so nothing else needs setting.
		b, err = openConnectionString(ctx, cs, u)
	} else {
		b, err = blob.OpenBucket(ctx, raw)
	}
	if err != nil {
		// The opener's error may quote the URL: keep only what it says.
		return nil, fmt.Errorf("%w: AUDIOFAN_RECORDING_STORE %s://%s: %s", ErrStoreSetting, u.Scheme, u.Host, redact(err, raw))
	}
	where := u.Scheme + "://" + u.Host
	if p := u.Query().Get("prefix"); p != "" {
		where += "/" + strings.TrimSuffix(p, "/")
	}
	// The drivers' defaults hold up to 5 pieces of 8 MiB (Azure) per
	// upload in memory, for a throughput a recording does not need: with
	// 10 uploads waiting at once the heap in use was 1.23× the disk
	// store's; with two pieces of 2 MiB the peak live heap is 0.75 – 1.17×
	// (BenchmarkUploads). Azure: 2 MiB blocks (50,000 of them: 100 GB,
	// past a WAV's 4 GiB). S3 wants 5 MiB parts at least.
	part := 2 << 20
	if u.Scheme == "s3" {
		part = 5 << 20
	}
	return &blobStore{bucket: b, where: where, part: part}, nil
}

func hasAny(q url.Values, keys ...string) bool {
	for _, k := range keys {
		if q.Has(k) {
			return true
		}
	}
	return false
}

// openConnectionString opens the container an azblob URL names through the
// Azure SDK's connection string client, with the URL's prefix.
func openConnectionString(ctx context.Context, cs string, u *url.URL) (*blob.Bucket, error) {
	c, err := container.NewClientFromConnectionString(cs, u.Host, nil)
	if err != nil {
		return nil, errors.New("AZURE_STORAGE_CONNECTION_STRING is not a connection string") // its text holds the key
	}
	b, err := azureblob.OpenBucket(ctx, c, nil)
	if err != nil {
		return nil, err
	}
	for k := range u.Query() {
		if k != "prefix" {
			_ = b.Close()
			return nil, fmt.Errorf("the URL option %q does not go with AZURE_STORAGE_CONNECTION_STRING (only prefix does)", k)
		}
	}
	if p := u.Query().Get("prefix"); p != "" {
		b = blob.PrefixedBucket(b, p)
	}
	return b, nil
}

// redact is err's text without the URL's query (where a SAS could be).
func redact(err error, raw string) string {
	s := err.Error()
	if _, q, ok := strings.Cut(raw, "?"); ok && q != "" {
		s = strings.ReplaceAll(s, q, "…")
	}
	return s
}

// check writes and removes a probe blob: the container exists, the
// credentials are accepted, and they may write.
func (s *blobStore) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var id [8]byte
	_, _ = rand.Read(id[:])
	key := ".audiofan-probe/" + hex.EncodeToString(id[:])
	err := s.bucket.WriteAll(ctx, key, []byte("audiofan write probe\n"), &blob.WriterOptions{ContentType: "text/plain"})
	if err == nil {
		err = s.bucket.Delete(ctx, key)
	}
	if err != nil {
		// The SDKs' errors run to a page (the response's XML): the first
		// line says enough, and the rest goes to the debug log.
		err = fmt.Errorf("%w %s: %s: %s", ErrStoreSetting, s.where, storeFault(err), firstLine(err))
	}
	s.mu.Lock()
	s.checked = err
	s.mu.Unlock()
	return err
}

// storeFault says in words what a store's error means to an operator.
func storeFault(err error) string {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusNotFound:
			return "no such container or bucket (" + re.ErrorCode + ")"
		case http.StatusForbidden, http.StatusUnauthorized:
			return "the credentials are refused, or may not write there (" + re.ErrorCode + ")"
		}
	}
	if errors.Is(err, errBlobMismatch) {
		return "the store holds other bytes than were sent"
	}
	switch gcerrors.Code(err) {
	case gcerrors.NotFound:
		return "no such container or bucket"
	case gcerrors.PermissionDenied:
		return "the credentials are refused, or may not write there"
	case gcerrors.DeadlineExceeded, gcerrors.Unknown, gcerrors.Internal:
		return "the store does not answer"
	}
	return "the store refused the probe"
}

func firstLine(err error) string {
	l, _, _ := strings.Cut(err.Error(), "\n")
	return strings.TrimSpace(l)
}

// ready is the last probe's verdict.
func (s *blobStore) ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.checked
}

// watch probes the store until it accepts one, then again whenever an
// upload failed, so the replica's readiness follows the store.
func (s *blobStore) watch(ctx context.Context, failed <-chan struct{}) {
	for {
		wait := 10 * time.Second
		if s.check(ctx) == nil {
			select {
			case <-failed:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
	}
}

// put uploads a file as key with its metadata, committed whole, checked on
// the way (see below) and read back: a blob the store holds otherwise than
// the file is removed and the upload fails, to be made again. When again
// (the call's End is tried again after a failure), a blob the store holds
// already with the file's size and MD5 is kept as it is: a store that
// failed on a call's third file is not sent the first two once more at
// every retry. A blob whose MD5 the store does not give (an S3 object
// uploaded in parts) is uploaded again.
func (s *blobStore) put(ctx context.Context, key, path string, md map[string]string, again bool) (uploaded bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := md5.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return false, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	sum := h.Sum(nil)
	if again {
		if a, err := s.bucket.Attributes(ctx, key); err == nil && a.Size == size && len(a.MD5) > 0 && bytes.Equal(a.MD5, sum) {
			return false, nil
		}
	}
	opts := &blob.WriterOptions{ContentType: "audio/wav", ContentMD5: sum, Metadata: md, BufferSize: s.part, MaxConcurrency: 2}
	if size > int64(s.part) {
		opts.BeforeWrite = perBlockCRC64
	}
	w, err := s.bucket.NewWriter(ctx, key, opts)
	if err != nil {
		return false, err
	}
	if _, err := io.Copy(w, f); err != nil {
		_ = w.Close()
		return false, err
	}
	if err := w.Close(); err != nil { // the commit: before it nothing is visible under key
		return false, err
	}
	// Read back what the store holds. gocloud has checked the bytes
	// written against ContentMD5; Azure checks a one-piece upload against
	// it and stores it with the blob, and a file of many blocks block by
	// block (CRC64). S3 checks the SDK's CRC32 of every part, and a
	// whole-object upload's ETag is its MD5, which gocloud gives as MD5:
	// where the store gives one, it must be this file's.
	a, err := s.bucket.Attributes(ctx, key)
	if err != nil {
		return false, fmt.Errorf("reading back %s: %w", key, err)
	}
	if len(a.MD5) > 0 && !bytes.Equal(a.MD5, sum) {
		_ = s.bucket.Delete(ctx, key) // not left under its name until the retry replaces it
		return false, fmt.Errorf("%w: %s holds MD5 %x, the file has %x", errBlobMismatch, key, a.MD5, sum)
	}
	s.mu.Lock()
	s.checked = nil // the store takes uploads again
	s.mu.Unlock()
	return true, nil
}

// perBlockCRC64 has Azure check every block of an upload of many against
// a CRC64 the SDK computes as it goes. A file of one piece goes in one Put
// Blob, checked whole against its Content-MD5 (Azurite refuses a wrong one,
// Md5Mismatch; real Azure was not tried here), and a CRC64 beside it is
// refused (BothCrc64AndMd5HeaderPresent); a block list it does not
// check against the MD5 it stores. S3's writer takes no such option (the
// AWS SDK sends a CRC32 with every part anyway).
func perBlockCRC64(as func(any) bool) error {
	var o *azblob.UploadStreamOptions
	if as(&o) {
		o.TransactionalValidation = azblobblob.TransferValidationTypeComputeCRC64()
	}
	return nil
}

// blobKey is a recording file's name in the store: the day the bus
// stored the call's first message (UTC; the sender's clock is not
// trusted for it), the call's token (safe in any store: A-Z a-z 0-9 - _) and
// the file, under the URL's prefix.
func blobKey(day time.Time, callToken, file string) string {
	return day.UTC().Format("2006-01-02") + "/" + callToken + "/" + file
}

func (s *blobStore) Close() error { return s.bucket.Close() }
