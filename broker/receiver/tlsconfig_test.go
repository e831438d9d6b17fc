package receiver_test

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/broker/receiver"
)

// A certificate rotated in place (as cert-manager does) is served without a
// restart; a broken replacement leaves the old one in service.
func TestCertReloads(t *testing.T) {
	_, certA, keyA := natstest.Certs(t)
	_, certB, keyB := natstest.Certs(t)
	get, recheck, err := receiver.CertReloader(receiver.TLSConfig{Cert: certA, Key: keyA})
	if err != nil {
		t.Fatal(err)
	}
	first := get()

	copyFile := func(from, to string, at time.Time) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(to, at, at); err != nil {
			t.Fatal(err)
		}
	}
	later := time.Now().Add(time.Minute)
	copyFile(keyB, keyA, later)
	copyFile(certB, certA, later)
	recheck()
	second := get()
	if bytes.Equal(first, second) {
		t.Fatal("the rotated certificate is not served")
	}

	if err := os.WriteFile(keyA, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	evenLater := later.Add(time.Minute)
	_ = os.Chtimes(certA, evenLater, evenLater)
	recheck()
	if !bytes.Equal(get(), second) {
		t.Error("a broken replacement displaced the working certificate")
	}
}
