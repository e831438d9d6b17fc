package console

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/audiofan/audiofan/codec"
	"github.com/nats-io/nats.go/jetstream"
)

// serveRecording serves one file the call's recording event lists: from
// AUDIOFAN_DATA_DIR when it is there (with ranges, so the page can seek),
// else from the Object Store bucket or the blob store the event names. Only listed files are
// served, so no path from the request reaches the disk.
func (c *Console) serveRecording(w http.ResponseWriter, r *http.Request) {
	v, ok := c.index.view(codec.Token(r.PathValue("call")), time.Now())
	name := r.PathValue("file")
	if !ok || v.Recording == nil {
		http.Error(w, "no recording of this call", http.StatusNotFound)
		return
	}
	i := slices.IndexFunc(v.Recording.Files, func(f codec.RecordingFile) bool { return f.Name == name })
	if i < 0 {
		http.Error(w, "no such file", http.StatusNotFound)
		return
	}
	rel, obj := v.Recording.Files[i].Path, v.Recording.Files[i].Object
	w.Header().Set("Content-Type", "audio/wav")
	if r.URL.Query().Has("download") {
		w.Header().Set("Content-Disposition", `attachment; filename="`+string(v.Token)+"-"+name+`"`)
	}
	if rel != "" && c.d.DataDir != "" && filepath.IsLocal(rel) {
		if fh, err := os.Open(filepath.Join(c.d.DataDir, filepath.FromSlash(rel))); err == nil {
			defer fh.Close()
			if st, err := fh.Stat(); err == nil {
				http.ServeContent(w, r, name, st.ModTime(), fh)
				return
			}
		}
	}
	if strings.Contains(obj, "://") { // a blob store's URL
		if c.d.Blobs == nil {
			http.Error(w, "the recording is in "+schemeOf(obj)+" storage, which this console is not given (AUDIOFAN_CONSOLE_RECORDINGS)", http.StatusNotFound)
			return
		}
		fh, mod, err := c.d.Blobs.OpenBlob(r.Context(), obj)
		if err == nil {
			defer fh.Close()
			http.ServeContent(w, r, name, mod, fh) // ranges: the page seeks
			return
		}
		if !errors.Is(err, fs.ErrNotExist) {
			c.warn.Warn("console: recording from the blob store", "err", err)
			http.Error(w, "the blob store did not give the recording", http.StatusBadGateway)
			return
		}
	} else if bucket, key, ok := strings.Cut(obj, "/"); ok {
		if err := c.serveObject(r.Context(), w, bucket, key); err == nil {
			return
		} else if !errors.Is(err, jetstream.ErrObjectNotFound) && !errors.Is(err, jetstream.ErrBucketNotFound) {
			c.warn.Warn("console: recording from the object store", "object", obj, "err", err)
		}
	}
	http.Error(w, "the file is not on this console's disk nor in the store its recording event names", http.StatusNotFound)
}

// schemeOf is a store URL's scheme, which names the kind of store.
func schemeOf(u string) string {
	s, _, _ := strings.Cut(u, "://")
	return s
}

func (c *Console) serveObject(ctx context.Context, w http.ResponseWriter, bucket, key string) error {
	store, err := c.d.JS.ObjectStore(ctx, bucket)
	if err != nil {
		return err
	}
	res, err := store.Get(ctx, key)
	if err != nil {
		return err
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Length", strconv.FormatUint(info.Size, 10))
	_, _ = io.Copy(w, res) // a failure here is the browser going away
	return nil
}
