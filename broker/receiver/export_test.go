package receiver

import "time"

// SetUnknownKIDEvery shortens the unknown-key refresh limit for a test and
// returns the function that restores it.
func SetUnknownKIDEvery(d time.Duration) func() {
	old := unknownKIDEvery
	unknownKIDEvery = d
	return func() { unknownKIDEvery = old }
}

// CertReloader exposes the listener's certificate reloader to tests: get
// returns the leaf served now, recheck makes the next get look at the files
// at once.
func CertReloader(cfg TLSConfig) (get func() []byte, recheck func(), err error) {
	r, err := newCertReloader(cfg)
	if err != nil {
		return nil, nil, err
	}
	get = func() []byte { c, _ := r.get(nil); return c.Certificate[0] }
	recheck = func() { r.mu.Lock(); r.checked = time.Time{}; r.mu.Unlock() }
	return get, recheck, nil
}
