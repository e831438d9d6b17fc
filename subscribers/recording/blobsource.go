package recording

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"gocloud.dev/gcerrors"
)

// BlobStore is the blob store URL the recordings go to (azblob://… or
// s3://…), or "" when they go to the disk or the Object Store: what the
// console beside this recorder plays them from.
func (c Config) BlobStore() string {
	if isBlobURL(c.Store) {
		return c.Store
	}
	return ""
}

// BlobSource reads back the recordings a blob store holds, by the object
// URL their recording event names. It opens only objects of the one store
// it was given (a URL from an event never chooses where to connect, nor
// with which credentials).
type BlobSource struct {
	s *blobStore
}

// OpenBlobSource opens the store a blob URL names, with the credentials of
// the environment, as the recorder does; it does not reach the store yet.
func OpenBlobSource(ctx context.Context, store string) (*BlobSource, error) {
	if !isBlobURL(store) {
		return nil, fmt.Errorf("%w: %q is not a blob store URL (azblob://<container> or s3://<bucket>)", ErrStoreSetting, store)
	}
	s, err := openBlobStore(ctx, store)
	if err != nil {
		return nil, err
	}
	return &BlobSource{s: s}, nil
}

// OpenBlob opens the object an event names, to read and seek in: an object
// outside this store, or missing, is fs.ErrNotExist.
func (b *BlobSource) OpenBlob(ctx context.Context, object string) (io.ReadSeekCloser, time.Time, error) {
	key, ok := strings.CutPrefix(object, b.s.where+"/")
	if !ok || key == "" {
		return nil, time.Time{}, fmt.Errorf("%s is not in %s: %w", object, b.s.where, fs.ErrNotExist)
	}
	r, err := b.s.bucket.NewReader(ctx, key, nil)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, time.Time{}, fmt.Errorf("%s: %w", object, fs.ErrNotExist)
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%s: %s", object, firstLine(err))
	}
	return r, r.ModTime(), nil
}

// Close closes the store.
func (b *BlobSource) Close() error { return b.s.Close() }
