package recording

import "context"

// PutBlob uploads the file at path as key into the store a blob URL names,
// as the recorder uploads a recording (pieces, checks, read-back), for
// tests of files larger than a test's calls make.
func PutBlob(ctx context.Context, store, key, path string) error {
	s, err := openBlobStore(ctx, store)
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = s.put(ctx, key, path, map[string]string{"test": "large"}, false)
	return err
}
