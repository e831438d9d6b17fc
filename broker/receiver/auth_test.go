package receiver_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/broker/receiver"
)

const acsIssuer = "https://acscallautomation.communication.azure.com"

// jwksServer publishes RSA keys as ACS does, and can be made to fail.
type jwksServer struct {
	mu   sync.Mutex
	keys map[string]*rsa.PrivateKey
	down bool
	hits int
}

func (j *jwksServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.hits++
	if j.down {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	for kid, k := range j.keys {
		set.Keys = append(set.Keys, map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
			"n": base64.RawURLEncoding.EncodeToString(k.N.Bytes()), "e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes())})
	}
	_ = json.NewEncoder(w).Encode(set)
}

func (j *jwksServer) set(down bool, keys map[string]*rsa.PrivateKey) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.down, j.keys = down, keys
}

func rsaKey(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// token signs claims for ACS's issuer and audience aud, valid now.
func token(t *testing.T, key *rsa.PrivateKey, kid string, modify func(*jwt.RegisteredClaims)) string {
	t.Helper()
	now := time.Now()
	c := jwt.RegisteredClaims{Issuer: acsIssuer, Audience: jwt.ClaimStrings{"res-2"}, IssuedAt: jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}
	if modify != nil {
		modify(&c)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func jwtHarness(t *testing.T, jwks *jwksServer) *harness {
	srv := httptest.NewServer(jwks)
	t.Cleanup(srv.Close)
	t.Cleanup(receiver.SetUnknownKIDEvery(10 * time.Millisecond))
	return newHarness(t, func(c *receiver.Config) {
		c.Auth = receiver.AuthConfig{Mode: "jwt", Audience: []string{"res-1", "res-2"}, Issuer: acsIssuer, JWKSURL: srv.URL,
			Leeway: 5 * time.Second, Refresh: time.Hour}
	})
}

// upgrade tries a socket with the given Authorization header and returns
// the HTTP status (101 when accepted).
func (h *harness) upgrade(authorization string) int {
	h.t.Helper()
	hdr := http.Header{}
	if authorization != "" {
		hdr.Set("Authorization", authorization)
	}
	c, resp, err := websocket.DefaultDialer.Dial(h.wsURL("?callId=auth"), hdr)
	if err == nil {
		c.Close()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		h.t.Fatalf("dial: %v", err)
	}
	return resp.StatusCode
}

func TestJWTAuth(t *testing.T) {
	k1, k2, k3 := rsaKey(t), rsaKey(t), rsaKey(t)
	jwks := &jwksServer{keys: map[string]*rsa.PrivateKey{"k1": k1}}
	h := jwtHarness(t, jwks)

	pubDER, _ := x509.MarshalPKIXPublicKey(&k1.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Issuer: acsIssuer, Audience: jwt.ClaimStrings{"res-2"},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))})
	hs.Header["kid"] = "k1"
	hsToken, _ := hs.SignedString(pubPEM) // the classic confusion attack
	none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Issuer: acsIssuer, Audience: jwt.ClaimStrings{"res-2"},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))})
	none.Header["kid"] = "k1"
	noneToken, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)

	for _, tc := range []struct {
		name, auth, reason string
	}{
		{"valid", "Bearer " + token(t, k1, "k1", nil), ""},
		{"other audience of ours", "Bearer " + token(t, k1, "k1", func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"res-1"} }), ""},
		{"missing header", "", "missing_token"},
		{"not bearer", "Basic abc", "missing_token"},
		{"garbage", "Bearer abc.def", "malformed"},
		{"expired", "Bearer " + token(t, k1, "k1", func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute)) }), "expired"},
		{"expired within leeway", "Bearer " + token(t, k1, "k1", func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-2 * time.Second)) }), ""},
		{"no expiry", "Bearer " + token(t, k1, "k1", func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil }), "claims"},
		{"not yet valid", "Bearer " + token(t, k1, "k1", func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(10 * time.Minute)) }), "not_yet_valid"},
		{"wrong audience", "Bearer " + token(t, k1, "k1", func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"someone-else"} }), "audience"},
		{"wrong issuer", "Bearer " + token(t, k1, "k1", func(c *jwt.RegisteredClaims) { c.Issuer = "https://evil.example" }), "issuer"},
		{"signed by another key", "Bearer " + token(t, k2, "k1", nil), "signature"},
		{"alg none", "Bearer " + noneToken, "signature"},
		{"HS256 with the public key", "Bearer " + hsToken, "signature"},
	} {
		want := http.StatusUnauthorized
		if tc.reason == "" {
			want = http.StatusSwitchingProtocols
		}
		before := h.counter("audiofan_receiver_auth_failures_total", "reason", tc.reason)
		if got := h.upgrade(tc.auth); got != want {
			t.Errorf("%s: HTTP %d, want %d", tc.name, got, want)
		}
		if tc.reason != "" && h.counter("audiofan_receiver_auth_failures_total", "reason", tc.reason) != before+1 {
			t.Errorf("%s: not counted as %q", tc.name, tc.reason)
		}
	}

	// Key rotation: an unknown key id is refused until the key set has it,
	// and then fetched at once.
	if got := h.upgrade("Bearer " + token(t, k2, "k2", nil)); got != http.StatusUnauthorized || h.counter("audiofan_receiver_auth_failures_total", "reason", "unknown_key") != 1 {
		t.Errorf("unknown kid: HTTP %d", got)
	}
	jwks.set(false, map[string]*rsa.PrivateKey{"k1": k1, "k2": k2})
	time.Sleep(20 * time.Millisecond) // past the unknown-key refresh limit
	if got := h.upgrade("Bearer " + token(t, k2, "k2", nil)); got != http.StatusSwitchingProtocols {
		t.Errorf("after rotation: HTTP %d", got)
	}

	// The key service goes away: the keys we have stay in use.
	jwks.set(true, nil)
	time.Sleep(20 * time.Millisecond)
	if got := h.upgrade("Bearer " + token(t, k3, "k3", nil)); got != http.StatusUnauthorized {
		t.Errorf("unknown kid while JWKS is down: HTTP %d", got)
	}
	if got := h.upgrade("Bearer " + token(t, k1, "k1", nil)); got != http.StatusSwitchingProtocols {
		t.Errorf("known kid while JWKS is down: HTTP %d", got)
	}
}

