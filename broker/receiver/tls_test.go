package receiver_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/broker/receiver"
)

func TestTLSListener(t *testing.T) {
	ca, cert, key := natstest.Certs(t)
	h := newHarness(t, func(c *receiver.Config) { c.TLS = receiver.TLSConfig{Cert: cert, Key: key} })
	pem, _ := os.ReadFile(ca)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: pool}}
	wss := strings.Replace(h.wsURL("?callId=secure"), "ws://", "wss://", 1)
	c, _, err := d.Dial(wss, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := &fakeACS{t: t, c: c}
	a.audioMetadata("s", 16000)
	for i := 0; i < 10; i++ {
		a.audio(time.Now(), "p", frameOf(0, i, 640), false)
	}
	a.close()
	if n := frames(h.readStream(1)); n != 10 {
		t.Errorf("%d of 10 frames over TLS", n)
	}
	if _, _, err := websocket.DefaultDialer.Dial(h.wsURL("?callId=plain"), nil); err == nil {
		t.Error("a plain ws:// upgrade was accepted on a TLS listener")
	}
}
