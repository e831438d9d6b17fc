package receiver

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// AuthConfig says how ACS proves who it is when it opens a socket.
type AuthConfig struct {
	Mode      string        `env:"AUDIOFAN_AUTH" help:"how ACS is authenticated: jwt, secret, jwt+secret or none (default none on a loopback listener; must be set on any other)"`
	Secret    string        `env:"AUDIOFAN_AUTH_SECRET" help:"shared secret ACS sends as the token query parameter or the last path segment (/ws/<secret>)"`
	Audience  []string      `env:"AUDIOFAN_AUTH_AUDIENCE" envSeparator:"," help:"accepted JWT audiences: the ACS resources' immutable resource ids (comma-separated)"`
	Issuer    string        `env:"AUDIOFAN_AUTH_ISSUER" envDefault:"https://acscallautomation.communication.azure.com" help:"required JWT issuer"`
	JWKSURL   string        `env:"AUDIOFAN_AUTH_JWKS_URL" envDefault:"https://acscallautomation.communication.azure.com/calling/keys" help:"where the signing keys are published"`
	OpenIDURL string        `env:"AUDIOFAN_AUTH_OPENID_URL" help:"OpenID configuration to take jwks_uri from (overrides AUDIOFAN_AUTH_JWKS_URL when it answers)"`
	Leeway    time.Duration `env:"AUDIOFAN_AUTH_LEEWAY" envDefault:"60s" help:"clock skew allowed on exp and nbf"`
	Refresh   time.Duration `env:"AUDIOFAN_AUTH_JWKS_REFRESH" envDefault:"1h" help:"how often the signing keys are fetched again (and at most every 30s on an unknown key id)"`
}

func (c AuthConfig) jwt() bool    { return c.Mode == "jwt" || c.Mode == "jwt+secret" }
func (c AuthConfig) secret() bool { return c.Mode == "secret" || c.Mode == "jwt+secret" }

// validate checks the mode against the listener's address.
func (c *AuthConfig) validate(loopback bool, addr string) error {
	switch c.Mode {
	case "":
		if !loopback {
			return fmt.Errorf("AUDIOFAN_AUTH must be set when AUDIOFAN_HTTP_ADDR (%s) is not loopback: jwt, secret, jwt+secret, or none to accept anyone", addr)
		}
		c.Mode = "none"
	case "none", "jwt", "secret", "jwt+secret":
	default:
		return fmt.Errorf("AUDIOFAN_AUTH %q: want jwt, secret, jwt+secret or none", c.Mode)
	}
	if c.secret() && len(c.Secret) < 16 {
		return fmt.Errorf("AUDIOFAN_AUTH=%s needs AUDIOFAN_AUTH_SECRET of at least 16 characters", c.Mode)
	}
	if c.jwt() {
		var aud []string
		for _, a := range c.Audience {
			if a = strings.TrimSpace(a); a != "" {
				aud = append(aud, a)
			}
		}
		c.Audience = aud
		switch {
		case len(aud) == 0:
			return fmt.Errorf("AUDIOFAN_AUTH=%s needs AUDIOFAN_AUTH_AUDIENCE: the ACS resource's immutable resource id", c.Mode)
		case c.Issuer == "":
			return errors.New("AUDIOFAN_AUTH_ISSUER is empty")
		case c.JWKSURL == "" && c.OpenIDURL == "":
			return errors.New("AUDIOFAN_AUTH_JWKS_URL or AUDIOFAN_AUTH_OPENID_URL is needed")
		case c.Leeway < 0 || c.Refresh < time.Minute:
			return errors.New("AUDIOFAN_AUTH_LEEWAY must not be negative and AUDIOFAN_AUTH_JWKS_REFRESH at least 1m")
		}
	}
	return nil
}

// Reasons an upgrade is refused, the label of the auth failures metric.
const (
	authMissing    = "missing_token"
	authMalformed  = "malformed"
	authSignature  = "signature"
	authUnknownKey = "unknown_key"
	authExpired    = "expired"
	authNotYet     = "not_yet_valid"
	authAudience   = "audience"
	authIssuer     = "issuer"
	authClaims     = "claims"
	authSecret     = "secret"
)

// authenticator checks an upgrade request as the configured mode demands.
type authenticator struct {
	cfg    AuthConfig
	parser *jwt.Parser
	keys   keyfunc.Keyfunc
}

// unknownKIDEvery bounds how often an unknown key id makes us fetch the keys.
var unknownKIDEvery = 30 * time.Second

// newAuthenticator starts what the mode needs: for JWTs, the key cache,
// refreshed in the background until ctx ends. Keys that cannot be fetched at
// start are fetched again on the first token with an unknown key id; keys
// that cannot be refreshed later stay in use.
func newAuthenticator(ctx context.Context, cfg AuthConfig, log *slog.Logger) (*authenticator, error) {
	a := &authenticator{cfg: cfg}
	if !cfg.jwt() {
		return a, nil
	}
	jwksURL := cfg.JWKSURL
	if cfg.OpenIDURL != "" {
		if u, err := jwksFromOpenID(ctx, cfg.OpenIDURL); err != nil {
			log.Warn("OpenID configuration unreachable: using AUDIOFAN_AUTH_JWKS_URL", "openid", cfg.OpenIDURL, "jwks", cfg.JWKSURL, "err", err)
		} else {
			jwksURL = u
		}
	}
	if jwksURL == "" {
		return nil, errors.New("no JWKS address: AUDIOFAN_AUTH_OPENID_URL did not answer and AUDIOFAN_AUTH_JWKS_URL is empty")
	}
	noErr := true
	keys, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{jwksURL}, keyfunc.Override{
		HTTPTimeout:               10 * time.Second,
		NoErrorReturnFirstHTTPReq: &noErr,
		RefreshInterval:           cfg.Refresh,
		RefreshUnknownKID:         rate.NewLimiter(rate.Every(unknownKIDEvery), 1),
		RateLimitWaitMax:          time.Second,
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(_ context.Context, err error) {
				log.Warn("signing keys not refreshed; the last good ones stay in use", "jwks", u, "err", err)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("JWKS %s: %w", jwksURL, err)
	}
	a.keys = keys
	a.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{"RS256"}), // never none, never HMAC
		jwt.WithIssuer(cfg.Issuer),
		jwt.WithAudience(cfg.Audience...),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithExpirationRequired(),
	)
	return a, nil
}

// jwksFromOpenID reads jwks_uri from an OpenID configuration document.
func jwksFromOpenID(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %s", resp.Status)
	}
	var doc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&doc); err != nil {
		return "", fmt.Errorf("decode: %w", err)
	}
	if doc.JWKSURI == "" {
		return "", errors.New("no jwks_uri")
	}
	return doc.JWKSURI, nil
}

// check returns "" for a request the mode lets in, or the reason it does not.
func (a *authenticator) check(req *http.Request) string {
	if a.cfg.secret() {
		got := req.URL.Query().Get("token")
		if p := req.PathValue("secret"); p != "" {
			got = p
		}
		if subtle.ConstantTimeCompare([]byte(got), []byte(a.cfg.Secret)) != 1 {
			return authSecret
		}
	}
	if !a.cfg.jwt() {
		return ""
	}
	raw, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(raw) == "" {
		return authMissing
	}
	_, err := a.parser.Parse(strings.TrimSpace(raw), a.keys.KeyfuncCtx(req.Context()))
	switch {
	case err == nil:
		return ""
	case errors.Is(err, jwt.ErrTokenMalformed):
		return authMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return authUnknownKey
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return authSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return authExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return authNotYet
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return authAudience
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return authIssuer
	}
	return authClaims
}