// The key service is down when the receiver starts: it starts anyway,
// refuses tokens it cannot check, and takes them once the keys arrive.
func TestJWTKeysUnreachableAtStart(t *testing.T) {
	k1 := rsaKey(t)
	jwks := &jwksServer{down: true}
	h := jwtHarness(t, jwks)
	if got := h.upgrade("Bearer " + token(t, k1, "k1", nil)); got != http.StatusUnauthorized {
		t.Errorf("without keys: HTTP %d", got)
	}
	jwks.set(false, map[string]*rsa.PrivateKey{"k1": k1})
	time.Sleep(20 * time.Millisecond)
	if got := h.upgrade("Bearer " + token(t, k1, "k1", nil)); got != http.StatusSwitchingProtocols {
		t.Errorf("once the keys are up: HTTP %d", got)
	}
}

// jwt+secret needs both.
func TestJWTAndSecret(t *testing.T) {
	k1 := rsaKey(t)
	srv := httptest.NewServer(&jwksServer{keys: map[string]*rsa.PrivateKey{"k1": k1}})
	t.Cleanup(srv.Close)
	h := newHarness(t, func(c *receiver.Config) {
		c.Auth = receiver.AuthConfig{Mode: "jwt+secret", Secret: "0123456789abcdef!", Audience: []string{"res-2"}, Issuer: acsIssuer,
			JWKSURL: srv.URL, Refresh: time.Hour}
	})
	dial := func(query, tok string) int {
		c, resp, err := websocket.DefaultDialer.Dial(h.wsURL(query), http.Header{"Authorization": {"Bearer " + tok}})
		if err == nil {
			c.Close()
			return http.StatusSwitchingProtocols
		}
		return resp.StatusCode
	}
	good := token(t, k1, "k1", nil)
	if got := dial("?token=0123456789abcdef!", good); got != http.StatusSwitchingProtocols {
		t.Errorf("both: HTTP %d", got)
	}
	if got := dial("?token=wrong", good); got != http.StatusUnauthorized {
		t.Errorf("JWT without the secret: HTTP %d", got)
	}
	if got := dial("?token=0123456789abcdef!", "x"); got != http.StatusUnauthorized {
		t.Errorf("secret without a JWT: HTTP %d", got)
	}
}
